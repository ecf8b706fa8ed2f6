"""Timestep and position embeddings."""

from __future__ import annotations

import math

import torch
from torch import Tensor


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
