"""Timestep and position embeddings."""

from __future__ import annotations

import math

import torch
from torch import Tensor

TIME_EMBED_DIM = 256  # sinusoidal features fed to the timestep MLP (as in DiT, SD3 and FLUX)


def timestep_embedding(
    t: Tensor,
    dim: int,
    *,
    max_period: float = 10000.0,
    flip_sin_to_cos: bool = True,
    downscale_freq_shift: float = 0.0,
    scale: float = 1.0,
) -> Tensor:
    """Sinusoidal embedding of (B,) timesteps -> (B, dim), float32.

    ``flip_sin_to_cos=True`` puts cos first (SD/LDM convention); ``downscale_freq_shift`` is the
    ``freq_shift`` of diffusers' ``Timesteps`` (0 for SD, 1 for DDPM-style models).
    """
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device)
    freqs = torch.exp(exponent / (half - downscale_freq_shift))
    args = scale * t.float()[:, None] * freqs[None]  # (B, half)
    sin, cos = torch.sin(args), torch.cos(args)
    emb = torch.cat([cos, sin], dim=-1) if flip_sin_to_cos else torch.cat([sin, cos], dim=-1)
    if dim % 2:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb


def sincos_2d_embedding(
    dim: int, grid_h: int, grid_w: int, *, base_size: int | None = None, interpolation_scale: float = 1.0
) -> Tensor:
    """Fixed 2D sine-cosine position embedding, (grid_h * grid_w, dim), rows in raster (h, w) order.

    The first half of the channels encodes the column (w) coordinate, the second half the row (h), each as
    ``[sin(pos * w_i), cos(pos * w_i)]`` with ``w_i = 10000^(-i / (dim/4))`` (the MAE/DiT recipe). Positions are
    ``arange(n) * base_size / n / interpolation_scale``, so ``base_size=None`` (= n) gives integer positions;
    SD3 uses ``base_size = sample_size // patch_size`` over its ``pos_embed_max_size`` grid.
    """
    if dim % 4:
        raise ValueError(f"sincos 2D position embedding needs a width divisible by 4, got {dim}")

    def axis(n: int) -> Tensor:
        base = n if base_size is None else base_size
        return torch.arange(n, dtype=torch.float64) / (n / base) / interpolation_scale

    def one_d(pos: Tensor) -> Tensor:  # (M,) -> (M, dim/2)
        omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))
        out = pos[:, None] * omega[None]
        return torch.cat([out.sin(), out.cos()], dim=1)

    rows, cols = torch.meshgrid(axis(grid_h), axis(grid_w), indexing="ij")  # (H, W) each
    emb = torch.cat([one_d(cols.reshape(-1)), one_d(rows.reshape(-1))], dim=1)
    return emb.float()
