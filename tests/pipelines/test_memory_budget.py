"""The memory manager under a byte budget: every network family runs block by block when it does not fit,
with outputs equal (torch.equal) to a run without a budget, and the weights on the compute device stay
within the budget, counted by the manager and, independently, from the modules' own parameters."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from latentworks.diffusion.conditioning import Conditioning
from latentworks.models import dit, flux, mmdit, qwenimage, unet, zimage
from latentworks.pipelines.memory import (
    MemoryBudgetError,
    MemoryManager,
    parse_bytes,
    stream_blocks,
    tensors_on,
)


def _randomise(net: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return net.eval()


def _cases() -> dict[str, Callable[[], tuple[nn.Module, tuple[object, ...]]]]:
    g = torch.Generator().manual_seed(1)

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g)

    t = torch.tensor([0.7])

    def unet_case() -> tuple[nn.Module, tuple[object, ...]]:
        cfg = unet.PRESETS["tiny"]
        return unet.UNet(cfg), (
            r(1, cfg.in_channels, 8, 8),
            t * 1000,
            Conditioning(tokens=r(1, 5, cfg.context_dim)),
        )

    def dit_case() -> tuple[nn.Module, tuple[object, ...]]:
        cfg = replace(dit.PRESETS["tiny"], depth=4)
        cond = Conditioning(tokens=r(1, 5, cfg.context_dim or 1), pooled=r(1, cfg.pooled_dim))
        return dit.DiT(cfg), (r(1, 4, 8, 8), t, cond)

    def mmdit_case() -> tuple[nn.Module, tuple[object, ...]]:
        cfg = replace(mmdit.PRESETS["tiny"], depth=4)
        cond = Conditioning(tokens=r(1, 5, cfg.context_dim), pooled=r(1, cfg.pooled_dim))
        return mmdit.MMDiT(cfg), (r(1, 4, 8, 8), t, cond)

    def flux_case() -> tuple[nn.Module, tuple[object, ...]]:
        cfg = replace(flux.PRESETS["tiny"], double_depth=3, single_depth=3)
        cond = Conditioning(r(1, 7, cfg.context_dim), pooled=r(1, cfg.pooled_dim), extra={"guidance": t * 3})
        return flux.Flux(cfg), (r(1, cfg.in_channels, 6, 10), t, cond)

    def zimage_case() -> tuple[nn.Module, tuple[object, ...]]:
        cfg = replace(zimage.PRESETS["tiny"], depth=4)
        return zimage.ZImage(cfg), (
            r(1, cfg.in_channels, 8, 8),
            t,
            Conditioning(tokens=r(1, 6, cfg.context_dim)),
        )

    def qwen_case() -> tuple[nn.Module, tuple[object, ...]]:
        cfg = replace(qwenimage.PRESETS["tiny"], depth=4)
        return qwenimage.QwenImage(cfg), (
            r(1, cfg.in_channels, 8, 8),
            t,
            Conditioning(tokens=r(1, 6, cfg.context_dim)),
        )

    return {
        "unet": unet_case,
        "dit": dit_case,
        "mmdit": mmdit_case,
        "flux": flux_case,
        "zimage": zimage_case,
        "qwenimage": qwen_case,
    }


CASES = _cases()


def _weights(net: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*net.parameters(), *net.buffers()])


@pytest.mark.parametrize("name", list(CASES))
def test_streaming_gives_identical_outputs_within_the_budget(name: str) -> None:
    net, args = CASES[name]()
    _randomise(net)
    with torch.no_grad():
        want = net(*args)
    total = _weights(net)
    blocks = stream_blocks(net)
    largest = max(_weights(b) for b in blocks)
    rest = total - sum(_weights(b) for b in blocks)
    budget = max(total // 2, rest + largest + largest // 2)
    assert budget < total
    manager = MemoryManager(device="cpu", mode="none", budget=budget)
    seen: list[int] = []  # weights on the device at every block forward, read from the parameters themselves

    def track(mod: nn.Module, a: object, out: object) -> None:
        seen.append(tensors_on([net], "cpu"))

    for b in blocks:
        b.register_forward_hook(track)  # registered first, so it runs before the manager drops the block
    with torch.no_grad(), manager.use(net):
        assert manager.streaming(net)
        got = net(*args)
    assert torch.equal(got, want)
    assert len(seen) >= len(blocks) and manager.block_loads > 0
    assert max(seen) <= budget + largest, (max(seen), budget, largest)
    assert manager.peak_bytes <= budget + largest
    assert max(seen) < total  # it really was streamed
    # between forwards only the resident part stays; released, the module is whole again on the host
    assert tensors_on([net], "cpu") == manager.resident_bytes <= budget
    manager.release(net)
    assert tensors_on([net], "cpu") == total
    with torch.no_grad():
        assert torch.equal(net(*args), want)


def test_a_network_that_fits_is_loaded_whole_and_others_are_evicted_by_bytes() -> None:
    nets = [_randomise(nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 64)), s) for s in range(3)]
    size = _weights(nets[0])
    manager = MemoryManager(device="cpu", mode="none", budget=2 * size + size // 2)  # two fit, not three
    x = torch.randn(2, 64)
    for net in nets[:2]:
        with manager.use(net):
            net(x)
    assert manager.resident_bytes == 2 * size and not manager.streaming(nets[0])
    with manager.use(nets[0]):  # now nets[1] is the least recently used
        pass
    with manager.use(nets[2]):
        assert manager.module_bytes(nets[2]) == (size, size)
    assert manager.module_bytes(nets[1])[0] == 0 and manager.module_bytes(nets[0])[0] == size
    assert tensors_on(nets, "cpu") == manager.resident_bytes == 2 * size


def test_model_mode_offloads_after_use_and_release_restores_the_module() -> None:
    net = _randomise(nn.Sequential(nn.Linear(8, 8)))
    before = net[0].weight.detach().clone()
    manager = MemoryManager(device="cpu", mode="model", budget=10_000)
    with manager.use(net):
        y = net(torch.ones(1, 8))
    assert net[0].weight.device.type == "meta" and manager.resident_bytes == 0
    manager.release(net)
    assert torch.equal(net[0].weight, before) and torch.equal(net(torch.ones(1, 8)), y)


def test_a_budget_too_small_for_one_block_is_a_clear_error() -> None:
    net, args = CASES["zimage"]()
    manager = MemoryManager(device="cpu", budget=1000)
    with pytest.raises(MemoryBudgetError, match="too small for ZImage.*give at least"), manager.use(net):
        pass


def test_sizes_parse_with_binary_units() -> None:
    assert parse_bytes("4GB") == 4 * 2**30 and parse_bytes("512MiB") == 512 * 2**20
    assert parse_bytes("1.5G") == 3 * 2**29 and parse_bytes("1000") == 1000
    with pytest.raises(ValueError, match="not a size"):
        parse_bytes("lots")


class _FixedTextEncoder:
    """A prompt encoder without networks: a fixed random (B, 4, 384) token tensor per prompt's hash."""

    dim, max_length = 384, 4

    def encode(self, prompts: list[str]) -> Conditioning:
        rows = [torch.randn(4, 384, generator=torch.Generator().manual_seed(len(p) * 7 + 1)) for p in prompts]
        return Conditioning(tokens=torch.stack(rows))


def test_pipeline_with_a_budget_smaller_than_the_model_gives_the_same_latents(tiny_model) -> None:  # noqa: ANN001
    from latentworks.pipelines import Pipeline
    from latentworks.pipelines.loading import load_model_folder

    run = dict(negative_prompt="", steps=3, guidance=3.0, seed=5, width=16, height=16)
    plain = Pipeline(load_model_folder(tiny_model), _FixedTextEncoder())("a red apple", **run)

    folder = load_model_folder(tiny_model)
    assert folder.vae is not None
    nets = [folder.denoiser_net, folder.vae]
    total = sum(_weights(n) for n in nets)
    blocks = [b for n in nets for b in stream_blocks(n)]
    largest = max(_weights(b) for b in blocks)
    rest = max(_weights(n) - sum(_weights(b) for b in stream_blocks(n)) for n in nets)
    budget = rest + 2 * largest
    assert budget < _weights(folder.denoiser_net) < total  # the denoiser alone does not fit
    seen: list[int] = []
    for b in blocks:  # before the manager's hooks: sees each block while it is on the device
        b.register_forward_hook(lambda m, a, o: seen.append(tensors_on(nets, "cpu")))
    pipe = Pipeline(folder, _FixedTextEncoder(), memory_budget=f"{budget}B")
    assert tensors_on(nets, "cpu") == 0  # taken over: nothing on the compute device before it is used
    got = pipe("a red apple", **run)
    assert plain.latents is not None and got.latents is not None
    assert torch.equal(got.latents, plain.latents)
    assert all(
        np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(got.images, plain.images, strict=True)
    )
    assert pipe.offloader.block_loads > 0 and len(seen) > len(blocks)
    assert max(seen) <= budget + largest and pipe.offloader.peak_bytes <= budget + largest
    # a LoRA would patch weights that are not there (meta): refused with a clear message, not skipped
    pipe.model = dataclasses.replace(pipe.model, loras=(object(),))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="LoRAs cannot be applied to a network streamed block by block"):
        pipe("a red apple", **run)


def test_release_during_use_waits_for_the_block_to_end() -> None:
    net = _randomise(nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8)))
    manager = MemoryManager(device="cpu", mode="none", budget=10_000)
    with manager.use(net):
        manager.release(net)  # e.g. the output cache dropping it while a node still runs it
        assert manager.managed() == [net]
        net(torch.ones(1, 8))
    assert manager.managed() == [] and net[0].weight.device.type == "cpu"
