"""Adaptive layer-norm (adaLN) modulation: a conditioning vector sets per-channel shift, scale and gate.

DiT (Peebles & Xie 2023, "adaLN-Zero"), SD3's MM-DiT and FLUX all use the same three pieces:

- ``AdaLNModulation``: ``SiLU -> Linear(cond_dim, n * dim)`` split into ``n`` vectors of size ``dim``;
- ``modulate(x, shift, scale) = x * (1 + scale) + shift`` after a parameter-free LayerNorm;
- a residual branch multiplied by a ``gate`` vector.

Chunks are always returned in the order of the original implementations (shift, scale, gate, ...);
converters swap halves where diffusers stores (scale, shift) instead.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


def layer_norm(x: Tensor, eps: float = 1e-6) -> Tensor:
    """LayerNorm over the last axis without learned affine parameters (adaLN supplies them)."""
    return F.layer_norm(x, (x.shape[-1],), eps=eps)


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """``x * (1 + scale) + shift`` with per-sample vectors: x (B, L, D), shift/scale (B, D)."""
    return x * (1 + scale[:, None]) + shift[:, None]


def gate(x: Tensor, g: Tensor) -> Tensor:
    """Scale a residual branch x (B, L, D) by a per-sample gate (B, D)."""
    return x * g[:, None]


class AdaLNModulation(nn.Module):
    """``SiLU -> Linear(cond_dim, num_chunks * dim)`` split into ``num_chunks`` (B, dim) vectors.

    ``zero_init=True`` gives adaLN-Zero: every shift, scale and gate starts at 0, so a block whose residual
    branches are gated starts as the identity.
    """

    def __init__(self, cond_dim: int, dim: int, num_chunks: int, *, zero_init: bool = False) -> None:
        super().__init__()
        self.num_chunks = num_chunks
        self.linear = nn.Linear(cond_dim, num_chunks * dim)
        if zero_init:
            nn.init.zeros_(self.linear.weight)
            nn.init.zeros_(self.linear.bias)

    def forward(self, c: Tensor) -> tuple[Tensor, ...]:
        # c: (B, cond_dim) -> num_chunks x (B, dim)
        return self.linear(F.silu(c)).chunk(self.num_chunks, dim=-1)
