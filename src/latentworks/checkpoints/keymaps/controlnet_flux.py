"""Key map and config-from-shapes for FLUX ControlNets (:mod:`latentworks.models.controlnet_flux`) in diffusers'
``FluxControlNetModel`` layout (InstantX, Shakker-Labs Union-Pro, jasperai: ``diffusion_pytorch_model.safetensors``,
often shipped as a bare single file).

The trunk has the FLUX transformer's diffusers names (``x_embedder``, ``time_text_embed``, ``context_embedder``,
``transformer_blocks``, ``single_transformer_blocks``), so its rules are the transformer's
(:func:`~latentworks.checkpoints.keymaps.flux_diffusers.flux_diffusers_rules`) without the output layer; the
ControlNet's own layers map one to one:

    hint_in           <- controlnet_x_embedder
    double_out.{i}    <- controlnet_blocks.{i}
    single_out.{i}    <- controlnet_single_blocks.{i}
    mode_embed        <- controlnet_mode_embedder        (Union ControlNets)

The variant with a pixel ``input_hint_block`` (diffusers' port of XLabs-style ControlNets) is refused with a
message: its residuals are applied with a different block rule and no such file is in common use.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor

from latentworks.checkpoints.detect import _rope_axes, indices
from latentworks.checkpoints.keymaps.flux_diffusers import flux_diffusers_rules
from latentworks.checkpoints.keymaps.sd3_diffusers import KeyRule, apply_rules, expected_shapes
from latentworks.models.controlnet_flux import FluxControlNet, FluxControlNetConfig
from latentworks.models.flux import FluxConfig

MARKER = "controlnet_x_embedder.weight"
LAYOUT = "diffusers FluxControlNetModel"


def _linear(ours: str, theirs: str) -> list[KeyRule]:
    return [KeyRule(f"{ours}.{p}", (f"{theirs}.{p}",)) for p in ("weight", "bias")]


def flux_controlnet_rules(config: FluxControlNetConfig) -> list[KeyRule]:
    """The full table for ``config``: the transformer's rules minus its output layer, plus the ControlNet's."""
    rules = [r for r in flux_diffusers_rules(config.flux) if not r.ours.startswith("final_layer.")]
    rules += _linear("hint_in", "controlnet_x_embedder")
    for i in range(config.flux.double_depth):
        rules += _linear(f"double_out.{i}", f"controlnet_blocks.{i}")
    for i in range(config.flux.single_depth):
        rules += _linear(f"single_out.{i}", f"controlnet_single_blocks.{i}")
    if config.num_modes is not None:
        rules.append(KeyRule("mode_embed.weight", ("controlnet_mode_embedder.weight",)))
    return rules


def flux_controlnet_from_diffusers(
    sd: Mapping[str, Tensor], config: FluxControlNetConfig
) -> dict[str, Tensor]:
    """diffusers ``FluxControlNetModel`` state dict -> ours (load with ``strict=True``)."""
    shapes = expected_shapes(FluxControlNet, config)
    return apply_rules(sd, flux_controlnet_rules(config), shapes, to_ours=True, layout=LAYOUT)


def flux_controlnet_to_diffusers(sd: Mapping[str, Tensor], config: FluxControlNetConfig) -> dict[str, Tensor]:
    """Our :class:`FluxControlNet` state dict -> diffusers ``FluxControlNetModel`` layout."""
    shapes = expected_shapes(FluxControlNet, config)
    return apply_rules(sd, flux_controlnet_rules(config), shapes, to_ours=False, layout=LAYOUT)


def _need(s: Mapping[str, tuple[int, ...]], key: str, source: str) -> tuple[int, ...]:
    if key not in s:
        raise ValueError(
            f"{source}: looks like a FLUX ControlNet (diffusers layout) but lacks {key!r}; the file is incomplete"
        )
    return s[key]


def flux_controlnet_config_from_diffusers(
    s: Mapping[str, tuple[int, ...]], source: str
) -> FluxControlNetConfig:
    """A FLUX ControlNet's config from its diffusers-layout shapes. RoPE axes are not in the shapes: FLUX.1's
    (16, 56, 56) split, scaled to the head size (a folder's ``config.json`` overrides it, see :func:`folder_config`)."""
    if "input_hint_block.conv_in.weight" in s:
        raise ValueError(
            f"{source}: a FLUX ControlNet with a pixel 'input_hint_block' (diffusers' port of the XLabs style); "
            "latentworks reads the InstantX / Union style (the control image VAE-encoded), not this variant yet"
        )
    x_embedder = _need(s, "x_embedder.weight", source)  # (D, 4 * C): 2x2-packed latent channels
    width, p = x_embedder[0], 2
    doubles, singles = indices(s, "transformer_blocks."), indices(s, "single_transformer_blocks.")
    if doubles:
        head_dim = _need(s, "transformer_blocks.0.attn.norm_q.weight", source)[0]
        hidden = _need(s, "transformer_blocks.0.ff.net.0.proj.weight", source)[0]
    elif singles:
        head_dim = _need(s, "single_transformer_blocks.0.attn.norm_q.weight", source)[0]
        hidden = _need(s, "single_transformer_blocks.0.proj_mlp.weight", source)[0]
    else:
        raise ValueError(f"{source}: a FLUX ControlNet without transformer blocks; the file is incomplete")
    flux = FluxConfig(
        in_channels=x_embedder[1] // (p * p),
        patch_size=p,
        width=width,
        num_heads=width // head_dim,
        double_depth=len(doubles),
        single_depth=len(singles),
        mlp_ratio=hidden / width,
        context_dim=_need(s, "context_embedder.weight", source)[1],
        pooled_dim=_need(s, "time_text_embed.text_embedder.linear_1.weight", source)[1],
        axes_dim=_rope_axes(head_dim),
        guidance_embed="time_text_embed.guidance_embedder.linear_1.weight" in s,
    )
    modes = s.get("controlnet_mode_embedder.weight")
    return FluxControlNetConfig(flux=flux, num_modes=None if modes is None else modes[0])


def folder_config(path: Path) -> dict[str, Any] | None:
    """``config.json`` of a diffusers FLUX ControlNet folder (or next to its weights file), if any (else None)."""
    file = (path if path.is_dir() else path.parent) / "config.json"
    if not file.is_file():
        return None
    try:
        data = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) and data.get("_class_name") == "FluxControlNetModel" else None
