"""FLUX.1 (Black Forest Labs 2024): a rectified-flow transformer with double-stream blocks (separate image and
text weights, joint attention, as in SD3's MM-DiT) followed by single-stream blocks (one sequence
``[text; image]``, attention and MLP computed in parallel from one fused input projection).

Positions are rotary (RoPE) over three axes ``(index, row, column)``: text tokens sit at 0, image tokens at
their packed-grid coordinates, ``axes_dim = (16, 56, 56)`` channels per axis of each 128-channel head.
Latents are packed 2x2 into 64-channel tokens before the input projection (:func:`latentworks.nn.patch.pack_latents`).
The conditioning vector is ``time_in(t) [+ guidance_in(guidance)] + vector_in(pooled CLIP)``.

Contract: ``forward(x (B, 16, H, W), t (B,), cond) -> velocity (B, 16, H, W)`` with ``t = 1000 * sigma``
(diffusers passes ``sigma`` and multiplies by 1000 inside), ``cond.tokens`` (B, L, 4096) T5 states,
``cond.pooled`` (B, 768) CLIP-L pooled, and for guidance-distilled models (FLUX.1-dev)
``cond.extra["guidance"]`` (B,) = the distilled guidance scale (e.g. 3.5; scaled by 1000 here like ``t``).
``cond.mask`` is ignored: FLUX attends to T5 padding tokens as it was trained.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentworks.diffusion.conditioning import CONCAT_KEY, Conditioning
from latentworks.diffusion.control import ControlResiduals
from latentworks.nn.attention import StreamAttention, attention, split_heads
from latentworks.nn.embeddings import TIME_EMBED_DIM, timestep_embedding
from latentworks.nn.final import FinalLayer
from latentworks.nn.mlp import FeedForward, MLPEmbedder
from latentworks.nn.modulation import AdaLNModulation, gate, layer_norm, modulate
from latentworks.nn.patch import pack_latents, unpack_latents
from latentworks.nn.rope import apply_rope, rope_frequencies

GUIDANCE_SCALE_FACTOR = 1000.0  # guidance is embedded like a timestep: 1000 * scale


def image_position_ids(h: int, w: int, device: torch.device | None = None) -> Tensor:
    """(h * w, 3) ids ``[0, row, col]`` of a packed h x w token grid, raster order."""
    rows, cols = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    return torch.stack([torch.zeros_like(rows), rows, cols], dim=-1).reshape(h * w, 3)


@dataclass(frozen=True, kw_only=True)
class FluxConfig:
    """Shape of a FLUX.1 transformer (diffusers names in comments)."""

    in_channels: int = 16  # latent channels before 2x2 packing (diffusers in_channels = 4 * this)
    out_channels: int | None = None  # None: same as in_channels
    patch_size: int = 2  # packing size
    width: int = 3072  # num_attention_heads * attention_head_dim
    num_heads: int = 24
    double_depth: int = 19  # num_layers
    single_depth: int = 38  # num_single_layers
    mlp_ratio: float = 4.0
    context_dim: int = 4096  # joint_attention_dim: T5 width
    pooled_dim: int = 768  # pooled_projection_dim: CLIP-L pooled width
    axes_dim: tuple[int, ...] = (16, 56, 56)  # axes_dims_rope: RoPE channels per position axis
    theta: float = 10000.0
    guidance_embed: bool = True  # guidance_embeds: FLUX.1-dev yes, FLUX.1-schnell no

    def __post_init__(self) -> None:
        for name in ("in_channels", "patch_size", "width", "num_heads", "context_dim", "pooled_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"FluxConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.double_depth < 0 or self.single_depth < 0 or self.double_depth + self.single_depth == 0:
            raise ValueError(
                f"FluxConfig needs at least one block, got double_depth={self.double_depth}, "
                f"single_depth={self.single_depth}"
            )
        if self.out_channels is not None and self.out_channels < 1:
            raise ValueError(f"FluxConfig.out_channels must be >= 1 or None, got {self.out_channels}")
        if self.width % self.num_heads:
            raise ValueError(f"FluxConfig.width={self.width} is not divisible by num_heads={self.num_heads}")
        if not isinstance(self.axes_dim, tuple) or any(d <= 0 or d % 2 for d in self.axes_dim):
            raise ValueError(
                f"FluxConfig.axes_dim must be a tuple of positive even ints, got {self.axes_dim!r}"
            )
        if sum(self.axes_dim) != self.head_dim:
            raise ValueError(
                f"FluxConfig.axes_dim {self.axes_dim} sums to {sum(self.axes_dim)} but the head dimension is "
                f"width / num_heads = {self.head_dim}; the RoPE axes must cover each head exactly"
            )
        if len(self.axes_dim) != 3:
            raise ValueError(
                f"FluxConfig.axes_dim must have 3 entries (index, row, col), got {self.axes_dim}"
            )
        if self.mlp_ratio <= 0:
            raise ValueError(f"FluxConfig.mlp_ratio must be > 0, got {self.mlp_ratio}")

    @property
    def output_channels(self) -> int:
        return self.in_channels if self.out_channels is None else self.out_channels

    @property
    def head_dim(self) -> int:
        return self.width // self.num_heads

    @property
    def mlp_hidden_dim(self) -> int:
        return int(self.width * self.mlp_ratio)


PRESETS: dict[str, FluxConfig] = {
    "flux-dev": FluxConfig(guidance_embed=True),
    "flux-schnell": FluxConfig(guidance_embed=False),
    "tiny": FluxConfig(
        in_channels=4, width=64, num_heads=2, double_depth=1, single_depth=1,
        context_dim=24, pooled_dim=16, axes_dim=(8, 12, 12), guidance_embed=True,
    ),
}  # fmt: skip


class DoubleStreamBlock(nn.Module):
    """Image and text streams with their own weights, one joint attention over ``[text; image]``."""

    def __init__(self, config: FluxConfig) -> None:
        super().__init__()
        d, heads = config.width, config.num_heads
        self.img_mod = AdaLNModulation(d, d, 6, zero_init=True)
        self.img_attn = StreamAttention(d, heads, "rms_norm")
        self.img_mlp = FeedForward(d, config.mlp_hidden_dim)
        self.txt_mod = AdaLNModulation(d, d, 6, zero_init=True)
        self.txt_attn = StreamAttention(d, heads, "rms_norm")
        self.txt_mlp = FeedForward(d, config.mlp_hidden_dim)

    def forward(self, img: Tensor, txt: Tensor, vec: Tensor, freqs: Tensor) -> tuple[Tensor, Tensor]:
        # img: (B, N, D), txt: (B, L, D), vec: (B, D), freqs: (L+N, hd/2, 2)
        i_shift, i_scale, i_gate, i_shift_m, i_scale_m, i_gate_m = self.img_mod(vec)
        t_shift, t_scale, t_gate, t_shift_m, t_scale_m, t_gate_m = self.txt_mod(vec)
        qi, ki, vi = self.img_attn.qkv_heads(modulate(layer_norm(img), i_shift, i_scale))
        qt, kt, vt = self.txt_attn.qkv_heads(modulate(layer_norm(txt), t_shift, t_scale))
        q, k = apply_rope(torch.cat([qt, qi], 2), torch.cat([kt, ki], 2), freqs)
        joint = attention(q, k, torch.cat([vt, vi], 2))  # (B, L+N, D)
        n_txt = txt.shape[1]
        txt_out, img_out = joint[:, :n_txt], joint[:, n_txt:]
        assert self.img_attn.proj is not None and self.txt_attn.proj is not None
        img = img + gate(self.img_attn.proj(img_out), i_gate)
        img = img + gate(self.img_mlp(modulate(layer_norm(img), i_shift_m, i_scale_m)), i_gate_m)
        txt = txt + gate(self.txt_attn.proj(txt_out), t_gate)
        txt = txt + gate(self.txt_mlp(modulate(layer_norm(txt), t_shift_m, t_scale_m)), t_gate_m)
        return img, txt


class SingleStreamBlock(nn.Module):
    """One sequence; ``linear1`` gives q, k, v and the MLP input at once, ``linear2`` merges attention output
    and MLP activation (the parallel layout of Dehghani et al. 2023)."""

    def __init__(self, config: FluxConfig) -> None:
        super().__init__()
        d = config.width
        self.num_heads = config.num_heads
        self.mlp_hidden_dim = config.mlp_hidden_dim
        self.modulation = AdaLNModulation(d, d, 3, zero_init=True)
        self.linear1 = nn.Linear(d, 3 * d + self.mlp_hidden_dim)
        self.q_norm = nn.RMSNorm(config.head_dim, eps=1e-6)
        self.k_norm = nn.RMSNorm(config.head_dim, eps=1e-6)
        self.linear2 = nn.Linear(d + self.mlp_hidden_dim, d)

    def forward(self, x: Tensor, vec: Tensor, freqs: Tensor) -> Tensor:
        # x: (B, S, D) = [text; image]
        shift, scale, g = self.modulation(vec)
        d = x.shape[-1]
        qkv, mlp_in = self.linear1(modulate(layer_norm(x), shift, scale)).split(
            [3 * d, self.mlp_hidden_dim], -1
        )
        q, k, v = (split_heads(t, self.num_heads) for t in qkv.chunk(3, dim=-1))  # (B, H, S, hd)
        q, k = apply_rope(self.q_norm(q), self.k_norm(k), freqs)
        out = self.linear2(torch.cat([attention(q, k, v), F.gelu(mlp_in, approximate="tanh")], dim=-1))
        return x + gate(out, g)


def _per_block(residuals: tuple[Tensor, ...], blocks: int, kind: str) -> list[Tensor]:
    """ControlNet residuals spread over ``blocks`` blocks: block ``i`` takes ``residuals[i // ceil(blocks / k)]``."""
    if not residuals:
        return []
    if len(residuals) > blocks:
        raise ValueError(
            f"the FLUX ControlNet gives {len(residuals)} {kind}-block residuals but the model has only {blocks} "
            f"{kind}-stream blocks; use a ControlNet made for this model"
        )
    interval = math.ceil(blocks / len(residuals))
    return [residuals[i // interval] for i in range(blocks)]


class Flux(nn.Module):
    """FLUX.1 transformer; see the module docstring."""

    def __init__(self, config: FluxConfig) -> None:
        super().__init__()
        self.config = config
        d, p = config.width, config.patch_size
        self.img_in = nn.Linear(config.in_channels * p * p, d)
        self.time_in = MLPEmbedder(TIME_EMBED_DIM, d)
        self.guidance_in = MLPEmbedder(TIME_EMBED_DIM, d) if config.guidance_embed else None
        self.vector_in = MLPEmbedder(config.pooled_dim, d)
        self.txt_in = nn.Linear(config.context_dim, d)
        self.double_blocks = nn.ModuleList([DoubleStreamBlock(config) for _ in range(config.double_depth)])
        self.single_blocks = nn.ModuleList([SingleStreamBlock(config) for _ in range(config.single_depth)])
        self.final_layer = FinalLayer(d, p * p * config.output_channels)

    def conditioning_vector(self, t: Tensor, cond: Conditioning) -> Tensor:
        """vec = time_in(t) [+ guidance_in(1000 * guidance)] + vector_in(pooled), (B, D)."""
        cfg = self.config
        dtype = self.img_in.weight.dtype
        if cond.pooled is None or cond.pooled.shape[-1] != cfg.pooled_dim:
            got = None if cond.pooled is None else tuple(cond.pooled.shape)
            raise ValueError(f"FLUX needs cond.pooled (B, {cfg.pooled_dim}) (pooled CLIP-L), got {got}")
        vec = self.time_in(timestep_embedding(t, TIME_EMBED_DIM).to(dtype))
        if self.guidance_in is not None:
            if "guidance" not in cond.extra:
                raise ValueError(
                    "this FLUX model is guidance-distilled (FLUX.1-dev): pass cond.extra['guidance'] (B,), "
                    "the guidance scale such as 3.5, e.g. cond.with_extra(guidance=torch.full((B,), 3.5))"
                )
            g = cond.extra["guidance"].reshape(-1).float() * GUIDANCE_SCALE_FACTOR
            vec = vec + self.guidance_in(timestep_embedding(g, TIME_EMBED_DIM).to(dtype))
        return vec + self.vector_in(cond.pooled.to(dtype))

    def forward(
        self, x: Tensor, t: Tensor, cond: Conditioning, control: ControlResiduals | None = None
    ) -> Tensor:
        """``control``: FLUX ControlNet residuals (``control.double`` / ``control.single``, (B, N, D) each) added
        to the image tokens after the double / single-stream blocks; block ``i`` of ``n`` takes entry
        ``i // ceil(n / len(residuals))``, as diffusers' ``FluxTransformer2DModel``."""
        cfg = self.config
        concat = cond.extra.get(CONCAT_KEY)
        if concat is not None and x.shape[1] + concat.shape[1] == cfg.in_channels:
            x = torch.cat(
                [x, concat.to(x)], dim=1
            )  # FLUX Fill: + masked latent + folded mask, packed together
        b, c, height, width = x.shape
        if c != cfg.in_channels:
            hint = (
                f"; this is a FLUX Fill model: give it an image and mask (pipe(image=, mask=), or the "
                f"InpaintModelConditioning node), which go in cond.extra[{CONCAT_KEY!r}]"
                if c < cfg.in_channels and concat is None
                else ""
            )
            raise ValueError(f"FLUX expects latents (B, {cfg.in_channels}, H, W), got {tuple(x.shape)}{hint}")
        if cond.tokens.shape[-1] != cfg.context_dim:
            raise ValueError(
                f"FLUX expects cond.tokens (B, L, {cfg.context_dim}), got {tuple(cond.tokens.shape)}"
            )
        t = t.expand(b) if t.ndim == 0 else t
        dtype = self.img_in.weight.dtype
        p = cfg.patch_size
        img = self.img_in(pack_latents(x, p).to(dtype))  # (B, N, D)
        txt = self.txt_in(cond.tokens.to(dtype))  # (B, L, D)
        vec = self.conditioning_vector(t, cond)  # (B, D)

        ids = torch.cat(
            [
                torch.zeros(txt.shape[1], 3, device=x.device, dtype=torch.long),
                image_position_ids(height // p, width // p, device=x.device),
            ]
        )  # (L+N, 3)
        freqs = rope_frequencies(ids, cfg.axes_dim, cfg.theta)  # (L+N, hd/2, 2)

        double = _per_block(control.double if control is not None else (), len(self.double_blocks), "double")
        single = _per_block(control.single if control is not None else (), len(self.single_blocks), "single")
        for i, block in enumerate(self.double_blocks):
            img, txt = block(img, txt, vec, freqs)
            if double:
                img = img + double[i].to(img.dtype)
        n_txt = txt.shape[1]
        seq = torch.cat([txt, img], dim=1)  # (B, L+N, D)
        for i, block in enumerate(self.single_blocks):
            seq = block(seq, vec, freqs)
            if single:
                seq = torch.cat([seq[:, :n_txt], seq[:, n_txt:] + single[i].to(seq.dtype)], dim=1)
        img = seq[:, n_txt:]
        out = self.final_layer(img, vec)  # (B, N, p*p*C_out)
        return unpack_latents(out, height, width, p)
