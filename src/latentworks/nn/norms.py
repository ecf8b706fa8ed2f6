"""Normalisation layers shared by the model families.

Parameter names follow torch (``weight``, ``bias``) so checkpoint key maps stay pure renames.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class GroupNorm(nn.GroupNorm):
    """GroupNorm that normalises in float32 and returns the input dtype.

    Identical to ``nn.GroupNorm`` in float32; in float16/bfloat16 the statistics of large
    activations (SD's VAE decoder reaches 1e4) stay finite, as in the original LDM code.
    """

    def forward(self, x: Tensor) -> Tensor:  # (B, C, ...) -> (B, C, ...)
        if x.dtype == torch.float32:
            return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).to(x.dtype)


class RMSNorm(nn.Module):
    """Root-mean-square norm over the last axis, ``x / rms(x) * weight`` (Zhang & Sennrich 2019).

    Computed in float32, returned in the input dtype (as SD3/FLUX QK-norm do).
    """

    def __init__(self, dim: int, *, eps: float = 1e-6, elementwise_affine: bool = True) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if elementwise_affine else None

    def forward(self, x: Tensor) -> Tensor:  # (..., D) -> (..., D)
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.weight is not None:
            x32 = x32 * self.weight.float()
        return x32.to(dtype)
