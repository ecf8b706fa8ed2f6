"""ControlNet for the SD U-Nets (SD 1.x, SD 2.x, SDXL): Zhang, Rao & Agrawala 2023.

A trainable copy of the U-Net's encoder half (conv_in, time embedding, down levels, middle block; the
blocks of :mod:`latentworks.models.unet`) reads the noisy latent plus a hint image encoded by a small
strided conv stack (the "conditioning embedding" / ``input_hint_block``), added after ``conv_in``. Each skip
tensor of the down path and the middle block's output go through a zero-initialised 1x1 conv ("zero
conv"); the results are the residuals the frozen U-Net adds to its skips and middle block
(``UNet.forward(..., control=)``).

Parameter layout (ours; ``latentworks.checkpoints.keymaps.controlnet`` converts diffusers' ``ControlNetModel``
and the original ``control_model.*`` single files):
    conv_in, time_embed.{fc1, fc2}, add_embed.{fc1, fc2}     (as in the U-Net)
    hint.conv_in, hint.blocks.{k}, hint.conv_out             (3 -> 16 -> ... -> 256 -> channels[0])
    down.{i}..., mid...                                      (as in the U-Net)
    zero_convs.{k}                                           (one 1x1 conv per skip tensor)
    mid_out                                                  (1x1 conv after the middle block)
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentworks.diffusion.conditioning import Conditioning
from latentworks.diffusion.control import ControlResiduals
from latentworks.models.unet import PRESETS as UNET_PRESETS
from latentworks.models.unet import DownLevel, MidBlock, TimeMLP, UNet, UNetConfig, embed_time


@dataclass(frozen=True, kw_only=True)
class ControlNetConfig:
    """Architecture of a U-Net ControlNet.

    Attributes:
        unet: the U-Net config whose encoder half it copies (``out_channels`` and the up path are unused).
        hint_channels: widths of the hint encoder; each step after the first halves the resolution, so
            ``2 ** (len - 1)`` must equal the VAE's downsampling (8 for SD: (16, 32, 96, 256)).
        hint_in_channels: channels of the hint image (3, RGB in [0, 1]).
    """

    unet: UNetConfig
    hint_channels: tuple[int, ...] = (16, 32, 96, 256)
    hint_in_channels: int = 3

    def __post_init__(self) -> None:
        if not isinstance(self.unet, UNetConfig):
            raise ValueError(f"ControlNetConfig.unet must be a UNetConfig, got {type(self.unet).__name__}")
        if not self.hint_channels or any(not isinstance(c, int) or c < 1 for c in self.hint_channels):
            raise ValueError(
                f"ControlNetConfig.hint_channels must be a non-empty tuple of positive widths, "
                f"got {self.hint_channels!r}"
            )
        if self.hint_in_channels < 1:
            raise ValueError(f"ControlNetConfig.hint_in_channels must be >= 1, got {self.hint_in_channels}")

    @property
    def hint_factor(self) -> int:
        """Pixels of the hint image per latent cell."""
        return 2 ** (len(self.hint_channels) - 1)

    @property
    def num_skips(self) -> int:
        """Skip tensors of the U-Net's down path: conv_in, every ResBlock, every downsampler."""
        n = len(self.unet.channels)
        return 1 + n * self.unet.layers_per_block + (n - 1)


# One ControlNet per U-Net preset (same names), with SD's 8x hint encoder; the tiny one's hint is 2x.
PRESETS: dict[str, ControlNetConfig] = {
    name: ControlNetConfig(unet=unet) for name, unet in UNET_PRESETS.items()
}
PRESETS["tiny"] = ControlNetConfig(unet=UNET_PRESETS["tiny"], hint_channels=(8, 16))


def _zero(conv: nn.Conv2d) -> nn.Conv2d:
    """``conv`` with zero weight and bias: the ControlNet starts as an exact no-op (Zhang et al. 2023, Sec. 3.1)."""
    nn.init.zeros_(conv.weight)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv


class HintEncoder(nn.Module):
    """The hint image (B, 3, H, W) -> features (B, channels[0], H / f, W / f), f = 2 ** (len(widths) - 1).

    conv_in -> SiLU, then per width step a 3x3 conv and a stride-2 3x3 conv (each followed by SiLU), then
    the zero-initialised ``conv_out``.
    """

    def __init__(self, in_channels: int, widths: tuple[int, ...], out_channels: int) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, widths[0], 3, padding=1)
        blocks = []
        for a, b in zip(widths[:-1], widths[1:], strict=True):
            blocks += [nn.Conv2d(a, a, 3, padding=1), nn.Conv2d(a, b, 3, padding=1, stride=2)]
        self.blocks = nn.ModuleList(blocks)
        self.conv_out = _zero(nn.Conv2d(widths[-1], out_channels, 3, padding=1))

    def forward(self, hint: Tensor) -> Tensor:
        h = F.silu(self.conv_in(hint))
        for block in self.blocks:
            h = F.silu(block(h))
        return self.conv_out(h)


def _zero_conv(channels: int) -> nn.Conv2d:
    return _zero(nn.Conv2d(channels, channels, 1))


class ControlNet(nn.Module):
    """``forward(x (B, C, h, w), t (B,), cond, hint (B, 3, h*f, w*f)) -> ControlResiduals``.

    ``x`` and ``t`` are the U-Net's own inputs (the scaled noisy latent and DDPM timestep); ``cond`` as for
    the U-Net (tokens, and pooled + time ids for SDXL). Residuals are unscaled: the caller multiplies by
    the strength (see :class:`~latentworks.diffusion.control.ControlDenoiser`).
    """

    def __init__(self, config: ControlNetConfig) -> None:
        super().__init__()
        self.config = config
        self.source_name: str | None = None  # the file it was loaded from, for generation parameters
        u = config.unet
        ch = u.channels
        n = len(ch)
        self.conv_in = nn.Conv2d(u.in_channels, ch[0], 3, padding=1)
        self.time_embed = TimeMLP(ch[0], u.time_embed_dim)
        self.add_embed = (
            TimeMLP(u.added_conditioning_dim, u.time_embed_dim) if u.has_added_conditioning else None
        )
        self.hint = HintEncoder(config.hint_in_channels, config.hint_channels, ch[0])
        self.down = nn.ModuleList(
            DownLevel(ch[max(i - 1, 0)], ch[i], u, level=i, downsample=i < n - 1) for i in range(n)
        )
        skip_channels = [ch[0]]
        for i in range(n):
            skip_channels += [ch[i]] * u.layers_per_block + ([ch[i]] if i < n - 1 else [])
        self.zero_convs = nn.ModuleList(_zero_conv(c) for c in skip_channels)
        self.mid = MidBlock(u)
        self.mid_out = _zero_conv(ch[-1])

    @property
    def hint_factor(self) -> int:
        return self.config.hint_factor

    def check_model(self, network: object) -> None:
        """Raise a ValueError when this ControlNet cannot drive ``network`` (another family or size)."""
        u = self.config.unet
        if not isinstance(network, UNet):
            raise ValueError(
                f"this ControlNet is for SD-style U-Nets but the model is a {type(network).__name__}; "
                "use a ControlNet made for the model's family"
            )
        m = network.config
        mine = (u.channels, u.layers_per_block, u.context_dim, u.added_conditioning_dim)
        theirs = (m.channels, m.layers_per_block, m.context_dim, m.added_conditioning_dim)
        if mine != theirs:
            raise ValueError(
                "this ControlNet was made for another model family: it expects a U-Net with "
                f"channels={u.channels}, layers_per_block={u.layers_per_block}, context_dim={u.context_dim}, "
                f"added conditioning {u.added_conditioning_dim}, but the model has channels={m.channels}, "
                f"layers_per_block={m.layers_per_block}, context_dim={m.context_dim}, added conditioning "
                f"{m.added_conditioning_dim}; use an SD1.5 ControlNet with SD1.5 models, SDXL with SDXL"
            )

    def forward(self, x: Tensor, t: Tensor, cond: Conditioning, hint: Tensor) -> ControlResiduals:
        u = self.config.unet
        if x.ndim != 4 or x.shape[1] < u.in_channels:
            raise ValueError(
                f"ControlNet expects x of shape (B, {u.in_channels}, h, w), got {tuple(x.shape)}"
            )
        # An inpainting U-Net's input is [noisy latent, masked latent, mask]: the ControlNet sees the first part.
        x = x[:, : u.in_channels]
        f = self.config.hint_factor
        if hint.shape[0] != x.shape[0] or tuple(hint.shape[-2:]) != (x.shape[-2] * f, x.shape[-1] * f):
            raise ValueError(
                f"ControlNet hint must be (B={x.shape[0]}, {self.config.hint_in_channels}, {x.shape[-2] * f}, "
                f"{x.shape[-1] * f}) for latents {tuple(x.shape)}, got {tuple(hint.shape)}"
            )
        dtype = self.conv_in.weight.dtype
        temb = embed_time(self.time_embed, self.add_embed, u, t, cond, x.shape[0], dtype)
        context = cond.tokens.to(dtype)
        mask = None if cond.mask is None else cond.mask.bool()
        h = self.conv_in(x.to(dtype)) + self.hint(hint.to(dtype))
        skips = [h]
        for down in self.down:
            h = down(h, temb, context, mask, skips)
        h = self.mid(h, temb, context, mask)
        down_res = tuple(conv(s) for conv, s in zip(self.zero_convs, skips, strict=True))
        return ControlResiduals(down=down_res, mid=self.mid_out(h))


def controlnet_for(unet: UNetConfig, **kwargs: object) -> ControlNetConfig:
    """A ControlNet config that fits a U-Net of config ``unet`` (e.g. to train one for our own models)."""
    return replace(ControlNetConfig(unet=unet), **kwargs)  # type: ignore[arg-type]


@torch.no_grad()
def randomize_zero_convs(model: ControlNet, generator: torch.Generator, std: float = 0.02) -> None:
    """Give the zero convs and the hint encoder's last conv random weights (tests: a fresh ControlNet's
    residuals are exactly zero, which would hide any error downstream)."""
    for conv in [*model.zero_convs, model.mid_out, model.hint.conv_out]:
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * std)
        if conv.bias is not None:
            conv.bias.copy_(torch.randn(conv.bias.shape, generator=generator) * std)
