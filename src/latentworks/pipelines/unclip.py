"""Loading SD 2.1 unCLIP's image side: the CLIP vision encoder and the embedding statistics of a checkpoint.

- A single file keeps the encoder under ``embedder.model.visual.`` (open_clip layout) and the statistics as
  ``noise_augmentor.data_mean`` / ``data_std`` (1, D).
- A diffusers folder (StableUnCLIPImg2ImgPipeline) keeps them in ``image_encoder/`` (transformers layout) and
  ``image_normalizer/`` (``mean`` / ``std``).
- A ComfyUI ``models/clip_vision`` file holds an encoder alone (see :mod:`latentworks.models.clip_vision`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from latentworks.checkpoints.io import load_state_dict
from latentworks.families.sd2_unclip import EMBEDDER_PREFIX, NOISE_AUGMENTOR_PREFIX
from latentworks.models.clip_vision import ClipVision
from latentworks.models.unclip import ImageEmbeddingAugmentor, noise_level_of


def load_clip_vision(path: str | Path, *, dtype: torch.dtype | None = None) -> ClipVision:
    """A CLIP vision encoder from one .safetensors file (transformers or ComfyUI names, or open_clip)."""
    return ClipVision.from_state_dict(load_state_dict(path, dtype=dtype), dtype=dtype)


def _weights_in(folder: Path) -> Path:
    for name in ("model.safetensors", "diffusion_pytorch_model.safetensors"):
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"{folder}: no model.safetensors or diffusion_pytorch_model.safetensors in it")


def load_unclip_image_parts(path: str | Path) -> tuple[ClipVision, ImageEmbeddingAugmentor]:
    """The CLIP vision encoder and the embedding augmentor of an unCLIP single file or diffusers folder."""
    path = Path(path)
    if path.is_dir():
        if not (path / "image_encoder").is_dir() or not (path / "image_normalizer").is_dir():
            raise FileNotFoundError(
                f"{path}: an unCLIP diffusers folder needs image_encoder/ and image_normalizer/; this one lacks "
                "them (is it a plain text-to-image model?)"
            )
        vision = ClipVision.from_state_dict(load_state_dict(_weights_in(path / "image_encoder")))
        stats = load_state_dict(_weights_in(path / "image_normalizer"))
        return vision, ImageEmbeddingAugmentor(stats["mean"], stats["std"])
    visual = load_state_dict(path, prefix=EMBEDDER_PREFIX)
    stats = load_state_dict(path, prefix=NOISE_AUGMENTOR_PREFIX)
    mean, std = (
        stats.get(NOISE_AUGMENTOR_PREFIX + "data_mean"),
        stats.get(NOISE_AUGMENTOR_PREFIX + "data_std"),
    )
    if not visual or mean is None or std is None:
        raise ValueError(
            f"{path}: not an unCLIP checkpoint: it has no image encoder ({EMBEDDER_PREFIX}*) or no embedding "
            f"statistics ({NOISE_AUGMENTOR_PREFIX}data_mean/data_std); load it with CheckpointLoaderSimple"
        )
    vision = ClipVision.from_state_dict({k.removeprefix(EMBEDDER_PREFIX): v for k, v in visual.items()})
    return vision, ImageEmbeddingAugmentor(mean, std)


def image_class_input(
    embeds: torch.Tensor,
    augmentor: ImageEmbeddingAugmentor,
    *,
    strength: float = 1.0,
    noise_augmentation: float = 0.0,
    seed: int = 0,
) -> torch.Tensor:
    """The class input of one image embedding (N, D) -> (N, 2D): ``strength`` x the embedding noised to
    ``noise_augmentation`` in [0, 1] (ComfyUI's unCLIPConditioning inputs), the noise drawn from ``seed``.

    Pass it as ``Pipeline(...)(prompt, class_input=...)``; several images add up.
    """
    noise = torch.randn(embeds.shape, generator=torch.Generator().manual_seed(int(seed)))
    return float(strength) * augmentor(
        embeds.detach().cpu().float(), noise_level_of(noise_augmentation), noise
    )
