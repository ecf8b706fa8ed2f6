"""The Qwen-Image VAE (Qwen team 2025; fine-tuned from the Wan 2.1 video VAE), run on single frames.

A causal 3D-conv VAE: 16 latent channels, 8x spatial downsampling, RMS-normalised residual blocks (no
GroupNorm), one single-head attention in each middle block, no attention elsewhere. It is a *video* VAE: every
convolution is a ``Conv3d`` that is causal in time (it pads ``2 * pad_t`` zero frames before the first frame,
none after), and two of the down/upsamplers also resample time (``time_conv``).

For one frame (an image) the causal padding means only the *last* temporal slice of each 3x3x3 kernel ever
meets data: a causal 3D conv over a single frame is the 2D conv with ``weight[:, :, -1]``. The temporal
resamplers are skipped for the first frame (diffusers' ``AutoencoderKLQwenImage`` with its feature cache, and
the original Wan code, only apply ``time_conv`` from the second chunk on). So this module computes in 2D while
keeping the file's 5D weights (``time_conv`` weights are held, for faithful round trips, and never used).

Images are (B, 3, H, W) in [-1, 1] with H and W multiples of 8; latents are the *raw* (B, 16, H/8, W/8) ones:
the per-channel mean/std normalisation is the family's latent format (``families.qwenimage``).

Parameter names follow diffusers' ``AutoencoderKLQwenImage`` (readable as they are: ``encoder.down_blocks.{i}``
is a flat list of residual blocks and resamplers, ``decoder.up_blocks.{i}.resnets.{j}`` / ``.upsamplers.0``);
ComfyUI's ``qwen_image_vae.safetensors`` uses the original Wan names, mapped in
:mod:`latentworks.checkpoints.keymaps.qwenimage_vae`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentworks.nn.autoencoding import DiagonalGaussian, tiled_decode

# The released VAE's per-channel latent statistics (diffusers ``AutoencoderKLQwenImage`` defaults): the diffusion
# model sees (z - mean) / std. They belong to the latent format (``families.qwenimage``); kept here as the
# defaults a diffusers config.json without them means.
RELEASE_LATENTS_MEAN = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)  # fmt: skip
RELEASE_LATENTS_STD = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class QwenImageVAEConfig:
    """Shape of a Qwen-Image VAE (diffusers ``AutoencoderKLQwenImage`` names in comments; defaults = release).

    ``temporal_downsample[i]``: whether the downsampler after encoder stage i also halves time (it then holds a
    ``time_conv``); the decoder mirrors it. It changes no single-frame result, only which tensors exist.
    """

    base_dim: int = 96  # base_dim
    z_dim: int = 16  # z_dim: latent channels
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)  # dim_mult
    num_res_blocks: int = 2  # num_res_blocks
    temporal_downsample: tuple[bool, ...] = (False, True, True)  # temperal_downsample (sic)
    in_channels: int = 3  # input_channels

    def __post_init__(self) -> None:
        if len(self.temporal_downsample) != len(self.dim_mult) - 1:
            raise ValueError(
                f"temporal_downsample needs one flag per downsampler ({len(self.dim_mult) - 1}), "
                f"got {self.temporal_downsample}"
            )
        if self.base_dim < 1 or self.z_dim < 1 or self.num_res_blocks < 1:
            raise ValueError("base_dim, z_dim and num_res_blocks must be positive")

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.dim_mult) - 1)

    @property
    def latent_channels(self) -> int:
        return self.z_dim

    @property
    def out_channels(self) -> int:
        return self.in_channels


PRESETS: dict[str, QwenImageVAEConfig] = {
    "qwen-image": QwenImageVAEConfig(),
    # tests: real widths would be slow on CPU; the structure is the release's
    "tiny": QwenImageVAEConfig(base_dim=32, dim_mult=(1, 2, 2, 2), num_res_blocks=1),
}


class CausalConv3d(nn.Conv3d):
    """A time-causal Conv3d applied to single frames: ``(B, C, H, W) -> (B, C', H', W')`` as the 2D conv with
    the kernel's last temporal slice (the only one that meets the frame; see the module docstring)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, padding: int = 0) -> None:
        super().__init__(in_ch, out_ch, kernel, padding=0)
        self.spatial_padding = padding

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        return F.conv2d(x, self.weight[:, :, -1], self.bias, padding=self.spatial_padding)


class ChannelRMSNorm(nn.Module):
    """``x / ||x||_channels * sqrt(C) * gamma`` (diffusers ``QwenImageRMS_norm``, no bias). ``gamma`` keeps the
    file's shape: (C, 1, 1, 1) in residual blocks (video), (C, 1, 1) in attention (per frame)."""

    def __init__(self, dim: int, *, video: bool = True) -> None:
        super().__init__()
        self.scale = dim**0.5
        self.gamma = nn.Parameter(torch.ones(dim, 1, 1, 1) if video else torch.ones(dim, 1, 1))

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W)
        normed = F.normalize(x.float(), dim=1).to(x.dtype)
        return normed * self.scale * self.gamma.reshape(1, -1, 1, 1)


class ResidualBlock(nn.Module):
    """norm -> SiLU -> 3x3 conv -> norm -> SiLU -> 3x3 conv, plus a 1x1 shortcut when widths differ."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.norm1 = ChannelRMSNorm(in_dim)
        self.conv1 = CausalConv3d(in_dim, out_dim, 3, padding=1)
        self.norm2 = ChannelRMSNorm(out_dim)
        self.conv2 = CausalConv3d(out_dim, out_dim, 3, padding=1)
        self.conv_shortcut = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return h + self.conv_shortcut(x)


class AttentionBlock(nn.Module):
    """Single-head self-attention over the H*W positions of a frame, with a residual."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = ChannelRMSNorm(dim, video=False)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        qkv = self.to_qkv(self.norm(x)).reshape(b, 3 * c, h * w).transpose(1, 2)  # (B, HW, 3C)
        q, k, v = (t[:, None] for t in qkv.chunk(3, dim=-1))  # (B, 1, HW, C) each
        out = F.scaled_dot_product_attention(q, k, v)[:, 0]  # (B, HW, C)
        return self.proj(out.transpose(1, 2).reshape(b, c, h, w)) + x


class MidBlock(nn.Module):
    """residual -> attention -> residual at the lowest resolution."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.resnets = nn.ModuleList([ResidualBlock(dim, dim), ResidualBlock(dim, dim)])
        self.attentions = nn.ModuleList([AttentionBlock(dim)])

    def forward(self, x: Tensor) -> Tensor:
        return self.resnets[1](self.attentions[0](self.resnets[0](x)))


class Downsample(nn.Module):
    """Pad right/bottom by one, 3x3 conv with stride 2 (``resample.1``); ``time_conv`` (temporal halving) is
    held only when the stage also downsamples time, and unused for single frames."""

    def __init__(self, dim: int, *, temporal: bool) -> None:
        super().__init__()
        self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(dim, dim, 3, stride=2))
        # the file's (dim, dim, 3, 1, 1) kernel, stride 2 in time
        self.time_conv = nn.Conv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1)) if temporal else None

    def forward(self, x: Tensor) -> Tensor:
        return self.resample(x)


class Upsample(nn.Module):
    """Nearest 2x, then a 3x3 conv halving the width (``resample.1``); ``time_conv`` (temporal doubling,
    ``dim -> 2 dim``) held only when the stage upsamples time, and unused for single frames."""

    def __init__(self, dim: int, *, temporal: bool) -> None:
        super().__init__()
        self.resample = nn.Sequential(
            nn.Upsample(scale_factor=2.0, mode="nearest-exact"), nn.Conv2d(dim, dim // 2, 3, padding=1)
        )
        # the file's (2 dim, dim, 3, 1, 1) kernel
        self.time_conv = nn.Conv3d(dim, dim * 2, (3, 1, 1)) if temporal else None

    def forward(self, x: Tensor) -> Tensor:
        up = F.interpolate(x.float(), scale_factor=2.0, mode="nearest-exact").to(x.dtype)
        return self.resample[1](up)


class UpBlock(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, num_res_blocks: int, upsample: str | None) -> None:
        super().__init__()
        dims = [in_dim] + [out_dim] * num_res_blocks
        self.resnets = nn.ModuleList([ResidualBlock(d, out_dim) for d in dims])
        self.upsamplers = (
            None if upsample is None else nn.ModuleList([Upsample(out_dim, temporal=upsample == "3d")])
        )

    def forward(self, x: Tensor) -> Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        return x if self.upsamplers is None else self.upsamplers[0](x)


class Encoder(nn.Module):
    """(B, 3, H, W) -> (B, 2 z_dim, H/8, W/8) moments before ``quant_conv``."""

    def __init__(self, cfg: QwenImageVAEConfig) -> None:
        super().__init__()
        dims = [cfg.base_dim * m for m in (1, *cfg.dim_mult)]
        self.conv_in = CausalConv3d(cfg.in_channels, dims[0], 3, padding=1)
        blocks: list[nn.Module] = []
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResidualBlock(in_dim, out_dim))
                in_dim = out_dim
            if i < len(cfg.dim_mult) - 1:
                blocks.append(Downsample(out_dim, temporal=cfg.temporal_downsample[i]))
        self.down_blocks = nn.ModuleList(blocks)
        self.mid_block = MidBlock(dims[-1])
        self.norm_out = ChannelRMSNorm(dims[-1])
        self.conv_out = CausalConv3d(dims[-1], 2 * cfg.z_dim, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        return self.conv_out(F.silu(self.norm_out(self.mid_block(x))))


class Decoder(nn.Module):
    """(B, z_dim, h, w) after ``post_quant_conv`` -> (B, 3, 8h, 8w)."""

    def __init__(self, cfg: QwenImageVAEConfig) -> None:
        super().__init__()
        mult = cfg.dim_mult
        dims = [cfg.base_dim * m for m in (mult[-1], *mult[::-1])]
        temporal_up = cfg.temporal_downsample[::-1]
        self.conv_in = CausalConv3d(cfg.z_dim, dims[0], 3, padding=1)
        self.mid_block = MidBlock(dims[0])
        blocks = []
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
            if i > 0:
                in_dim //= 2  # the previous upsampler halved the width
            upsample = None if i == len(mult) - 1 else ("3d" if temporal_up[i] else "2d")
            blocks.append(UpBlock(in_dim, out_dim, cfg.num_res_blocks, upsample))
        self.up_blocks = nn.ModuleList(blocks)
        self.norm_out = ChannelRMSNorm(dims[-1])
        self.conv_out = CausalConv3d(dims[-1], cfg.in_channels, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(F.silu(self.norm_out(x)))


class QwenImageVAE(nn.Module):
    """``encode(x) -> DiagonalGaussian``, ``decode(z) -> x`` on single frames (the interface of
    :class:`~latentworks.models.autoencoder.Autoencoder`); images in [-1, 1], raw latents."""

    def __init__(self, config: QwenImageVAEConfig) -> None:
        super().__init__()
        self.config = config
        z = config.z_dim
        self.encoder = Encoder(config)
        self.quant_conv = CausalConv3d(2 * z, 2 * z, 1)
        self.post_quant_conv = CausalConv3d(z, z, 1)
        self.decoder = Decoder(config)

    def encode(self, x: Tensor) -> DiagonalGaussian:
        """(B, 3, H, W) images -> posterior over (B, 16, H/8, W/8) raw latents."""
        f = self.config.downsample_factor
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(f"QwenImageVAE.encode expects (B, 3, H, W) images, got {tuple(x.shape)}")
        if x.shape[-2] % f or x.shape[-1] % f:
            raise ValueError(f"image size {tuple(x.shape[-2:])} is not a multiple of {f}; crop or pad it")
        return DiagonalGaussian(self.quant_conv(self.encoder(x)))

    def decode(self, z: Tensor) -> Tensor:
        """(B, 16, h, w) raw latents -> (B, 3, 8h, 8w) images clamped to [-1, 1] (as diffusers)."""
        if z.ndim != 4 or z.shape[1] != self.config.z_dim:
            raise ValueError(
                f"QwenImageVAE.decode expects (B, {self.config.z_dim}, h, w) latents, got {tuple(z.shape)}"
            )
        return self.decoder(self.post_quant_conv(z)).clamp(-1.0, 1.0)

    def tiled_decode(self, z: Tensor, tile: int = 64, overlap: int = 16) -> Tensor:
        """Decode in overlapping tiles (the blending of the KL autoencoder's ``tiled_decode``)."""
        return tiled_decode(
            self.decode, z, tile, overlap, self.config.downsample_factor, self.config.in_channels
        )
