"""Latents <-> token sequences of non-overlapping p x p patches.

Two channel orders occur in the families, and a checkpoint fixes which one a model uses:

- ``pack_latents`` / ``unpack_latents``: token channels ordered ``(c, ph, pw)``, as FLUX packs its latents
  (and as ``Conv2d(kernel=p, stride=p)`` patch embeddings read them);
- ``unpatchify``: token channels ordered ``(ph, pw, c)``, the output layout of DiT's and SD3's final layer.
"""

from __future__ import annotations

from torch import Tensor


def pack_latents(x: Tensor, patch_size: int = 2) -> Tensor:
    """(B, C, H, W) -> (B, H/p * W/p, C * p * p): p x p patches as tokens, channels ordered (c, ph, pw)."""
    b, c, h, w = x.shape
    p = patch_size
    if h % p or w % p:
        raise ValueError(f"latent height and width must be multiples of {p} to pack, got {h}x{w}")
    x = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)  # (B, h, w, C, p, p)
    return x.reshape(b, (h // p) * (w // p), c * p * p)


def unpack_latents(tokens: Tensor, height: int, width: int, patch_size: int = 2) -> Tensor:
    """Inverse of :func:`pack_latents`: (B, N, C * p * p) -> (B, C, height, width)."""
    b, n, cpp = tokens.shape
    p = patch_size
    h, w = height // p, width // p
    if n != h * w or cpp % (p * p):
        raise ValueError(f"cannot unpack {tuple(tokens.shape)} tokens into a {height}x{width} latent")
    x = tokens.reshape(b, h, w, cpp // (p * p), p, p).permute(0, 3, 1, 4, 2, 5)  # (B, C, h, p, w, p)
    return x.reshape(b, cpp // (p * p), height, width)


def unpatchify(x: Tensor, h: int, w: int, patch_size: int, channels: int) -> Tensor:
    """(B, h * w, p * p * C) with channels ordered (ph, pw, c) -> (B, C, h * p, w * p)."""
    b = x.shape[0]
    p = patch_size
    x = x.reshape(b, h, w, p, p, channels).permute(0, 5, 1, 3, 2, 4)  # (B, C, h, p, w, p)
    return x.reshape(b, channels, h * p, w * p)
