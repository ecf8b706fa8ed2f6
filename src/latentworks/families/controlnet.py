"""ControlNet files: which layout a file is, its config from shapes, and loading it.

The same registry pattern as the model families: one :class:`ControlNetLayout` per weight layout, listed
once in :data:`LAYOUTS`; :func:`detect_controlnet` walks them in order (marker key present -> config from
shapes) and names the base model family the ControlNet belongs to (``families.by_config`` on its U-Net
config). :func:`load_controlnet` builds the network on the meta device and loads the converted weights.

Files that :func:`save_controlnet` writes (ControlNets trained with ``latentworks train-controlnet``) are in the
diffusers layout and also carry the network config as safetensors metadata (:data:`CONFIG_METADATA`, what
diffusers keeps in a ``config.json`` beside the weights): the attention head width and GroupNorm groups of
our own small U-Nets are not visible in the shapes, and SD's rules would guess them wrong.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from latentworks.checkpoints.detect import key_starts, strip_prefix
from latentworks.checkpoints.diffusers_folder import read_weights
from latentworks.checkpoints.io import build_on_meta, save_file_atomic
from latentworks.checkpoints.keymaps.controlnet import (
    controlnet_config_from_diffusers,
    controlnet_config_from_original,
    controlnet_from_diffusers,
    controlnet_from_original,
    controlnet_to_diffusers,
    controlnet_to_original,
    t2i_adapter_config_from_diffusers,
    t2i_adapter_from_diffusers,
    t2i_adapter_to_diffusers,
)
from latentworks.checkpoints.keymaps.controlnet_flux import (
    MARKER as FLUX_MARKER,
)
from latentworks.checkpoints.keymaps.controlnet_flux import (
    flux_controlnet_config_from_diffusers,
    flux_controlnet_from_diffusers,
    flux_controlnet_to_diffusers,
    folder_config,
)
from latentworks.families import ModelFamily, by_config
from latentworks.families.control_lora import ControlLoRA, is_control_lora
from latentworks.families.load import _Prefixed, _shapes, open_weights
from latentworks.models.controlnet import ControlNet, ControlNetConfig
from latentworks.models.controlnet_flux import FluxControlNet, FluxControlNetConfig
from latentworks.models.t2i_adapter import T2IAdapter, T2IAdapterConfig

Shapes = Mapping[str, tuple[int, ...]]
ControlConfig = ControlNetConfig | T2IAdapterConfig | FluxControlNetConfig
ControlModel = ControlNet | T2IAdapter | FluxControlNet | ControlLoRA


@dataclass(frozen=True)
class ControlNetLayout:
    """One way ControlNet weights are laid out in files.

    Attributes:
        name: ``original`` or ``diffusers`` (U-Net ControlNets), ``flux-diffusers`` (FLUX ControlNets),
            ``t2i-diffusers`` (T2I-Adapters).
        network: the network class the layout holds.
        marker: a key (after the prefix) only this layout has.
        prefixes: prefixes the layout's keys may carry (tried in order; ``""`` = none).
        config_from_shapes: ``(shapes, source) -> ControlNetConfig``.
        to_ours / from_ours: key maps ``(state_dict, config) -> state_dict``.
    """

    name: str
    network: type[ControlModel]
    marker: str
    prefixes: tuple[str, ...]
    config_from_shapes: Callable[[Shapes, str], Any]
    to_ours: Callable[[Mapping[str, Tensor], Any], dict[str, Tensor]]
    from_ours: Callable[[Mapping[str, Tensor], Any], dict[str, Tensor]]


ORIGINAL = ControlNetLayout(
    name="original",
    network=ControlNet,
    marker="input_hint_block.0.weight",
    prefixes=("control_model.", ""),
    config_from_shapes=controlnet_config_from_original,
    to_ours=controlnet_from_original,
    from_ours=controlnet_to_original,
)
DIFFUSERS = ControlNetLayout(
    name="diffusers",
    network=ControlNet,
    marker="controlnet_cond_embedding.conv_in.weight",
    prefixes=("",),
    config_from_shapes=controlnet_config_from_diffusers,
    to_ours=controlnet_from_diffusers,
    from_ours=controlnet_to_diffusers,
)
T2I_DIFFUSERS = ControlNetLayout(
    name="t2i-diffusers",
    network=T2IAdapter,
    marker="adapter.conv_in.weight",
    prefixes=("",),
    config_from_shapes=t2i_adapter_config_from_diffusers,
    to_ours=t2i_adapter_from_diffusers,
    from_ours=t2i_adapter_to_diffusers,
)
FLUX_DIFFUSERS = ControlNetLayout(
    name="flux-diffusers",
    network=FluxControlNet,
    marker=FLUX_MARKER,
    prefixes=("",),
    config_from_shapes=flux_controlnet_config_from_diffusers,
    to_ours=flux_controlnet_from_diffusers,
    from_ours=flux_controlnet_to_diffusers,
)
LAYOUTS: tuple[ControlNetLayout, ...] = (ORIGINAL, DIFFUSERS, FLUX_DIFFUSERS, T2I_DIFFUSERS)


@dataclass(frozen=True)
class DetectedControlNet:
    layout: ControlNetLayout
    prefix: str
    config: ControlConfig
    family: (
        ModelFamily | None
    )  # the base model family (SD1, SD2, SDXL, FLUX...); None if unknown (T2I-Adapters)


CONFIG_METADATA = (
    "latentworks.controlnet"  # safetensors metadata key: JSON {"unet": {...}, "hint_channels": [...]}
)
# The U-Net settings that shapes do not show, read from that config when a file has it.
_UNSEEN = ("num_heads", "head_dim", "norm_groups")


def _unseen(metadata: Mapping[str, str] | None, source: str) -> dict[str, Any] | None:
    """The settings of :data:`_UNSEEN` from a file's :data:`CONFIG_METADATA`, or None when it has none."""
    text = (metadata or {}).get(CONFIG_METADATA)
    if text is None:
        return None
    try:
        unet = json.loads(text)["unet"]
        return {k: tuple(v) if isinstance(v, list) else v for k, v in unet.items() if k in _UNSEEN}
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
        raise ValueError(
            f"{source}: its {CONFIG_METADATA!r} metadata is not a ControlNet config; the file is damaged or "
            "was not written by latentworks"
        ) from None


def detect_controlnet(
    shapes: Shapes, *, source: str = "ControlNet", metadata: Mapping[str, str] | None = None
) -> DetectedControlNet:
    """The layout, key prefix, config and base family of a ControlNet from ``{key: shape}`` (and, for files
    written by :func:`save_controlnet`, the head and group settings in their ``metadata``).

    Raises:
        ValueError: not a ControlNet this version reads (names the keys it starts with).
    """
    for layout in LAYOUTS:
        for prefix in layout.prefixes:
            if prefix + layout.marker in shapes:
                unseen = _unseen(metadata, source) if layout is DIFFUSERS else None
                if unseen is not None:
                    config = controlnet_config_from_diffusers(
                        strip_prefix(shapes, prefix), source, unseen=unseen
                    )
                else:
                    config = layout.config_from_shapes(strip_prefix(shapes, prefix), source)
                family = (
                    by_config(config.unet)
                    if isinstance(config, ControlNetConfig)
                    else by_config(config.flux)
                    if isinstance(config, FluxControlNetConfig)
                    else None
                )
                return DetectedControlNet(layout, prefix, config, family)
    raise ValueError(
        f"{source}: not a ControlNet latentworks can read (no 'input_hint_block', 'controlnet_cond_embedding', "
        f"'controlnet_x_embedder' or 'adapter.conv_in' keys; the file starts with {key_starts(shapes)}). "
        "Supported: SD1.x/SD2.x/SDXL ControlNets in the original (control_model.*) or diffusers (ControlNetModel) "
        "layout, FLUX ControlNets in the diffusers layout (FluxControlNetModel: InstantX, Union), and diffusers "
        "T2I-Adapters (full and full_xl)."
    )


def load_controlnet(
    path: str | Path,
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    allow_pickle: bool = False,
) -> ControlModel:
    """Read a ControlNet or T2I-Adapter, detect it from shapes and return the network in eval mode, frozen.

    ``path`` is a weights file (``.safetensors``; pickles only with ``allow_pickle``) or a diffusers folder
    (``diffusion_pytorch_model.safetensors``, sharded or not, with its ``config.json``). A Control-LoRA file
    comes back as a :class:`~latentworks.families.control_lora.ControlLoRA`, rebuilt against the model at use.
    """
    path = Path(path)
    if path.is_dir():
        weights = read_weights(path, dtype=dtype, allow_pickle=allow_pickle)
    else:
        weights = open_weights(path, dtype=dtype, allow_pickle=allow_pickle)
    source = str(path)
    if is_control_lora(weights):  # rebuilt against the model it is applied to
        lora = ControlLoRA({k: weights[k] for k in weights}, source=source)
        lora.source_name = path.name
        return lora
    found = detect_controlnet(_shapes(weights), source=source, metadata=getattr(weights, "metadata", None))
    config = found.config
    folder = folder_config(path)
    if isinstance(config, FluxControlNetConfig) and folder is not None and "axes_dims_rope" in folder:
        # RoPE axes are not visible in shapes; a folder's config.json names them
        axes = tuple(int(a) for a in folder["axes_dims_rope"])
        config = replace(config, flux=replace(config.flux, axes_dim=axes))
    state = found.layout.to_ours(_Prefixed(weights, found.prefix), config)
    net = build_on_meta(found.layout.network, config, state, dtype=dtype, device=device)
    assert isinstance(net, ControlNet | T2IAdapter | FluxControlNet)
    net.source_name = path.name
    return net


def save_controlnet(net: ControlNet, path: str | Path, metadata: Mapping[str, str] | None = None) -> None:
    """Write ``net`` to ``path`` (``.safetensors``, atomically) in the diffusers ``ControlNetModel`` layout, with
    its config under :data:`CONFIG_METADATA` and ``metadata`` (strings) beside it; :func:`load_controlnet` reads
    it back."""
    state = {k: v.detach() for k, v in net.state_dict().items()}
    config = {"unet": asdict(net.config.unet), "hint_channels": list(net.config.hint_channels)}
    meta = {**dict(metadata or {}), CONFIG_METADATA: json.dumps(config)}
    save_file_atomic(DIFFUSERS.from_ours(state, net.config), path, meta)
