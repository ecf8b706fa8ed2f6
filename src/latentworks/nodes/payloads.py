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

# Pixels per latent cell of every registered family's VAE (SD 1.x/2.x/XL, SD3, FLUX, Z-Image): what a MODEL
# loaded without its VAE (UNETLoader) sizes empty latents by.
FAMILY_VAE_FACTOR = 8


@dataclass(frozen=True)
class ModelPayload:
    """MODEL: a denoising network with its objective and model sampling (``folder.vae`` is None when the
    denoiser was loaded alone by UNETLoader; the VAE then travels as its own VAE payload)."""

    folder: ModelFolder

    @property
    def factor(self) -> int:
        """Pixels per latent cell (:func:`latent_factor`)."""
        return latent_factor(self.folder)


def latent_factor(folder: ModelFolder) -> int:
    """Pixels per latent cell of a MODEL's folder: its VAE's downsampling, or ``FAMILY_VAE_FACTOR`` for a
    denoiser loaded alone (UNETLoader)."""
    vae = folder.vae
    return int(vae.config.downsample_factor) if vae is not None else FAMILY_VAE_FACTOR


@dataclass(frozen=True)
class ClipPayload:
    """CLIP: a text encoder (``encode(prompts) -> Conditioning``). ComfyUI calls every text encoder CLIP.

    ``on_host``: the loader was asked for ``device="cpu"``; the encoder runs there, outside the job's memory
    manager."""

    encoder: Any
    on_host: bool = False


@dataclass(frozen=True)
class VAEPayload:
    """VAE: an autoencoder with its latent format (scale/shift between VAE and model latents).

    ``latent_format`` is None for a VAE file loaded alone (VAELoader): its shapes cannot tell which family's
    scale and shift go with it (SD3 and FLUX share one 16-channel architecture, SD 1.x and SDXL a 4-channel
    one), so decoding takes the format of the model that sampled the latent (``Latent.latent_format``).
    """

    vae: Any
    latent_format: LatentFormat | None
    dtype: torch.dtype = torch.float32

    @property
    def factor(self) -> int:
        return int(self.vae.config.downsample_factor)

    def format_for(self, latent: Latent | None, *, action: str = "decode") -> LatentFormat:
        """The latent format to ``action`` with: this VAE's own, else the one the latent's sampler recorded."""
        if self.latent_format is not None:
            return self.latent_format
        if latent is not None and latent.latent_format is not None:
            return latent.latent_format
        if action == "decode":
            raise ValueError(
                "this VAE was loaded on its own (VAELoader) and the latent does not say which model made it, "
                "so its scale and shift are unknown; decode latents that come from a sampler (KSampler), or "
                "use the checkpoint's own VAE (CheckpointLoaderSimple)"
            )
        raise ValueError(
            f"cannot {action} with a VAE loaded on its own (VAELoader) yet: its latent scale and shift belong "
            "to the model family and a VAE file does not say which; use the checkpoint's own VAE "
            "(CheckpointLoaderSimple) for image-to-image and inpainting"
        )


@dataclass(frozen=True)
class ConditioningPayload:
    """CONDITIONING: one prompt's conditioning (batch 1; repeated to the latent batch when sampling).

    ``concat_latent`` and ``concat_mask`` (set by InpaintModelConditioning, as ComfyUI's ``concat_latent_image``
    and ``concat_mask``) are what an inpainting model (9-channel U-Net) sees besides the prompt: the masked image's
    model-space latent (B, C, h, w) and the pixel mask (B, 1, H, W), 1 = generate. Other models ignore them.
    """

    cond: Conditioning
    concat_latent: Tensor | None = None
    concat_mask: Tensor | None = None


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
    latent_format: LatentFormat | None = None  # the sampling model's format (VAEDecode with a VAELoader VAE)

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
