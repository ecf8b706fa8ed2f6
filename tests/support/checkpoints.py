"""Tiny random checkpoints in real layouts, for CLI, node and loader tests."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import CLIPTextConfig, CLIPTextModel

from latentworks import families
from latentworks.diffusion.denoisers import SD_DISCRETE_SAMPLING
from latentworks.families.load import CheckpointParts
from latentworks.models.autoencoder import Autoencoder, AutoencoderConfig
from latentworks.models.unet import UNet, UNetConfig


def tiny_sd1_parts(source: Path, channels: tuple[int, ...] = (32, 64)) -> CheckpointParts:
    """A random tiny SD1-layout model (768-wide cross-attention, 8 heads, GroupNorm 32, one-layer CLIP-L on the real
    49408-token vocabulary) that single-file detection recognises as SD 1.x. ``channels`` sizes the U-Net."""
    torch.manual_seed(0)
    ucfg = UNetConfig(
        channels=channels,
        layers_per_block=1,
        transformer_depth=(1, 0),
        mid_transformer_depth=1,
        num_heads=8,  # SD 1.x: 8 heads per level, what detection assumes for 768-wide context
        head_dim=None,
        context_dim=768,
    )
    unet, vae = (
        UNet(ucfg),
        Autoencoder(AutoencoderConfig(latent_channels=4, channels=(32, 64), layers_per_block=1)),
    )
    clip = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,  # the real CLIP vocabulary: single files use the bundled tokenizer
            hidden_size=768,
            intermediate_size=128,
            num_hidden_layers=1,
            num_attention_heads=12,
            max_position_embeddings=77,
            hidden_act="quick_gelu",
            bos_token_id=49406,
            eos_token_id=49407,
        )
    )
    with torch.no_grad():
        for p in [*unet.parameters(), *vae.parameters()]:
            p.add_(torch.randn_like(p) * 0.02)
    return CheckpointParts(
        source=source,
        family=families.get("sd1"),
        variant="sd1",
        denoiser_config=ucfg,
        denoiser_state=unet.state_dict(),
        vae_config=vae.config,
        vae_state=vae.state_dict(),
        latent_format=families.get("sd15").latent_format,
        prediction="eps",
        sampling=dict(SD_DISCRETE_SAMPLING),
        text_encoders={"clip_l": clip.state_dict()},
    )
