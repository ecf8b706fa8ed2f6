"""The server's memory handling: a workflow run through a MemoryManager with a budget smaller than the model
gives the same images as without one, and the output cache holds models by bytes, releasing the networks it
evicts from the manager (no entry count limit)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_nodes import t2i_workflow
from torch import nn

from latentworks.graph.cache import CacheEntry, OutputCache
from latentworks.graph.executor import Executor
from latentworks.nodes import default_registry
from latentworks.nodes.devices import release_networks
from latentworks.nodes.guards import payload_nbytes
from latentworks.nodes.payloads import VAEPayload
from latentworks.pipelines.loading import load_model_folder
from latentworks.pipelines.memory import MemoryManager, stream_blocks, tensors_on


def _weights(net: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*net.parameters(), *net.buffers()])


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Path:
    root = tmp_path_factory.mktemp("models")
    shutil.copytree(tiny_model, root / "checkpoints" / "tiny")
    return root


def _images(executor: Executor, device: object, out: Path) -> list[np.ndarray]:
    out.mkdir()
    ctx = executor.new_context("job", output_dir=out, temp_dir=out, device=device, on_event=lambda e, d: None)
    res = executor.execute(t2i_workflow(seed=3), ctx)
    assert res.status == "success", res.error
    return [np.asarray(Image.open(out / f["filename"])) for f in res.outputs["9"]["images"]]


def test_a_workflow_under_a_small_budget_gives_the_same_images(models_dir: Path, tmp_path: Path) -> None:
    plain = _images(Executor(default_registry(models_dir)), "cpu", tmp_path / "plain")
    folder = load_model_folder(models_dir / "checkpoints" / "tiny")
    assert folder.vae is not None
    nets = [folder.denoiser_net, folder.vae]
    largest = max(_weights(b) for n in nets for b in stream_blocks(n))
    rest = max(_weights(n) - sum(_weights(b) for b in stream_blocks(n)) for n in nets)
    budget = rest + 2 * largest
    assert budget < _weights(folder.denoiser_net)
    manager = MemoryManager(device="cpu", mode="none", budget=budget)
    executor = Executor(
        default_registry(models_dir), on_evict=lambda outputs: release_networks(manager, outputs)
    )
    got = _images(executor, manager, tmp_path / "budget")
    assert all(np.array_equal(a, b) for a, b in zip(got, plain, strict=True))
    assert manager.block_loads > 0 and manager.peak_bytes <= budget + largest
    assert tensors_on(manager.managed(), "cpu") == manager.resident_bytes <= budget
    executor.cache.clear()  # the cache lets go of the model: so does the manager
    assert manager.managed() == [] and manager.resident_bytes == 0


def test_the_output_cache_holds_models_by_bytes_and_releases_them_from_the_manager() -> None:
    manager = MemoryManager(device="cpu", mode="none", budget=10**9)
    nets = [nn.Sequential(nn.Linear(32, 32)) for _ in range(3)]
    size = _weights(nets[0])
    limit = 2 * size + 300 * 4 + 100  # two models and 300 small float32 outputs
    cache = OutputCache(None, max_bytes=limit, sizer=payload_nbytes,
                        on_evict=lambda outputs: release_networks(manager, outputs))  # fmt: skip
    for i in range(300):  # many small outputs: no count limit evicts the models
        cache.put(f"small{i}", CacheEntry(outputs=(torch.zeros(1),)))
    for i, net in enumerate(nets[:2]):
        with manager.use(net):
            net(torch.zeros(1, 32))
        cache.put(f"model{i}", CacheEntry(outputs=(VAEPayload(net, None),)))  # type: ignore[arg-type]
    assert len(cache) == 302 and {id(m) for m in manager.managed()} == {id(nets[0]), id(nets[1])}
    assert all(cache.get(f"small{i}") is not None for i in range(300))
    assert cache.get("model0") is not None  # model1 is now the least recently used entry
    with manager.use(nets[2]):
        pass
    cache.put("model2", CacheEntry(outputs=(VAEPayload(nets[2], None),)))  # type: ignore[arg-type]
    assert "model1" not in cache and "model0" in cache and "model2" in cache
    assert {id(m) for m in manager.managed()} == {id(nets[0]), id(nets[2])}
    assert nets[1][0].weight.device.type == "cpu"  # released: a plain host module again
    assert len(cache) == 302 and cache.nbytes <= limit


def test_vae_loader_reads_only_the_vae_tensors_of_a_whole_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from latentworks.checkpoints.io import LazyStateDict
    from latentworks.families.load import write_single_file
    from latentworks.nodes.loaders import split_loader_nodes
    from support.checkpoints import tiny_sd1_parts

    (tmp_path / "vae").mkdir()
    path = tmp_path / "vae" / "whole.safetensors"
    write_single_file(tiny_sd1_parts(path), path)  # U-Net, VAE and CLIP in one file
    read: list[str] = []
    real = LazyStateDict.__getitem__

    def spy(self: LazyStateDict, key: str) -> torch.Tensor:
        read.append(key)
        return real(self, key)

    monkeypatch.setattr(LazyStateDict, "__getitem__", spy)
    loader = next(n for n in split_loader_nodes(tmp_path) if n.name == "VAELoader")
    (vae,) = loader.execute(None, vae_name="whole.safetensors")
    assert read and all(k.startswith("first_stage_model.") for k in read), sorted(set(read))[:5]
    assert len(read) == len(vae.vae.state_dict())
