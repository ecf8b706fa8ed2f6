"""T2I-Adapter (Mou et al. 2023) for the SD U-Nets: a small conv network that turns a control image into one
feature map per U-Net down level, added to the U-Net's down path (``ControlResiduals.adapter``).

Unlike a ControlNet it does not read the noisy latent or the timestep: its features depend on the image alone.
Two body layouts, as released:

* ``full`` (SD 1.x/2.x): pixel-unshuffle by 8, ``conv_in``, then one block per level, every block after the
  first halving the resolution (average pooling) -> features at 1/8, 1/16, 1/32, 1/64 of the image;
* ``full_xl`` (SDXL): pixel-unshuffle by 16, one halving block (the third) -> features at 1/16, 1/16, 1/32,
  1/32 of the image, which match SDXL's first level output (after its downsampling), the second level, the
  third, and the middle block.

A block: 2x2 average pooling (when it halves), a 1x1 ``in_conv`` when the width changes, then residual
blocks ``x + conv1x1(relu(conv3x3(x)))``.

Parameter layout (ours = diffusers' ``T2IAdapter`` without its ``adapter.`` prefix):
    conv_in, body.{i}.in_conv, body.{i}.resnets.{k}.{block1, block2}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

from latentworks.diffusion.conditioning import Conditioning
from latentworks.diffusion.control import ControlResiduals

AdapterKind = Literal["full", "full_xl"]


@dataclass(frozen=True, kw_only=True)
class T2IAdapterConfig:
    """Architecture of a T2I-Adapter.

    Attributes:
        kind: ``full`` (SD 1.x/2.x) or ``full_xl`` (SDXL); see the module docstring.
        channels: width of each feature (the U-Net's level widths; XL repeats its last one for the middle).
        num_res_blocks: residual blocks per body block.
        downscale_factor: pixel-unshuffle factor of the input image (8 full, 16 full_xl).
        in_channels: channels of the control image (3 RGB; 1 for sketch/canny adapters).
    """

    kind: AdapterKind = "full"
    channels: tuple[int, ...] = (320, 640, 1280, 1280)
    num_res_blocks: int = 2
    downscale_factor: int = 8
    in_channels: int = 3

    def __post_init__(self) -> None:
        if self.kind not in ("full", "full_xl"):
            raise ValueError(f"T2IAdapterConfig.kind must be 'full' or 'full_xl', got {self.kind!r}")
        if self.kind == "full_xl" and len(self.channels) != 4:
            raise ValueError(f"a full_xl T2I-Adapter has 4 feature widths, got {self.channels}")
        if not self.channels or self.num_res_blocks < 1 or self.downscale_factor < 1 or self.in_channels < 1:
            raise ValueError(f"invalid T2IAdapterConfig: {self}")

    @property
    def hint_factor(self) -> int:
        """Pixels of the control image per latent cell: the U-Net's latent is 1/8 of the image (SD VAEs)."""
        return self.downscale_factor if self.kind == "full" else self.downscale_factor // 2

    def halves(self, i: int) -> bool:
        """Whether body block ``i`` halves the resolution."""
        return i == 2 if self.kind == "full_xl" else i > 0


PRESETS: dict[str, T2IAdapterConfig] = {
    "sd15": T2IAdapterConfig(),
    "sdxl": T2IAdapterConfig(kind="full_xl", downscale_factor=16),
    "tiny": T2IAdapterConfig(channels=(32, 64), num_res_blocks=1, downscale_factor=2),
}


class AdapterResBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.block1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.block2 = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.block2(F.relu(self.block1(x)))


class AdapterBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, num_res_blocks: int, *, halve: bool) -> None:
        super().__init__()
        self.halve = halve
        self.in_conv = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else None
        self.resnets = nn.Sequential(*(AdapterResBlock(out_ch) for _ in range(num_res_blocks)))

    def forward(self, x: Tensor) -> Tensor:
        if self.halve:
            x = F.avg_pool2d(x, kernel_size=2, stride=2, ceil_mode=True)
        if self.in_conv is not None:
            x = self.in_conv(x)
        return self.resnets(x)


class T2IAdapter(nn.Module):
    """``forward(x, t, cond, hint (B, C, H, W) in [0, 1]) -> ControlResiduals(adapter=features)``.

    ``x``, ``t`` and ``cond`` are accepted for the control-network signature and not read.
    """

    reads_latent = False  # features depend on the hint alone: ControlDenoiser computes them once per run

    def __init__(self, config: T2IAdapterConfig) -> None:
        super().__init__()
        self.config = config
        self.source_name: str | None = None
        ch = config.channels
        self.conv_in = nn.Conv2d(config.in_channels * config.downscale_factor**2, ch[0], 3, padding=1)
        blocks = []
        for i in range(len(ch)):
            if config.kind == "full_xl":
                in_ch = ch[i - 1] if i in (1, 2) else ch[i]
            else:
                in_ch = ch[max(i - 1, 0)]
            blocks.append(AdapterBlock(in_ch, ch[i], config.num_res_blocks, halve=config.halves(i)))
        self.body = nn.ModuleList(blocks)

    @property
    def hint_factor(self) -> int:
        return self.config.hint_factor

    def check_model(self, network: object) -> None:
        """Raise a ValueError when the features cannot be added to ``network``'s down path."""
        ch = self.config.channels
        model_config = getattr(network, "config", None)
        if not (hasattr(model_config, "transformer_depth") and hasattr(model_config, "layers_per_block")):
            raise ValueError(
                f"this T2I-Adapter is for SD-style U-Nets but the model is a {type(network).__name__}; "
                "use an adapter made for the model's family"
            )
        want = ch[:3] if self.config.kind == "full_xl" else ch
        if model_config.channels != want:  # type: ignore[union-attr]
            raise ValueError(
                f"this T2I-Adapter ({self.config.kind}, widths {ch}) was made for another model family: the "
                f"model's U-Net has widths {model_config.channels}; use an SD1.5 adapter with SD1.5 models, "  # type: ignore[union-attr]
                "SDXL with SDXL"
            )

    def features(self, hint: Tensor) -> list[Tensor]:
        """The control image (B, C, H, W) -> one feature map per body block."""
        if hint.shape[1] != self.config.in_channels:
            if self.config.in_channels == 1:
                hint = hint.mean(dim=1, keepdim=True)  # grey adapters (sketch, canny) get the luminance mean
            else:
                raise ValueError(
                    f"T2I-Adapter expects a {self.config.in_channels}-channel image, got {hint.shape[1]} channels"
                )
        x = self.conv_in(F.pixel_unshuffle(hint.to(self.conv_in.weight.dtype), self.config.downscale_factor))
        out = []
        for block in self.body:
            x = block(x)
            out.append(x)
        return out

    def forward(self, x: Tensor, t: Tensor, cond: Conditioning, hint: Tensor) -> ControlResiduals:
        return ControlResiduals(adapter=tuple(self.features(hint)))
