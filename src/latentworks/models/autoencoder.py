"""KL-regularised convolutional autoencoder (the "VAE" of latent diffusion).

Rombach et al. 2022, "High-Resolution Image Synthesis with Latent Diffusion Models", appendix G:
a ResNet encoder that halves the resolution at every level but the last, a middle block with one
single-head self-attention layer, a diagonal Gaussian posterior over the latent, and a mirrored decoder.
The same module expresses the SD 1.x/2.x, SDXL, SD3 and FLUX autoencoders exactly (see ``PRESETS``);
``latentworks.checkpoints.keymaps.sd_diffusers`` converts their weights.

Parameter layout (ours):
    encoder.conv_in, encoder.down.{i}.resnets.{j}, encoder.down.{i}.downsample.conv,
    encoder.mid.{res1, attn, res2}, encoder.norm_out, encoder.conv_out, quant_conv,
    post_quant_conv, decoder.conv_in, decoder.mid.{res1, attn, res2}, decoder.up.{i}.resnets.{j},
    decoder.up.{i}.upsample.conv, decoder.norm_out, decoder.conv_out
Decoder levels are numbered in the order they run (``up.0`` is the lowest resolution).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentworks.nn.attention import attention, split_heads
from latentworks.nn.autoencoding import (
    LOGVAR_MAX,
    LOGVAR_MIN,
    DiagonalGaussian,
    blend_ramp,
    tile_starts,
    tiled_decode,
)
from latentworks.nn.norms import GroupNorm
from latentworks.nn.resnet import Downsample, ResBlock, Upsample


@dataclass(frozen=True, kw_only=True)
class AutoencoderConfig:
    """Architecture of a KL autoencoder.

    Attributes:
        in_channels / out_channels: image channels (3 for RGB).
        latent_channels: channels of the latent ``z`` (4 for SD/SDXL, 16 for SD3/FLUX).
        channels: width of each encoder level; the decoder mirrors it. ``len(channels) - 1``
            downsamplings give the downsampling factor ``2 ** (len(channels) - 1)``.
        layers_per_block: ResBlocks per encoder level (the decoder uses one more, as in LDM).
        norm_groups: GroupNorm groups; must divide every width.
        use_quant_conv / use_post_quant_conv: the 1x1 convs around the latent (SD/SDXL have them,
            SD3/FLUX do not).
        mid_attention: self-attention in the middle blocks.
    """

    in_channels: int = 3
    out_channels: int = 3
    latent_channels: int = 4
    channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    norm_groups: int = 32
    norm_eps: float = 1e-6
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    mid_attention: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.channels, tuple) or not self.channels:
            raise ValueError(
                f"AutoencoderConfig.channels must be a non-empty tuple of widths, got {self.channels!r}; "
                "e.g. channels=(128, 256, 512, 512)"
            )
        for name in ("in_channels", "out_channels", "latent_channels", "layers_per_block", "norm_groups"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"AutoencoderConfig.{name} must be a positive int, got {value!r}")
        bad = [c for c in self.channels if not isinstance(c, int) or c < 1 or c % self.norm_groups]
        if bad:
            raise ValueError(
                f"AutoencoderConfig.channels={self.channels} has widths {bad} that are not positive multiples "
                f"of norm_groups={self.norm_groups}; change the widths or norm_groups"
            )
        if self.norm_eps <= 0:
            raise ValueError(f"AutoencoderConfig.norm_eps must be > 0, got {self.norm_eps}")

    @property
    def downsample_factor(self) -> int:
        """Spatial reduction from image to latent (8 for SD)."""
        return 2 ** (len(self.channels) - 1)


PRESETS: dict[str, AutoencoderConfig] = {
    # stabilityai/sd-vae-ft-mse and the VAEs inside SD 1.x / 2.x checkpoints (83,653,863 params).
    "sd": AutoencoderConfig(),
    # SDXL's VAE has the same architecture (different weights and scaling factor).
    "sdxl": AutoencoderConfig(),
    # SD3 / SD3.5: 16 latent channels, no quant convs.
    "sd3": AutoencoderConfig(latent_channels=16, use_quant_conv=False, use_post_quant_conv=False),
    # FLUX.1: same architecture as SD3's (different weights, scale and shift).
    "flux": AutoencoderConfig(latent_channels=16, use_quant_conv=False, use_post_quant_conv=False),
    # 64x64 emoji -> 16x16x4 latents.
    "emoji-f4c4": AutoencoderConfig(latent_channels=4, channels=(64, 128, 128), layers_per_block=2),
    # The embedded default model: 32x32 emoji -> 8x8x4 latents; ~2.1M params, trainable on a CPU.
    "emoji32-f4c4": AutoencoderConfig(
        latent_channels=4, channels=(48, 96, 96), layers_per_block=1, norm_groups=16
    ),
    # The same with 8 latent channels (8x8x8 latents): the f4c4 bottleneck cost ~57 FID at N=1000.
    "emoji32-f4c8": AutoencoderConfig(
        latent_channels=8, channels=(48, 96, 96), layers_per_block=1, norm_groups=16
    ),
    # latentworks train-quick (training/quick.py): 32x32 -> 8x8x4 latents; ~0.95M params, minutes on a CPU.
    "quick32-f4c4": AutoencoderConfig(
        latent_channels=4, channels=(32, 64, 64), layers_per_block=1, norm_groups=16
    ),
    # For tests: f2, a few hundred thousand params.
    "tiny": AutoencoderConfig(latent_channels=4, channels=(16, 32), layers_per_block=1, norm_groups=8),
}


class SpatialSelfAttention(nn.Module):
    """Single-head self-attention over all positions, with a residual (the VAE middle block).

    Parameter names: ``norm, q, k, v, out`` (linear projections, as diffusers stores them).
    """

    def __init__(self, channels: int, *, groups: int, eps: float) -> None:
        super().__init__()
        self.norm = GroupNorm(groups, channels, eps=eps)
        self.q = nn.Linear(channels, channels)
        self.k = nn.Linear(channels, channels)
        self.v = nn.Linear(channels, channels)
        self.out = nn.Linear(channels, channels)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, C, H, W)
        b, c, h, w = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # (B, HW, C)
        q, k, v = (split_heads(proj(tokens), 1) for proj in (self.q, self.k, self.v))  # (B, 1, HW, C)
        out = self.out(attention(q, k, v))  # (B, HW, C)
        return x + out.transpose(1, 2).reshape(b, c, h, w)


class MidBlock(nn.Module):
    """ResBlock -> (attention) -> ResBlock at the lowest resolution."""

    def __init__(self, channels: int, *, groups: int, eps: float, use_attention: bool) -> None:
        super().__init__()
        self.res1 = ResBlock(channels, channels, groups=groups, eps=eps)
        self.attn = SpatialSelfAttention(channels, groups=groups, eps=eps) if use_attention else None
        self.res2 = ResBlock(channels, channels, groups=groups, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        x = self.res1(x)
        if self.attn is not None:
            x = self.attn(x)
        return self.res2(x)


class EncoderLevel(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, cfg: AutoencoderConfig, *, downsample: bool) -> None:
        super().__init__()
        g, eps = cfg.norm_groups, cfg.norm_eps
        self.resnets = nn.ModuleList(
            ResBlock(in_ch if j == 0 else out_ch, out_ch, groups=g, eps=eps)
            for j in range(cfg.layers_per_block)
        )
        self.downsample = Downsample(out_ch, asymmetric_padding=True) if downsample else None

    def forward(self, x: Tensor) -> Tensor:
        for res in self.resnets:
            x = res(x)
        return x if self.downsample is None else self.downsample(x)


class DecoderLevel(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, cfg: AutoencoderConfig, *, upsample: bool) -> None:
        super().__init__()
        g, eps = cfg.norm_groups, cfg.norm_eps
        self.resnets = nn.ModuleList(
            ResBlock(in_ch if j == 0 else out_ch, out_ch, groups=g, eps=eps)
            for j in range(cfg.layers_per_block + 1)
        )
        self.upsample = Upsample(out_ch) if upsample else None

    def forward(self, x: Tensor) -> Tensor:
        for res in self.resnets:
            x = res(x)
        return x if self.upsample is None else self.upsample(x)


class Encoder(nn.Module):
    """(B, in_channels, H, W) -> moments (B, 2 * latent_channels, H/f, W/f)."""

    def __init__(self, cfg: AutoencoderConfig) -> None:
        super().__init__()
        ch = cfg.channels
        self.conv_in = nn.Conv2d(cfg.in_channels, ch[0], 3, padding=1)
        self.down = nn.ModuleList(
            EncoderLevel(ch[max(i - 1, 0)], ch[i], cfg, downsample=i < len(ch) - 1) for i in range(len(ch))
        )
        self.mid = MidBlock(ch[-1], groups=cfg.norm_groups, eps=cfg.norm_eps, use_attention=cfg.mid_attention)
        self.norm_out = GroupNorm(cfg.norm_groups, ch[-1], eps=cfg.norm_eps)
        self.conv_out = nn.Conv2d(ch[-1], 2 * cfg.latent_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """(B, latent_channels, h, w) -> (B, out_channels, h*f, w*f).

    Fully convolutional except the middle attention, so it can be run on overlapping tiles.
    """

    def __init__(self, cfg: AutoencoderConfig) -> None:
        super().__init__()
        rev = tuple(reversed(cfg.channels))
        self.conv_in = nn.Conv2d(cfg.latent_channels, rev[0], 3, padding=1)
        self.mid = MidBlock(rev[0], groups=cfg.norm_groups, eps=cfg.norm_eps, use_attention=cfg.mid_attention)
        self.up = nn.ModuleList(
            DecoderLevel(rev[max(i - 1, 0)], rev[i], cfg, upsample=i < len(rev) - 1) for i in range(len(rev))
        )
        self.norm_out = GroupNorm(cfg.norm_groups, rev[-1], eps=cfg.norm_eps)
        self.conv_out = nn.Conv2d(rev[-1], cfg.out_channels, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.mid(self.conv_in(z))
        for level in self.up:
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Autoencoder(nn.Module):
    """KL autoencoder: ``encode(x) -> DiagonalGaussian``, ``decode(z) -> x``; images in [-1, 1].

    Latents here are the raw ones; the per-family scale/shift belongs to the latent format.
    """

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__()
        self.config = config
        c = config.latent_channels
        self.encoder = Encoder(config)
        self.quant_conv = nn.Conv2d(2 * c, 2 * c, 1) if config.use_quant_conv else None
        self.post_quant_conv = nn.Conv2d(c, c, 1) if config.use_post_quant_conv else None
        self.decoder = Decoder(config)

    def encode(self, x: Tensor) -> DiagonalGaussian:
        """(B, C_in, H, W) images -> posterior over (B, latent_channels, H/f, W/f)."""
        f = self.config.downsample_factor
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(
                f"Autoencoder.encode expects (B, {self.config.in_channels}, H, W), got {tuple(x.shape)}"
            )
        if x.shape[-2] % f or x.shape[-1] % f:
            raise ValueError(
                f"image size {tuple(x.shape[-2:])} is not a multiple of the downsampling factor {f}; "
                "crop or pad the image"
            )
        moments = self.encoder(x)  # (B, 2C, h, w)
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        return DiagonalGaussian(moments)

    def decode(self, z: Tensor) -> Tensor:
        """(B, latent_channels, h, w) -> (B, C_out, h*f, w*f)."""
        if z.ndim != 4 or z.shape[1] != self.config.latent_channels:
            raise ValueError(
                f"Autoencoder.decode expects (B, {self.config.latent_channels}, h, w) latents, "
                f"got {tuple(z.shape)}"
            )
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)

    def tiled_decode(self, z: Tensor, tile: int = 64, overlap: int = 16) -> Tensor:
        """Decode ``z`` in overlapping ``tile`` x ``tile`` latent tiles, blended with linear ramps.

        Memory grows with the tile, not the image. Each tile is decoded on its own (GroupNorm statistics
        and the middle attention see only the tile), so the result is close to, not equal to,
        ``decode(z)``; the ramps over ``overlap`` latent pixels hide the seams. A latent no larger than
        one tile is decoded in one piece, exactly as ``decode``.
        """
        cfg = self.config
        return tiled_decode(self.decode, z, tile, overlap, cfg.downsample_factor, cfg.out_channels)

    def tiled_encode(self, x: Tensor, tile: int = 512, overlap: int = 64) -> Tensor:
        """Encode images ``x`` (B, C_in, H, W) in overlapping ``tile`` x ``tile`` pixel tiles to the
        posterior mode (B, latent_channels, H/f, W/f), blended with linear ramps over ``overlap / f`` cells.

        ``tile`` and ``overlap`` are rounded down to multiples of the downsampling factor f. Like
        :meth:`tiled_decode` the result is close to, not equal to, ``encode(x).mode()``; an image no larger
        than one tile is encoded in one piece, exactly as ``encode``.
        """
        f = self.config.downsample_factor
        t, o = tile // f, overlap // f
        if t < 1 or not 0 <= o < t:
            raise ValueError(
                f"tiled_encode needs tile >= {f} and 0 <= overlap < tile, got {tile=} {overlap=}"
            )
        b, _, height, width = x.shape
        if height % f or width % f:
            raise ValueError(f"image size {(height, width)} is not a multiple of the downsampling factor {f}")
        h, w = height // f, width // f
        if h <= t and w <= t:
            return self.encode(x).mode()
        ys, xs = tile_starts(h, t, o), tile_starts(w, t, o)
        out = x.new_zeros(b, self.config.latent_channels, h, w)
        weight = x.new_zeros(1, 1, h, w)
        for y0 in ys:
            for x0 in xs:
                th, tw = min(t, h - y0), min(t, w - x0)
                z = self.encode(
                    x[:, :, y0 * f : (y0 + th) * f, x0 * f : (x0 + tw) * f]
                ).mode()  # (B, C, th, tw)
                mask = (
                    blend_ramp(th, o, y0 > 0, y0 + th < h, x)[:, None]
                    * blend_ramp(tw, o, x0 > 0, x0 + tw < w, x)[None, :]
                )
                out[:, :, y0 : y0 + th, x0 : x0 + tw] += z * mask
                weight[:, :, y0 : y0 + th, x0 : x0 + tw] += mask
        return out / weight

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, DiagonalGaussian]:
        """Reconstruct ``x`` through a posterior sample; returns (reconstruction, posterior)."""
        posterior = self.encode(x)
        return self.decode(posterior.sample(generator)), posterior


__all__ = ["LOGVAR_MAX", "LOGVAR_MIN", "Autoencoder", "AutoencoderConfig", "DiagonalGaussian"]
