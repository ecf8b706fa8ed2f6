"""The pixel-space U-Net of GLIDE / unCLIP (Nichol et al. 2021; Ramesh et al. 2022), as Karlo uses it for its
64 px decoder and its 64->256 super-resolution stages.

It differs from the Stable Diffusion U-Net (:mod:`latentworks.models.unet`) in every block, which is why it is a
network of its own rather than a config of that one:

- ResBlocks modulate the second GroupNorm by the timestep embedding (AdaGN: ``norm(h) * (1 + scale) + shift``,
  "scale_shift" in diffusers) and resample *inside* the block (BigGAN-style: average pooling / nearest
  upsampling of both branches after the first norm, no strided convolution);
- attention is a single layer over the pixels in which the text tokens are extra keys and values ("added KV",
  GLIDE's AttentionBlock with ``encoder_channels``): ``softmax(q [k_text; k_pix]^T) [v_text; v_pix]``, no
  feed-forward, no transformer;
- the decoder adds a class vector (Karlo: the projected CLIP image and text embeddings, from
  :class:`latentworks.models.prior.UnCLIPTextProj`) to the timestep embedding; the super-resolution stages
  take the bicubically upscaled low-resolution image concatenated to the noisy input (6 input channels).

Parameter layout (ours; :mod:`latentworks.checkpoints.keymaps.karlo` converts to and from diffusers'
``UNet2DConditionModel`` / ``UNet2DModel``)::

    conv_in, time_embed.{in_layer, out_layer},
    down.{i}.resnets.{j}, down.{i}.attentions.{j}, down.{i}.downsample,
    mid.res1, mid.attention, mid.res2,
    up.{i}.resnets.{j}, up.{i}.attentions.{j}, up.{i}.upsample,
    norm_out, conv_out
    resblock: norm1, conv1, time_proj, norm2, conv2, skip;  attention: norm, q, k, v, context_k, context_v, out
Up levels are numbered in the order they run (``up.0`` is the lowest resolution).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentworks.nn.attention import attention, split_heads
from latentworks.nn.embeddings import timestep_embedding
from latentworks.nn.mlp import MLPEmbedder
from latentworks.nn.norms import GroupNorm

MidAttention = Literal["none", "self", "context"]


@dataclass(frozen=True, kw_only=True)
class PixelUNetConfig:
    """Architecture of a GLIDE/unCLIP pixel U-Net.

    Attributes:
        in_channels / out_channels: image channels in and out (decoder: 3 -> 6, the second three being the
            learned variance; super-resolution: 3 noisy + 3 upscaled -> 3).
        channels: width of each level (diffusers' ``block_out_channels``).
        layers_per_block: ResBlocks per down level (up levels have one more).
        attention: per level, whether each ResBlock is followed by an attention layer (diffusers'
            ``SimpleCrossAttn*Block2D`` levels).
        mid_attention: the middle block's attention: ``context`` (pixels attend to the text tokens and
            themselves, the decoder), ``self`` (pixels only, a super-resolution ``UNet2DModel`` with
            ``add_attention``) or ``none``.
        head_dim: width of each attention head (diffusers' ``attention_head_dim``, a size here).
        context_dim: width of the text tokens the attention layers read; 0 = no text.
        class_embedding: add ``class_input`` (B, time_embed_dim) to the timestep embedding (diffusers'
            ``class_embed_type="identity"``: Karlo's decoder).
        scale_shift: AdaGN ResBlocks (True) or an added timestep bias (False).
        mid_attention_norm: the middle self-attention's GroupNorm (diffusers drops it for scale-shift
            ``UNet2DModel`` mid blocks unless ``attn_norm_num_groups`` is set).
        norm_groups / norm_eps: GroupNorm groups and epsilon.
    """

    in_channels: int = 3
    out_channels: int = 6
    channels: tuple[int, ...] = (32, 64)
    layers_per_block: int = 1
    attention: tuple[bool, ...] = (False, True)
    mid_attention: MidAttention = "context"
    head_dim: int = 16
    context_dim: int = 48
    class_embedding: bool = True
    scale_shift: bool = True
    mid_attention_norm: bool = True
    norm_groups: int = 32
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        n = len(self.channels)
        if n == 0 or any(not isinstance(c, int) or c < 1 or c % self.norm_groups for c in self.channels):
            raise ValueError(
                f"PixelUNetConfig.channels={self.channels!r} must be positive multiples of "
                f"norm_groups={self.norm_groups}"
            )
        if len(self.attention) != n:
            raise ValueError(
                f"PixelUNetConfig.attention needs one flag per level ({n}), got {self.attention}"
            )
        if self.mid_attention not in ("none", "self", "context"):
            raise ValueError(
                f"PixelUNetConfig.mid_attention must be none, self or context, got {self.mid_attention!r}"
            )
        attended = [c for c, a in zip(self.channels, self.attention, strict=True) if a]
        if self.mid_attention != "none":
            attended.append(self.channels[-1])
        if any(c % self.head_dim for c in attended):
            raise ValueError(
                f"PixelUNetConfig.head_dim={self.head_dim} must divide the width of every level with attention"
            )
        needs_text = any(self.attention) or self.mid_attention == "context"
        if needs_text and self.context_dim < 1:
            raise ValueError("PixelUNetConfig: attention to text tokens needs context_dim > 0")
        if self.layers_per_block < 1 or self.in_channels < 1 or self.out_channels < 1:
            raise ValueError("PixelUNetConfig: layers_per_block, in_channels and out_channels must be >= 1")

    @property
    def time_embed_dim(self) -> int:
        """Width of the timestep embedding (4 x the first width), also the class input's width."""
        return 4 * self.channels[0]


# A release's widths come from its folder's config.json (checkpoints/keymaps/karlo.py); the presets here are for
# tests and small experiments.
PRESETS: dict[str, PixelUNetConfig] = {
    "tiny-decoder": PixelUNetConfig(channels=(32, 64), layers_per_block=1, attention=(False, True), head_dim=16,
                                    context_dim=48),
    "tiny-super-res": PixelUNetConfig(
        in_channels=6, out_channels=3, channels=(32, 64), layers_per_block=1, attention=(False, False),
        mid_attention="none", context_dim=0, class_embedding=False,
    ),
}  # fmt: skip


class PixelResBlock(nn.Module):
    """GroupNorm -> SiLU -> [resample] -> conv -> AdaGN(time) -> SiLU -> conv, plus a (resampled) skip.

    ``resample``: ``down`` (2x2 average pooling) or ``up`` (2x nearest), applied to both branches after the
    first norm, as BigGAN / ADM ResBlocks do.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        time_dim: int,
        *,
        scale_shift: bool,
        groups: int,
        eps: float,
        resample: Literal["down", "up"] | None = None,
    ) -> None:
        super().__init__()
        self.scale_shift, self.resample = scale_shift, resample
        self.norm1 = GroupNorm(groups, in_channels, eps=eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.time_proj = nn.Linear(time_dim, 2 * out_channels if scale_shift else out_channels)
        self.norm2 = GroupNorm(groups, out_channels, eps=eps)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def _resample(self, x: Tensor) -> Tensor:
        if self.resample == "down":
            return F.avg_pool2d(x, kernel_size=2, stride=2)
        if self.resample == "up":
            return F.interpolate(x, scale_factor=2.0, mode="nearest")
        return x

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        # x: (B, C_in, H, W), temb: (B, time_dim) -> (B, C_out, H', W')
        h = self._resample(F.silu(self.norm1(x)))
        x = self._resample(x)
        h = self.conv1(h)
        t = self.time_proj(F.silu(temb))[:, :, None, None]
        if self.scale_shift:
            scale, shift = t.chunk(2, dim=1)
            h = self.norm2(h) * (1 + scale) + shift
        else:
            h = self.norm2(h + t)
        h = self.conv2(F.silu(h))
        return (x if self.skip is None else self.skip(x)) + h


class PixelAttention(nn.Module):
    """One attention layer over the pixels (GLIDE's AttentionBlock): GroupNorm, then each pixel attends to the
    text tokens (their own key/value projections, ``context_k`` / ``context_v``) followed by all pixels;
    output projection and residual. No text (``context_dim=0``): plain self-attention."""

    def __init__(
        self, channels: int, head_dim: int, context_dim: int, *, groups: int | None, eps: float
    ) -> None:
        super().__init__()
        self.num_heads = channels // head_dim
        self.norm = GroupNorm(groups, channels, eps=eps) if groups is not None else None
        self.q = nn.Linear(channels, channels)
        self.k = nn.Linear(channels, channels)
        self.v = nn.Linear(channels, channels)
        self.context_k = nn.Linear(context_dim, channels) if context_dim else None
        self.context_v = nn.Linear(context_dim, channels) if context_dim else None
        self.out = nn.Linear(channels, channels)

    def forward(self, x: Tensor, context: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        # x: (B, C, H, W); context: (B, S, context_dim); mask: (B, S) bool, True = attend to that token
        b, c, height, width = x.shape
        h = x if self.norm is None else self.norm(x)
        h = h.flatten(2).transpose(1, 2)  # (B, HW, C)
        q, k, v = self.q(h), self.k(h), self.v(h)
        key_mask = None
        if self.context_k is not None and self.context_v is not None:
            if context is None:
                raise ValueError("this attention layer reads text tokens: pass the context (B, S, D)")
            k = torch.cat([self.context_k(context), k], dim=1)  # (B, S + HW, C)
            v = torch.cat([self.context_v(context), v], dim=1)
            if mask is not None:
                pixels = torch.ones(b, height * width, dtype=torch.bool, device=x.device)
                key_mask = torch.cat([mask.to(device=x.device, dtype=torch.bool), pixels], dim=1)
        heads = self.num_heads
        out = attention(split_heads(q, heads), split_heads(k, heads), split_heads(v, heads), key_mask)
        out = self.out(out).transpose(1, 2).reshape(b, c, height, width)
        return x + out


class _Level(nn.Module):
    """One resolution: ResBlocks, their attention layers (or none), and the resampling ResBlock (or None)."""

    def __init__(self) -> None:
        super().__init__()
        self.resnets = nn.ModuleList()
        self.attentions = nn.ModuleList()
        self.downsample: PixelResBlock | None = None
        self.upsample: PixelResBlock | None = None

    def run(
        self,
        h: Tensor,
        emb: Tensor,
        context: Tensor | None,
        mask: Tensor | None,
        skips: list[Tensor],
        *,
        up: bool,
    ) -> Tensor:
        """Down levels append each output to ``skips``; up levels take their inputs' skips from its end."""
        for j, block in enumerate(self.resnets):
            h = block(torch.cat([h, skips.pop()], dim=1) if up else h, emb)
            if len(self.attentions):
                h = self.attentions[j](h, context, mask)
            if not up:
                skips.append(h)
        if self.downsample is not None:
            h = self.downsample(h, emb)
            skips.append(h)
        if self.upsample is not None:
            h = self.upsample(h, emb)
        return h


class _Mid(nn.Module):
    def __init__(self, res1: PixelResBlock, attn: PixelAttention | None, res2: PixelResBlock) -> None:
        super().__init__()
        self.res1, self.attention, self.res2 = res1, attn, res2


class PixelUNet(nn.Module):
    """GLIDE/unCLIP pixel U-Net: ``forward(x, t, context, mask, class_input) -> (B, out_channels, H, W)``."""

    def __init__(self, config: PixelUNetConfig) -> None:
        super().__init__()
        self.config = cfg = config
        td, g, eps = cfg.time_embed_dim, cfg.norm_groups, cfg.norm_eps

        def res(cin: int, cout: int, resample: Literal["down", "up"] | None = None) -> PixelResBlock:
            return PixelResBlock(
                cin, cout, td, scale_shift=cfg.scale_shift, groups=g, eps=eps, resample=resample
            )

        def attn(width: int, context: bool = True, groups: int | None = g) -> PixelAttention:
            return PixelAttention(
                width, cfg.head_dim, cfg.context_dim if context else 0, groups=groups, eps=eps
            )

        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.channels[0], 3, padding=1)
        self.time_embed = MLPEmbedder(cfg.channels[0], td)
        n = len(cfg.channels)
        skips = [cfg.channels[0]]
        width = cfg.channels[0]
        self.down = nn.ModuleList()
        for i, c in enumerate(cfg.channels):
            level = _Level()
            for _ in range(cfg.layers_per_block):
                level.resnets.append(res(width, c))
                if cfg.attention[i]:
                    level.attentions.append(attn(c))
                width = c
                skips.append(c)
            level.downsample = res(c, c, "down") if i < n - 1 else None
            if i < n - 1:
                skips.append(c)
            self.down.append(level)
        mid_attn = None
        if cfg.mid_attention == "context":
            mid_attn = attn(width)
        elif cfg.mid_attention == "self":
            mid_attn = attn(width, context=False, groups=g if cfg.mid_attention_norm else None)
        self.mid = _Mid(res(width, width), mid_attn, res(width, width))
        self.up = nn.ModuleList()
        for i, c in enumerate(reversed(cfg.channels)):
            level_index = n - 1 - i
            level = _Level()
            for _ in range(cfg.layers_per_block + 1):
                level.resnets.append(res(width + skips.pop(), c))
                if cfg.attention[level_index]:
                    level.attentions.append(attn(c))
                width = c
            level.upsample = res(c, c, "up") if level_index > 0 else None
            self.up.append(level)
        self.norm_out = GroupNorm(g, width, eps=eps)
        self.conv_out = nn.Conv2d(width, cfg.out_channels, 3, padding=1)

    def forward(
        self,
        x: Tensor,
        t: Tensor,
        context: Tensor | None = None,
        mask: Tensor | None = None,
        class_input: Tensor | None = None,
    ) -> Tensor:
        """x: (B, in_channels, H, W); t: (B,) DDPM timesteps; context: (B, S, context_dim) text tokens with
        mask (B, S) bool; class_input: (B, time_embed_dim), required when ``config.class_embedding``."""
        cfg = self.config
        t = t.reshape(-1).expand(x.shape[0]) if t.numel() == 1 else t
        emb = timestep_embedding(t, cfg.channels[0]).to(x.dtype)  # (B, C0), cos first
        emb = self.time_embed(emb)  # (B, td)
        if cfg.class_embedding:
            if class_input is None:
                raise ValueError(
                    "this U-Net adds a class vector to its time embedding: pass class_input (B, D)"
                )
            emb = emb + class_input.to(emb.dtype)
        h = self.conv_in(x)
        skips = [h]
        for level in cast("list[_Level]", self.down):
            h = level.run(h, emb, context, mask, skips, up=False)
        h = self.mid.res1(h, emb)
        if self.mid.attention is not None:
            h = self.mid.attention(h, context, mask)
        h = self.mid.res2(h, emb)
        for level in cast("list[_Level]", self.up):
            h = level.run(h, emb, context, mask, skips, up=True)
        return self.conv_out(F.silu(self.norm_out(h)))
