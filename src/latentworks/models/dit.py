"""DiT: a single-stream diffusion transformer on latent patches (Peebles & Xie 2023, "Scalable Diffusion
Models with Transformers"), with text conditioning.

Each block is ``x += gate * SelfAttn(modulate(LN(x)))``, optionally ``x += CrossAttn(LN(x), text tokens)``,
then ``x += gate * MLP(modulate(LN(x)))``. The modulation (shift, scale, gate) comes from the conditioning
vector ``c = time_embed(t) [+ pooled_embed(cond.pooled)]`` through a zero-initialised linear layer
("adaLN-Zero"), and the cross-attention output projection starts at zero too, so every block is the identity
at initialisation and the whole network starts by predicting 0.

Contract: ``forward(x (B, C, H, W), t (B,), cond) -> (B, C_out, H, W)``; ``t`` is in the units the network was
trained with (0..999 for a DDPM schedule, 0..1000 for a flow schedule); the output is the raw prediction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from latentworks.diffusion.conditioning import Conditioning
from latentworks.nn.attention import attention, split_heads
from latentworks.nn.embeddings import TIME_EMBED_DIM, sincos_2d_embedding, timestep_embedding
from latentworks.nn.final import FinalLayer
from latentworks.nn.mlp import FeedForward, MLPEmbedder
from latentworks.nn.modulation import AdaLNModulation, gate, layer_norm, modulate
from latentworks.nn.patch import unpatchify


@dataclass(frozen=True, kw_only=True)
class DiTConfig:
    """Shape of a DiT. ``sample_size`` is the latent height/width the position table is built for."""

    in_channels: int = 4
    out_channels: int | None = None  # None: same as in_channels
    sample_size: int = 16
    patch_size: int = 2
    width: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0
    context_dim: int | None = 384  # per-token text width for cross-attention; None = no cross-attention
    pooled_dim: int | None = None  # pooled text width added to the time embedding; None = unused
    pos_embed: Literal["sincos", "learned"] = "sincos"

    def __post_init__(self) -> None:
        for name in ("in_channels", "sample_size", "patch_size", "width", "depth", "num_heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"DiTConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.out_channels is not None and self.out_channels < 1:
            raise ValueError(f"DiTConfig.out_channels must be >= 1 or None, got {self.out_channels}")
        if self.width % self.num_heads:
            raise ValueError(
                f"DiTConfig.width={self.width} is not divisible by num_heads={self.num_heads}; "
                "pick a width that is a multiple of the head count"
            )
        if self.width % 4:
            raise ValueError(
                f"DiTConfig.width={self.width} must be divisible by 4 (2D sincos position table)"
            )
        if self.sample_size % self.patch_size:
            raise ValueError(
                f"DiTConfig.sample_size={self.sample_size} is not divisible by patch_size={self.patch_size}"
            )
        if self.mlp_ratio <= 0:
            raise ValueError(f"DiTConfig.mlp_ratio must be > 0, got {self.mlp_ratio}")
        for name in ("context_dim", "pooled_dim"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"DiTConfig.{name} must be >= 1 or None, got {v}")
        if self.pos_embed not in ("sincos", "learned"):
            raise ValueError(f"DiTConfig.pos_embed must be 'sincos' or 'learned', got {self.pos_embed!r}")

    @property
    def output_channels(self) -> int:
        return self.in_channels if self.out_channels is None else self.out_channels

    @property
    def head_dim(self) -> int:
        return self.width // self.num_heads


PRESETS: dict[str, DiTConfig] = {
    # 64x64 emoji at an f4 VAE (16x16x4 latent), MiniLM-L6 text (384-dim tokens, mean-pooled 384).
    "emoji-dit-s": DiTConfig(
        in_channels=4, sample_size=16, patch_size=2, width=384, depth=12, num_heads=6,
        context_dim=384, pooled_dim=384,
    ),
    # the same model on an f8 VAE (8x8x4 latent): patch 1 keeps 64 tokens.
    "emoji-dit-s-f8": DiTConfig(
        in_channels=4, sample_size=8, patch_size=1, width=384, depth=12, num_heads=6,
        context_dim=384, pooled_dim=384,
    ),
    # Matched in size (~10M params) to the U-Net `emoji32-xs-c8`, for the default model's architecture
    # comparison: 8x8x8 latents of the `emoji32-f4c8` autoencoder, patch 1 (64 tokens).
    "emoji32-dit-xs-c8": DiTConfig(
        in_channels=8, sample_size=8, patch_size=1, width=256, depth=7, num_heads=4,
        context_dim=384, pooled_dim=384,
    ),
    "tiny": DiTConfig(
        in_channels=4, sample_size=8, patch_size=2, width=32, depth=2, num_heads=2, context_dim=16, pooled_dim=8,
    ),
}  # fmt: skip


class SelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = (split_heads(t, self.num_heads) for t in self.qkv(x).chunk(3, dim=-1))  # (B, H, N, hd)
        return self.proj(attention(q, k, v))  # (B, N, D)


class CrossAttention(nn.Module):
    """Image tokens attend to text tokens; keys/values come straight from the text width."""

    def __init__(self, dim: int, context_dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(context_dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, context: Tensor, mask: Tensor | None) -> Tensor:
        q = split_heads(self.q(x), self.num_heads)  # (B, H, N, hd)
        k, v = (split_heads(t, self.num_heads) for t in self.kv(context).chunk(2, dim=-1))  # (B, H, L, hd)
        empty = None
        if mask is not None:
            mask = mask.bool()
            empty = ~mask.any(dim=1)  # (B,) samples with no real token attend to nothing
            if bool(empty.any()):
                mask = mask | empty[:, None]
        out = self.proj(attention(q, k, v, mask))  # (B, N, D)
        if empty is not None:
            out = out * (~empty).to(out.dtype)[:, None, None]
        return out


class DiTBlock(nn.Module):
    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        d = config.width
        self.modulation = AdaLNModulation(d, d, 6, zero_init=True)
        self.attn = SelfAttention(d, config.num_heads)
        self.cross_attn: CrossAttention | None = None
        self.norm_cross: nn.LayerNorm | None = None
        if config.context_dim is not None:
            self.norm_cross = nn.LayerNorm(d, eps=1e-6)
            self.cross_attn = CrossAttention(d, config.context_dim, config.num_heads)
        self.mlp = FeedForward(d, int(d * config.mlp_ratio))

    def forward(self, x: Tensor, c: Tensor, context: Tensor | None, mask: Tensor | None) -> Tensor:
        # x: (B, N, D), c: (B, D), context: (B, L, context_dim)
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.modulation(c)
        x = x + gate(self.attn(modulate(layer_norm(x), shift_a, scale_a)), gate_a)
        if self.cross_attn is not None and self.norm_cross is not None and context is not None:
            x = x + self.cross_attn(self.norm_cross(x), context, mask)
        return x + gate(self.mlp(modulate(layer_norm(x), shift_m, scale_m)), gate_m)


class DiT(nn.Module):
    """Single-stream DiT; see the module docstring."""

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        self.config = config
        d, p = config.width, config.patch_size
        self.patch_embed = nn.Conv2d(config.in_channels, d, kernel_size=p, stride=p)
        grid = config.sample_size // p
        table = sincos_2d_embedding(d, grid, grid)[None]  # (1, grid*grid, D)
        if config.pos_embed == "learned":
            self.pos_embed = nn.Parameter(table)
        else:
            self.register_buffer("pos_embed", table, persistent=False)
        self.time_embed = MLPEmbedder(TIME_EMBED_DIM, d)
        self.pooled_embed = MLPEmbedder(config.pooled_dim, d) if config.pooled_dim is not None else None
        self.blocks = nn.ModuleList([DiTBlock(config) for _ in range(config.depth)])
        self.final_layer = FinalLayer(d, p * p * config.output_channels)
        self._init_weights()

    def _init_weights(self) -> None:
        # DiT recipe: xavier-uniform linears, normal(0.02) embedding MLPs, then the zero inits (adaLN-Zero,
        # final layer, cross-attention output) that make every block the identity at the start.
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.patch_embed.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.bias)  # type: ignore[arg-type]
        for emb in (self.time_embed, self.pooled_embed):
            if emb is not None:
                nn.init.normal_(emb.in_layer.weight, std=0.02)
                nn.init.normal_(emb.out_layer.weight, std=0.02)
        for block in self.blocks:
            assert isinstance(block, DiTBlock)
            nn.init.zeros_(block.modulation.linear.weight)
            nn.init.zeros_(block.modulation.linear.bias)
            if block.cross_attn is not None:
                nn.init.zeros_(block.cross_attn.proj.weight)
                nn.init.zeros_(block.cross_attn.proj.bias)
        for lin in (self.final_layer.modulation.linear, self.final_layer.linear):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def _position_embedding(self, h: int, w: int, device: torch.device) -> Tensor:
        grid = self.config.sample_size // self.config.patch_size
        if (h, w) == (grid, grid):
            return self.pos_embed
        if self.config.pos_embed == "learned":
            raise ValueError(
                f"this DiT learned positions for a {grid}x{grid} patch grid but got {h}x{w}; feed latents of "
                f"{self.config.sample_size}x{self.config.sample_size} or use pos_embed='sincos'"
            )
        return sincos_2d_embedding(self.config.width, h, w)[None].to(device)

    def conditioning_vector(self, t: Tensor, cond: Conditioning | None) -> Tensor:
        """c = time_embed(t) [+ pooled_embed(cond.pooled)], (B, D)."""
        c = self.time_embed(timestep_embedding(t, TIME_EMBED_DIM).to(self.patch_embed.weight.dtype))
        if self.pooled_embed is not None:
            if cond is None or cond.pooled is None:
                raise ValueError(
                    f"this DiT adds a pooled text vector (pooled_dim={self.config.pooled_dim}) to the time "
                    "embedding; pass Conditioning(pooled=...)"
                )
            c = c + self.pooled_embed(cond.pooled.to(c.dtype))
        return c

    def forward(self, x: Tensor, t: Tensor, cond: Conditioning | None = None) -> Tensor:
        cfg = self.config
        b, _, height, width = x.shape
        p = cfg.patch_size
        if x.shape[1] != cfg.in_channels or height % p or width % p:
            raise ValueError(
                f"DiT expects (B, {cfg.in_channels}, H, W) with H and W multiples of {p}, got {tuple(x.shape)}"
            )
        t = t.expand(b) if t.ndim == 0 else t
        h, w = height // p, width // p
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, N, D)
        tokens = tokens + self._position_embedding(h, w, x.device).to(tokens.dtype)
        c = self.conditioning_vector(t, cond)  # (B, D)

        context, mask = None, None
        if cfg.context_dim is not None:
            if cond is None:
                raise ValueError(
                    "this DiT cross-attends to text tokens; pass a Conditioning with tokens (B, L, D)"
                )
            if cond.tokens.shape[-1] != cfg.context_dim:
                raise ValueError(
                    f"cond.tokens width {cond.tokens.shape[-1]} != DiTConfig.context_dim={cfg.context_dim}"
                )
            context, mask = cond.tokens.to(tokens.dtype), cond.mask

        for block in self.blocks:
            tokens = block(tokens, c, context, mask)
        out = self.final_layer(tokens, c)  # (B, N, p*p*C_out)
        return unpatchify(out, h, w, p, cfg.output_channels)
