"""Rotary position embeddings (RoPE, Su et al. 2021) over several position axes, as in FLUX.1.

Each head channel pair ``(2i, 2i+1)`` is rotated by the angle ``pos_a * theta^(-2j / d_a)`` where axis ``a``
owns ``d_a`` consecutive channels of the head (``sum(axes_dim) == head_dim``) and ``j`` counts pairs inside
that axis. Rotations compose, so ``<R(m) q, R(n) k>`` depends only on ``m - n``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def rope_frequencies(ids: Tensor, axes_dim: Sequence[int], theta: float = 10000.0) -> Tensor:
    """Rotation (cos, sin) per position and channel pair.

    Args:
        ids: positions, (..., N, n_axes); integer or float.
        axes_dim: channels per axis (each even), summing to the head dimension.
        theta: base period.
    Returns:
        (..., N, head_dim // 2, 2) float32 with ``[..., 0] = cos`` and ``[..., 1] = sin``.
    """
    if ids.shape[-1] != len(axes_dim):
        raise ValueError(
            f"ids has {ids.shape[-1]} position axes but axes_dim={tuple(axes_dim)} names {len(axes_dim)}"
        )
    if any(d % 2 for d in axes_dim):
        raise ValueError(f"every entry of axes_dim must be even, got {tuple(axes_dim)}")
    # float64 angles (as the reference implementations) except where the device has no float64.
    dtype = torch.float32 if ids.device.type == "mps" else torch.float64
    angles = []
    for axis, dim in enumerate(axes_dim):
        inv_freq = theta ** (-torch.arange(0, dim, 2, dtype=dtype, device=ids.device) / dim)  # (dim/2,)
        angles.append(ids[..., axis].to(dtype)[..., None] * inv_freq)  # (..., N, dim/2)
    angle = torch.cat(angles, dim=-1)  # (..., N, head_dim/2)
    return torch.stack([angle.cos(), angle.sin()], dim=-1).float()


def _rotate(x: Tensor, freqs: Tensor) -> Tensor:
    # x: (B, H, N, head_dim); freqs: (N, head_dim/2, 2) or (B, N, head_dim/2, 2)
    if freqs.ndim == 4:
        freqs = freqs[:, None]  # (B, 1, N, head_dim/2, 2)
    cos, sin = freqs[..., 0], freqs[..., 1]
    pairs = x.float().unflatten(-1, (-1, 2))  # (B, H, N, head_dim/2, 2)
    x0, x1 = pairs[..., 0], pairs[..., 1]
    out = torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1)
    return out.flatten(-2).to(x.dtype)


def apply_rope(q: Tensor, k: Tensor, freqs: Tensor) -> tuple[Tensor, Tensor]:
    """Rotate queries and keys (B, H, N, head_dim) by ``freqs`` from :func:`rope_frequencies`.

    ``freqs`` is (N, head_dim/2, 2) for positions shared across the batch or (B, N, head_dim/2, 2).
    """
    if freqs.shape[-3] != q.shape[-2] or 2 * freqs.shape[-2] != q.shape[-1]:
        raise ValueError(
            f"rope freqs {tuple(freqs.shape)} do not fit queries {tuple(q.shape)}: need (N, head_dim/2, 2) "
            "with N the sequence length"
        )
    return _rotate(q, freqs), _rotate(k, freqs)
