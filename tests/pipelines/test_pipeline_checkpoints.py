"""The pipeline API on a real-layout checkpoint: LoRAs stack, change outputs exactly as the hand-applied update,
and unload to the bit-exact original; offloading gives the same image."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pytest
import torch

from latentworks.checkpoints.io import save_file_atomic
from latentworks.checkpoints.keymaps.sd_diffusers import unet_module_map
from latentworks.families.load import write_single_file
from latentworks.pipelines import Pipeline
from support.checkpoints import tiny_sd1_parts

RUN = dict(negative_prompt="", steps=2, guidance=7.0, seed=4, width=16, height=16)
RANK = 2


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("pipe-ckpt")
    return write_single_file(tiny_sd1_parts(tmp / "tiny.safetensors"), tmp / "tiny.safetensors")


def _pixels(pipe: Pipeline) -> np.ndarray:
    return np.asarray(pipe("a red apple", **RUN).images[0], dtype=np.int16)


def _peft_lora(pipe: Pipeline, path: Path, seed: int) -> tuple[str, torch.Tensor]:
    """A PEFT-format LoRA on the first cross-attention query; returns our module name and its weight update."""
    ours, theirs = next(
        (o, t) for o, t in unet_module_map(pipe.model.denoiser_net.config).items() if t.endswith("attn2.to_q")
    )
    weight = pipe.model.denoiser_net.get_submodule(ours).weight
    g = torch.Generator().manual_seed(seed)
    down = torch.randn(RANK, weight.shape[1], generator=g) * 0.5
    up = torch.randn(weight.shape[0], RANK, generator=g) * 0.5
    save_file_atomic(
        {
            f"unet.{theirs}.lora_A.weight": down,
            f"unet.{theirs}.lora_B.weight": up,
            "unet.no_such_block.lora_A.weight": down,
            "unet.no_such_block.lora_B.weight": up,
        },
        path,
    )
    return ours, up @ down  # alpha absent: alpha = rank, scale 1


def test_lora_matches_the_hand_applied_update_and_unloads_exactly(
    ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipe = Pipeline.from_pretrained(ckpt)
    before = _pixels(pipe)
    name, delta = _peft_lora(pipe, tmp_path / "a.safetensors", seed=1)
    name_b, delta_b = _peft_lora(pipe, tmp_path / "b.safetensors", seed=2)
    unmatched = pipe.load_lora(tmp_path / "a.safetensors", 0.8)
    pipe.load_lora(tmp_path / "b.safetensors", -0.5)
    assert any("no_such_block" in k for k in unmatched["unet"])  # reported, not silently dropped
    with_loras = _pixels(pipe)
    import latentworks.checkpoints.lora as lora_mod

    with monkeypatch.context() as m:  # resolved once (load_lora, first encode), not again on every run
        m.setattr(lora_mod, "resolve_lora", lambda *a, **k: pytest.fail("resolve_lora called again"))
        assert np.array_equal(_pixels(pipe), with_loras)
    assert np.abs(with_loras - before).max() > 0

    by_hand = Pipeline.from_pretrained(ckpt)
    with torch.no_grad():
        by_hand.model.denoiser_net.get_submodule(name).weight += 0.8 * delta - 0.5 * delta_b
    assert name == name_b
    assert np.abs(_pixels(by_hand) - with_loras).max() <= 1

    weights = {k: v.clone() for k, v in pipe.model.denoiser_net.state_dict().items()}
    pipe.unload_loras()
    assert np.array_equal(_pixels(pipe), before)
    assert all(torch.equal(v, pipe.model.denoiser_net.state_dict()[k]) for k, v in weights.items())


def test_a_lora_that_matches_nothing_is_an_error_naming_the_file(ckpt: Path, tmp_path: Path) -> None:
    pipe = Pipeline.from_pretrained(ckpt)
    bad = tmp_path / "other-model.safetensors"
    save_file_atomic(
        {"unet.nowhere.lora_A.weight": torch.zeros(2, 4), "unet.nowhere.lora_B.weight": torch.zeros(4, 2)},
        bad,
    )
    with pytest.raises(ValueError, match="other-model.safetensors"):
        pipe.load_lora(bad)


def test_offloading_runs_each_network_inside_its_phase_and_gives_the_same_image(
    ckpt: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain = _pixels(Pipeline.from_pretrained(ckpt))
    off = Pipeline.from_pretrained(ckpt, offload="model")
    # On CPU the Offloader's moves are no-ops (tests/pipelines/test_memory.py checks the moves); here: the
    # pipeline hands each network to it for exactly its phase, in order.
    used: list[str] = []
    real_use = off.offloader.use

    @contextlib.contextmanager
    def spy(module: torch.nn.Module):  # noqa: ANN202
        used.append(type(module).__name__)
        with real_use(module):
            yield module

    monkeypatch.setattr(off.offloader, "use", spy)
    assert np.array_equal(_pixels(off), plain)
    assert used == [
        "CLIPTextModel",
        "CLIPTextModel",
        "UNet",
        "Autoencoder",
    ]  # prompt, negative, sample, decode
    with pytest.raises(ValueError, match="mode"):
        Pipeline.from_pretrained(ckpt, offload="layers")
