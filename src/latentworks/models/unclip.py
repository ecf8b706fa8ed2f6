"""SD 2.1 unCLIP's image conditioning: the noise augmentation of a CLIP image embedding.

The U-Net's class embedding (``label_emb`` in the single file, diffusers' ``class_embedding`` with
``class_embed_type="projection"``) reads, per sample, ``[augmented embedding, sinusoidal(noise level)]`` (B, 2D):

1. normalise the embedding with the checkpoint's statistics (``noise_augmentor.data_mean`` / ``data_std`` in
   the single file, diffusers' ``image_normalizer`` ``mean`` / ``std``), (1, D) each;
2. noise it to ``noise_level`` (an integer step of a 1000-step DDPM schedule with the ``squaredcos_cap_v2``
   betas of Nichol & Dhariwal 2021): ``sqrt(abar) * x + sqrt(1 - abar) * noise``;
3. undo the normalisation and append the noise level's embedding (cos first, as the U-Net's timesteps).

Several images add up, each weighted by its strength (ComfyUI's unCLIPConditioning chain); no image at all is
zeros (the unconditional branch of diffusers' StableUnCLIPImg2ImgPipeline).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from latentworks.nn.embeddings import timestep_embedding

NOISE_STEPS = 1000  # the schedule's length; ComfyUI's noise_augmentation in [0, 1] scales to (steps - 1)


def squaredcos_alphas_cumprod(steps: int = NOISE_STEPS, max_beta: float = 0.999) -> Tensor:
    """abar_t of the cosine schedule (Nichol & Dhariwal 2021, eq. 17), betas clipped at ``max_beta``; (steps,)
    float64."""

    def abar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = [min(1 - abar((i + 1) / steps) / abar(i / steps), max_beta) for i in range(steps)]
    return torch.cumprod(1 - torch.tensor(betas, dtype=torch.float64), 0)


class ImageEmbeddingAugmentor:
    """The normaliser and noise schedule of one unCLIP checkpoint.

    Args:
        mean / std: (1, D) or (D,) statistics of the CLIP image embeddings (D = 1024 for ViT-H, 768 for ViT-L).
    """

    def __init__(self, mean: Tensor, std: Tensor) -> None:
        self.mean = mean.detach().float().reshape(1, -1)
        self.std = std.detach().float().reshape(1, -1)
        if self.mean.shape != self.std.shape:
            raise ValueError(f"unCLIP normaliser: mean {tuple(mean.shape)} and std {tuple(std.shape)} differ")
        # float32, as diffusers' DDPMScheduler keeps it
        self.alphas_cumprod = squaredcos_alphas_cumprod().float()

    @property
    def dim(self) -> int:
        return int(self.mean.shape[-1])

    def __call__(self, embeds: Tensor, noise_level: int, noise: Tensor) -> Tensor:
        """(B, D) image embeddings -> (B, 2D) class input at integer ``noise_level`` in [0, 999]."""
        if embeds.ndim != 2 or embeds.shape[-1] != self.dim:
            raise ValueError(
                f"unCLIP: image embeddings must be (B, {self.dim}) for this checkpoint, got {tuple(embeds.shape)}; "
                "use the CLIP vision model that goes with it (unCLIPCheckpointLoader's CLIP_VISION)"
            )
        if not 0 <= noise_level < NOISE_STEPS:
            raise ValueError(f"unCLIP noise level must be in [0, {NOISE_STEPS - 1}], got {noise_level}")
        mean, std = self.mean.to(embeds.device), self.std.to(embeds.device)
        abar = self.alphas_cumprod[noise_level]
        x = (embeds.float() - mean) / std
        x = abar.sqrt() * x + (1 - abar).sqrt() * noise.to(x)
        x = x * std + mean  # (B, D)
        level = torch.full((embeds.shape[0],), noise_level, device=embeds.device)
        return torch.cat([x, timestep_embedding(level, self.dim)], dim=-1)  # (B, 2D)


def noise_level_of(noise_augmentation: float) -> int:
    """ComfyUI's ``noise_augmentation`` in [0, 1] -> the integer schedule step, ``round(999 * value)``."""
    return round((NOISE_STEPS - 1) * float(noise_augmentation))


def slerp(a: Tensor, b: Tensor, t: float, *, eps: float = 1e-7) -> Tensor:
    """Spherical interpolation between embeddings ``a`` and ``b`` (..., D) at ``t`` in [0, 1] (Shoemake 1985).

    The direction moves along the great circle from ``a`` to ``b``; the length goes linearly from ``|a|`` to
    ``|b|`` (CLIP embeddings live near a sphere, so this keeps them in distribution where plain linear
    interpolation shrinks them). Nearly parallel inputs fall back to linear interpolation of the directions.
    """
    if a.shape != b.shape:
        raise ValueError(f"slerp: embeddings must have one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    a64, b64 = a.double(), b.double()
    na, nb = a64.norm(dim=-1, keepdim=True), b64.norm(dim=-1, keepdim=True)
    ua, ub = a64 / na.clamp_min(eps), b64 / nb.clamp_min(eps)
    cos = (ua * ub).sum(-1, keepdim=True).clamp(-1.0, 1.0)
    theta = torch.arccos(cos)
    sin = torch.sin(theta)
    near = sin.abs() < 1e-6
    safe = torch.where(near, torch.ones_like(sin), sin)
    wa = torch.where(near, torch.full_like(sin, 1.0 - t), torch.sin((1.0 - t) * theta) / safe)
    wb = torch.where(near, torch.full_like(sin, t), torch.sin(t * theta) / safe)
    direction = wa * ua + wb * ub
    return (direction * ((1.0 - t) * na + t * nb)).to(a.dtype)
