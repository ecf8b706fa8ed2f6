"""Reconstruction metrics for autoencoders: PSNR and SSIM.

Images are float tensors (B, C, H, W) in a known ``data_range`` (2.0 for [-1, 1], 1.0 for [0, 1]).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def psnr(x: Tensor, y: Tensor, data_range: float = 2.0) -> Tensor:
    """Peak signal-to-noise ratio per image, in dB, (B,). Identical images give +inf."""
    if x.shape != y.shape:
        raise ValueError(f"psnr: shapes differ, {tuple(x.shape)} vs {tuple(y.shape)}")
    mse = (x.double() - y.double()).pow(2).flatten(1).mean(1)  # (B,)
    return 10 * torch.log10(data_range**2 / mse)  # mse == 0 -> inf


def _gaussian_window(size: int, sigma: float, channels: int, dtype: torch.dtype) -> Tensor:
    coords = torch.arange(size, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    w = g[:, None] * g[None, :]  # (k, k)
    return w.expand(channels, 1, size, size).contiguous()


def ssim(x: Tensor, y: Tensor, data_range: float = 2.0, window: int = 11, sigma: float = 1.5) -> Tensor:
    """Structural similarity per image, (B,), Wang et al. 2004 (Gaussian 11x11, sigma 1.5, K1=.01, K2=.03).

    Computed over the 'valid' region (no padding), averaged over channels. The window shrinks to the
    image size for tiny images.
    """
    if x.shape != y.shape:
        raise ValueError(f"ssim: shapes differ, {tuple(x.shape)} vs {tuple(y.shape)}")
    x, y = x.double(), y.double()
    c = x.shape[1]
    k = min(window, x.shape[-1], x.shape[-2])
    w = _gaussian_window(k, sigma, c, x.dtype).to(x.device)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2

    def filt(t: Tensor) -> Tensor:
        return F.conv2d(t, w, groups=c)

    mu_x, mu_y = filt(x), filt(y)
    sxx = filt(x * x) - mu_x**2
    syy = filt(y * y) - mu_y**2
    sxy = filt(x * y) - mu_x * mu_y
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return s.flatten(1).mean(1)


def psnr_of_constant_offset(offset: float, data_range: float = 2.0) -> float:
    """The analytic PSNR of an image against itself shifted by ``offset`` (used in tests and docs)."""
    return 10 * math.log10(data_range**2 / offset**2)
