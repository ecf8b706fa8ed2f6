"""Convolutional building blocks shared by the KL autoencoder and the U-Net.

The blocks express the Stable Diffusion (LDM / diffusers) layers exactly so that real checkpoints
load through pure key renames: GroupNorm -> SiLU -> 3x3 conv, twice, with an optional timestep
projection added between the convolutions and a 1x1 convolution on the skip when widths differ.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from latentworks.nn.norms import GroupNorm


class ResBlock(nn.Module):
    """Residual block; ``time_dim`` adds a per-channel timestep bias (U-Net), None leaves it out (VAE).

    Parameter names: ``norm1, conv1, time_proj, norm2, conv2, skip``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        time_dim: int | None = None,
        groups: int = 32,
        eps: float = 1e-5,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm1 = GroupNorm(groups, in_channels, eps=eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.time_proj = nn.Linear(time_dim, out_channels) if time_dim is not None else None
        self.norm2 = GroupNorm(groups, out_channels, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: Tensor, temb: Tensor | None = None) -> Tensor:
        # x: (B, C_in, H, W), temb: (B, time_dim) -> (B, C_out, H, W)
        h = self.conv1(F.silu(self.norm1(x)))
        if self.time_proj is not None:
            if temb is None:
                raise ValueError("this ResBlock was built with time_dim; pass the timestep embedding")
            h = h + self.time_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return (x if self.skip is None else self.skip(x)) + h


class Downsample(nn.Module):
    """Stride-2 3x3 convolution (parameter ``conv``).

    ``asymmetric_padding=True`` pads right/bottom by one and nothing left/top (the LDM VAE);
    False pads one on every side (the U-Net).
    """

    def __init__(self, channels: int, *, asymmetric_padding: bool = False) -> None:
        super().__init__()
        self.asymmetric_padding = asymmetric_padding
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0 if asymmetric_padding else 1)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, C, H/2, W/2)
        if self.asymmetric_padding:
            x = F.pad(x, (0, 1, 0, 1))
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour 2x upsampling (or to ``size``), then a 3x3 convolution (parameter ``conv``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor, size: tuple[int, int] | None = None) -> Tensor:
        # (B, C, H, W) -> (B, C, 2H, 2W) or (B, C, *size)
        if size is None:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        else:
            x = F.interpolate(x, size=size, mode="nearest")
        return self.conv(x)
