"""Latent formats: how a VAE's latents are scaled for the diffusion model, and a cheap RGB preview.

``process_in`` maps VAE latents to the space the diffusion model was trained in, ``(z - shift) * scale``, or,
for VAEs with per-channel statistics (Qwen-Image, Wan), ``(z - mean_c) / std_c * scale``; ``process_out`` is its
inverse (apply before ``vae.decode``). ``preview`` turns a model-space latent
(what sampler callbacks see) into a small uint8 RGB image with one C x 3 matrix, no VAE needed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True, kw_only=True)
class LatentFormat:
    """Per-family latent space.

    Attributes:
        channels: latent channels C.
        scale_factor: multiplies VAE latents (after the shift) for the diffusion model.
        shift_factor: subtracted from VAE latents first (0 for SD 1.x/XL).
        rgb_factors: C rows of (R, G, B) weights for previews of model-space latents.
        rgb_bias: (R, G, B) added to previews; previews map [-1, 1] to [0, 255].
        channel_mean / channel_std: C per-channel statistics subtracted / divided out before the scale
            (empty: none; then ``shift_factor`` applies).
    """

    channels: int
    scale_factor: float
    shift_factor: float = 0.0
    rgb_factors: tuple[tuple[float, float, float], ...] = ()
    rgb_bias: tuple[float, float, float] = (0.0, 0.0, 0.0)
    channel_mean: tuple[float, ...] = ()
    channel_std: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.channels < 1:
            raise ValueError(f"channels must be positive, got {self.channels}")
        if self.scale_factor == 0:
            raise ValueError("scale_factor must be non-zero")
        if self.rgb_factors and (
            len(self.rgb_factors) != self.channels or any(len(row) != 3 for row in self.rgb_factors)
        ):
            raise ValueError(f"rgb_factors must be {self.channels} rows of 3 (R, G, B) weights")
        if len(self.rgb_bias) != 3:
            raise ValueError(f"rgb_bias must have 3 entries, got {len(self.rgb_bias)}")
        if (self.channel_mean or self.channel_std) and not (
            len(self.channel_mean) == len(self.channel_std) == self.channels
        ):
            raise ValueError(f"channel_mean and channel_std need {self.channels} entries each")
        if self.channel_mean and self.shift_factor != 0:
            raise ValueError("give either shift_factor or per-channel statistics, not both")

    def _stats(self, z: Tensor) -> tuple[Tensor, Tensor] | None:
        if not self.channel_mean:
            return None
        shape = (1, self.channels) + (1,) * (z.ndim - 2)
        mean = torch.tensor(self.channel_mean, dtype=z.dtype, device=z.device).reshape(shape)
        std = torch.tensor(self.channel_std, dtype=z.dtype, device=z.device).reshape(shape)
        return mean, std

    def _check(self, z: Tensor) -> None:
        if z.ndim < 2 or z.shape[1] != self.channels:
            raise ValueError(f"expected latents (B, {self.channels}, ...), got shape {tuple(z.shape)}")

    def process_in(self, z: Tensor) -> Tensor:
        """VAE latent -> diffusion-model latent: ``(z - shift) * scale`` or ``(z - mean) / std * scale``."""
        self._check(z)
        stats = self._stats(z)
        if stats is not None:
            return (z - stats[0]) / stats[1] * self.scale_factor
        return (z - self.shift_factor) * self.scale_factor

    def process_out(self, z: Tensor) -> Tensor:
        """Diffusion-model latent -> VAE latent: ``z / scale + shift`` or ``z / scale * std + mean``."""
        self._check(z)
        stats = self._stats(z)
        if stats is not None:
            return z / self.scale_factor * stats[1] + stats[0]
        return z / self.scale_factor + self.shift_factor

    def preview(self, z: Tensor) -> Tensor:
        """Cheap RGB preview of model-space latents (B, C, H, W) -> uint8 (B, H, W, 3)."""
        self._check(z)
        if z.ndim != 4:
            raise ValueError(f"preview expects (B, C, H, W) latents, got shape {tuple(z.shape)}")
        if not self.rgb_factors:
            raise ValueError("this latent format has no rgb_factors, so it cannot preview")
        factors = torch.tensor(self.rgb_factors, dtype=torch.float32, device=z.device)  # (C, 3)
        bias = torch.tensor(self.rgb_bias, dtype=torch.float32, device=z.device)  # (3,)
        rgb = torch.einsum("bchw,ck->bhwk", z.float(), factors) + bias  # (B, H, W, 3)
        return ((rgb + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
