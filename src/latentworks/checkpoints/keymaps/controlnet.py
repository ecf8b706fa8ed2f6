"""Key maps and config-from-shapes for U-Net ControlNets (:mod:`latentworks.models.controlnet`) and
T2I-Adapters (:mod:`latentworks.models.t2i_adapter`, diffusers layout, at the end of this file).

Two layouts people have:

* diffusers ``ControlNetModel`` (``diffusion_pytorch_model.safetensors``, also shipped as a bare single file):
  the U-Net encoder's diffusers names (``conv_in``, ``time_embedding``, ``add_embedding``, ``down_blocks``,
  ``mid_block``) plus ``controlnet_cond_embedding.{conv_in, blocks.K, conv_out}``,
  ``controlnet_down_blocks.K`` and ``controlnet_mid_block``;
* the original single file (lllyasviel's ``control_*.pth`` / ``.safetensors``), usually under
  ``control_model.``: the LDM U-Net encoder names (``input_blocks``, ``middle_block``, ``time_embed``,
  ``label_emb``) plus ``input_hint_block.{0, 2, ..., 2K + 2}`` (convs between SiLUs), ``zero_convs.K.0`` and
  ``middle_block_out.0``.

The shared parts reuse the U-Net maps (``sd_diffusers.unet_module_map``, ``sd_ldm.unet_ldm_module_map``), so
one rename table serves the U-Net and its ControlNet. Shapes never change.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from torch import Tensor

from latentworks.checkpoints.detect import indices, unet_config_from_ldm
from latentworks.checkpoints.keymaps.sd3_diffusers import expected_shapes
from latentworks.checkpoints.keymaps.sd_diffusers import convert, unet_module_map
from latentworks.checkpoints.keymaps.sd_ldm import unet_ldm_module_map
from latentworks.models.controlnet import ControlNet, ControlNetConfig
from latentworks.models.t2i_adapter import AdapterKind, T2IAdapter, T2IAdapterConfig
from latentworks.models.unet import UNetConfig

_SHARED = ("conv_in", "time_embed.", "add_embed.", "down.", "mid.")


def _shared(unet_map: Mapping[str, str]) -> dict[str, str]:
    """The U-Net map's entries for the modules a ControlNet shares with the U-Net (its encoder half)."""
    return {
        ours: theirs for ours, theirs in unet_map.items() if ours == "conv_in" or ours.startswith(_SHARED[1:])
    }


def controlnet_module_map(config: ControlNetConfig) -> dict[str, str]:
    """``{our_module: diffusers_module}`` for every module with parameters in ``ControlNet(config)``."""
    m = _shared(unet_module_map(config.unet))
    m |= {
        "hint.conv_in": "controlnet_cond_embedding.conv_in",
        "hint.conv_out": "controlnet_cond_embedding.conv_out",
    }
    m |= {
        f"hint.blocks.{k}": f"controlnet_cond_embedding.blocks.{k}"
        for k in range(2 * len(config.hint_channels) - 2)
    }
    m |= {f"zero_convs.{k}": f"controlnet_down_blocks.{k}" for k in range(config.num_skips)}
    m["mid_out"] = "controlnet_mid_block"
    return m


def controlnet_original_module_map(config: ControlNetConfig) -> dict[str, str]:
    """``{our_module: original_module}`` (without the ``control_model.`` prefix)."""
    m = _shared(unet_ldm_module_map(config.unet))
    n_blocks = 2 * len(config.hint_channels) - 2
    m["hint.conv_in"] = "input_hint_block.0"
    m |= {f"hint.blocks.{k}": f"input_hint_block.{2 + 2 * k}" for k in range(n_blocks)}
    m["hint.conv_out"] = f"input_hint_block.{2 + 2 * n_blocks}"
    m |= {f"zero_convs.{k}": f"zero_convs.{k}.0" for k in range(config.num_skips)}
    m["mid_out"] = "middle_block_out.0"
    return m


@lru_cache(maxsize=16)
def controlnet_shapes(config: ControlNetConfig) -> dict[str, tuple[int, ...]]:
    """Shapes of every tensor of ``ControlNet(config)`` (built on the meta device)."""
    return expected_shapes(ControlNet, config)


def _table(config: ControlNetConfig, module_map: Mapping[str, str]) -> dict[str, str]:
    table = {}
    for key in controlnet_shapes(config):
        module, _, param = key.rpartition(".")
        if module not in module_map:
            raise KeyError(f"internal: ControlNet module {module!r} has no entry in the key map")
        table[key] = f"{module_map[module]}.{param}"
    if len(set(table.values())) != len(table):
        raise KeyError("internal: the ControlNet key map sends two of our keys to the same target key")
    return table


def _from(
    sd: Mapping[str, Tensor], config: ControlNetConfig, module_map: Mapping[str, str], source: str
) -> dict[str, Tensor]:
    table = _table(config, module_map)
    shapes = controlnet_shapes(config)
    inverse = {theirs: ours for ours, theirs in table.items()}
    return convert(sd, inverse, {t: shapes[o] for t, o in inverse.items()}, source=source)


def controlnet_from_diffusers(sd: Mapping[str, Tensor], config: ControlNetConfig) -> dict[str, Tensor]:
    """diffusers ``ControlNetModel`` state dict -> ours."""
    return _from(sd, config, controlnet_module_map(config), "diffusers ControlNet")


def controlnet_to_diffusers(sd: Mapping[str, Tensor], config: ControlNetConfig) -> dict[str, Tensor]:
    """Ours -> diffusers ``ControlNetModel`` names."""
    table = _table(config, controlnet_module_map(config))
    return convert(sd, table, controlnet_shapes(config), source="latentworks ControlNet")


def controlnet_from_original(sd: Mapping[str, Tensor], config: ControlNetConfig) -> dict[str, Tensor]:
    """Original (``control_model.``-stripped) ControlNet state dict -> ours."""
    return _from(sd, config, controlnet_original_module_map(config), "original ControlNet")


def controlnet_to_original(sd: Mapping[str, Tensor], config: ControlNetConfig) -> dict[str, Tensor]:
    """Ours -> original names (without the ``control_model.`` prefix)."""
    table = _table(config, controlnet_original_module_map(config))
    return convert(sd, table, controlnet_shapes(config), source="latentworks ControlNet")


# --------------------------------------------------------------------------------------------------
# config from shapes
# --------------------------------------------------------------------------------------------------


def _need(s: Mapping[str, tuple[int, ...]], key: str, source: str) -> tuple[int, ...]:
    if key not in s:
        raise ValueError(f"{source}: a ControlNet needs the tensor {key!r}, which the file lacks")
    return s[key]


def _hint_channels(
    s: Mapping[str, tuple[int, ...]], conv_in: str, strided: list[str], source: str
) -> tuple[int, ...]:
    return (_need(s, conv_in, source)[0], *(_need(s, k, source)[0] for k in strided))


def controlnet_config_from_original(s: Mapping[str, tuple[int, ...]], source: str) -> ControlNetConfig:
    """An original-layout ControlNet's config from its (``control_model.``-stripped) shapes."""
    hint = indices(s, "input_hint_block.")  # 0, 2, ..., 2 + 2 * n_blocks
    n_blocks = len(hint) - 2
    if n_blocks < 0 or n_blocks % 2:
        raise ValueError(f"{source}: input_hint_block has {len(hint)} convs, expected an even number >= 2")
    strided = [f"input_hint_block.{2 + 2 * k + 2}.weight" for k in range(0, n_blocks, 2)]
    hint_channels = _hint_channels(s, "input_hint_block.0.weight", strided, source)
    # A ControlNet has no output head: read the U-Net encoder's config with out_channels = in_channels.
    conv_in = _need(s, "input_blocks.0.0.weight", source)
    unet = unet_config_from_ldm({**s, "out.2.weight": (conv_in[1], conv_in[0], 3, 3)}, source)
    return ControlNetConfig(
        unet=unet,
        hint_channels=hint_channels,
        hint_in_channels=_need(s, "input_hint_block.0.weight", source)[1],
    )


def controlnet_config_from_diffusers(
    s: Mapping[str, tuple[int, ...]], source: str, *, unseen: Mapping[str, Any] | None = None
) -> ControlNetConfig:
    """A diffusers-layout ControlNet's config from its shapes (no config.json needed).

    Head counts and GroupNorm groups are not visible in shapes: SD rules (8 heads for 768-wide context,
    64-wide heads otherwise; 32 groups) unless ``unseen`` (``{"num_heads": ..., "head_dim": ...,
    "norm_groups": ...}``) says.
    """
    levels = indices(s, "down_blocks.")
    if not levels:
        raise ValueError(f"{source}: no down_blocks.* tensors; not a diffusers ControlNet")
    channels = tuple(_need(s, f"down_blocks.{i}.resnets.0.conv1.weight", source)[0] for i in levels)
    depth = tuple(len(indices(s, f"down_blocks.{i}.attentions.0.transformer_blocks.")) for i in levels)
    ctx = [v for k, v in s.items() if k.endswith("attn2.to_k.weight")]
    if not ctx:
        raise ValueError(
            f"{source}: the ControlNet has no cross-attention (attn2.to_k) keys; not an SD ControlNet"
        )
    context_dim = ctx[0][1]
    kwargs: dict[str, Any] = {}
    if "add_embedding.linear_1.weight" in s:
        adm_in = s["add_embedding.linear_1.weight"][1]
        pooled, id_dim = 1280, 256
        if adm_in <= pooled or (adm_in - pooled) % id_dim:
            raise ValueError(
                f"{source}: add_embedding takes {adm_in} inputs, not 1280 + a multiple of 256 (SDXL)"
            )
        kwargs |= {"pooled_dim": pooled, "num_time_ids": (adm_in - pooled) // id_dim, "time_id_dim": id_dim}
    if context_dim == 768 and not kwargs:
        kwargs |= {"num_heads": 8, "head_dim": None}
    else:
        kwargs |= {"num_heads": None, "head_dim": 64}
    kwargs |= dict(unseen or {})
    proj_in = [v for k, v in s.items() if k.endswith(".proj_in.weight")]
    conv_in = _need(s, "conv_in.weight", source)
    unet = UNetConfig(
        in_channels=conv_in[1],
        out_channels=conv_in[1],
        channels=channels,
        layers_per_block=len(indices(s, "down_blocks.0.resnets.")),
        transformer_depth=depth,
        mid_transformer_depth=len(indices(s, "mid_block.attentions.0.transformer_blocks.")),
        context_dim=context_dim,
        use_linear_projection=bool(proj_in) and len(proj_in[0]) == 2,
        upcast_attention=context_dim == 1024 and "pooled_dim" not in kwargs,
        **kwargs,
    )
    n_blocks = len(indices(s, "controlnet_cond_embedding.blocks."))
    strided = [f"controlnet_cond_embedding.blocks.{k}.weight" for k in range(1, n_blocks, 2)]
    first = _need(s, "controlnet_cond_embedding.conv_in.weight", source)
    return ControlNetConfig(
        unet=unet,
        hint_channels=_hint_channels(s, "controlnet_cond_embedding.conv_in.weight", strided, source),
        hint_in_channels=first[1],
    )


# --------------------------------------------------------------------------------------------------
# T2I-Adapter (diffusers ``T2IAdapter``: our names under ``adapter.``)
# --------------------------------------------------------------------------------------------------

ADAPTER_PREFIX = "adapter."


def t2i_adapter_config_from_diffusers(s: Mapping[str, tuple[int, ...]], source: str) -> T2IAdapterConfig:
    """A diffusers ``T2IAdapter``'s config from its shapes (``full_adapter`` or ``full_adapter_xl``)."""
    if any(k.startswith(ADAPTER_PREFIX) and ".out_conv." in k for k in s):
        raise ValueError(f"{source}: a 'light_adapter' T2I-Adapter, which latentworks does not read yet")
    conv_in = _need(s, f"{ADAPTER_PREFIX}conv_in.weight", source)
    blocks = indices(s, f"{ADAPTER_PREFIX}body.")
    channels = tuple(_need(s, f"{ADAPTER_PREFIX}body.{i}.resnets.0.block1.weight", source)[0] for i in blocks)
    num_res = len(indices(s, f"{ADAPTER_PREFIX}body.0.resnets."))
    for in_ch in (3, 1):  # conv_in reads in_channels * factor**2 unshuffled channels
        factor = round((conv_in[1] / in_ch) ** 0.5)
        if factor * factor * in_ch == conv_in[1]:
            break
    else:
        raise ValueError(
            f"{source}: adapter.conv_in reads {conv_in[1]} channels, not 1 or 3 x a square factor"
        )
    kind: AdapterKind = "full_xl" if factor == 16 else "full"
    return T2IAdapterConfig(
        kind=kind, channels=channels, num_res_blocks=num_res, downscale_factor=factor, in_channels=in_ch
    )


def t2i_adapter_from_diffusers(sd: Mapping[str, Tensor], config: T2IAdapterConfig) -> dict[str, Tensor]:
    """diffusers ``T2IAdapter`` state dict -> ours (a prefix strip with shape checks)."""
    shapes = expected_shapes(T2IAdapter, config)
    table = {f"{ADAPTER_PREFIX}{k}": k for k in shapes}
    return convert(
        sd, table, {f"{ADAPTER_PREFIX}{k}": v for k, v in shapes.items()}, source="diffusers T2I-Adapter"
    )


def t2i_adapter_to_diffusers(sd: Mapping[str, Tensor], config: T2IAdapterConfig) -> dict[str, Tensor]:
    """Ours -> diffusers ``T2IAdapter`` names."""
    shapes = expected_shapes(T2IAdapter, config)
    return convert(sd, {k: f"{ADAPTER_PREFIX}{k}" for k in shapes}, shapes, source="latentworks T2I-Adapter")
