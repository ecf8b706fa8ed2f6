"""Training data and conditioning for the pixel super-resolution task (``latentworks train --task superres``).

The loop and objective are those of ``training.diffusion``; this module only supplies what differs:

* :class:`PixelPairs`, the training examples: the dataset's high-resolution images (B, 3, H, W) in
  [-1, 1] with scale 1 and shift 0, the same interface as a latent cache (``sample``, ``captions``,
  ``parts``, ``channels``, ``size``), and each image's low-resolution version, made with PIL's Lanczos
  filter as ``latentworks data emoji --size H/2`` makes its images (so the 32 px training data of the
  base model and the stage's low-resolution inputs are the same pixels);
* random crops (``crop``, as Imagen trains its super-resolution models on crops): ``sample`` draws one
  offset per image from the step's generator and crops the high-resolution image; ``condition`` crops the
  bicubically upsampled low-resolution image at the same offset, so inside the crop the network sees the
  same values as on the whole image at sampling time;
* with ``residual`` (SRDiff, Li et al. 2022), the examples are the *residuals* ``high - bicubic(low)``
  times :attr:`PixelPairs.residual_scale` (one over their standard deviation over the dataset, so they have
  unit variance as the flow objective expects): the network learns only the detail bicubic upsampling
  misses, and what it gets wrong is scaled down by the same factor when the stage adds the bicubic image back
  (``pipelines.superres.upscale_with_model``);
* :meth:`PixelPairs.condition`, which adds the noise-augmented low-resolution image and its level to each
  step's conditioning (``models.superres.superres_conditioning``), drawing the levels (uniform in
  ``[0, max_level]``) and the augmentation noise from the step's generator after the objective's draws.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from latentworks.data.arrays import ArrayDataset, downscale, images_to_tensor
from latentworks.data.captions import CaptionParts, caption_parts
from latentworks.diffusion.conditioning import Conditioning
from latentworks.models.superres import superres_conditioning, upsample

SCALE_FACTOR = 2  # this stage doubles the side: 32 -> 64 px


@dataclass
class PixelPairs:
    """High-resolution training images and their low-resolution versions (see the module docstring)."""

    high: Tensor  # (N, 3, H, W) float32 in [-1, 1]
    low: Tensor  # (N, 3, H/2, W/2) float32 in [-1, 1]
    captions: list[str]
    max_level: float = 0.5
    level_dim: int = 128
    crop: int | None = None  # train on crops of this side (None: whole images)
    metadata: dict[str, Any] = field(default_factory=dict)
    parts: list[CaptionParts] | None = None
    scale: float = 1.0  # pixels are trained as they are (the latent cache's z = (x - shift) * scale)
    shift: float = 0.0
    residual: bool = False  # train on (high - bicubic(low)) * residual_scale (see the module docstring)

    def __len__(self) -> int:
        return len(self.captions)

    @property
    def channels(self) -> int:
        return int(self.high.shape[1])

    def __post_init__(self) -> None:
        self.low_up = upsample(self.low, int(self.high.shape[-1]))  # (N, 3, H, W), what the network sees
        self._offsets: Tensor | None = None  # (B, 2) crop offsets of the last ``sample``
        if self.crop is not None and not 0 < self.crop <= self.high.shape[-1]:
            raise ValueError(f"crop must be in (0, {self.high.shape[-1]}], got {self.crop}")
        self.residual_scale = residual_scale(self.high, self.low_up) if self.residual else 0.0

    @property
    def size(self) -> int:
        """The side of a training example (the crop, or the whole image)."""
        return int(self.crop or self.high.shape[-1])

    @property
    def image_size(self) -> int:
        """The side of the whole high-resolution images (what the stage outputs)."""
        return int(self.high.shape[-1])

    @property
    def low_size(self) -> int:
        return int(self.low.shape[-1])

    def _cropped(self, images: Tensor, offsets: Tensor | None) -> Tensor:
        if offsets is None:
            return images
        c = self.size
        return torch.stack([im[:, y : y + c, x : x + c] for im, (y, x) in zip(images, offsets.tolist())])

    def sample(self, idx: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The high-resolution images (B, 3, size, size) of ``idx``; with ``crop``, one random crop each
        (offsets drawn from ``generator`` and kept for the next :meth:`condition`); with ``residual``,
        their scaled residuals over the bicubic upsample instead."""
        self._offsets = None
        if self.crop is not None:
            span = self.image_size - self.crop + 1
            self._offsets = torch.randint(0, span, (len(idx), 2), generator=generator)
        if self.residual:
            target = (self.high[idx] - self.low_up[idx]) * self.residual_scale
            return self._cropped(target, self._offsets)
        return self._cropped(self.high[idx], self._offsets)

    def condition(self, cond: Conditioning, idx: Tensor, generator: torch.Generator) -> Conditioning:
        """``cond`` with the (upsampled, cropped like the last ``sample``) low-resolution images of ``idx``,
        augmented at levels ~ U(0, max_level)."""
        b = len(idx)
        level = torch.rand(b, generator=generator) * self.max_level
        noise = torch.randn((b, self.channels, self.size, self.size), generator=generator)
        low = self._cropped(self.low_up[idx], self._offsets).to(cond.tokens.device)
        return superres_conditioning(cond, low, level, noise, size=self.size, level_dim=self.level_dim)


def residual_scale(high: Tensor, low_up: Tensor) -> float:
    """One over the standard deviation of the residuals ``high - low_up`` over all images and pixels,
    rounded to 4 significant digits (so a resumed run, which recomputes it, gets the same value)."""
    std = float((high.double() - low_up.double()).std())
    if not std > 0:
        raise ValueError("the high-resolution images equal their bicubic upsamples: no residual to learn")
    return float(f"{1.0 / std:.4g}")


def load_pixel_pairs(
    path: str | Path,
    *,
    max_level: float,
    level_dim: int,
    crop: int | None = None,
    split: str = "train",
    residual: bool = False,
) -> PixelPairs:
    """The ``split`` of a dataset file from ``latentworks data emoji`` as :class:`PixelPairs`."""
    from latentworks.data.folder import load_dataset

    ds: ArrayDataset = load_dataset(path, split=split)
    if ds.resolution % SCALE_FACTOR:
        raise ValueError(f"{path}: {ds.resolution} px images cannot be halved for a super-resolution stage")
    if len(ds) == 0:
        raise ValueError(f"{path}: the {split!r} split holds no images")
    low = downscale(ds.images)
    meta = {
        "dataset": str(path),
        "resolution": ds.resolution,
        "low_resolution": ds.resolution // SCALE_FACTOR,
    }
    return PixelPairs(
        high=images_to_tensor(ds.images),
        low=images_to_tensor(low),
        captions=list(ds.captions),
        max_level=max_level,
        level_dim=level_dim,
        crop=crop,
        residual=residual,
        metadata=meta,
        parts=caption_parts(ds.extra, len(ds)),
    )
