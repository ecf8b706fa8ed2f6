"""A small diffusion prior for our own unCLIP (issue 26): text embedding -> image embedding.

DALL-E 2's prior (Ramesh et al. 2022, sec. 2.1) generates a CLIP image embedding from the caption. Ours maps the
frozen MiniLM's pooled sentence embedding ``cond.pooled`` (B, 384) to the unit-length embedding of our own image
encoder (``models.image_encoder``), (B, D). It is trained and sampled like the image models: rectified flow
(velocity prediction, ``diffusion.objective.DiffusionObjective("flow")``; DALL-E 2 predicts the clean embedding
instead, which the flow denoiser gives as ``x0 = x - sigma * v``), on the one training loop
(``training.diffusion.run_steps``), with classifier-free dropout of the caption (the empty caption's pooled
vector is the unconditional input) and sampled through ``pipelines.sampling.denoise_latents``.

The network works on embeddings scaled by ``sqrt(D)`` (:attr:`EmbeddingPriorConfig.embed_scale`), so each
coordinate has about unit variance like the noise; the pipeline divides by it and renormalises.

With ``text_embedding`` (DALL-E 2's prior reads the CLIP text embedding of the caption besides its tokens) the
conditioning also holds the image encoder's own *text* embedding of the caption, ``cond.extra["text_embedding"]``
(B, D), unit length times ``sqrt(D)`` (:func:`add_text_embedding`): the contrastive text tower already lands
near the caption's image (cosine 0.59 from user prompts, docs/results.md), so the prior only learns what
separates the image from that.

    x (B, D) -> Linear -> h (B, W)
    c = MLP(sinusoidal(t)) + MLP(pooled text) [+ MLP(text embedding)]    (B, W)
    depth x [h += gate(c) * MLP(modulate(LayerNorm(h), shift(c), scale(c)))]    (adaLN-Zero, DiT)
    -> LayerNorm -> Linear (zero-initialised) -> (B, D) velocity
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from latentworks.diffusion.conditioning import Conditioning
from latentworks.nn.embeddings import timestep_embedding
from latentworks.nn.modulation import AdaLNModulation, layer_norm


@dataclass(frozen=True, kw_only=True)
class EmbeddingPriorConfig:
    """Args:
    embed_dim: D, the image embedding's width (``ImageEncoderConfig.embed_dim``).
    text_dim: the pooled text vector's width (MiniLM: 384).
    width: W, the hidden width.
    depth: number of residual MLP blocks.
    time_dim: width of the sinusoidal time embedding.
    text_embedding: also read the image encoder's text embedding ``cond.extra["text_embedding"]`` (B, D).
    """

    embed_dim: int = 128
    text_dim: int = 384
    width: int = 512
    depth: int = 4
    time_dim: int = 128
    text_embedding: bool = False

    def __post_init__(self) -> None:
        for name in ("embed_dim", "text_dim", "width", "depth", "time_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"EmbeddingPriorConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.time_dim % 2:
            raise ValueError(f"EmbeddingPriorConfig.time_dim must be even, got {self.time_dim}")

    @property
    def embed_scale(self) -> float:
        """The network's embeddings are unit-length image embeddings times this (sqrt(D))."""
        return math.sqrt(self.embed_dim)


TEXT_EMBEDDING_KEY = "text_embedding"


def add_text_embedding(cond: Conditioning, encoder: nn.Module) -> Conditioning:
    """``cond`` (MiniLM conditioning with ``pooled`` (B, text_dim)) with the image encoder's text embedding of
    the same captions in ``extra["text_embedding"]``: (B, D), unit length times sqrt(D)."""
    if cond.pooled is None:
        raise ValueError("prior: the text conditioning has no pooled vector to embed")
    with torch.no_grad():
        e = encoder.encode_text(cond.pooled)  # type: ignore[operator]
    return cond.with_extra(**{TEXT_EMBEDDING_KEY: e.float() * math.sqrt(e.shape[-1])})


PRESETS: dict[str, EmbeddingPriorConfig] = {
    "emoji-prior-s": EmbeddingPriorConfig(),  # about 2.9 M parameters
    "tiny": EmbeddingPriorConfig(embed_dim=8, text_dim=16, width=32, depth=2, time_dim=16),  # tests
}


class PriorBlock(nn.Module):
    """``h + gate * MLP(modulate(LayerNorm(h)))``, shift/scale/gate from the conditioning (adaLN-Zero)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.modulation = AdaLNModulation(width, width, 3, zero_init=True)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, h: Tensor, c: Tensor) -> Tensor:  # (B, W), (B, W) -> (B, W)
        shift, scale, g = self.modulation(c)
        return h + g * self.mlp(layer_norm(h) * (1 + scale) + shift)


class EmbeddingPrior(nn.Module):
    """``forward(x (B, D), t (B,), cond) -> (B, D)``: the velocity of the scaled image embedding ``x`` at
    network time ``t`` given ``cond.pooled`` (B, text_dim) (see the module docstring)."""

    def __init__(self, config: EmbeddingPriorConfig) -> None:
        super().__init__()
        self.config = config
        w = config.width
        self.in_proj = nn.Linear(config.embed_dim, w)
        self.time_mlp = nn.Sequential(nn.Linear(config.time_dim, w), nn.SiLU(), nn.Linear(w, w))
        self.text_mlp = nn.Sequential(nn.Linear(config.text_dim, w), nn.SiLU(), nn.Linear(w, w))
        self.embed_mlp = (
            nn.Sequential(nn.Linear(config.embed_dim, w), nn.SiLU(), nn.Linear(w, w))
            if config.text_embedding
            else None
        )
        self.blocks = nn.ModuleList(PriorBlock(w) for _ in range(config.depth))
        self.out_proj = nn.Linear(w, config.embed_dim)
        nn.init.zeros_(self.out_proj.weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: Tensor, t: Tensor, cond: Conditioning) -> Tensor:
        cfg = self.config
        if x.ndim != 2 or x.shape[-1] != cfg.embed_dim:
            raise ValueError(f"prior: x must be (B, {cfg.embed_dim}) image embeddings, got {tuple(x.shape)}")
        pooled = cond.pooled
        if pooled is None or tuple(pooled.shape) != (x.shape[0], cfg.text_dim):
            got = None if pooled is None else tuple(pooled.shape)
            raise ValueError(
                f"prior: needs the pooled text embedding cond.pooled ({x.shape[0]}, {cfg.text_dim}) (MiniLM's "
                f"sentence embedding), got {got}"
            )
        dtype = self.in_proj.weight.dtype
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        c = self.time_mlp(timestep_embedding(t, cfg.time_dim).to(dtype)) + self.text_mlp(pooled.to(dtype))
        if self.embed_mlp is not None:
            e = cond.extra.get(TEXT_EMBEDDING_KEY)
            if e is None or tuple(e.shape) != (x.shape[0], cfg.embed_dim):
                raise ValueError(
                    f"prior: this prior reads the image encoder's text embedding cond.extra[{TEXT_EMBEDDING_KEY!r}] "
                    f"({x.shape[0]}, {cfg.embed_dim}); got {None if e is None else tuple(e.shape)} "
                    "(models.emoji_prior.add_text_embedding makes it)"
                )
            c = c + self.embed_mlp(e.to(dtype))
        h = self.in_proj(x.to(dtype))  # (B, W)
        for block in self.blocks:
            h = block(h, c)
        return self.out_proj(layer_norm(h))  # (B, D)
