"""Latent formats: how a VAE's latents are scaled for the diffusion model, and a cheap RGB preview.

``process_in`` maps VAE latents to the space the diffusion model was trained in, ``(z - shift) * scale``;
``process_out`` is its inverse (apply before ``vae.decode``). ``preview`` turns a model-space latent
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
    """

    channels: int
    scale_factor: float
    shift_factor: float = 0.0
    rgb_factors: tuple[tuple[float, float, float], ...] = ()
    rgb_bias: tuple[float, float, float] = (0.0, 0.0, 0.0)

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

    def _check(self, z: Tensor) -> None:
        if z.ndim < 2 or z.shape[1] != self.channels:
            raise ValueError(f"expected latents (B, {self.channels}, ...), got shape {tuple(z.shape)}")

    def process_in(self, z: Tensor) -> Tensor:
        """VAE latent -> diffusion-model latent: ``(z - shift) * scale``."""
        self._check(z)
        return (z - self.shift_factor) * self.scale_factor

    def process_out(self, z: Tensor) -> Tensor:
        """Diffusion-model latent -> VAE latent: ``z / scale + shift``."""
        self._check(z)
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


# Preview factors and biases are the approximate least-squares fits published in ComfyUI's
# comfy/latent_formats.py (numbers only); scale/shift factors are those of the released VAEs
# (SD 1.x: 0.18215; SDXL: 0.13025; SD3: 1.5305 / 0.0609; FLUX.1: 0.3611 / 0.1159).
_SD15_RGB = (
    (0.3512, 0.2297, 0.3227),
    (0.3250, 0.4974, 0.2350),
    (-0.2829, 0.1762, 0.2721),
    (-0.2120, -0.2616, -0.7177),
)
_SDXL_RGB = (
    (0.3651, 0.4232, 0.4341),
    (-0.2533, -0.0042, 0.1068),
    (0.1076, 0.1111, -0.0362),
    (-0.3165, -0.2492, -0.2188),
)
_SD3_RGB = (
    (-0.0645, 0.0177, 0.1052),
    (0.0028, 0.0312, 0.0650),
    (0.1848, 0.0762, 0.0360),
    (0.0944, 0.0360, 0.0889),
    (0.0897, 0.0506, -0.0364),
    (-0.0020, 0.1203, 0.0284),
    (0.0855, 0.0118, 0.0283),
    (-0.0539, 0.1160, 0.1077),
    (-0.0057, 0.0116, 0.0700),
    (-0.0412, 0.0281, -0.0039),
    (0.1106, 0.1171, 0.1220),
    (-0.0248, 0.0682, -0.0481),
    (0.0815, 0.0846, 0.1207),
    (-0.0120, -0.0055, -0.1463),
    (0.0020, 0.0523, 0.1994),
    (0.0339, 0.0254, 0.0459),
)
_FLUX_RGB = (
    (-0.0346, 0.0244, 0.0681),
    (0.0034, 0.0210, 0.0687),
    (0.0437, 0.0689, 0.0471),
    (0.0440, 0.0967, 0.0728),
    (0.0386, 0.0445, -0.0601),
    (0.0444, 0.0921, 0.0335),
    (0.0986, 0.0331, 0.0743),
    (-0.0279, 0.0553, 0.0452),
    (-0.0060, 0.0298, 0.0636),
    (0.0349, 0.0784, 0.0276),
    (0.0732, 0.0735, 0.0148),
    (0.0091, 0.0420, 0.0073),
    (0.0719, 0.0669, 0.0757),
    (0.0270, 0.0658, 0.0031),
    (-0.0156, 0.0353, 0.0604),
    (0.0472, 0.0316, 0.0701),
)

LATENT_FORMATS: dict[str, LatentFormat] = {
    "sd15": LatentFormat(channels=4, scale_factor=0.18215, rgb_factors=_SD15_RGB),
    "sd2": LatentFormat(channels=4, scale_factor=0.18215, rgb_factors=_SD15_RGB),
    "sdxl": LatentFormat(
        channels=4, scale_factor=0.13025, rgb_factors=_SDXL_RGB, rgb_bias=(0.1084, -0.0175, -0.0011)
    ),
    "sd3": LatentFormat(
        channels=16,
        scale_factor=1.5305,
        shift_factor=0.0609,
        rgb_factors=_SD3_RGB,
        rgb_bias=(0.2394, 0.2135, 0.1925),
    ),
    "flux": LatentFormat(
        channels=16,
        scale_factor=0.3611,
        shift_factor=0.1159,
        rgb_factors=_FLUX_RGB,
        rgb_bias=(-0.0329, -0.0718, -0.0851),
    ),
}


def get_latent_format(name: str) -> LatentFormat:
    """The preset ``name``; the error lists the valid names."""
    try:
        return LATENT_FORMATS[name]
    except KeyError:
        raise ValueError(
            f"unknown latent format {name!r}; choose one of: {', '.join(LATENT_FORMATS)}"
        ) from None
