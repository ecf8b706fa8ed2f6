"""The Stable Diffusion U-Net (SD 1.x, SD 2.x, SDXL) and small variants for our own data.

Rombach et al. 2022 (LDM) and Podell et al. 2023 (SDXL): a convolutional U-Net whose ResBlocks take a
timestep embedding and whose lower-resolution levels interleave spatial transformers (self-attention,
cross-attention to text tokens, GEGLU feed-forward). SDXL adds a pooled text vector and six size/crop
ids to the timestep embedding ("text_time" added conditioning).

Parameter layout (ours; ``latentworks.checkpoints.keymaps.sd_diffusers`` converts to and from diffusers):
    conv_in, time_embed.{fc1, fc2}, add_embed.{fc1, fc2},
    down.{i}.resnets.{j}, down.{i}.transformers.{j}, down.{i}.downsample.conv,
    mid.{res1, transformer, res2},
    up.{i}.resnets.{j}, up.{i}.transformers.{j}, up.{i}.upsample.conv,
    norm_out, conv_out
    transformer: norm, proj_in, blocks.{k}.{norm1, self_attn, norm2, cross_attn, norm3, ff}, proj_out
    attention: q, k, v, out;  feed-forward: ff.geglu, ff.out
Up levels are numbered in the order they run (``up.0`` is the lowest resolution).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentworks.diffusion.conditioning import CONCAT_KEY, Conditioning
from latentworks.diffusion.control import ControlResiduals
from latentworks.nn.attention import attention, split_heads
from latentworks.nn.embeddings import timestep_embedding
from latentworks.nn.norms import GroupNorm
from latentworks.nn.resnet import Downsample, ResBlock, Upsample

# cond.extra key of a class-embedding U-Net's input (SD 2.1 unCLIP: the noise-augmented image embedding
# concatenated with its noise level's sinusoidal embedding, (B, pooled_dim)); see latentworks.models.unclip.
CLASS_INPUT_KEY = "class_input"
# cond.extra key of a class-label U-Net's integer labels (B,) (SD x4 upscaler: the low-res image's noise level);
# see ``UNetConfig.num_classes``.
CLASS_LABEL_KEY = "class_labels"


@dataclass(frozen=True, kw_only=True)
class UNetConfig:
    """Architecture of an SD-style U-Net.

    Attributes:
        in_channels / out_channels: latent channels in and out (``in_channels=9`` for inpainting models:
            noisy latent + masked-image latent + mask).
        channels: width of each level (``block_out_channels`` in diffusers).
        layers_per_block: ResBlocks per down level (up levels have one more).
        transformer_depth: transformer blocks after each ResBlock of a level; 0 = no attention there.
            The up path uses the same depths in reverse.
        mid_transformer_depth: transformer blocks in the middle block.
        num_heads / head_dim: exactly one of them, an int for all levels or a tuple per level.
            (SD 1.x fixes 8 heads; SD 2.x/SDXL fix head_dim 64. diffusers' ``attention_head_dim``
            is in fact the head count.)
        context_dim: width of ``cond.tokens`` (768 CLIP-L, 1024 OpenCLIP-H, 2048 SDXL, 384 MiniLM).
        use_linear_projection: transformer proj_in/proj_out as Linear (SD2/SDXL) instead of 1x1 conv.
        upcast_attention: compute attention in float32 when the model runs in half precision (SD 2.1).
        pooled_dim: width of ``cond.pooled`` added to the time embedding (SDXL: 1280); 0 = none.
        num_time_ids / time_id_dim: SDXL's size/crop ids in ``cond.extra["time_ids"]`` (B, num_time_ids),
            each embedded sinusoidally to ``time_id_dim``. ``num_time_ids=0`` with ``pooled_dim > 0`` is a
            class-embedding U-Net (SD 2.1 unCLIP): the label embedding reads ``cond.extra[CLASS_INPUT_KEY]``
            (B, pooled_dim), the noise-augmented image embedding, and zeros when it is absent.
        norm_groups / dropout: GroupNorm groups (divide every width) and ResBlock dropout.
        num_classes: size of a learned class-label embedding added to the time embedding (diffusers'
            ``num_class_embeds``); the labels are ``cond.extra[CLASS_LABEL_KEY]`` (B,) integers. The SD x4
            upscaler embeds the noise level of its low-res input image (1000 labels). 0 = none.
        only_cross_attention: per level, True where the transformers' first attention attends to the
            text instead of the image tokens (diffusers' ``only_cross_attention``; the SD x4 upscaler's
            attention levels). Empty = False everywhere. The middle block always has self-attention.
    """

    in_channels: int = 4
    out_channels: int = 4
    channels: tuple[int, ...] = (320, 640, 1280, 1280)
    layers_per_block: int = 2
    transformer_depth: tuple[int, ...] = (1, 1, 1, 0)
    mid_transformer_depth: int = 1
    num_heads: int | tuple[int, ...] | None = 8
    head_dim: int | tuple[int, ...] | None = None
    context_dim: int = 768
    use_linear_projection: bool = False
    upcast_attention: bool = False
    pooled_dim: int = 0
    num_time_ids: int = 6
    time_id_dim: int = 256
    norm_groups: int = 32
    dropout: float = 0.0
    num_classes: int = 0
    only_cross_attention: tuple[bool, ...] = ()

    def __post_init__(self) -> None:
        n = len(self.channels) if isinstance(self.channels, tuple) else 0
        if n == 0:
            raise ValueError(
                f"UNetConfig.channels must be a non-empty tuple of widths, got {self.channels!r}; "
                "e.g. channels=(320, 640, 1280, 1280)"
            )
        for name in ("in_channels", "out_channels", "layers_per_block", "context_dim", "norm_groups"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"UNetConfig.{name} must be a positive int, got {value!r}")
        bad = [c for c in self.channels if not isinstance(c, int) or c < 1 or c % self.norm_groups]
        if bad:
            raise ValueError(
                f"UNetConfig.channels={self.channels} has widths {bad} that are not positive multiples of "
                f"norm_groups={self.norm_groups}; change the widths or norm_groups"
            )
        if not isinstance(self.transformer_depth, tuple) or len(self.transformer_depth) != n:
            raise ValueError(
                f"UNetConfig.transformer_depth must be a tuple with one depth per level ({n} levels), "
                f"got {self.transformer_depth!r}"
            )
        if any(d < 0 for d in self.transformer_depth) or self.mid_transformer_depth < 0:
            raise ValueError(
                "UNetConfig transformer depths must be >= 0 (0 means no attention at that level)"
            )
        if (self.num_heads is None) == (self.head_dim is None):
            raise ValueError(
                "UNetConfig: set exactly one of num_heads (heads per level) or head_dim (width per head); "
                f"got num_heads={self.num_heads!r}, head_dim={self.head_dim!r}"
            )
        spec = self.num_heads if self.num_heads is not None else self.head_dim
        if isinstance(spec, tuple) and len(spec) != n:
            raise ValueError(f"UNetConfig: a per-level num_heads/head_dim needs {n} entries, got {spec!r}")
        for level in range(n):
            width = self.channels[level]
            value = spec[level] if isinstance(spec, tuple) else spec
            if not isinstance(value, int) or value < 1 or width % value:
                what = "num_heads" if self.num_heads is not None else "head_dim"
                raise ValueError(
                    f"UNetConfig.{what}={value!r} at level {level} must be a positive divisor of its width "
                    f"{width}; change {what} or channels"
                )
        if self.pooled_dim < 0 or self.num_time_ids < 0 or self.time_id_dim < 0 or self.time_id_dim % 2:
            raise ValueError(
                "UNetConfig: pooled_dim and num_time_ids must be >= 0 and time_id_dim an even number >= 0, got "
                f"pooled_dim={self.pooled_dim}, num_time_ids={self.num_time_ids}, time_id_dim={self.time_id_dim}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"UNetConfig.dropout must be in [0, 1), got {self.dropout}")
        if not isinstance(self.num_classes, int) or self.num_classes < 0:
            raise ValueError(
                f"UNetConfig.num_classes must be an int >= 0 (0: no class labels), got {self.num_classes!r}"
            )
        if self.only_cross_attention and (
            not isinstance(self.only_cross_attention, tuple) or len(self.only_cross_attention) != n
        ):
            raise ValueError(
                f"UNetConfig.only_cross_attention needs one bool per level ({n} levels) or (), "
                f"got {self.only_cross_attention!r}"
            )

    @property
    def time_embed_dim(self) -> int:
        """Width of the timestep embedding fed to every ResBlock (4 x the first width)."""
        return 4 * self.channels[0]

    @property
    def has_added_conditioning(self) -> bool:
        """True for SDXL-style models that read ``cond.pooled`` and ``cond.extra["time_ids"]``."""
        return self.pooled_dim > 0

    @property
    def added_conditioning_dim(self) -> int:
        return self.pooled_dim + self.num_time_ids * self.time_id_dim

    def heads_at(self, level: int) -> tuple[int, int]:
        """(num_heads, head_dim) of the transformers at ``level`` (``-1`` for the middle block)."""
        width = self.channels[level]
        if self.num_heads is not None:
            heads = self.num_heads[level] if isinstance(self.num_heads, tuple) else self.num_heads
            return heads, width // heads
        dim = self.head_dim[level] if isinstance(self.head_dim, tuple) else self.head_dim
        assert dim is not None
        return width // dim, dim

    def cross_only_at(self, level: int) -> bool:
        """True where the transformers of ``level`` (``-1``: the middle block, always False) attend only to text."""
        return level >= 0 and bool(self.only_cross_attention) and self.only_cross_attention[level]

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.channels) - 1)


PRESETS: dict[str, UNetConfig] = {
    # SD 1.x (CLIP ViT-L/14 tokens); 859,520,964 params. ``in_channels=9`` gives the inpainting model.
    "sd15": UNetConfig(),
    # SD 2.x base (eps) and 768-v (v-prediction): OpenCLIP-H tokens, head_dim 64, linear projections.
    "sd2": UNetConfig(
        head_dim=64, num_heads=None, context_dim=1024, use_linear_projection=True, upcast_attention=True
    ),
    # SDXL base 1.0; 2,567,463,684 params.
    "sdxl": UNetConfig(
        channels=(320, 640, 1280),
        transformer_depth=(0, 2, 10),
        mid_transformer_depth=10,
        num_heads=None,
        head_dim=64,
        context_dim=2048,
        use_linear_projection=True,
        pooled_dim=1280,
        num_time_ids=6,
    ),
    # SDXL refiner 1.0: OpenCLIP-bigG tokens only; time ids are (h, w, crop_top, crop_left, aesthetic).
    "sdxl-refiner": UNetConfig(
        channels=(384, 768, 1536, 1536),
        transformer_depth=(0, 4, 4, 0),
        mid_transformer_depth=4,
        num_heads=None,
        head_dim=64,
        context_dim=1280,
        use_linear_projection=True,
        pooled_dim=1280,
        num_time_ids=5,
    ),
    # Our 64x64 emoji in 16x16x4 latents, conditioned on 384-dim MiniLM tokens; 35,872,644 params.
    "emoji-s": UNetConfig(
        channels=(128, 192, 256),
        transformer_depth=(1, 1, 1),
        mid_transformer_depth=1,
        num_heads=None,
        head_dim=32,
        context_dim=384,
        use_linear_projection=True,
    ),
    # The embedded default model: 8x8x4 latents of 32x32 emoji, MiniLM tokens; ~10.8M params.
    "emoji32-xs": UNetConfig(
        channels=(64, 128, 128),
        transformer_depth=(0, 1, 1),
        mid_transformer_depth=1,
        num_heads=None,
        head_dim=32,
        context_dim=384,
        use_linear_projection=True,
    ),
    # For tests: a few hundred thousand params, every kind of layer present.
    "tiny": UNetConfig(
        channels=(32, 64),
        layers_per_block=1,
        transformer_depth=(0, 1),
        mid_transformer_depth=1,
        num_heads=None,
        head_dim=16,
        context_dim=24,
        norm_groups=8,
    ),
}
# latentworks train-quick (training/quick.py): the emoji32-xs layout at half width; ~3.0M params.
PRESETS["quick32-s"] = replace(PRESETS["emoji32-xs"], channels=(32, 64, 64), norm_groups=16)
# The same on the 8x8x8 latents of the `emoji32-f4c8` autoencoder (the embedded default model).
PRESETS["emoji32-xs-c8"] = replace(PRESETS["emoji32-xs"], in_channels=8, out_channels=8)


class TimeMLP(nn.Module):
    """Linear -> SiLU -> Linear (parameters ``fc1``, ``fc2``)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_dim, out_dim)
        self.fc2 = nn.Linear(out_dim, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.silu(self.fc1(x)))


class Attention(nn.Module):
    """Multi-head attention from ``x`` to ``context`` (itself when None). Projections: q, k, v (no bias), out."""

    def __init__(self, dim: int, context_dim: int, *, num_heads: int, head_dim: int, upcast: bool) -> None:
        super().__init__()
        inner = num_heads * head_dim
        self.num_heads = num_heads
        self.upcast = upcast
        self.q = nn.Linear(dim, inner, bias=False)
        self.k = nn.Linear(context_dim, inner, bias=False)
        self.v = nn.Linear(context_dim, inner, bias=False)
        self.out = nn.Linear(inner, dim)

    def forward(self, x: Tensor, context: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        # x: (B, L, dim), context: (B, S, context_dim), mask: (B, S) True = attend -> (B, L, dim)
        context = x if context is None else context
        q, k, v = (split_heads(t, self.num_heads) for t in (self.q(x), self.k(context), self.v(context)))
        if self.upcast and q.dtype in (torch.float16, torch.bfloat16):
            out = attention(q.float(), k.float(), v.float(), mask).to(x.dtype)
        else:
            out = attention(q, k, v, mask)  # (B, L, inner)
        return self.out(out)


class GEGLUFeedForward(nn.Module):
    """GELU-gated feed-forward (Shazeer 2020): ``out(h * gelu(gate))``, 4x inner width."""

    def __init__(self, dim: int, mult: int = 4) -> None:
        super().__init__()
        self.geglu = nn.Linear(dim, 2 * mult * dim)
        self.out = nn.Linear(mult * dim, dim)

    def forward(self, x: Tensor) -> Tensor:  # (B, L, D) -> (B, L, D)
        h, gate = self.geglu(x).chunk(2, dim=-1)
        return self.out(h * F.gelu(gate))


class TransformerBlock(nn.Module):
    """Pre-norm self-attention, cross-attention and GEGLU feed-forward, each with a residual.

    ``cross_only``: the first attention attends to the context too (diffusers' ``only_cross_attention``);
    its parameters keep the name ``self_attn``."""

    def __init__(
        self,
        dim: int,
        context_dim: int,
        *,
        num_heads: int,
        head_dim: int,
        upcast: bool,
        cross_only: bool = False,
    ) -> None:
        super().__init__()
        self.cross_only = cross_only
        self.norm1 = nn.LayerNorm(dim)
        self.self_attn = Attention(
            dim, context_dim if cross_only else dim, num_heads=num_heads, head_dim=head_dim, upcast=upcast
        )
        self.norm2 = nn.LayerNorm(dim)
        self.cross_attn = Attention(dim, context_dim, num_heads=num_heads, head_dim=head_dim, upcast=upcast)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = GEGLUFeedForward(dim)

    def forward(self, x: Tensor, context: Tensor, mask: Tensor | None = None) -> Tensor:
        x = x + (
            self.self_attn(self.norm1(x), context, mask) if self.cross_only else self.self_attn(self.norm1(x))
        )
        x = x + self.cross_attn(self.norm2(x), context, mask)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """GroupNorm -> proj_in -> transformer blocks over the H*W tokens -> proj_out, plus a residual."""

    def __init__(
        self,
        channels: int,
        cfg: UNetConfig,
        *,
        depth: int,
        num_heads: int,
        head_dim: int,
        cross_only: bool = False,
    ) -> None:
        super().__init__()
        inner = num_heads * head_dim
        self.linear = cfg.use_linear_projection
        self.norm = GroupNorm(cfg.norm_groups, channels, eps=1e-6)
        self.proj_in: nn.Module = nn.Linear(channels, inner) if self.linear else nn.Conv2d(channels, inner, 1)
        self.blocks = nn.ModuleList(
            TransformerBlock(
                inner,
                cfg.context_dim,
                num_heads=num_heads,
                head_dim=head_dim,
                upcast=cfg.upcast_attention,
                cross_only=cross_only,
            )
            for _ in range(depth)
        )
        self.proj_out: nn.Module = (
            nn.Linear(inner, channels) if self.linear else nn.Conv2d(inner, channels, 1)
        )

    def forward(self, x: Tensor, context: Tensor, mask: Tensor | None = None) -> Tensor:
        # x: (B, C, H, W), context: (B, S, context_dim) -> (B, C, H, W)
        b, _, h, w = x.shape
        y = self.norm(x)
        if self.linear:
            y = self.proj_in(y.flatten(2).transpose(1, 2))  # (B, HW, inner)
        else:
            y = self.proj_in(y).flatten(2).transpose(1, 2)  # (B, HW, inner)
        for block in self.blocks:
            y = block(y, context, mask)
        if self.linear:
            y = self.proj_out(y).transpose(1, 2).reshape(b, -1, h, w)
        else:
            y = self.proj_out(y.transpose(1, 2).reshape(b, -1, h, w))
        return x + y


class Level(nn.Module):
    """One resolution of the U-Net: ResBlocks, each followed by a transformer when depth > 0."""

    def __init__(
        self, in_channels: list[int], out_ch: int, cfg: UNetConfig, *, level: int, depth: int
    ) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(
            ResBlock(c, out_ch, time_dim=cfg.time_embed_dim, groups=cfg.norm_groups, dropout=cfg.dropout)
            for c in in_channels
        )
        heads, head_dim = cfg.heads_at(level)
        self.transformers = (
            nn.ModuleList(
                SpatialTransformer(
                    out_ch,
                    cfg,
                    depth=depth,
                    num_heads=heads,
                    head_dim=head_dim,
                    cross_only=cfg.cross_only_at(level),
                )
                for _ in in_channels
            )
            if depth > 0
            else None
        )

    def block(self, j: int, h: Tensor, temb: Tensor, context: Tensor, mask: Tensor | None) -> Tensor:
        h = self.resnets[j](h, temb)
        if self.transformers is not None:
            h = self.transformers[j](h, context, mask)
        return h


class DownLevel(Level):
    def __init__(self, in_ch: int, out_ch: int, cfg: UNetConfig, *, level: int, downsample: bool) -> None:
        in_channels = [in_ch] + [out_ch] * (cfg.layers_per_block - 1)
        super().__init__(in_channels, out_ch, cfg, level=level, depth=cfg.transformer_depth[level])
        self.downsample = Downsample(out_ch) if downsample else None

    def forward(
        self,
        h: Tensor,
        temb: Tensor,
        context: Tensor,
        mask: Tensor | None,
        skips: list[Tensor],
        adapter: Tensor | None = None,
    ) -> Tensor:
        """Run the level, pushing every ResBlock/transformer output and the downsampled map onto ``skips``.

        ``adapter``: a T2I-Adapter feature, added as diffusers does: after the last ResBlock/transformer pair
        (before downsampling) on a level with attention, after the whole level (downsampling included) on one
        without; the skip pushed last carries it too."""
        last = len(self.resnets) - 1
        for j in range(len(self.resnets)):
            h = self.block(j, h, temb, context, mask)
            if adapter is not None and self.transformers is not None and j == last:
                h = h + adapter.to(h.dtype)
            skips.append(h)
        if self.downsample is not None:
            h = self.downsample(h)
            skips.append(h)
        if adapter is not None and self.transformers is None:
            h = h + adapter.to(h.dtype)
            skips[-1] = h
        return h


class UpLevel(Level):
    def __init__(
        self, in_channels: list[int], out_ch: int, cfg: UNetConfig, *, level: int, upsample: bool
    ) -> None:
        super().__init__(in_channels, out_ch, cfg, level=level, depth=cfg.transformer_depth[level])
        self.upsample = Upsample(out_ch) if upsample else None

    def forward(
        self, h: Tensor, temb: Tensor, context: Tensor, mask: Tensor | None, skips: list[Tensor]
    ) -> Tensor:
        """Run the level, concatenating a popped skip before every ResBlock; upsample to the next skip's size."""
        for j in range(len(self.resnets)):
            h = self.block(j, torch.cat([h, skips.pop()], dim=1), temb, context, mask)
        if self.upsample is not None:
            h = self.upsample(h, size=tuple(skips[-1].shape[-2:]))
        return h


class MidBlock(nn.Module):
    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__()
        ch = cfg.channels[-1]
        kw = {"time_dim": cfg.time_embed_dim, "groups": cfg.norm_groups, "dropout": cfg.dropout}
        heads, head_dim = cfg.heads_at(-1)
        self.res1 = ResBlock(ch, ch, **kw)  # type: ignore[arg-type]
        self.transformer = (
            SpatialTransformer(ch, cfg, depth=cfg.mid_transformer_depth, num_heads=heads, head_dim=head_dim)
            if cfg.mid_transformer_depth > 0
            else None
        )
        self.res2 = ResBlock(ch, ch, **kw)  # type: ignore[arg-type]

    def forward(self, h: Tensor, temb: Tensor, context: Tensor, mask: Tensor | None) -> Tensor:
        h = self.res1(h, temb)
        if self.transformer is not None:
            h = self.transformer(h, context, mask)
        return self.res2(h, temb)


def embed_time(
    time_embed: TimeMLP,
    add_embed: TimeMLP | None,
    cfg: UNetConfig,
    t: Tensor,
    cond: Conditioning,
    batch: int,
    dtype: torch.dtype,
    class_embed: nn.Embedding | None = None,
) -> Tensor:
    """The (B, time_embed_dim) embedding of timesteps ``t`` plus, for SDXL-style configs, the pooled text
    vector and size ids of ``cond``, and with ``class_embed`` the embedding of ``cond.extra[CLASS_LABEL_KEY]``
    (shared by the U-Net and its ControlNets)."""
    if t.ndim == 0:
        t = t.expand(batch)
    if t.shape != (batch,):
        raise ValueError(f"UNet: t must be (B,) = ({batch},) timesteps, got shape {tuple(t.shape)}")
    temb = time_embed(timestep_embedding(t, cfg.channels[0]).to(dtype))  # (B, time_embed_dim)
    if class_embed is not None:
        labels = cond.extra.get(CLASS_LABEL_KEY)
        if labels is None or labels.shape != (batch,):
            got = "none" if labels is None else f"shape {tuple(labels.shape)}"
            raise ValueError(
                f"UNet: this network embeds a class label per sample (num_classes={cfg.num_classes}; the SD x4 "
                f"upscaler's noise level): pass cond.extra[{CLASS_LABEL_KEY!r}] as ({batch},) integers, got {got}"
            )
        temb = temb + class_embed(labels.long().to(temb.device)).to(dtype)  # (B, time_embed_dim)
    if add_embed is None:
        return temb
    if (
        cfg.num_time_ids == 0
    ):  # class-embedding U-Net (SD 2.1 unCLIP's label_emb / diffusers' class_embedding)
        class_input = cond.extra.get(CLASS_INPUT_KEY)
        if class_input is None:
            class_input = temb.new_zeros(batch, cfg.pooled_dim)  # no image: zeros, as ComfyUI and diffusers
        if class_input.shape != (batch, cfg.pooled_dim):
            raise ValueError(
                f"UNet: cond.extra[{CLASS_INPUT_KEY!r}] must be ({batch}, {cfg.pooled_dim}) (the noise-augmented "
                f"image embedding and its noise-level embedding), got {tuple(class_input.shape)}"
            )
        return temb + add_embed(class_input.to(dtype))
    time_ids = cond.extra.get("time_ids")
    if cond.pooled is None or time_ids is None:
        raise ValueError(
            "this U-Net (pooled_dim > 0, SDXL-style) needs cond.pooled (B, "
            f"{cfg.pooled_dim}) and cond.extra['time_ids'] (B, {cfg.num_time_ids}); "
            "build them with the SDXL text encoder and size ids"
        )
    if cond.pooled.shape != (batch, cfg.pooled_dim) or time_ids.shape != (batch, cfg.num_time_ids):
        raise ValueError(
            f"UNet: expected cond.pooled ({batch}, {cfg.pooled_dim}) and time_ids ({batch}, {cfg.num_time_ids}), "
            f"got {tuple(cond.pooled.shape)} and {tuple(time_ids.shape)}"
        )
    ids = timestep_embedding(time_ids.flatten(), cfg.time_id_dim).reshape(batch, -1)  # (B, n_ids * dim)
    added = torch.cat([cond.pooled.to(dtype), ids.to(dtype)], dim=-1)  # (B, added_conditioning_dim)
    return temb + add_embed(added)


class UNet(nn.Module):
    """``forward(x (B, C_in, H, W), t (B,), cond) -> (B, C_out, H, W)``: the raw prediction (eps or v).

    ``t`` is the DDPM timestep (0..999, float allowed). ``cond.tokens`` (B, S, context_dim) is the
    cross-attention context, ``cond.mask`` (B, S) an optional key-padding mask (True = real token).
    SDXL-style configs also read ``cond.pooled`` (B, pooled_dim) and ``cond.extra["time_ids"]``
    (B, num_time_ids).
    """

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        ch = config.channels
        n = len(ch)
        self.conv_in = nn.Conv2d(config.in_channels, ch[0], 3, padding=1)
        self.time_embed = TimeMLP(ch[0], config.time_embed_dim)
        self.add_embed = (
            TimeMLP(config.added_conditioning_dim, config.time_embed_dim)
            if config.has_added_conditioning
            else None
        )
        self.class_embed = (
            nn.Embedding(config.num_classes, config.time_embed_dim) if config.num_classes else None
        )

        skip_channels = [ch[0]]  # widths of the tensors the down path hands to the up path
        down = []
        for i in range(n):
            level = DownLevel(ch[max(i - 1, 0)], ch[i], config, level=i, downsample=i < n - 1)
            skip_channels += [ch[i]] * config.layers_per_block + ([ch[i]] if i < n - 1 else [])
            down.append(level)
        self.down = nn.ModuleList(down)
        self.mid = MidBlock(config)

        up = []
        prev = ch[-1]
        for i, level_index in enumerate(reversed(range(n))):
            out_ch = ch[level_index]
            in_channels = []
            for _ in range(config.layers_per_block + 1):
                in_channels.append(prev + skip_channels.pop())
                prev = out_ch
            up.append(UpLevel(in_channels, out_ch, config, level=level_index, upsample=i < n - 1))
        self.up = nn.ModuleList(up)
        self.norm_out = GroupNorm(config.norm_groups, ch[0], eps=1e-5)
        self.conv_out = nn.Conv2d(ch[0], config.out_channels, 3, padding=1)

    def _time_embedding(self, t: Tensor, cond: Conditioning, batch: int, dtype: torch.dtype) -> Tensor:
        return embed_time(
            self.time_embed, self.add_embed, self.config, t, cond, batch, dtype, self.class_embed
        )

    def forward(
        self, x: Tensor, t: Tensor, cond: Conditioning, control: ControlResiduals | None = None
    ) -> Tensor:
        """``control``: ControlNet residuals added to every skip connection (``control.down``, in the order
        the down path stores them) and to the middle block's output (``control.mid``), and T2I-Adapter
        features added to the down levels' outputs (``control.adapter``, see ``DownLevel.forward``)."""
        cfg = self.config
        concat = cond.extra.get(CONCAT_KEY)
        if concat is not None and x.ndim == 4 and x.shape[1] + concat.shape[1] == cfg.in_channels:
            x = torch.cat([x, concat.to(x)], dim=1)  # inpainting models: (B, C + 5, H, W)
        if x.ndim != 4 or x.shape[1] != cfg.in_channels:
            more = cfg.in_channels - x.shape[1] if x.ndim == 4 else 0
            hint = (
                f"; this network takes {more} extra input channels (an inpainting model: the mask and the "
                f"masked image's latent in cond.extra[{CONCAT_KEY!r}], made by pipe(image=, mask=) or the "
                "InpaintModelConditioning node)"
                if more > 0 and concat is None
                else ""
            )
            raise ValueError(
                f"UNet expects x of shape (B, {cfg.in_channels}, H, W), got {tuple(x.shape)}{hint}"
            )
        if cond.tokens.shape[0] != x.shape[0] or cond.tokens.shape[-1] != cfg.context_dim:
            raise ValueError(
                f"UNet: cond.tokens must be (B={x.shape[0]}, S, {cfg.context_dim}), got {tuple(cond.tokens.shape)}"
            )
        dtype = self.conv_in.weight.dtype
        temb = self._time_embedding(t, cond, x.shape[0], dtype)
        context = cond.tokens.to(dtype)  # (B, S, context_dim)
        mask = None if cond.mask is None else cond.mask.bool()

        h = self.conv_in(x.to(dtype))
        skips = [h]
        features = list(control.adapter) if control is not None else []
        for down in self.down:
            h = down(h, temb, context, mask, skips, features.pop(0) if features else None)
        h = self.mid(h, temb, context, mask)
        if features and features[0].shape == h.shape:  # T2I-Adapter-XL's last feature
            h = h + features.pop(0).to(h.dtype)
        if control is not None and control.down:
            if len(control.down) != len(skips):
                raise ValueError(
                    f"ControlNet residuals: got {len(control.down)} skip residuals for a U-Net with {len(skips)} "
                    "skip connections; the ControlNet was made for another model"
                )
            skips = [s + r.to(s.dtype) for s, r in zip(skips, control.down, strict=True)]
        if control is not None and control.mid is not None:
            h = h + control.mid.to(h.dtype)
        for up in self.up:
            h = up(h, temb, context, mask, skips)
        return self.conv_out(F.silu(self.norm_out(h)))
