"""Attention as a pure function over (B, heads, L, head_dim) tensors, on torch's SDPA, and the per-stream
projections of a joint (multimodal) attention."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


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


class StreamAttention(nn.Module):
    """One token stream's share of a joint attention (SD3's MM-DiT, FLUX's double-stream blocks).

    Holds the stream's fused QKV projection ``qkv`` (D -> 3D), an optional per-head RMS qk-norm
    (``q_norm``/``k_norm`` over head_dim) and, unless ``with_proj=False``, its output projection ``proj``.
    The family block concatenates several streams' q, k, v before calling :func:`attention`.
    """

    def __init__(self, dim: int, num_heads: int, qk_norm: str | None, *, with_proj: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm = nn.RMSNorm(head_dim, eps=1e-6) if qk_norm else None
        self.k_norm = nn.RMSNorm(head_dim, eps=1e-6) if qk_norm else None
        self.proj = nn.Linear(dim, dim) if with_proj else None

    def qkv_heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(B, N, D) -> q, k, v each (B, H, N, head_dim), q and k normalised when qk_norm is set."""
        q, k, v = (split_heads(t, self.num_heads) for t in self.qkv(x).chunk(3, dim=-1))  # (B, H, N, hd)
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        return q, k, v

    def qkv_tokens(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(B, N, D) -> q, k, v each (B, N, H, head_dim), token-major: streams concatenate along N as plain
        row copies (a head-major cat copies strided memory, several times slower on CPU)."""
        q, k, v = self.qkv(x).unflatten(-1, (3, self.num_heads, -1)).unbind(2)  # (B, N, H, hd) each
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        return q, k, v

    def self_attention(self, x: Tensor) -> Tensor:
        """This stream attending to itself alone: (B, N, D) -> (B, N, D)."""
        assert self.proj is not None
        return self.proj(attention(*self.qkv_heads(x)))
