"""MM-DiT: the multimodal diffusion transformer of Stable Diffusion 3 / 3.5 (Esser et al. 2024, "Scaling
Rectified Flow Transformers for High-Resolution Image Synthesis").

Image patches and text tokens are two streams with their own weights (modulation, QKV, output projection,
MLP) that meet in one joint attention over the concatenated sequence ``[image; text]``. Every stream is
modulated (adaLN) by ``c = time_embed(t) + pooled_embed(cond.pooled)``. The last block only contributes the
text stream's keys and values ("context pre-only": no text output projection or MLP). SD3.5 adds RMS
qk-normalisation per head (``qk_norm="rms_norm"``) and, in SD3.5 Medium, a second image-only self-attention
in the first blocks (``dual_attention_layers``, "MMDiT-X").

Contract: ``forward(x (B, C, H, W), t (B,), cond) -> velocity (B, C, H, W)`` with ``t = 1000 * sigma`` in
[0, 1000] as diffusers passes it, ``cond.tokens`` (B, L, context_dim) (CLIP-L/G + T5 states) and
``cond.pooled`` (B, pooled_dim). ``cond.mask`` is ignored: SD3 was trained attending to padding tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from latentworks.diffusion.conditioning import Conditioning
from latentworks.nn.attention import StreamAttention, attention
from latentworks.nn.embeddings import TIME_EMBED_DIM, sincos_2d_embedding, timestep_embedding
from latentworks.nn.final import FinalLayer
from latentworks.nn.mlp import FeedForward, MLPEmbedder
from latentworks.nn.modulation import AdaLNModulation, gate, layer_norm, modulate
from latentworks.nn.patch import unpatchify


@dataclass(frozen=True, kw_only=True)
class MMDiTConfig:
    """Shape of an MM-DiT. Field names follow ours; diffusers' names are in the comments."""

    in_channels: int = 16
    out_channels: int | None = None  # None: same as in_channels
    sample_size: int = 128  # latent size the position grid is centred for (diffusers sample_size)
    patch_size: int = 2
    width: int = 1536  # num_attention_heads * attention_head_dim (= caption_projection_dim)
    depth: int = 24  # num_layers
    num_heads: int = 24
    mlp_ratio: float = 4.0
    context_dim: int = 4096  # joint_attention_dim: width of cond.tokens
    pooled_dim: int = 2048  # pooled_projection_dim: width of cond.pooled
    pos_embed_max_size: int = 192  # side of the stored position grid, in patches; cropped at the centre
    qk_norm: Literal["rms_norm"] | None = None
    dual_attention_layers: tuple[int, ...] = ()  # blocks with a second image self-attention (SD3.5 Medium)

    def __post_init__(self) -> None:
        for name in (
            "in_channels", "sample_size", "patch_size", "width", "depth", "num_heads",
            "context_dim", "pooled_dim", "pos_embed_max_size",
        ):  # fmt: skip
            if getattr(self, name) < 1:
                raise ValueError(f"MMDiTConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.out_channels is not None and self.out_channels < 1:
            raise ValueError(f"MMDiTConfig.out_channels must be >= 1 or None, got {self.out_channels}")
        if self.width % self.num_heads:
            raise ValueError(f"MMDiTConfig.width={self.width} is not divisible by num_heads={self.num_heads}")
        if self.width % 4:
            raise ValueError(f"MMDiTConfig.width={self.width} must be divisible by 4 (2D sincos positions)")
        if self.mlp_ratio <= 0:
            raise ValueError(f"MMDiTConfig.mlp_ratio must be > 0, got {self.mlp_ratio}")
        if self.qk_norm not in (None, "rms_norm"):
            raise ValueError(f"MMDiTConfig.qk_norm must be None or 'rms_norm', got {self.qk_norm!r}")
        if not isinstance(self.dual_attention_layers, tuple):
            raise ValueError(
                "MMDiTConfig.dual_attention_layers must be a tuple of block indices, e.g. (0, 1, 2)"
            )
        bad = [i for i in self.dual_attention_layers if not 0 <= i < self.depth]
        if bad:
            raise ValueError(
                f"MMDiTConfig.dual_attention_layers {bad} are outside 0..depth-1={self.depth - 1}"
            )
        if self.sample_size // self.patch_size > self.pos_embed_max_size:
            raise ValueError(
                f"MMDiTConfig.sample_size={self.sample_size} makes {self.sample_size // self.patch_size} patches "
                f"per side, more than pos_embed_max_size={self.pos_embed_max_size}"
            )

    @property
    def output_channels(self) -> int:
        return self.in_channels if self.out_channels is None else self.out_channels

    @property
    def head_dim(self) -> int:
        return self.width // self.num_heads


PRESETS: dict[str, MMDiTConfig] = {
    "sd3-medium": MMDiTConfig(depth=24, width=1536, num_heads=24, pos_embed_max_size=192),
    "sd3.5-large": MMDiTConfig(depth=38, width=2432, num_heads=38, pos_embed_max_size=192, qk_norm="rms_norm"),
    "sd3.5-medium": MMDiTConfig(
        depth=24, width=1536, num_heads=24, pos_embed_max_size=384, qk_norm="rms_norm",
        dual_attention_layers=tuple(range(13)),
    ),
    # 64x64 emoji at an f4 VAE (16x16x4 latent) with MiniLM-L6 tokens and mean-pooled vector (384 each).
    "emoji-mmdit-s": MMDiTConfig(
        in_channels=4, sample_size=16, patch_size=2, width=384, depth=12, num_heads=6,
        context_dim=384, pooled_dim=384, pos_embed_max_size=16, qk_norm="rms_norm",
    ),
    "tiny": MMDiTConfig(
        in_channels=4, sample_size=8, patch_size=2, width=32, depth=2, num_heads=2,
        context_dim=24, pooled_dim=16, pos_embed_max_size=8,
    ),
}  # fmt: skip


class JointBlock(nn.Module):
    def __init__(self, config: MMDiTConfig, *, context_pre_only: bool, dual_attention: bool) -> None:
        super().__init__()
        d, heads, qk = config.width, config.num_heads, config.qk_norm
        hidden = int(d * config.mlp_ratio)
        self.context_pre_only = context_pre_only
        # image stream: shift/scale/gate for attention and MLP (+ a second attention in MMDiT-X blocks)
        self.x_mod = AdaLNModulation(d, d, 9 if dual_attention else 6, zero_init=True)
        self.x_attn = StreamAttention(d, heads, qk)
        self.x_attn2 = StreamAttention(d, heads, qk) if dual_attention else None
        self.x_mlp = FeedForward(d, hidden)
        # text stream: the last block only supplies keys/values (shift and scale, no outputs)
        self.context_mod = AdaLNModulation(d, d, 2 if context_pre_only else 6, zero_init=True)
        self.context_attn = StreamAttention(d, heads, qk, with_proj=not context_pre_only)
        self.context_mlp = None if context_pre_only else FeedForward(d, hidden)

    def forward(self, x: Tensor, context: Tensor, c: Tensor) -> tuple[Tensor, Tensor | None]:
        # x: (B, N, D) image tokens, context: (B, L, D) text tokens, c: (B, D)
        x_chunks = self.x_mod(c)
        x_shift, x_scale, x_gate, x_shift_m, x_scale_m, x_gate_m = x_chunks[:6]
        x_norm = layer_norm(x)
        qx, kx, vx = self.x_attn.qkv_heads(modulate(x_norm, x_shift, x_scale))

        c_chunks = self.context_mod(c)
        qc, kc, vc = self.context_attn.qkv_heads(modulate(layer_norm(context), c_chunks[0], c_chunks[1]))

        n = x.shape[1]
        joint = attention(
            torch.cat([qx, qc], 2), torch.cat([kx, kc], 2), torch.cat([vx, vc], 2)
        )  # (B, N+L, D)
        x_out, context_out = joint[:, :n], joint[:, n:]

        assert self.x_attn.proj is not None
        x = x + gate(self.x_attn.proj(x_out), x_gate)
        if self.x_attn2 is not None:
            x_shift2, x_scale2, x_gate2 = x_chunks[6:]
            x = x + gate(self.x_attn2.self_attention(modulate(x_norm, x_shift2, x_scale2)), x_gate2)
        x = x + gate(self.x_mlp(modulate(layer_norm(x), x_shift_m, x_scale_m)), x_gate_m)

        if self.context_pre_only:
            return x, None
        _, _, c_gate, c_shift_m, c_scale_m, c_gate_m = c_chunks
        assert self.context_attn.proj is not None and self.context_mlp is not None
        context = context + gate(self.context_attn.proj(context_out), c_gate)
        context = context + gate(
            self.context_mlp(modulate(layer_norm(context), c_shift_m, c_scale_m)), c_gate_m
        )
        return x, context


class MMDiT(nn.Module):
    """SD3-style MM-DiT; see the module docstring."""

    pos_embed: Tensor  # (1, M*M, D) buffer

    def __init__(self, config: MMDiTConfig) -> None:
        super().__init__()
        self.config = config
        d, p = config.width, config.patch_size
        self.patch_embed = nn.Conv2d(config.in_channels, d, kernel_size=p, stride=p)
        m = config.pos_embed_max_size
        table = sincos_2d_embedding(d, m, m, base_size=config.sample_size // p)  # (M*M, D)
        # Stored with the weights (SD3 checkpoints carry it), cropped at the centre for each input size.
        self.register_buffer("pos_embed", table[None], persistent=True)  # (1, M*M, D)
        self.time_embed = MLPEmbedder(TIME_EMBED_DIM, d)
        self.pooled_embed = MLPEmbedder(config.pooled_dim, d)
        self.context_embed = nn.Linear(config.context_dim, d)
        self.blocks = nn.ModuleList(
            [
                JointBlock(
                    config,
                    context_pre_only=i == config.depth - 1,
                    dual_attention=i in config.dual_attention_layers,
                )
                for i in range(config.depth)
            ]
        )
        self.final_layer = FinalLayer(d, p * p * config.output_channels)

    def cropped_pos_embed(self, h: int, w: int) -> Tensor:
        """Centre crop of the stored (M x M) position grid for an h x w patch grid -> (1, h*w, D)."""
        m = self.config.pos_embed_max_size
        if h > m or w > m:
            raise ValueError(
                f"latent of {h}x{w} patches exceeds this MM-DiT's position grid of {m}x{m} patches "
                f"(pos_embed_max_size); use a latent of at most {m * self.config.patch_size} per side"
            )
        top, left = (m - h) // 2, (m - w) // 2
        grid = self.pos_embed.reshape(1, m, m, -1)[:, top : top + h, left : left + w]
        return grid.reshape(1, h * w, -1)

    def forward(self, x: Tensor, t: Tensor, cond: Conditioning) -> Tensor:
        cfg = self.config
        b, _, height, width = x.shape
        p = cfg.patch_size
        if x.shape[1] != cfg.in_channels or height % p or width % p:
            raise ValueError(
                f"MM-DiT expects (B, {cfg.in_channels}, H, W) with H and W multiples of {p}, got {tuple(x.shape)}"
            )
        if cond.pooled is None:
            raise ValueError(f"MM-DiT needs cond.pooled (B, {cfg.pooled_dim}): the pooled CLIP text vectors")
        if cond.tokens.shape[-1] != cfg.context_dim or cond.pooled.shape[-1] != cfg.pooled_dim:
            raise ValueError(
                f"MM-DiT expects cond.tokens (B, L, {cfg.context_dim}) and cond.pooled (B, {cfg.pooled_dim}), got "
                f"{tuple(cond.tokens.shape)} and {tuple(cond.pooled.shape)}"
            )
        t = t.expand(b) if t.ndim == 0 else t
        dtype = self.patch_embed.weight.dtype
        h, w = height // p, width // p
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, N, D)
        tokens = tokens + self.cropped_pos_embed(h, w).to(tokens.dtype)
        c = self.time_embed(timestep_embedding(t, TIME_EMBED_DIM).to(dtype))
        c = c + self.pooled_embed(cond.pooled.to(dtype))  # (B, D)
        context: Tensor | None = self.context_embed(cond.tokens.to(dtype))  # (B, L, D)

        for block in self.blocks:
            assert context is not None
            tokens, context = block(tokens, context, c)
        out = self.final_layer(tokens, c)  # (B, N, p*p*C_out)
        return unpatchify(out, h, w, p, cfg.output_channels)
