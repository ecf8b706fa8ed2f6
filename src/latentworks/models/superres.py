"""A pixel-space super-resolution stage with noise-conditioning augmentation (Imagen, DeepFloyd IF).

Saharia et al. 2022 (Imagen), sec. 2.5: a cascade's super-resolution model sees the low-resolution image
upsampled to its own size and concatenated to its noisy input. During training the low-resolution image is
corrupted by the forward diffusion process at a random *augmentation level*, and the level is given to the
network as conditioning; at sampling time a fixed small level is used. The model then learns to ignore
the artefacts of the stage below (which never produces exact data) instead of copying them.

The network is our SD-style U-Net (:mod:`latentworks.models.unet`), used as it already allows:

* ``in_channels = 3 + 3``: the noisy high-resolution image and, from ``cond.extra[CONCAT_KEY]``, the
  augmented low-resolution image upsampled bicubically to the same size, (B, 3, H, W) in [-1, 1];
* a class-embedding input (``pooled_dim > 0``, ``num_time_ids = 0``): the augmentation level's sinusoidal
  embedding in ``cond.extra[CLASS_INPUT_KEY]``, (B, pooled_dim), added to the timestep embedding;
* cross-attention to the prompt's MiniLM tokens at the low-resolution levels, as Imagen's super-resolution
  models attend to text.

The augmentation is the rectified-flow forward process the stage itself is trained with:
``aug = (1 - level) * low + level * noise``, ``level`` in [0, 1]; level 0 leaves the low-resolution image
exactly as it is.
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import Tensor

from latentworks.diffusion.conditioning import CONCAT_KEY, Conditioning
from latentworks.models.unet import CLASS_INPUT_KEY, UNetConfig
from latentworks.nn.embeddings import timestep_embedding

IMAGE_CHANNELS = 3
LEVEL_SCALE = 1000.0  # the level in [0, 1] is embedded like a timestep in [0, 1000]

PRESETS: dict[str, UNetConfig] = {
    # 32 -> 64 px emoji: levels at 64, 32, 16 px; attention (self + MiniLM cross) only at 16 px and in the
    # middle block, where it is cheap on a CPU. 4.2M parameters.
    "emoji-sr-xs": UNetConfig(
        in_channels=2 * IMAGE_CHANNELS,
        out_channels=IMAGE_CHANNELS,
        channels=(32, 64, 128),
        layers_per_block=1,
        transformer_depth=(0, 0, 1),
        mid_transformer_depth=1,
        num_heads=None,
        head_dim=32,
        context_dim=384,
        use_linear_projection=True,
        pooled_dim=128,
        num_time_ids=0,
        norm_groups=16,
    ),
    # For tests: every kind of layer, a few tens of thousands of parameters, 16-dim text tokens.
    "tiny-sr": UNetConfig(
        in_channels=2 * IMAGE_CHANNELS,
        out_channels=IMAGE_CHANNELS,
        channels=(16, 32),
        layers_per_block=1,
        transformer_depth=(0, 1),
        mid_transformer_depth=0,
        num_heads=None,
        head_dim=16,
        context_dim=16,
        pooled_dim=16,
        num_time_ids=0,
        norm_groups=8,
    ),
}
PRESETS["emoji-sr-s"] = replace(PRESETS["emoji-sr-xs"], channels=(64, 96, 128), layers_per_block=2)
# A quarter of emoji-sr-xs's compute (0.43 s per batch of 32 crops of 32 px on one CPU core, fwd + bwd);
# what a shared 2-core machine trained in half an hour (docs/results.md).
PRESETS["emoji-sr-xxs"] = replace(PRESETS["emoji-sr-xs"], channels=(16, 32, 64), head_dim=16, norm_groups=8)


def check_superres_config(config: UNetConfig, where: str = "the super-resolution model") -> None:
    """Raise a clear error unless ``config`` is a U-Net this module can condition (see the module docstring)."""
    if config.in_channels != 2 * IMAGE_CHANNELS or config.out_channels != IMAGE_CHANNELS:
        raise ValueError(
            f"{where}: a pixel super-resolution U-Net takes {2 * IMAGE_CHANNELS} input channels (noisy image + "
            f"low-resolution image) and predicts {IMAGE_CHANNELS}; its config has in_channels="
            f"{config.in_channels}, out_channels={config.out_channels}. Use a preset of models.superres"
        )
    if config.pooled_dim <= 0 or config.num_time_ids != 0:
        raise ValueError(
            f"{where}: the augmentation level enters through the class embedding, which needs pooled_dim > 0 "
            f"and num_time_ids = 0; got pooled_dim={config.pooled_dim}, num_time_ids={config.num_time_ids}"
        )


def upsample(low: Tensor, size: int) -> Tensor:
    """Low-resolution images (B, 3, h, w) in [-1, 1] -> (B, 3, size, size), bicubic, clamped to [-1, 1]."""
    if low.ndim != 4 or low.shape[1] != IMAGE_CHANNELS:
        raise ValueError(f"expected RGB images (B, 3, h, w), got shape {tuple(low.shape)}")
    if low.shape[-2:] == (size, size):
        return low
    return F.interpolate(low.float(), size=(size, size), mode="bicubic", align_corners=False).clamp(-1, 1)


def augment_low_res(low: Tensor, level: Tensor, noise: Tensor) -> Tensor:
    """Noise-conditioning augmentation: ``(1 - level) * low + level * noise`` per sample.

    ``low`` (B, C, H, W), ``level`` (B,) in [0, 1], ``noise`` standard normal of ``low``'s shape. Level 0
    returns ``low`` unchanged (bit for bit), level 1 pure noise."""
    if level.ndim != 1 or level.shape[0] != low.shape[0]:
        raise ValueError(f"level must be (B,) = ({low.shape[0]},), got shape {tuple(level.shape)}")
    if noise.shape != low.shape:
        raise ValueError(f"noise {tuple(noise.shape)} must have the images' shape {tuple(low.shape)}")
    if bool(((level < 0) | (level > 1)).any()):
        raise ValueError(f"augmentation levels must be in [0, 1], got {level.tolist()}")
    lv = level.to(low.dtype).view(-1, 1, 1, 1)
    return torch.where(lv == 0, low, (1 - lv) * low + lv * noise.to(low.dtype))


def level_embedding(level: Tensor, dim: int) -> Tensor:
    """Sinusoidal embedding (B, dim) of augmentation levels (B,) in [0, 1], as timesteps ``level * 1000``."""
    return timestep_embedding(level.float() * LEVEL_SCALE, dim)


def superres_conditioning(
    cond: Conditioning, low: Tensor, level: Tensor, noise: Tensor, *, size: int, level_dim: int
) -> Conditioning:
    """``cond`` (the prompt's tokens, B rows) with the super-resolution inputs added: the low-resolution
    images ``low`` (B, 3, h, w) in [-1, 1], upsampled to ``size`` and augmented at ``level`` (B,) with
    ``noise`` (B, 3, size, size), in ``extra[CONCAT_KEY]``; the level's embedding (B, level_dim) in
    ``extra[CLASS_INPUT_KEY]``."""
    if cond.batch_size != low.shape[0]:
        raise ValueError(f"{cond.batch_size} prompts for {low.shape[0]} low-resolution images")
    up = upsample(low, size)
    aug = augment_low_res(up, level.to(up.device), noise.to(up.device))
    emb = level_embedding(level, level_dim).to(up.device)
    return cond.with_extra(**{CONCAT_KEY: aug, CLASS_INPUT_KEY: emb})
