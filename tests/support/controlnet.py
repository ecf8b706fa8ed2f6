"""Tiny random ControlNet files in the original and diffusers layouts, for loader, node and CLI tests."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from latentworks.families.controlnet import DIFFUSERS, ORIGINAL
from latentworks.models.controlnet import ControlNet, ControlNetConfig, randomize_zero_convs
from latentworks.models.unet import UNetConfig


def tiny_controlnet(
    unet: UNetConfig, *, hint_channels: tuple[int, ...] = (16, 32), seed: int = 0
) -> ControlNet:
    """A random ControlNet for a U-Net of config ``unet`` whose zero convs are not zero (so it has an effect).
    ``hint_channels`` sets the hint resolution: ``2 ** (len - 1)`` pixels per latent cell."""
    torch.manual_seed(seed)
    net = ControlNet(ControlNetConfig(unet=unet, hint_channels=hint_channels)).eval()
    randomize_zero_convs(net, torch.Generator().manual_seed(seed + 1), std=0.2)
    return net


def write_controlnet(path: Path, net: ControlNet, *, layout: str = "original") -> Path:
    """Save ``net`` as ``path`` in the ``original`` (``control_model.*``) or ``diffusers`` layout."""
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    if layout == "original":
        out = {f"control_model.{k}": v for k, v in ORIGINAL.from_ours(state, net.config).items()}
    elif layout == "diffusers":
        out = DIFFUSERS.from_ours(state, net.config)
    else:
        raise ValueError(f"layout must be 'original' or 'diffusers', got {layout!r}")
    save_file(out, str(path))
    return path
