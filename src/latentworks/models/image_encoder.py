"""A small CLIP-like image encoder for our own unCLIP on the emoji data (issue 26).

CLIP (Radford et al. 2021) trains an image tower and a text tower so that matching (image, caption) pairs have
the highest cosine similarity in a batch. Here the text tower is the frozen MiniLM (its pooled sentence
embedding, ``models.text.minilm``, (B, 384)) followed by one learned linear projection, and the image tower is a
few strided convolutions:

    image (B, 3, S, S) in [-1, 1] -> [conv 3x3 stride 2 -> GroupNorm -> SiLU -> conv 3x3 -> SiLU] per width
                                    -> global mean pool (B, C) -> Linear -> L2-normalise -> (B, D)
    pooled text (B, 384)         -> Linear -> L2-normalise -> (B, D)

trained with the symmetric InfoNCE loss (:func:`contrastive_loss`) and a learned temperature. The buffers
``embed_mean`` / ``embed_std`` (D,) hold the statistics of the training images' embeddings, which the
decoder's noise augmentation normalises with (``models.unclip.ImageEmbeddingAugmentor``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True, kw_only=True)
class ImageEncoderConfig:
    """Args:
    image_size: side of the (square) input images in pixels.
    channels: widths of the convolution stages; each halves the side.
    embed_dim: D, the width of the shared image/text embedding.
    text_dim: width of the frozen text encoder's pooled vector (MiniLM: 384).
    """

    image_size: int = 32
    channels: tuple[int, ...] = (32, 64, 128)
    embed_dim: int = 128
    text_dim: int = 384

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        if not self.channels or any(c < 8 or c % 8 for c in self.channels):
            raise ValueError(f"ImageEncoderConfig.channels must be multiples of 8, got {self.channels}")
        if self.image_size < 2 ** len(self.channels) or self.image_size % 2 ** len(self.channels):
            raise ValueError(
                f"ImageEncoderConfig.image_size={self.image_size} must be a multiple of 2**{len(self.channels)} "
                "(one halving per stage); use fewer channels or another size"
            )
        if self.embed_dim < 2 or self.text_dim < 1:
            raise ValueError(
                f"embed_dim must be >= 2 and text_dim >= 1, got {self.embed_dim}, {self.text_dim}"
            )


PRESETS: dict[str, ImageEncoderConfig] = {
    "emoji32-enc-s": ImageEncoderConfig(),  # about 0.3 M parameters; D = 128
    "tiny": ImageEncoderConfig(image_size=8, channels=(8, 16), embed_dim=8, text_dim=16),  # tests
}


class ImageEncoder(nn.Module):
    """``encode_image(images (B, 3, S, S)) -> (B, D)`` and ``encode_text(pooled (B, text_dim)) -> (B, D)``,
    both unit length (see the module docstring)."""

    embed_mean: Tensor  # (D,) buffers: the training images' embedding statistics
    embed_std: Tensor

    def __init__(self, config: ImageEncoderConfig) -> None:
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        c_in = 3
        for c in config.channels:
            layers += [
                nn.Conv2d(c_in, c, 3, stride=2, padding=1),
                nn.GroupNorm(8, c),
                nn.SiLU(),
                nn.Conv2d(c, c, 3, padding=1),
                nn.SiLU(),
            ]
            c_in = c
        self.features = nn.Sequential(*layers)
        self.image_proj = nn.Linear(c_in, config.embed_dim)
        self.text_proj = nn.Linear(config.text_dim, config.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))  # CLIP's initial temperature
        self.register_buffer("embed_mean", torch.zeros(config.embed_dim))
        self.register_buffer("embed_std", torch.ones(config.embed_dim))

    @property
    def dim(self) -> int:
        return self.config.embed_dim

    def encode_image(self, images: Tensor) -> Tensor:
        """(B, 3, S, S) in [-1, 1] -> unit-length (B, D)."""
        s = self.config.image_size
        if images.ndim != 4 or tuple(images.shape[1:]) != (3, s, s):
            raise ValueError(
                f"image encoder: expected RGB images (B, 3, {s}, {s}) in [-1, 1], got {tuple(images.shape)}; "
                f"resize the image to {s}x{s} first"
            )
        h = self.features(images.to(self.image_proj.weight.dtype))  # (B, C, s', s')
        return F.normalize(self.image_proj(h.mean(dim=(2, 3))), dim=-1)

    def encode_text(self, pooled: Tensor) -> Tensor:
        """(B, text_dim) pooled text embeddings -> unit-length (B, D)."""
        if pooled.ndim != 2 or pooled.shape[-1] != self.config.text_dim:
            raise ValueError(
                f"image encoder: pooled text must be (B, {self.config.text_dim}), got {tuple(pooled.shape)}"
            )
        return F.normalize(self.text_proj(pooled.to(self.text_proj.weight.dtype)), dim=-1)


def contrastive_loss(image_embeds: Tensor, text_embeds: Tensor, logit_scale: Tensor) -> Tensor:
    """CLIP's symmetric InfoNCE: the mean of the image->text and text->image cross-entropies of the (B, B)
    cosine-similarity logits scaled by ``exp(logit_scale)`` (capped at 100, as CLIP does); pair i is row i of
    both (B, D) unit-length inputs."""
    if image_embeds.shape != text_embeds.shape:
        raise ValueError(
            f"contrastive_loss: image {tuple(image_embeds.shape)} and text {tuple(text_embeds.shape)} differ"
        )
    logits = logit_scale.exp().clamp(max=100.0) * image_embeds.float() @ text_embeds.float().T  # (B, B)
    labels = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))
