"""DeepFloyd IF's pixel-space U-Net (stage I, 64 px, and the stage II super-resolution model).

Saharia et al. 2022 (Imagen) as released by DeepFloyd: a convolutional U-Net on RGB pixels conditioned on frozen
T5-XXL token states. It differs from the SD U-Net (:mod:`latentworks.models.unet`) in every block, so it has its
own file:

- ResBlocks modulate their second GroupNorm with a scale and shift from the time embedding
  (``h = norm2(h) * (1 + scale) + shift``, "scale_shift"), use GELU, and change resolution themselves
  (average pooling down, nearest-neighbour up, applied to both the residual and the skip path);
- attention is one block per ResBlock that attends from the pixels to the concatenation of the projected text
  tokens and the pixels themselves ("added kv": ``k = [k_text; k_pixels]``), after a GroupNorm of the pixels and
  a GroupNorm of the text tokens;
- the text tokens (4096 wide) are projected to the attention width (``text_proj``) and also pooled by attention
  into a vector added to the time embedding (``text_pool``);
- the output has twice the input's channels: the noise (eps) and the learned variance interpolation
  (Nichol & Dhariwal 2021), split by the sampler (:mod:`latentworks.diffusion.ddpm`);
- stage II concatenates the noise-augmented, upsampled low-resolution image to its input
  (``cond.extra[CONCAT_KEY]``) and embeds the augmentation's noise level like a timestep
  (``cond.extra[NOISE_LEVEL_KEY]``, diffusers' ``class_labels``).

Parameter layout (ours; :mod:`latentworks.checkpoints.keymaps.if_diffusers` converts to and from diffusers):
    conv_in, time_embed.{fc1, fc2}, class_embed.{fc1, fc2}, text_proj,
    text_pool.{norm_in, position, q, k, v, proj, norm_out},
    down.{i}.resnets.{j}, down.{i}.attentions.{j}, down.{i}.downsample,
    mid.{res1, attention, res2}, up.{i}.resnets.{j}, up.{i}.attentions.{j}, up.{i}.upsample, norm_out, conv_out
    resblock: norm1, conv1, time_proj, norm2, conv2, skip
    attention: norm, context_norm, q, k, v, context_k, context_v, out
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentworks.diffusion.conditioning import CONCAT_KEY, Conditioning
from latentworks.nn.attention import attention, split_heads
from latentworks.nn.embeddings import timestep_embedding

# cond.extra key of stage II's noise-augmentation level (B,): the DDPM step used to noise the low-res image
NOISE_LEVEL_KEY = "noise_level"
ACTIVATIONS = ("gelu", "silu")


def _activation(name: str) -> nn.Module:
    return nn.GELU() if name == "gelu" else nn.SiLU()


@dataclass(frozen=True, kw_only=True)
class IFUNetConfig:
    """Architecture of a DeepFloyd IF U-Net.

    Attributes:
        in_channels / out_channels: 3 / 6 for stage I (RGB in; eps and variance out), 6 / 6 for stage II
            (the noisy image and the upsampled low-res image in).
        channels: width of each level (diffusers' ``block_out_channels``).
        layers_per_block: ResBlocks per down level (up levels have one more).
        attention: per level, True where every ResBlock is followed by an attention block
            (``SimpleCrossAttnDownBlock2D``), False for plain ResBlocks (``ResnetDownsampleBlock2D``).
        head_dim: per level, the width of an attention head (diffusers' ``attention_head_dim``, which for these
            blocks really is a width). The up path reads it by the up block's position, not its level, as
            diffusers does.
        only_cross_attention / mid_only_cross_attention: attend to the text alone (no pixel keys) per level
            and in the middle block.
        context_dim: the attention's text width after ``text_proj`` (diffusers' ``cross_attention_dim``).
        text_dim: width of the text tokens given in ``cond.tokens`` (T5-XXL: 4096); 0: tokens already have
            ``context_dim`` and there is no ``text_proj``.
        text_pool_heads: heads of the attention pooling that adds the text to the time embedding; 0: none.
        time_embed_dim: width of the time embedding (default 4 x channels[0]).
        noise_level_embed: embed ``cond.extra[NOISE_LEVEL_KEY]`` like a timestep and add it (stage II).
        act / time_act: ResBlock and time-MLP activation; the activation applied to the summed embedding
            (None: none).
        skip_time_act: the ResBlocks take the embedding without applying ``act`` first.
        resnet_out_scale / mid_out_scale: each ResBlock divides its output by this.
        cross_norm: GroupNorm(32) over the text tokens before the key/value projections.
        norm_groups / norm_eps: GroupNorm groups and epsilon of the ResBlocks, attention and output.
        flip_sin_to_cos / freq_shift: the sinusoidal timestep embedding's convention.

    The defaults are an IF-like shape, not a release's: released models are read from their ``unet/config.json``
    (:func:`latentworks.checkpoints.keymaps.if_diffusers.if_config_from_diffusers`).
    """

    in_channels: int = 3
    out_channels: int = 6
    channels: tuple[int, ...] = (320, 640, 960, 1280)
    layers_per_block: tuple[int, ...] = (3, 3, 3, 3)
    attention: tuple[bool, ...] = (False, True, True, True)
    head_dim: tuple[int, ...] = (64, 64, 64, 64)
    only_cross_attention: tuple[bool, ...] = (False, False, False, False)
    mid_only_cross_attention: bool = False
    context_dim: int = 1280
    text_dim: int = 4096
    text_pool_heads: int = 64
    time_embed_dim: int = 1280
    noise_level_embed: bool = False
    act: str = "gelu"
    time_act: str | None = "gelu"
    skip_time_act: bool = True
    resnet_out_scale: float = 1.0
    mid_out_scale: float = 1.0
    cross_norm: bool = True
    cross_norm_groups: int = 32
    norm_groups: int = 32
    norm_eps: float = 1e-5
    flip_sin_to_cos: bool = True
    freq_shift: float = 0.0

    def __post_init__(self) -> None:
        n = len(self.channels) if isinstance(self.channels, tuple) else 0
        if n == 0:
            raise ValueError(
                f"IFUNetConfig.channels must be a non-empty tuple of widths, got {self.channels!r}"
            )
        for name in ("layers_per_block", "attention", "head_dim", "only_cross_attention"):
            value = getattr(self, name)
            if not isinstance(value, tuple) or len(value) != n:
                raise ValueError(
                    f"IFUNetConfig.{name} must be a tuple with one entry per level ({n} levels), got {value!r}"
                )
        bad = [c for c in self.channels if c < 1 or c % self.norm_groups]
        if bad:
            raise ValueError(
                f"IFUNetConfig.channels={self.channels} has widths {bad} that are not positive multiples of "
                f"norm_groups={self.norm_groups}"
            )
        # down level i uses head_dim[i]; up block i (level n-1-i) uses head_dim[i] too, as in diffusers
        for i, d in enumerate(self.head_dim):
            used = [self.channels[i]] * self.attention[i] + [self.channels[n - 1 - i]] * self.attention[
                n - 1 - i
            ]
            for width in used + ([self.channels[-1]] if i == n - 1 else []):
                if d < 1 or width % d:
                    raise ValueError(
                        f"IFUNetConfig.head_dim={d} (entry {i}) must divide the widths {self.channels[i]} and "
                        f"{self.channels[n - 1 - i]} (down level {i} and up block {i}); change head_dim"
                    )
        if self.act not in ACTIVATIONS or (self.time_act is not None and self.time_act not in ACTIVATIONS):
            raise ValueError(
                f"IFUNetConfig: act and time_act must be one of {ACTIVATIONS} (time_act may be None), "
                f"got act={self.act!r}, time_act={self.time_act!r}"
            )
        if self.text_pool_heads and (self.text_dim or self.context_dim) % self.text_pool_heads:
            raise ValueError(
                f"IFUNetConfig.text_pool_heads={self.text_pool_heads} must divide the text width "
                f"{self.text_dim or self.context_dim}"
            )
        if self.cross_norm and self.context_dim % self.cross_norm_groups:
            raise ValueError(
                f"IFUNetConfig.context_dim={self.context_dim} must be a multiple of cross_norm_groups="
                f"{self.cross_norm_groups}"
            )

    @property
    def token_dim(self) -> int:
        """Width of ``cond.tokens`` the network takes."""
        return self.text_dim or self.context_dim


class ResBlock(nn.Module):
    """GroupNorm -> act -> [resample] -> conv -> scale-shift GroupNorm -> act -> conv, plus a (resampled,
    1x1-projected when the width changes) skip; the sum divided by ``out_scale``."""

    def __init__(
        self, in_ch: int, out_ch: int, cfg: IFUNetConfig, *, out_scale: float, resample: str | None = None
    ) -> None:
        super().__init__()
        groups, eps = cfg.norm_groups, cfg.norm_eps
        self.norm1 = nn.GroupNorm(groups, in_ch, eps=eps)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.time_proj = nn.Linear(cfg.time_embed_dim, 2 * out_ch)
        self.norm2 = nn.GroupNorm(groups, out_ch, eps=eps)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else None
        self.act = _activation(cfg.act)
        self.skip_time_act = cfg.skip_time_act
        self.resample = resample  # None | "down" (2x2 average pooling) | "up" (nearest 2x)
        self.out_scale = out_scale

    def _resample(self, x: Tensor) -> Tensor:
        if self.resample == "down":
            return F.avg_pool2d(x, kernel_size=2, stride=2)
        if self.resample == "up":
            return F.interpolate(x, scale_factor=2.0, mode="nearest")
        return x

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:  # (B, in, H, W), (B, T) -> (B, out, H', W')
        h = self._resample(self.act(self.norm1(x)))
        x = self._resample(x)
        h = self.conv1(h)
        emb = self.time_proj(temb if self.skip_time_act else self.act(temb))[:, :, None, None]
        scale, shift = emb.chunk(2, dim=1)
        h = self.conv2(self.act(self.norm2(h) * (1 + scale) + shift))
        if self.skip is not None:
            x = self.skip(x)
        return (x + h) / self.out_scale


class AddedKVAttention(nn.Module):
    """Pixels attend to ``[text tokens; pixels]`` (or the text alone), with a residual.

    Queries from the GroupNorm-ed pixels; keys and values of the text through ``context_k`` / ``context_v``
    (after an optional GroupNorm over the token features), of the pixels through ``k`` / ``v``."""

    def __init__(self, channels: int, cfg: IFUNetConfig, *, head_dim: int, only_cross: bool) -> None:
        super().__init__()
        self.num_heads = channels // head_dim
        self.norm = nn.GroupNorm(cfg.norm_groups, channels, eps=cfg.norm_eps)
        self.context_norm = nn.GroupNorm(cfg.cross_norm_groups, cfg.context_dim) if cfg.cross_norm else None
        self.q = nn.Linear(channels, channels)
        self.k = None if only_cross else nn.Linear(channels, channels)
        self.v = None if only_cross else nn.Linear(channels, channels)
        self.context_k = nn.Linear(cfg.context_dim, channels)
        self.context_v = nn.Linear(cfg.context_dim, channels)
        self.out = nn.Linear(channels, channels)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:  # (B, C, H, W), (B, S, context_dim)
        b, c, h, w = x.shape
        y = self.norm(x).flatten(2).transpose(1, 2)  # (B, HW, C)
        if self.context_norm is not None:
            context = self.context_norm(context.transpose(1, 2)).transpose(1, 2)
        keys, values = [self.context_k(context)], [self.context_v(context)]  # (B, S, C) each
        if self.k is not None and self.v is not None:
            keys.append(self.k(y))
            values.append(self.v(y))
        q, k, v = (
            split_heads(t, self.num_heads) for t in (self.q(y), torch.cat(keys, 1), torch.cat(values, 1))
        )
        out = self.out(attention(q, k, v))  # (B, HW, C)
        return x + out.transpose(1, 2).reshape(b, c, h, w)


class AttentionPool(nn.Module):
    """One query, the token mean plus a learned position, attending to [itself; tokens]: (B, S, D) -> (B, D)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.position = nn.Parameter(torch.zeros(1, dim))
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)

    def forward(self, tokens: Tensor) -> Tensor:
        query = tokens.mean(dim=1, keepdim=True) + self.position.to(tokens.dtype)  # (B, 1, D)
        seq = torch.cat([query, tokens], dim=1)  # (B, 1 + S, D)
        q, k, v = (split_heads(t, self.num_heads) for t in (self.q(query), self.k(seq), self.v(seq)))
        return attention(q, k, v)[:, 0]  # (B, D)


class TextPool(nn.Module):
    """LayerNorm -> attention pooling -> Linear -> LayerNorm: the text vector added to the time embedding."""

    def __init__(self, dim: int, out_dim: int, num_heads: int) -> None:
        super().__init__()
        self.norm_in = nn.LayerNorm(dim)
        self.pool = AttentionPool(dim, num_heads)
        self.proj = nn.Linear(dim, out_dim)
        self.norm_out = nn.LayerNorm(out_dim)

    def forward(self, tokens: Tensor) -> Tensor:  # (B, S, dim) -> (B, out_dim)
        return self.norm_out(self.proj(self.pool(self.norm_in(tokens))))


class TimeMLP(nn.Module):
    """Linear -> act -> Linear (parameters ``fc1``, ``fc2``)."""

    def __init__(self, in_dim: int, out_dim: int, act: str) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_dim, out_dim)
        self.act = _activation(act)
        self.fc2 = nn.Linear(out_dim, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Level(nn.Module):
    """One resolution: ResBlocks, each followed by an attention block where the level has attention."""

    def __init__(
        self,
        in_channels: list[int],
        out_ch: int,
        cfg: IFUNetConfig,
        *,
        attend: bool,
        head_dim: int,
        only: bool,
    ) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(
            ResBlock(c, out_ch, cfg, out_scale=cfg.resnet_out_scale) for c in in_channels
        )
        self.attentions = (
            nn.ModuleList(
                AddedKVAttention(out_ch, cfg, head_dim=head_dim, only_cross=only) for _ in in_channels
            )
            if attend
            else None
        )

    def block(self, j: int, h: Tensor, temb: Tensor, context: Tensor) -> Tensor:
        h = self.resnets[j](h, temb)
        return h if self.attentions is None else self.attentions[j](h, context)


class DownLevel(Level):
    """A down level and the downsampling ResBlock after it (None on the lowest level)."""

    def __init__(self, in_ch: int, out_ch: int, cfg: IFUNetConfig, *, level: int, downsample: bool) -> None:
        in_channels = [in_ch] + [out_ch] * (cfg.layers_per_block[level] - 1)
        super().__init__(
            in_channels, out_ch, cfg, attend=cfg.attention[level], head_dim=cfg.head_dim[level],
            only=cfg.only_cross_attention[level],
        )  # fmt: skip
        self.downsample = (
            ResBlock(out_ch, out_ch, cfg, out_scale=cfg.resnet_out_scale, resample="down")
            if downsample
            else None
        )


class UpLevel(Level):
    """An up level (skips concatenated before each ResBlock) and the upsampling ResBlock after it."""

    def __init__(
        self,
        in_channels: list[int],
        out_ch: int,
        cfg: IFUNetConfig,
        *,
        level: int,
        position: int,
        upsample: bool,
    ) -> None:
        # diffusers gives up block ``position`` the head width of down level ``position`` (not of its own level)
        super().__init__(
            in_channels, out_ch, cfg, attend=cfg.attention[level], head_dim=cfg.head_dim[position],
            only=cfg.only_cross_attention[level],
        )  # fmt: skip
        self.upsample = (
            ResBlock(out_ch, out_ch, cfg, out_scale=cfg.resnet_out_scale, resample="up") if upsample else None
        )


class MidBlock(nn.Module):
    """ResBlock -> attention -> ResBlock at the lowest resolution."""

    def __init__(self, cfg: IFUNetConfig) -> None:
        super().__init__()
        ch = cfg.channels[-1]
        self.res1 = ResBlock(ch, ch, cfg, out_scale=cfg.mid_out_scale)
        self.attention = AddedKVAttention(
            ch, cfg, head_dim=cfg.head_dim[-1], only_cross=cfg.mid_only_cross_attention
        )
        self.res2 = ResBlock(ch, ch, cfg, out_scale=cfg.mid_out_scale)

    def forward(self, h: Tensor, temb: Tensor, context: Tensor) -> Tensor:
        return self.res2(self.attention(self.res1(h, temb), context), temb)


class IFUNet(nn.Module):
    """``forward(x (B, C_in, H, W), t (B,), cond) -> (B, C_out, H, W)``: eps and the variance interpolation.

    ``cond.tokens`` (B, S, token_dim) are T5-XXL's last hidden states (all positions, padding included, as
    diffusers' pipelines pass them). Stage II reads ``cond.extra[CONCAT_KEY]`` (B, 3, H, W), the noise-augmented
    upsampled low-res image, and ``cond.extra[NOISE_LEVEL_KEY]`` (B,), its augmentation step.
    """

    def __init__(self, config: IFUNetConfig) -> None:
        super().__init__()
        self.config = cfg = config
        ch, n = cfg.channels, len(cfg.channels)
        self.conv_in = nn.Conv2d(cfg.in_channels, ch[0], 3, padding=1)
        self.time_embed = TimeMLP(ch[0], cfg.time_embed_dim, cfg.act)
        self.class_embed = TimeMLP(ch[0], cfg.time_embed_dim, cfg.act) if cfg.noise_level_embed else None
        self.text_proj = nn.Linear(cfg.text_dim, cfg.context_dim) if cfg.text_dim else None
        self.text_pool = (
            TextPool(cfg.token_dim, cfg.time_embed_dim, cfg.text_pool_heads) if cfg.text_pool_heads else None
        )
        self.time_act = None if cfg.time_act is None else _activation(cfg.time_act)

        skip_channels = [ch[0]]  # widths of the tensors the down path hands to the up path
        down = []
        for i in range(n):
            down.append(DownLevel(ch[max(i - 1, 0)], ch[i], cfg, level=i, downsample=i < n - 1))
            skip_channels += [ch[i]] * cfg.layers_per_block[i] + ([ch[i]] if i < n - 1 else [])
        self.down = nn.ModuleList(down)
        self.mid = MidBlock(cfg)
        up = []
        prev = ch[-1]
        for i, level in enumerate(reversed(range(n))):
            in_channels = []
            for _ in range(cfg.layers_per_block[level] + 1):
                in_channels.append(prev + skip_channels.pop())
                prev = ch[level]
            up.append(UpLevel(in_channels, ch[level], cfg, level=level, position=i, upsample=i < n - 1))
        self.up = nn.ModuleList(up)
        self.norm_out = nn.GroupNorm(cfg.norm_groups, ch[0], eps=cfg.norm_eps)
        self.act_out = _activation(cfg.act)
        self.conv_out = nn.Conv2d(ch[0], cfg.out_channels, 3, padding=1)

    def _embedding(self, t: Tensor, cond: Conditioning, batch: int, dtype: torch.dtype) -> Tensor:
        """(B, time_embed_dim): timestep + noise level (stage II) + pooled text, then ``time_act``."""
        cfg = self.config
        t = t.expand(batch) if t.ndim == 0 else t

        def sincos(steps: Tensor) -> Tensor:  # (B,) -> (B, channels[0])
            return timestep_embedding(
                steps,
                cfg.channels[0],
                flip_sin_to_cos=cfg.flip_sin_to_cos,
                downscale_freq_shift=cfg.freq_shift,
            ).to(dtype)

        emb = self.time_embed(sincos(t))
        if self.class_embed is not None:
            level = cond.extra.get(NOISE_LEVEL_KEY)
            if level is None:
                raise ValueError(
                    f"this IF super-resolution U-Net needs cond.extra[{NOISE_LEVEL_KEY!r}] (B,), the noise-"
                    "augmentation step of the low-resolution image (DeepFloyd's default: 250)"
                )
            level = torch.as_tensor(level, device=t.device).reshape(-1).expand(batch)
            emb = emb + self.class_embed(sincos(level))
        if self.text_pool is not None:
            emb = emb + self.text_pool(cond.tokens.to(dtype))
        return emb if self.time_act is None else self.time_act(emb)

    def forward(self, x: Tensor, t: Tensor, cond: Conditioning) -> Tensor:
        cfg = self.config
        concat = cond.extra.get(CONCAT_KEY)
        if concat is not None and x.ndim == 4 and x.shape[1] + concat.shape[1] == cfg.in_channels:
            x = torch.cat([x, concat.to(x)], dim=1)  # stage II: (B, 3 + 3, H, W)
        if x.ndim != 4 or x.shape[1] != cfg.in_channels:
            hint = (
                f"; a super-resolution U-Net also takes the upsampled low-resolution image in "
                f"cond.extra[{CONCAT_KEY!r}]"
                if x.ndim == 4 and x.shape[1] < cfg.in_channels and concat is None
                else ""
            )
            raise ValueError(
                f"IFUNet expects x of shape (B, {cfg.in_channels}, H, W), got {tuple(x.shape)}{hint}"
            )
        if (
            cond.tokens.ndim != 3
            or cond.tokens.shape[0] != x.shape[0]
            or cond.tokens.shape[-1] != cfg.token_dim
        ):
            raise ValueError(
                f"IFUNet: cond.tokens must be (B={x.shape[0]}, S, {cfg.token_dim}) T5 states, got "
                f"{tuple(cond.tokens.shape)}"
            )
        factor = 2 ** (len(cfg.channels) - 1)
        if x.shape[-2] % factor or x.shape[-1] % factor:
            raise ValueError(
                f"IFUNet: height and width must be multiples of {factor} (it halves them {len(cfg.channels) - 1} "
                f"times), got {x.shape[-2]}x{x.shape[-1]}"
            )
        dtype = self.conv_in.weight.dtype
        temb = self._embedding(t, cond, x.shape[0], dtype)
        tokens = cond.tokens.to(dtype)
        context = self.text_proj(tokens) if self.text_proj is not None else tokens  # (B, S, context_dim)

        h = self.conv_in(x.to(dtype))
        skips = [h]
        for down in self.down:
            assert isinstance(down, DownLevel)
            for j in range(len(down.resnets)):
                h = down.block(j, h, temb, context)
                skips.append(h)
            if down.downsample is not None:
                h = down.downsample(h, temb)
                skips.append(h)
        h = self.mid(h, temb, context)
        for up in self.up:
            assert isinstance(up, UpLevel)
            for j in range(len(up.resnets)):
                h = up.block(j, torch.cat([h, skips.pop()], dim=1), temb, context)
            if up.upsample is not None:
                h = up.upsample(h, temb)
        return self.conv_out(self.act_out(self.norm_out(h)))


PRESETS: dict[str, IFUNetConfig] = {
    # For tests: both level kinds, text pooling, group-normed added-kv attention, learned variance; ~1.1M params.
    "tiny": IFUNetConfig(
        channels=(32, 64),
        layers_per_block=(1, 2),
        attention=(False, True),
        head_dim=(16, 16),
        only_cross_attention=(False, False),
        context_dim=32,
        text_dim=32,
        text_pool_heads=4,
        time_embed_dim=128,
        resnet_out_scale=1.414,
        norm_groups=8,
    ),
}
PRESETS["tiny-sr"] = IFUNetConfig(  # its super-resolution counterpart (6 channels in, noise-level embedding)
    **{**PRESETS["tiny"].__dict__, "in_channels": 6, "noise_level_embed": True, "layers_per_block": (1, 1),
       "resnet_out_scale": 1.0, "only_cross_attention": (False, True), "mid_only_cross_attention": True},
)  # fmt: skip
