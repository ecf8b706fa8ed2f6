"""Small MLPs shared by the transformer families."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class FeedForward(nn.Module):
    """Transformer MLP: ``fc1 -> GELU(tanh) -> fc2`` (the DiT / SD3 / FLUX feed-forward)."""

    def __init__(self, dim: int, hidden_dim: int, *, out_dim: int | None = None) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, out_dim if out_dim is not None else dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class MLPEmbedder(nn.Module):
    """``Linear -> SiLU -> Linear``: embeds a timestep embedding or a pooled text vector into the model width."""

    def __init__(self, in_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.in_layer = nn.Linear(in_dim, hidden_dim)
        self.out_layer = nn.Linear(hidden_dim, hidden_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.out_layer(F.silu(self.in_layer(x)))
