"""Typed payloads that travel between nodes (the graph engine treats them as opaque objects).

IMAGE and MASK follow ComfyUI's tensor conventions so workflows carry over: IMAGE is (B, H, W, 3)
float in [0, 1]; MASK is (B, H, W) float in [0, 1] where 1 means "generate here".
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from latentworks.diffusion.conditioning import Conditioning
from latentworks.diffusion.latent_formats import LatentFormat
from latentworks.pipelines.loading import ModelFolder


@dataclass(frozen=True)
class ModelPayload:
    """MODEL: a denoising network with its objective and model sampling."""

    folder: ModelFolder


@dataclass(frozen=True)
class ClipPayload:
    """CLIP: a text encoder (``encode(prompts) -> Conditioning``). ComfyUI calls every text encoder CLIP."""

    encoder: Any


@dataclass(frozen=True)
class VAEPayload:
    """VAE: an autoencoder with its latent format (scale/shift between VAE and model latents)."""

    vae: Any
    latent_format: LatentFormat
    dtype: torch.dtype = torch.float32

    @property
    def factor(self) -> int:
        return int(self.vae.config.downsample_factor)


@dataclass(frozen=True)
class ConditioningPayload:
    """CONDITIONING: one prompt's conditioning (batch 1; repeated to the latent batch when sampling)."""

    cond: Conditioning


@dataclass(frozen=True)
class Latent:
    """LATENT: model-space latents, or an empty latent of a pixel size whose shape the model decides.

    ``EmptyLatentImage`` cannot know the latent channels and downsampling factor (they belong to the
    model), so it records the pixel size; the sampler materialises zeros of the model's shape.
    """

    samples: Tensor | None = None  # (B, C, h, w), model space
    pixel_size: tuple[int, int] | None = None  # (height, width) when samples is None
    batch_size: int = 1
    noise_mask: Tensor | None = None  # (B, 1, H, W) in [0, 1], 1 = regenerate
    factor: int = 8  # pixels per latent cell (the VAE's downsampling factor), for resizing by pixel size

    def __post_init__(self) -> None:
        if (self.samples is None) == (self.pixel_size is None):
            raise ValueError("a Latent holds either samples or a pixel_size")

    @property
    def batch(self) -> int:
        return int(self.samples.shape[0]) if self.samples is not None else self.batch_size

    def materialise(self, channels: int, factor: int, device: torch.device | str = "cpu") -> Tensor:
        if self.samples is not None:
            return self.samples.to(device)
        h, w = self.pixel_size  # type: ignore[misc]
        return torch.zeros(self.batch_size, channels, h // factor, w // factor, device=device)

    def with_mask(self, mask: Tensor | None) -> Latent:
        return replace(self, noise_mask=mask)


@dataclass(frozen=True)
class SamplerPayload:
    """SAMPLER: a sampler registered in ``diffusion.samplers.SAMPLERS`` and its keyword options."""

    name: str
    options: tuple[tuple[str, Any], ...] = ()  # (option, value) pairs, passed as keyword arguments


@dataclass(frozen=True)
class SigmasPayload:
    """SIGMAS: a schedule of noise levels (N,) float32, normally descending and ending in 0."""

    sigmas: Tensor


@dataclass(frozen=True)
class NoisePayload:
    """NOISE: where the sampler's noise comes from. Image i of a batch uses ``seeds_for(seed, B)[i]``;
    ``add_noise=False`` (DisableNoise) starts from the latent as it is (the SDE noise still uses ``seed``)."""

    seed: int
    add_noise: bool = True


@dataclass(frozen=True)
class GuiderPayload:
    """GUIDER: a model with its conditionings and classifier-free guidance scale.

    ``negative`` is None for BasicGuider (cfg 1: one network call per step).
    """

    model: ModelPayload
    positive: ConditioningPayload
    negative: ConditioningPayload | None
    cfg: float
