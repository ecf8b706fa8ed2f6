"""Tiny random ControlNet files (original and diffusers layouts) and T2I-Adapter files (diffusers layout), for
loader, node and CLI tests."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from latentworks.families.controlnet import DIFFUSERS, ORIGINAL, T2I_DIFFUSERS
from latentworks.models.controlnet import ControlNet, ControlNetConfig, randomize_zero_convs
from latentworks.models.t2i_adapter import T2IAdapter, T2IAdapterConfig
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


def tiny_t2i_adapter(
    channels: tuple[int, ...] = (32, 64), *, downscale_factor: int = 2, seed: int = 0
) -> T2IAdapter:
    """A random ``full`` T2I-Adapter whose features fit a U-Net with level widths ``channels`` and a VAE that
    downsamples by ``downscale_factor``."""
    torch.manual_seed(seed)
    config = T2IAdapterConfig(channels=channels, num_res_blocks=1, downscale_factor=downscale_factor)
    return T2IAdapter(config).eval()


def write_t2i_adapter(path: Path, net: T2IAdapter) -> Path:
    """Save ``net`` as ``path`` in diffusers' ``T2IAdapter`` layout."""
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    save_file(T2I_DIFFUSERS.from_ours(state, net.config), str(path))
    return path
