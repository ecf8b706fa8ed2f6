"""A tiny Stable Diffusion x4 upscaler for oracle tests (no hub): diffusers' ``StableDiffusionUpscalePipeline``
with random weights at small widths, saved in the release's folder layout.

The U-Net keeps every feature of the release: a ResNet-only first level, text-only attention
(``only_cross_attention``) on the next and ordinary self-attention on the lowest, linear projections, the
noise-level class embedding (``num_class_embeds``) and the 7-channel input (4 latent + 3 image); the VAE
downsamples 4x with scaling 0.08333; the schedulers carry the release's settings (DDIM, v-prediction,
``set_alpha_to_one`` false, steps offset 1; the low-res DDPM schedule).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from support.tokenizers import write_clip_tokenizer

TEXT_DIM = 32
UNET_CONFIG: dict[str, Any] = {
    "sample_size": 16,
    "in_channels": 7,
    "out_channels": 4,
    "block_out_channels": [16, 32, 32],
    "layers_per_block": 1,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "attention_head_dim": 4,
    "cross_attention_dim": TEXT_DIM,
    "use_linear_projection": True,
    "num_class_embeds": 1000,
    "only_cross_attention": [True, True, False],
    "norm_num_groups": 8,
}
SCHEDULER = {
    "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "clip_sample": False,
    "num_train_timesteps": 1000, "prediction_type": "v_prediction", "set_alpha_to_one": False,
    "steps_offset": 1, "timestep_spacing": "leading",
}  # fmt: skip
LOW_RES_SCHEDULER = {
    "beta_end": 0.02, "beta_schedule": "scaled_linear", "beta_start": 0.0001, "clip_sample": False,
    "num_train_timesteps": 1000, "variance_type": "fixed_small",
}  # fmt: skip


def _perturb(module: torch.nn.Module, scale: float = 0.05) -> torch.nn.Module:
    """Non-default values everywhere (zero-initialised layers too), so a mis-mapped key cannot pass."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * scale)
    return module.eval()


def tiny_x4_unet(seed: int = 0, **overrides: Any):  # noqa: ANN201 - a diffusers UNet2DConditionModel
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return _perturb(UNet2DConditionModel(**(UNET_CONFIG | overrides)))


def tiny_x4_pipeline(folder: Path, seed: int = 0):  # noqa: ANN201 - a StableDiffusionUpscalePipeline
    """The diffusers pipeline with tiny random components (its tokenizer written under ``folder``)."""
    from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, StableDiffusionUpscalePipeline
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    vocab = write_clip_tokenizer(folder / "_tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(str(folder / "_tokenizer"))
    torch.manual_seed(seed + 1)
    text = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab, hidden_size=TEXT_DIM, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=77, hidden_act="gelu", bos_token_id=vocab - 2, eos_token_id=vocab - 1,
            pad_token_id=vocab - 1,
        )
    ).eval()  # fmt: skip
    torch.manual_seed(seed + 2)
    vae = _perturb(
        AutoencoderKL(
            block_out_channels=[8, 16, 16], down_block_types=["DownEncoderBlock2D"] * 3,
            up_block_types=["UpDecoderBlock2D"] * 3, latent_channels=4, norm_num_groups=8, layers_per_block=1,
            scaling_factor=0.08333,
        ),
        0.02,
    )  # fmt: skip
    return StableDiffusionUpscalePipeline(
        vae=vae, text_encoder=text, tokenizer=tokenizer, unet=tiny_x4_unet(seed),
        low_res_scheduler=DDPMScheduler(**LOW_RES_SCHEDULER), scheduler=DDIMScheduler(**SCHEDULER),
        max_noise_level=350,
    )  # fmt: skip


def write_x4_folder(root: Path, name: str = "x4-upscaler", seed: int = 0) -> Path:
    """Save the tiny pipeline as ``root/name`` in diffusers' layout; returns the folder."""
    folder = root / name
    pipe = tiny_x4_pipeline(root, seed)
    pipe.save_pretrained(str(folder), safe_serialization=True)
    return folder
