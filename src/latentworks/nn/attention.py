"""Attention as a pure function over (B, heads, L, head_dim) tensors, on torch's SDPA."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
    """Scaled dot-product attention.

    Args:
        q, k, v: (B, H, L, head_dim) / (B, H, S, head_dim).
        mask: boolean key mask (B, S) with True for keys to attend to, or an additive/boolean mask
            broadcastable to (B, H, L, S); None attends everywhere.
    Returns:
        (B, L, H * head_dim).
    """
    if mask is not None and mask.ndim == 2:
        mask = mask[:, None, None, :].bool()
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, L, head_dim)
    b, h, n, d = out.shape
    return out.transpose(1, 2).reshape(b, n, h * d)


def split_heads(x: Tensor, num_heads: int) -> Tensor:
    """(B, L, H * head_dim) -> (B, H, L, head_dim)."""
    b, n, c = x.shape
    if c % num_heads:
        raise ValueError(f"width {c} is not divisible by num_heads={num_heads}")
    return x.view(b, n, num_heads, c // num_heads).transpose(1, 2)
