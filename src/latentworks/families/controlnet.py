"""ControlNet files: which layout a file is, its config from shapes, and loading it.

The same registry pattern as the model families: one :class:`ControlNetLayout` per weight layout, listed
once in :data:`LAYOUTS`; :func:`detect_controlnet` walks them in order (marker key present -> config from
shapes) and names the base model family the ControlNet belongs to (``families.by_config`` on its U-Net
config). :func:`load_controlnet` builds the network on the meta device and loads the converted weights.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from latentworks.checkpoints.detect import key_starts, strip_prefix
from latentworks.checkpoints.io import build_on_meta
from latentworks.checkpoints.keymaps.controlnet import (
    controlnet_config_from_diffusers,
    controlnet_config_from_original,
    controlnet_from_diffusers,
    controlnet_from_original,
    controlnet_to_diffusers,
    controlnet_to_original,
)
from latentworks.families import ModelFamily, by_config
from latentworks.families.load import _Prefixed, _shapes, open_weights
from latentworks.models.controlnet import ControlNet, ControlNetConfig

Shapes = Mapping[str, tuple[int, ...]]


@dataclass(frozen=True)
class ControlNetLayout:
    """One way ControlNet weights are laid out in files.

    Attributes:
        name: ``original`` or ``diffusers``.
        marker: a key (after the prefix) only this layout has.
        prefixes: prefixes the layout's keys may carry (tried in order; ``""`` = none).
        config_from_shapes: ``(shapes, source) -> ControlNetConfig``.
        to_ours / from_ours: key maps ``(state_dict, config) -> state_dict``.
    """

    name: str
    marker: str
    prefixes: tuple[str, ...]
    config_from_shapes: Callable[[Shapes, str], ControlNetConfig]
    to_ours: Callable[[Mapping[str, Tensor], ControlNetConfig], dict[str, Tensor]]
    from_ours: Callable[[Mapping[str, Tensor], ControlNetConfig], dict[str, Tensor]]


ORIGINAL = ControlNetLayout(
    name="original",
    marker="input_hint_block.0.weight",
    prefixes=("control_model.", ""),
    config_from_shapes=controlnet_config_from_original,
    to_ours=controlnet_from_original,
    from_ours=controlnet_to_original,
)
DIFFUSERS = ControlNetLayout(
    name="diffusers",
    marker="controlnet_cond_embedding.conv_in.weight",
    prefixes=("",),
    config_from_shapes=controlnet_config_from_diffusers,
    to_ours=controlnet_from_diffusers,
    from_ours=controlnet_to_diffusers,
)
LAYOUTS: tuple[ControlNetLayout, ...] = (ORIGINAL, DIFFUSERS)


@dataclass(frozen=True)
class DetectedControlNet:
    layout: ControlNetLayout
    prefix: str
    config: ControlNetConfig
    family: ModelFamily | None  # the base model family (SD1, SD2, SDXL...), None if no registered one fits


def detect_controlnet(shapes: Shapes, *, source: str = "ControlNet") -> DetectedControlNet:
    """The layout, key prefix, config and base family of a ControlNet from ``{key: shape}`` alone.

    Raises:
        ValueError: not a ControlNet this version reads (names the keys it starts with).
    """
    for layout in LAYOUTS:
        for prefix in layout.prefixes:
            if prefix + layout.marker in shapes:
                config = layout.config_from_shapes(strip_prefix(shapes, prefix), source)
                return DetectedControlNet(layout, prefix, config, by_config(config.unet))
    raise ValueError(
        f"{source}: not a ControlNet latentworks can read (no 'input_hint_block' or 'controlnet_cond_embedding' "
        f"keys; the file starts with {key_starts(shapes)}). Supported: SD1.x/SD2.x/SDXL ControlNets in the "
        "original (control_model.*) or diffusers (ControlNetModel) layout."
    )


def load_controlnet(
    path: str | Path,
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    allow_pickle: bool = False,
) -> ControlNet:
    """Read a ControlNet file (``.safetensors``; pickles only with ``allow_pickle``), detect it from shapes and
    return the network in eval mode, frozen."""
    weights = open_weights(path, dtype=dtype, allow_pickle=allow_pickle)
    source = str(path)
    found = detect_controlnet(_shapes(weights), source=source)
    state = found.layout.to_ours(_Prefixed(weights, found.prefix), found.config)
    net = build_on_meta(ControlNet, found.config, state, dtype=dtype, device=device)
    assert isinstance(net, ControlNet)
    net.source_name = Path(path).name
    return net
