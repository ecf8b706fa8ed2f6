"""``latentworks train-lora`` end to end on a tiny random file of each DiT/U-Net family it supports.

The files are the ones the template tests run (``support.workflow_fixtures``: the released layouts with each
family's own text encoders, VAE and sampling). Per family, through the CLI:

- the written file has the family's kohya/ComfyUI module names, and every module resolves on its denoiser;
- the loss is finite, and the noise levels were drawn with the family's flow shift at the training size
  (SD3/Z-Image: ``ln shift``; FLUX/Qwen-Image: ``mu`` of the token count, diffusers' ``calculate_shift``);
- the LoRA loads with ``Pipeline.load_lora`` (what ``generate --lora`` calls) and changes the output.

In process: SDXL trains with each image's own size ids (original size and crop, by hand from the image
sizes), FLUX with the guidance input it was given; the logit shift equals the schedule's own time shift.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from latentworks.checkpoints.lora import load_lora, resolve_lora
from latentworks.diffusion.denoisers import FlowModelSampling
from latentworks.pipelines.text_to_image import Pipeline
from latentworks.training.lora import LoraTrainConfig, train_lora, training_logit_shift
from support.workflow_fixtures import build, tiny_qwen_is_qwen3_4b

SIZE = 16  # pixels: a 2 x 2 latent, one 2 x 2 patch for the DiTs


def _flux_mu(tokens: int, base_len: int, max_len: int, base_shift: float, max_shift: float) -> float:
    """diffusers' ``calculate_shift``: the line through (base_len, base_shift) and (max_len, max_shift)."""
    slope = (max_shift - base_shift) / (max_len - base_len)
    return tokens * slope + base_shift - slope * base_len


@dataclass(frozen=True)
class Case:
    family: str  # as the loader detects it
    base: str  # workflow_fixtures role of the model file
    text: tuple[str, ...]  # roles of separate text-encoder files
    vae: str | None
    prefixes: tuple[str, ...]  # kohya/ComfyUI module prefixes the file must use (each at least once)
    names: tuple[str, ...]  # modules that must be in the file (ComfyUI's names where they differ from ours)
    prediction: str
    logit_mean: float  # the training noise draw's logit-normal mean at SIZE px (by hand)


CASES = [
    Case("sdxl", "checkpoint:sdxl", (), None,
         ("lora_unet_input_blocks_", "lora_unet_middle_block_", "lora_unet_output_blocks_"),
         ("lora_unet_input_blocks_3_1_transformer_blocks_0_attn2_to_k",), "eps", 0.0),
    Case("sd3", "checkpoint:sd3", (), None, ("lora_unet_joint_blocks_",),
         ("lora_unet_joint_blocks_0_x_block_attn_qkv",), "flow", math.log(3.0)),
    Case("flux-dev", "checkpoint:flux-dev", (), None, ("lora_unet_double_blocks_", "lora_unet_single_blocks_"),
         ("lora_unet_double_blocks_0_img_attn_qkv", "lora_unet_single_blocks_0_linear1"), "flow",
         _flux_mu(1, 256, 4096, 0.5, 1.15)),
    Case("z-image", "diffusion:zimage", ("text:qwen3_4b",), "vae:flux",
         ("lora_unet_layers_", "lora_unet_noise_refiner_", "lora_unet_context_refiner_"),
         ("lora_unet_layers_0_attention_qkv", "lora_unet_layers_0_adaLN_modulation_0"), "flow", math.log(3.0)),
    Case("qwen-image", "diffusion:qwenimage", ("text:qwen25vl_7b",), "vae:qwenimage",
         ("lora_unet_transformer_blocks_",),
         ("lora_unet_transformer_blocks_0_attn_to_q", "lora_unet_transformer_blocks_0_attn_to_v",
          "lora_unet_transformer_blocks_0_attn_add_k_proj"), "flow", _flux_mu(1, 256, 8192, 0.5, 0.9)),
]  # fmt: skip


class Files:
    """The tiny files, each role built once per module (the SDXL checkpoint takes seconds to write)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.built: dict[str, Path] = {}

    def __call__(self, role: str) -> Path:
        if role not in self.built:
            path = self.root / f"{role.replace(':', '_')}.safetensors"
            build(role, path)
            self.built[role] = path
        return self.built[role]

    def args(self, case: Case) -> list[str]:
        """The train-lora / generate options naming the case's files."""
        base = self(case.base)
        out = ["--base", str(base)]
        out += [a for role in case.text for a in ("--text-encoder", str(self(role)))]
        if case.vae:
            out += ["--vae", str(self(case.vae))]
        tokenizer = base.with_name(base.stem + ".tokenizer.json")
        if tokenizer.exists():
            out += ["--tokenizer", str(tokenizer)]
        return out

    def pipeline(self, case: Case) -> Pipeline:
        base = self(case.base)
        tokenizer = base.with_name(base.stem + ".tokenizer.json")
        return Pipeline.from_pretrained(
            base,
            vae=self(case.vae) if case.vae else None,
            text_encoders=[self(r) for r in case.text],
            tokenizer=tokenizer if tokenizer.exists() else None,
        )


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Files:
    return Files(tmp_path_factory.mktemp("tiny-models"))


@pytest.fixture(autouse=True)
def _tiny_qwen() -> Iterator[None]:
    with tiny_qwen_is_qwen3_4b():  # the tiny Qwen3 / Qwen2.5-VL files read as Z-Image's / Qwen-Image's
        yield


# (width, height) of the training images: not square, so SDXL's size ids have a crop to report
IMAGE_SIZES = [(24, 16), (16, 32)]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate(IMAGE_SIZES):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path / f"{i}.png")
        (path / f"{i}.txt").write_text(f"a red apple {i}")
    return path


@pytest.mark.filterwarnings("ignore::latentworks.pipelines.text_to_image.ResolutionWarning")
@pytest.mark.parametrize("case", CASES, ids=[c.family for c in CASES])
def test_cli_trains_a_lora_for_each_family(case: Case, files: Files, data: Path, tmp_path: Path) -> None:
    from latentworks.cli import main

    out = tmp_path / "run"
    argv = [
        "train-lora",
        *files.args(case),
        "--data",
        str(data),
        "--out",
        str(out),
        "--resolution",
        str(SIZE),
    ]
    argv += ["--steps", "2", "--batch-size", "2", "--rank", "2", "--alpha", "2", "--lr", "0.05"]
    argv += ["--sample-steps", "1", "--sample-every", "100", "--checkpoint-every", "100"]
    assert main(argv) == 0

    run_config = json.loads((out / "config.json").read_text())
    assert run_config["family"] == case.family and run_config["prediction"] == case.prediction
    assert run_config["noise_logit_mean"] == pytest.approx(case.logit_mean, abs=1e-9)
    losses = [json.loads(line)["loss"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert losses and all(math.isfinite(x) for x in losses)

    lora = load_lora(out / "lora.safetensors")
    assert lora.metadata["latentworks_family"] == case.family
    assert all(m.startswith(case.prefixes) for m in lora.modules)
    assert all(any(m.startswith(p) for m in lora.modules) for p in case.prefixes)
    assert set(case.names) <= set(lora.modules)
    pipe = files.pipeline(case)
    res = resolve_lora(lora, pipe.model.denoiser_net)
    assert res.unmatched == () and len(res.patches) == len(lora.modules)

    def generate() -> torch.Tensor:
        r = pipe("a red apple 0", steps=2, seed=0, width=SIZE, height=SIZE)
        assert r.latents is not None
        return r.latents

    before = generate()
    assert not any(pipe.load_lora(out / "lora.safetensors").values())  # nothing unmatched, any target
    assert (generate() - before).abs().max() > 1e-4


def _train_capturing(case: Case, files: Files, data: Path, out: Path, **kw: Any) -> list[dict[str, Any]]:
    """Train 2 steps in process; the extra conditioning vectors the denoiser saw in each training call."""
    pipe = files.pipeline(case)
    seen: list[dict[str, Any]] = []

    def hook(module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        if module.training:  # not the preview's sampling calls
            seen.append({k: v.clone() for k, v in args[2].extra.items()})

    cfg = LoraTrainConfig(
        data=data, out=out, resolution=SIZE, rank=2, alpha=2.0, steps=2, batch_size=2, sample_steps=1,
        sample_every=100, checkpoint_every=100, progress=False, **kw,
    )  # fmt: skip
    handle = pipe.model.denoiser_net.register_forward_pre_hook(hook)
    try:
        train_lora(cfg, pipe=pipe)
    finally:
        handle.remove()
    assert len(seen) == 2
    return seen


def test_sdxl_trains_with_each_images_own_size_and_crop_ids(files: Files, data: Path, tmp_path: Path) -> None:
    """SDXL's micro-conditioning (original height, width, crop top, left, target height, width): the 24x16
    image is centre-cropped 4 px from the left of the 16 px square, the 16x32 one 8 px from the top."""
    (case,) = [c for c in CASES if c.family == "sdxl"]
    want = {(16.0, 24.0, 0.0, 4.0, 16.0, 16.0), (32.0, 16.0, 8.0, 0.0, 16.0, 16.0)}
    for extra in _train_capturing(case, files, data, tmp_path / "run"):
        rows = {tuple(r) for r in extra["time_ids"].tolist()}
        assert rows <= want and rows


def test_flux_trains_with_the_guidance_it_was_given(files: Files, data: Path, tmp_path: Path) -> None:
    (case,) = [c for c in CASES if c.family == "flux-dev"]
    for extra in _train_capturing(case, files, data, tmp_path / "run", guidance=2.5):  # CLI: --guidance 2.5
        assert extra["guidance"].tolist() == [2.5, 2.5]


@pytest.mark.parametrize("sampling", [FlowModelSampling(shift=3.0), FlowModelSampling(mu=0.7)])
def test_logit_shift_draws_levels_as_the_schedules_time_shift(sampling: FlowModelSampling) -> None:
    u = torch.linspace(0.01, 0.99, 50, dtype=torch.float64)
    shifted = torch.sigmoid(torch.logit(u) + training_logit_shift(sampling))
    torch.testing.assert_close(shifted, sampling.time_shift(u).to(torch.float64))
