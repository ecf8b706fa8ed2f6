"""DeepFloyd IF's U-Net in diffusers' layout (``UNet2DConditionModel`` with simple cross-attention blocks) <->
:class:`~latentworks.models.deepfloyd_if.IFUNet`: the config map and the key map, both data.

``unet_module_map(config)`` is an ordered ``{our_module: diffusers_module}`` dict generated from the config
alone; every tensor ``<module>.<param>`` is renamed through it (one parameter, the attention pooling's learned
position, is renamed as a whole key). Shapes never change.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from torch import Tensor

from latentworks.checkpoints.keymaps.diffusers_configs import _check_fields, _per_level
from latentworks.checkpoints.keymaps.sd3_diffusers import expected_shapes
from latentworks.checkpoints.keymaps.sd_diffusers import RESBLOCK, convert, nest
from latentworks.models.deepfloyd_if import IFUNet, IFUNetConfig

DOWN_TYPES = {"ResnetDownsampleBlock2D": False, "SimpleCrossAttnDownBlock2D": True}
UP_TYPES = {False: "ResnetUpsampleBlock2D", True: "SimpleCrossAttnUpBlock2D"}
ATTENTION = {
    "norm": "group_norm",
    "context_norm": "norm_cross",
    "q": "to_q",
    "k": "to_k",
    "v": "to_v",
    "context_k": "add_k_proj",
    "context_v": "add_v_proj",
    "out": "to_out.0",
}
PARAM_RENAMES = {"text_pool.pool.position": "add_embedding.pool.positional_embedding"}

_USED = {
    "act_fn", "addition_embed_type", "addition_embed_type_num_heads", "attention_head_dim", "block_out_channels",
    "class_embed_type", "cross_attention_dim", "cross_attention_norm", "down_block_types", "encoder_hid_dim",
    "encoder_hid_dim_type", "flip_sin_to_cos", "freq_shift", "in_channels", "layers_per_block",
    "mid_block_only_cross_attention", "mid_block_scale_factor", "norm_eps", "norm_num_groups",
    "only_cross_attention", "out_channels", "resnet_out_scale_factor", "resnet_skip_time_act", "sample_size",
    "time_embedding_act_fn", "time_embedding_dim", "up_block_types",
    # read by diffusers' transformer blocks only, which IF's simple cross-attention blocks do not use; dropout is
    # off at inference
    "upcast_attention", "use_linear_projection", "dual_cross_attention", "transformer_layers_per_block",
    "attention_type", "dropout",
}  # fmt: skip
_FIXED: dict[str, tuple[Any, ...]] = {
    "center_input_sample": (False,),
    "mid_block_type": ("UNetMidBlock2DSimpleCrossAttn",),
    "resnet_time_scale_shift": ("scale_shift",),
    "time_embedding_type": ("positional",),
    "conv_in_kernel": (3,),
    "conv_out_kernel": (3,),
    "downsample_padding": (1,),
    "class_embeddings_concat": (False,),
}


def is_if_unet_config(cfg: Mapping[str, Any]) -> bool:
    """True for a diffusers U-Net config of IF's kind (simple cross-attention blocks, scale-shift ResBlocks)."""
    return cfg.get("mid_block_type") == "UNetMidBlock2DSimpleCrossAttn" or any(
        t in DOWN_TYPES for t in cfg.get("down_block_types", ())
    )


def if_config_from_diffusers(cfg: Mapping[str, Any], *, source: str = "unet/config.json") -> IFUNetConfig:
    """diffusers ``UNet2DConditionModel`` config (IF's variant) -> :class:`IFUNetConfig`; a field we cannot
    express is an error naming it."""
    if cfg.get("_class_name", "UNet2DConditionModel") != "UNet2DConditionModel":
        raise ValueError(f"{source}: expected a UNet2DConditionModel, got {cfg['_class_name']!r}")
    _check_fields(dict(cfg), source, _USED, _FIXED)
    down = tuple(cfg.get("down_block_types", ()))
    bad = [t for t in down if t not in DOWN_TYPES]
    if not down or bad:
        raise ValueError(
            f"{source}: down block types {bad or list(down)} are not IF's; expected {sorted(DOWN_TYPES)} "
            "(is this a Stable Diffusion U-Net?)"
        )
    n = len(down)
    attention = tuple(DOWN_TYPES[t] for t in down)
    expected_up = tuple(UP_TYPES[a] for a in reversed(attention))
    if tuple(cfg.get("up_block_types", expected_up)) != expected_up:
        raise ValueError(f"{source}: up_block_types must mirror down_block_types: {list(expected_up)}")
    channels = tuple(int(c) for c in cfg["block_out_channels"])
    only = cfg.get("only_cross_attention", False)
    only_levels = (bool(only),) * n if isinstance(only, bool) else tuple(bool(o) for o in only)
    mid_only = cfg.get("mid_block_only_cross_attention")
    mid_only = (only if isinstance(only, bool) else False) if mid_only is None else bool(mid_only)
    hid_type, hid_dim = cfg.get("encoder_hid_dim_type"), cfg.get("encoder_hid_dim")
    if hid_type not in (None, "text_proj"):
        raise ValueError(
            f"{source}: encoder_hid_dim_type={hid_type!r} is not supported (IF uses 'text_proj')"
        )
    add_type = cfg.get("addition_embed_type")
    if add_type not in (None, "text"):
        raise ValueError(f"{source}: addition_embed_type={add_type!r} is not supported (IF uses 'text')")
    class_type = cfg.get("class_embed_type")
    if class_type not in (None, "timestep"):
        raise ValueError(
            f"{source}: class_embed_type={class_type!r} is not supported (IF-II uses 'timestep')"
        )
    norm = cfg.get("cross_attention_norm")
    if norm not in (None, "group_norm"):
        raise ValueError(f"{source}: cross_attention_norm={norm!r} is not supported (IF uses 'group_norm')")
    heads_dim = cfg.get("attention_head_dim", 8)
    return IFUNetConfig(
        in_channels=int(cfg.get("in_channels", 3)),
        out_channels=int(cfg.get("out_channels", 6)),
        channels=channels,
        layers_per_block=_per_level(cfg.get("layers_per_block", 2), n, "layers_per_block", source),
        attention=attention,
        head_dim=_per_level(heads_dim, n, "attention_head_dim", source),
        only_cross_attention=only_levels,
        mid_only_cross_attention=mid_only,
        context_dim=int(cfg.get("cross_attention_dim", 1280)),
        text_dim=int(hid_dim) if hid_dim is not None else 0,
        text_pool_heads=int(cfg.get("addition_embed_type_num_heads", 64)) if add_type == "text" else 0,
        time_embed_dim=int(cfg.get("time_embedding_dim") or 4 * channels[0]),
        noise_level_embed=class_type == "timestep",
        act=str(cfg.get("act_fn", "silu")),
        time_act=cfg.get("time_embedding_act_fn"),
        skip_time_act=bool(cfg.get("resnet_skip_time_act", False)),
        resnet_out_scale=float(cfg.get("resnet_out_scale_factor", 1.0)),
        mid_out_scale=float(cfg.get("mid_block_scale_factor", 1.0)),
        cross_norm=norm == "group_norm",
        norm_groups=int(cfg.get("norm_num_groups", 32)),
        norm_eps=float(cfg.get("norm_eps", 1e-5)),
        flip_sin_to_cos=bool(cfg.get("flip_sin_to_cos", True)),
        freq_shift=float(cfg.get("freq_shift", 0)),
    )


def if_config_to_diffusers(config: IFUNetConfig, *, sample_size: int = 64) -> dict[str, Any]:
    """:class:`IFUNetConfig` -> a diffusers ``UNet2DConditionModel`` config (inverse of the above)."""
    return {
        "_class_name": "UNet2DConditionModel",
        "act_fn": config.act,
        "addition_embed_type": "text" if config.text_pool_heads else None,
        "addition_embed_type_num_heads": config.text_pool_heads or 64,
        "attention_head_dim": list(config.head_dim),
        "block_out_channels": list(config.channels),
        "class_embed_type": "timestep" if config.noise_level_embed else None,
        "cross_attention_dim": config.context_dim,
        "cross_attention_norm": "group_norm" if config.cross_norm else None,
        "down_block_types": [next(k for k, v in DOWN_TYPES.items() if v == a) for a in config.attention],
        "encoder_hid_dim": config.text_dim or None,
        "encoder_hid_dim_type": "text_proj" if config.text_dim else None,
        "flip_sin_to_cos": config.flip_sin_to_cos,
        "freq_shift": config.freq_shift,
        "in_channels": config.in_channels,
        "layers_per_block": list(config.layers_per_block),
        "mid_block_only_cross_attention": config.mid_only_cross_attention,
        "mid_block_scale_factor": config.mid_out_scale,
        "mid_block_type": "UNetMidBlock2DSimpleCrossAttn",
        "norm_eps": config.norm_eps,
        "norm_num_groups": config.norm_groups,
        "only_cross_attention": list(config.only_cross_attention),
        "out_channels": config.out_channels,
        "resnet_out_scale_factor": config.resnet_out_scale,
        "resnet_skip_time_act": config.skip_time_act,
        "resnet_time_scale_shift": "scale_shift",
        "sample_size": sample_size,
        "time_embedding_act_fn": config.time_act,
        "time_embedding_dim": config.time_embed_dim,
        "up_block_types": [UP_TYPES[a] for a in reversed(config.attention)],
    }


def _levels(ours: str, theirs: str, count: int, attend: bool) -> dict[str, str]:
    m: dict[str, str] = {}
    for j in range(count):
        m |= nest(f"{ours}.resnets.{j}", f"{theirs}.resnets.{j}", RESBLOCK)
        if attend:
            m |= nest(f"{ours}.attentions.{j}", f"{theirs}.attentions.{j}", ATTENTION)
    return m


def unet_module_map(config: IFUNetConfig) -> dict[str, str]:
    """``{our_module: diffusers_module}`` for every module with parameters in ``IFUNet(config)``."""
    n = len(config.channels)
    m: dict[str, str] = {
        "conv_in": "conv_in",
        "time_embed.fc1": "time_embedding.linear_1",
        "time_embed.fc2": "time_embedding.linear_2",
        "class_embed.fc1": "class_embedding.linear_1",
        "class_embed.fc2": "class_embedding.linear_2",
        "text_proj": "encoder_hid_proj",
        "text_pool.norm_in": "add_embedding.norm1",
        "text_pool.pool.q": "add_embedding.pool.q_proj",
        "text_pool.pool.k": "add_embedding.pool.k_proj",
        "text_pool.pool.v": "add_embedding.pool.v_proj",
        "text_pool.proj": "add_embedding.proj",
        "text_pool.norm_out": "add_embedding.norm2",
    }
    for i in range(n):
        m |= _levels(f"down.{i}", f"down_blocks.{i}", config.layers_per_block[i], config.attention[i])
        if i < n - 1:
            m |= nest(f"down.{i}.downsample", f"down_blocks.{i}.downsamplers.0", RESBLOCK)
    m |= nest("mid.res1", "mid_block.resnets.0", RESBLOCK)
    m |= nest("mid.attention", "mid_block.attentions.0", ATTENTION)
    m |= nest("mid.res2", "mid_block.resnets.1", RESBLOCK)
    for i in range(n):
        level = n - 1 - i
        m |= _levels(f"up.{i}", f"up_blocks.{i}", config.layers_per_block[level] + 1, config.attention[level])
        if i < n - 1:
            m |= nest(f"up.{i}.upsample", f"up_blocks.{i}.upsamplers.0", RESBLOCK)
    m |= {"norm_out": "conv_norm_out", "conv_out": "conv_out"}
    return m


@lru_cache(maxsize=8)
def model_shapes(config: IFUNetConfig) -> dict[str, tuple[int, ...]]:
    """Shapes of every tensor of ``IFUNet(config)`` (built on the meta device)."""
    return expected_shapes(IFUNet, config)


def key_table(config: IFUNetConfig) -> dict[str, str]:
    """``{our_key: diffusers_key}`` for every tensor of ``IFUNet(config)``."""
    module_map = unet_module_map(config)
    table = {}
    for key in model_shapes(config):
        if key in PARAM_RENAMES:
            table[key] = PARAM_RENAMES[key]
            continue
        module, _, param = key.rpartition(".")
        if module not in module_map:
            raise KeyError(f"internal: module {module!r} of IFUNet has no entry in the key map")
        table[key] = f"{module_map[module]}.{param}"
    if len(set(table.values())) != len(table):
        raise KeyError("internal: the IF key map sends two of our keys to the same target key")
    return table


def if_unet_from_diffusers(
    sd: Mapping[str, Tensor], config: IFUNetConfig, *, strict: bool = True
) -> dict[str, Tensor]:
    """diffusers IF ``UNet2DConditionModel`` state dict -> ours (load with ``IFUNet(config)``)."""
    shapes = model_shapes(config)
    inverse = {theirs: ours for ours, theirs in key_table(config).items()}
    return convert(
        sd, inverse, {t: shapes[o] for t, o in inverse.items()}, source="diffusers IF U-Net", strict=strict
    )


def if_unet_to_diffusers(
    sd: Mapping[str, Tensor], config: IFUNetConfig, *, strict: bool = True
) -> dict[str, Tensor]:
    """Our IF U-Net state dict -> diffusers ``UNet2DConditionModel`` names."""
    return convert(sd, key_table(config), model_shapes(config), source="latentworks IF U-Net", strict=strict)
