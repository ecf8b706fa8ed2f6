"""Exponential moving average of model weights."""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn


class EMA:
    """``ema = decay * ema + (1 - decay) * param`` after each optimizer step, with warm-up.

    The effective decay is ``min(decay, (1 + n) / (10 + n))`` for update ``n`` (as in many LDM
    codebases) so early averages are not dominated by the random initialisation; ``warmup=False`` uses
    ``decay`` from the first update (fine-tuning weights that already are an average). Buffers are copied.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.warmup = warmup
        self.num_updates = 0
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.num_updates += 1
        d = min(self.decay, (1 + self.num_updates) / (10 + self.num_updates)) if self.warmup else self.decay
        src = dict(model.named_parameters())
        for name, p in self.model.named_parameters():
            p.lerp_(src[name].detach().to(p.dtype), 1 - d)
        src_b = dict(model.named_buffers())
        for name, b in self.model.named_buffers():
            b.copy_(src_b[name])

    def state_dict(self) -> dict[str, Tensor]:
        return self.model.state_dict()

    def load_state_dict(self, sd: dict[str, Tensor], num_updates: int) -> None:
        self.model.load_state_dict(sd)
        self.num_updates = num_updates
