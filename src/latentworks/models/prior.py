"""unCLIP's prior and text projection (Ramesh et al. 2022, "Hierarchical Text-Conditional Image Generation with
CLIP Latents", sections 2.1-2.2), in the shape Karlo released them.

- :class:`PriorTransformer`: a causal decoder-only transformer that denoises a CLIP *image* embedding given the
  prompt's CLIP text embedding and token states. Its sequence is (section 2.2)
  ``[text tokens (77), text embedding, timestep embedding, noisy image embedding, learned "prd" query]``; the
  output at the last position is the predicted clean image embedding (x0 prediction), in the normalised space
  of ``clip_mean`` / ``clip_std`` (:meth:`PriorTransformer.denormalize` maps it back to CLIP's).
- :class:`UnCLIPTextProj`: turns the image embedding (and the text embedding) into what the decoder reads: four
  extra context tokens prepended to the projected text tokens, and a vector added to the decoder's timestep
  embedding (section 2.1). For classifier-free guidance the image embedding of the unconditional branch is a
  learned vector (``uncond_image_embedding``).

Parameter layout (ours; :mod:`latentworks.checkpoints.keymaps.karlo` converts diffusers' ``PriorTransformer``
and ``UnCLIPTextProjModel``)::

    prior: time_embed.{in_layer, out_layer}, proj_in, text_embed_proj, text_tokens_proj, pos_embed, query_token,
           blocks.{i}.{norm1, attn.{q, k, v, out}, norm2, ff.{fc1, fc2}}, norm_out, proj_out, clip_mean, clip_std
    text projection: uncond_image_embedding, text_to_time, image_to_time, image_to_tokens, text_tokens_proj,
           text_tokens_norm
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentworks.nn.attention import attention, split_heads
from latentworks.nn.embeddings import timestep_embedding
from latentworks.nn.mlp import MLPEmbedder


@dataclass(frozen=True, kw_only=True)
class PriorConfig:
    """Architecture of the unCLIP prior.

    Attributes:
        num_heads / head_dim: attention heads and their width (width = num_heads * head_dim).
        num_layers: transformer blocks.
        embedding_dim: CLIP's embedding width (image embedding, text embedding and text token states alike:
            768 for ViT-L/14).
        num_text_tokens: the text encoder's sequence length (77); the sequence adds 4 more positions.
    """

    num_heads: int = 32
    head_dim: int = 64
    num_layers: int = 20
    embedding_dim: int = 768
    num_text_tokens: int = 77

    def __post_init__(self) -> None:
        for name in ("num_heads", "head_dim", "num_layers", "embedding_dim", "num_text_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"PriorConfig.{name} must be a positive int, got {value!r}")

    @property
    def width(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def sequence_length(self) -> int:
        """Text tokens + text embedding + time + noisy image embedding + query."""
        return self.num_text_tokens + 4


@dataclass(frozen=True, kw_only=True)
class TextProjConfig:
    """Architecture of the unCLIP text projection.

    Attributes:
        embedding_dim: CLIP's embedding width (768 for ViT-L/14).
        extra_tokens: context tokens made from the image embedding (4 in the paper).
        time_embed_dim: the decoder's timestep-embedding width (4 x its first level's width).
        context_dim: the decoder's text-token width (its attention layers' ``context_dim``).
    """

    embedding_dim: int = 768
    extra_tokens: int = 4
    time_embed_dim: int = 1280
    context_dim: int = 768

    def __post_init__(self) -> None:
        for name in ("embedding_dim", "extra_tokens", "time_embed_dim", "context_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"TextProjConfig.{name} must be a positive int, got {value!r}")


# "karlo-prior": diffusers' PriorTransformer defaults, which are Karlo's prior (ViT-L/14 embeddings, 77 tokens).
# A release's widths come from its folder's config.json (checkpoints/keymaps/karlo.py).
PRESETS: dict[str, PriorConfig | TextProjConfig] = {
    "karlo-prior": PriorConfig(),
    "tiny-prior": PriorConfig(num_heads=2, head_dim=16, num_layers=2, embedding_dim=32),
    "tiny-text-proj": TextProjConfig(embedding_dim=32, time_embed_dim=128, context_dim=48),
}


class _SelfAttention(nn.Module):
    def __init__(self, width: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q, self.k, self.v = nn.Linear(width, width), nn.Linear(width, width), nn.Linear(width, width)
        self.out = nn.Linear(width, width)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:  # (B, L, W) -> (B, L, W)
        q, k, v = (split_heads(proj(x), self.num_heads) for proj in (self.q, self.k, self.v))
        return self.out(attention(q, k, v, mask))


class _FeedForward(nn.Module):
    """``fc1 -> GELU (exact) -> fc2``, 4x wide."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class _Block(nn.Module):
    """Pre-norm transformer block: causal self-attention, then a GELU feed-forward (4x)."""

    def __init__(self, width: int, num_heads: int) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(width), _SelfAttention(width, num_heads)
        self.norm2, self.ff = nn.LayerNorm(width), _FeedForward(width)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        # x: (B, L, W); mask: (B, 1, L, L) bool, True = may attend
        x = x + self.attn(self.norm1(x), mask)
        return x + self.ff(self.norm2(x))


class PriorTransformer(nn.Module):
    """The unCLIP prior: ``forward(x, t, text_embed, text_tokens, text_mask) -> predicted image embedding``."""

    def __init__(self, config: PriorConfig) -> None:
        super().__init__()
        self.config = cfg = config
        w, e = cfg.width, cfg.embedding_dim
        self.time_embed = MLPEmbedder(w, w)
        self.proj_in = nn.Linear(e, w)  # the noisy image embedding
        self.text_embed_proj = nn.Linear(e, w)  # the pooled, projected text embedding
        self.text_tokens_proj = nn.Linear(e, w)  # the text encoder's last hidden states
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.sequence_length, w))
        self.query_token = nn.Parameter(torch.zeros(1, 1, w))
        self.blocks = nn.ModuleList(_Block(w, cfg.num_heads) for _ in range(cfg.num_layers))
        self.norm_out = nn.LayerNorm(w)
        self.proj_out = nn.Linear(w, e)
        # statistics of CLIP image embeddings: the prior works on (embedding - mean) / std
        self.clip_mean = nn.Parameter(torch.zeros(1, e))
        self.clip_std = nn.Parameter(torch.ones(1, e))

    def forward(
        self, x: Tensor, t: Tensor, text_embed: Tensor, text_tokens: Tensor, text_mask: Tensor | None = None
    ) -> Tensor:
        """x: (B, E) noisy normalised image embedding; t: (B,) DDPM timesteps; text_embed: (B, E) CLIP text
        embedding; text_tokens: (B, 77, E) last hidden states; text_mask: (B, 77) bool (True = a real token).
        Returns the predicted clean normalised image embedding (B, E)."""
        cfg = self.config
        b = x.shape[0]
        t = t.reshape(-1).expand(b) if t.numel() == 1 else t
        temb = timestep_embedding(t, cfg.width).to(x.dtype)  # (B, W), cos first
        temb = self.time_embed(temb)
        seq = torch.cat(
            [
                self.text_tokens_proj(text_tokens),  # (B, 77, W)
                self.text_embed_proj(text_embed)[:, None],
                temb[:, None],
                self.proj_in(x)[:, None],
                self.query_token.to(x.dtype).expand(b, -1, -1),
            ],
            dim=1,
        )  # (B, L, W)
        if seq.shape[1] != cfg.sequence_length:
            raise ValueError(
                f"the prior expects {cfg.num_text_tokens} text tokens, got {text_tokens.shape[1]}; pad the prompt "
                f"to the text encoder's full length"
            )
        seq = seq + self.pos_embed.to(seq.dtype)
        n = cfg.sequence_length
        causal = torch.ones(n, n, dtype=torch.bool, device=x.device).tril()  # (L, L)
        keys = torch.ones(b, n, dtype=torch.bool, device=x.device)
        if text_mask is not None:
            keys[:, : cfg.num_text_tokens] = text_mask.to(device=x.device, dtype=torch.bool)
        mask = causal[None, None] & keys[:, None, None, :]  # (B, 1, L, L)
        for block in self.blocks:
            seq = block(seq, mask)
        return self.proj_out(self.norm_out(seq)[:, -1])  # (B, E)

    def denormalize(self, x: Tensor) -> Tensor:
        """Normalised prior output (B, E) -> a CLIP image embedding: ``x * clip_std + clip_mean``."""
        return x * self.clip_std.to(x) + self.clip_mean.to(x)


class UnCLIPTextProj(nn.Module):
    """Image and text embeddings -> the decoder's context tokens and the vector added to its time embedding."""

    def __init__(self, config: TextProjConfig) -> None:
        super().__init__()
        self.config = cfg = config
        e = cfg.embedding_dim
        self.uncond_image_embedding = nn.Parameter(torch.zeros(e))
        self.text_to_time = nn.Linear(e, cfg.time_embed_dim)
        self.image_to_time = nn.Linear(e, cfg.time_embed_dim)
        self.image_to_tokens = nn.Linear(e, cfg.extra_tokens * cfg.context_dim)
        self.text_tokens_proj = nn.Linear(e, cfg.context_dim)
        self.text_tokens_norm = nn.LayerNorm(cfg.context_dim)

    def forward(self, image_embed: Tensor, text_embed: Tensor, text_tokens: Tensor) -> tuple[Tensor, Tensor]:
        """image_embed / text_embed: (B, E); text_tokens: (B, S, E) ->
        (context (B, extra_tokens + S, context_dim), class input (B, time_embed_dim))."""
        cfg = self.config
        class_input = self.image_to_time(image_embed) + self.text_to_time(text_embed)
        # (B, context_dim * extra) laid out with the token index fastest (the release's reshape)
        extra = (
            self.image_to_tokens(image_embed).reshape(-1, cfg.context_dim, cfg.extra_tokens).transpose(1, 2)
        )
        tokens = self.text_tokens_norm(self.text_tokens_proj(text_tokens))
        return torch.cat([extra, tokens], dim=1), class_input

    def uncond_image(self, batch: int) -> Tensor:
        """The learned image embedding of the unconditional branch, (batch, E)."""
        return self.uncond_image_embedding[None].expand(batch, -1)
