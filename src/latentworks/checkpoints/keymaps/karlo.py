"""Karlo (unCLIP) in diffusers' ``UnCLIPPipeline`` layout <-> our networks: key maps and config readers.

Networks: ``prior/`` (``PriorTransformer`` -> :class:`~latentworks.models.prior.PriorTransformer`),
``text_proj/`` (``UnCLIPTextProjModel`` -> :class:`~latentworks.models.prior.UnCLIPTextProj`), ``decoder/``
(``UNet2DConditionModel`` with ``SimpleCrossAttn`` blocks) and ``super_res_first/`` / ``super_res_last/``
(``UNet2DModel``), both -> :class:`~latentworks.models.pixel_unet.PixelUNet`.

Every map is a module-name table generated from our config (``{our module: diffusers module}``), expanded to
parameter names over the model's own state dict and applied by :func:`~latentworks.checkpoints.keymaps.
sd_diffusers.convert`, which refuses missing, unknown or misshapen tensors. Shapes never change, so each map
is reversible (round-trip tested). The config readers accept only what the release uses and say which field
differs otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from latentworks.checkpoints.keymaps.sd3_diffusers import expected_shapes
from latentworks.checkpoints.keymaps.sd_diffusers import convert
from latentworks.models.pixel_unet import PixelUNet, PixelUNetConfig
from latentworks.models.prior import PriorConfig, PriorTransformer, TextProjConfig, UnCLIPTextProj

# -- module tables ----------------------------------------------------------------------------------------


def prior_module_map(config: PriorConfig) -> dict[str, str]:
    """``{our module or parameter: diffusers'}`` for ``PriorTransformer``."""
    m = {
        "time_embed.in_layer": "time_embedding.linear_1",
        "time_embed.out_layer": "time_embedding.linear_2",
        "proj_in": "proj_in",
        "text_embed_proj": "embedding_proj",
        "text_tokens_proj": "encoder_hidden_states_proj",
        "pos_embed": "positional_embedding",
        "query_token": "prd_embedding",
        "norm_out": "norm_out",
        "proj_out": "proj_to_clip_embeddings",
        "clip_mean": "clip_mean",
        "clip_std": "clip_std",
    }
    for i in range(config.num_layers):
        o, t = f"blocks.{i}.", f"transformer_blocks.{i}."
        m |= {o + "norm1": t + "norm1", o + "norm2": t + "norm3"}
        m |= {o + f"attn.{n}": t + f"attn1.to_{n}" for n in "qkv"}
        m |= {
            o + "attn.out": t + "attn1.to_out.0",
            o + "ff.fc1": t + "ff.net.0.proj",
            o + "ff.fc2": t + "ff.net.2",
        }
    return m


TEXT_PROJ_MODULES = {
    "uncond_image_embedding": "learned_classifier_free_guidance_embeddings",
    "text_to_time": "embedding_proj",
    "image_to_time": "clip_image_embeddings_project_to_time_embeddings",
    "image_to_tokens": "clip_extra_context_tokens_proj",
    "text_tokens_proj": "encoder_hidden_states_proj",
    "text_tokens_norm": "text_encoder_hidden_states_norm",
}


def pixel_unet_module_map(config: PixelUNetConfig) -> dict[str, str]:
    """``{our module: diffusers'}`` for ``UNet2DConditionModel`` (decoder) / ``UNet2DModel`` (super-res)."""
    m = {
        "conv_in": "conv_in",
        "time_embed.in_layer": "time_embedding.linear_1",
        "time_embed.out_layer": "time_embedding.linear_2",
        "norm_out": "conv_norm_out",
        "conv_out": "conv_out",
        "mid.res1": "mid_block.resnets.0",
        "mid.res2": "mid_block.resnets.1",
        "mid.attention": "mid_block.attentions.0",
    }
    n = len(config.channels)
    for i in range(n):
        for j in range(config.layers_per_block):
            m[f"down.{i}.resnets.{j}"] = f"down_blocks.{i}.resnets.{j}"
            m[f"down.{i}.attentions.{j}"] = f"down_blocks.{i}.attentions.{j}"
        m[f"down.{i}.downsample"] = f"down_blocks.{i}.downsamplers.0"
        for j in range(config.layers_per_block + 1):
            m[f"up.{i}.resnets.{j}"] = f"up_blocks.{i}.resnets.{j}"
            m[f"up.{i}.attentions.{j}"] = f"up_blocks.{i}.attentions.{j}"
        m[f"up.{i}.upsample"] = f"up_blocks.{i}.upsamplers.0"
    return m


# parameter-level renames inside a block (ours -> diffusers')
_RESBLOCK = {"time_proj": "time_emb_proj", "skip": "conv_shortcut"}
_ATTENTION = {
    "norm": "group_norm",
    "q": "to_q",
    "k": "to_k",
    "v": "to_v",
    "context_k": "add_k_proj",
    "context_v": "add_v_proj",
    "out": "to_out.0",
}


def _table(model: type[nn.Module], config: Any, modules: Mapping[str, str]) -> dict[str, str]:
    """``{our key: diffusers key}`` for every tensor of ``model(config)``."""
    table: dict[str, str] = {}
    for key in expected_shapes(model, config):
        for ours in sorted(modules, key=len, reverse=True):  # the longest module prefix that owns the key
            if key == ours or key.startswith(ours + "."):
                rest = key[len(ours) :].lstrip(".")
                head, _, param = rest.rpartition(".")
                inner = _ATTENTION if ".attention" in ours else _RESBLOCK
                head = inner.get(head, head)
                table[key] = ".".join(p for p in (modules[ours], head, param) if p)
                break
        else:
            raise KeyError(f"internal: {model.__name__} tensor {key!r} has no entry in the Karlo key map")
    if len(set(table.values())) != len(table):
        raise KeyError(f"internal: the {model.__name__} key map sends two of our keys to one diffusers key")
    return table


def _both(model: type[nn.Module], config: Any, modules: Mapping[str, str]) -> tuple[dict[str, str], dict]:
    return _table(model, config, modules), expected_shapes(model, config)


def _from(
    sd: Mapping[str, Tensor], model: type[nn.Module], config: Any, modules: Mapping[str, str], source: str
):  # noqa: ANN202
    table, shapes = _both(model, config, modules)
    inverse = {theirs: ours for ours, theirs in table.items()}
    return convert(sd, inverse, {t: shapes[o] for t, o in inverse.items()}, source=source)


def _to(
    sd: Mapping[str, Tensor], model: type[nn.Module], config: Any, modules: Mapping[str, str], source: str
):  # noqa: ANN202
    table, shapes = _both(model, config, modules)
    return convert(sd, table, shapes, source=source)


def prior_from_diffusers(sd: Mapping[str, Tensor], config: PriorConfig) -> dict[str, Tensor]:
    """diffusers ``PriorTransformer`` state dict -> ours."""
    return _from(
        sd, PriorTransformer, config, prior_module_map(config), "diffusers PriorTransformer (prior/)"
    )


def prior_to_diffusers(sd: Mapping[str, Tensor], config: PriorConfig) -> dict[str, Tensor]:
    return _to(sd, PriorTransformer, config, prior_module_map(config), "latentworks prior")


def text_proj_from_diffusers(sd: Mapping[str, Tensor], config: TextProjConfig) -> dict[str, Tensor]:
    """diffusers ``UnCLIPTextProjModel`` state dict -> ours."""
    return _from(sd, UnCLIPTextProj, config, TEXT_PROJ_MODULES, "diffusers UnCLIPTextProjModel (text_proj/)")


def text_proj_to_diffusers(sd: Mapping[str, Tensor], config: TextProjConfig) -> dict[str, Tensor]:
    return _to(sd, UnCLIPTextProj, config, TEXT_PROJ_MODULES, "latentworks text projection")


def pixel_unet_from_diffusers(
    sd: Mapping[str, Tensor], config: PixelUNetConfig, source: str
) -> dict[str, Tensor]:
    """diffusers ``UNet2DConditionModel`` / ``UNet2DModel`` state dict -> ours (``source`` names the folder)."""
    return _from(sd, PixelUNet, config, pixel_unet_module_map(config), source)


def pixel_unet_to_diffusers(sd: Mapping[str, Tensor], config: PixelUNetConfig) -> dict[str, Tensor]:
    return _to(sd, PixelUNet, config, pixel_unet_module_map(config), "latentworks pixel U-Net")


# -- configs ----------------------------------------------------------------------------------------------


def _require(cfg: Mapping[str, Any], key: str, allowed: tuple[Any, ...], source: str) -> None:
    value = cfg.get(key, allowed[0])
    if isinstance(value, list):
        value = tuple(value)
    if value not in allowed:
        raise ValueError(
            f"{source}: {key}={value!r} is not a Karlo (unCLIP) setting latentworks runs "
            f"(supported: {', '.join(repr(a) for a in allowed)})"
        )


def prior_config_from_diffusers(cfg: Mapping[str, Any], *, source: str = "prior/config.json") -> PriorConfig:
    """Our :class:`PriorConfig` from diffusers' ``PriorTransformer`` config.json."""
    for key, allowed in (
        ("norm_in_type", (None,)),
        ("embedding_proj_norm_type", (None,)),
        ("encoder_hid_proj_type", ("linear",)),
        ("added_emb_type", ("prd",)),
        ("time_embed_act_fn", ("silu",)),
    ):
        _require(cfg, key, allowed, source)
    heads, head_dim = int(cfg.get("num_attention_heads", 32)), int(cfg.get("attention_head_dim", 64))
    embedding = int(cfg.get("embedding_dim", 768))
    for key in ("time_embed_dim", "embedding_proj_dim", "clip_embed_dim"):
        value = cfg.get(key)
        expected = heads * head_dim if key == "time_embed_dim" else embedding
        if value is not None and int(value) != expected:
            raise ValueError(
                f"{source}: {key}={value} differs from {expected}; latentworks runs Karlo's layout only"
            )
    if int(cfg.get("additional_embeddings", 4)) != 4:
        raise ValueError(f"{source}: additional_embeddings must be 4 (text embed, time, image, query)")
    return PriorConfig(
        num_heads=heads,
        head_dim=head_dim,
        num_layers=int(cfg.get("num_layers", 20)),
        embedding_dim=embedding,
        num_text_tokens=int(cfg.get("num_embeddings", 77)),
    )


def text_proj_config_from_diffusers(
    cfg: Mapping[str, Any], *, source: str = "text_proj/config.json"
) -> TextProjConfig:
    """Our :class:`TextProjConfig` from diffusers' ``UnCLIPTextProjModel`` config.json."""
    try:
        return TextProjConfig(
            embedding_dim=int(cfg.get("clip_embeddings_dim", 768)),
            extra_tokens=int(cfg.get("clip_extra_context_tokens", 4)),
            time_embed_dim=int(cfg["time_embed_dim"]),
            context_dim=int(cfg["cross_attention_dim"]),
        )
    except KeyError as e:
        raise ValueError(f"{source}: missing {e.args[0]!r}") from None


_DOWN = {"ResnetDownsampleBlock2D": False, "SimpleCrossAttnDownBlock2D": True}
_UP = {"ResnetUpsampleBlock2D": False, "SimpleCrossAttnUpBlock2D": True}


def pixel_unet_config_from_diffusers(cfg: Mapping[str, Any], *, source: str) -> PixelUNetConfig:
    """Our :class:`PixelUNetConfig` from a Karlo ``decoder/`` (``UNet2DConditionModel``) or ``super_res_*/``
    (``UNet2DModel``) config.json."""
    cls = cfg.get("_class_name", "UNet2DConditionModel")
    down, up = list(cfg.get("down_block_types", ())), list(cfg.get("up_block_types", ()))
    unknown = [b for b in down if b not in _DOWN] + [b for b in up if b not in _UP]
    if unknown:
        raise ValueError(
            f"{source}: block types {unknown} are not Karlo's (it uses {sorted(_DOWN)} and {sorted(_UP)})"
        )
    attention = tuple(_DOWN[b] for b in down)
    if tuple(_UP[b] for b in reversed(up)) != attention:
        raise ValueError(f"{source}: up_block_types {up} do not mirror down_block_types {down}")
    channels = tuple(int(c) for c in cfg["block_out_channels"])
    for key, allowed in (
        ("act_fn", ("silu",)),
        ("flip_sin_to_cos", (True,)),
        ("freq_shift", (0,)),
        ("center_input_sample", (False,)),
        ("resnet_time_scale_shift", ("default", "scale_shift")),
    ):
        _require(cfg, key, allowed, source)
    scale_shift = cfg.get("resnet_time_scale_shift", "default") == "scale_shift"
    groups, eps = int(cfg.get("norm_num_groups", 32)), float(cfg.get("norm_eps", 1e-5))
    if float(cfg.get("mid_block_scale_factor", 1)) != 1.0:
        raise ValueError(f"{source}: mid_block_scale_factor must be 1 (Karlo's)")
    if cls == "UNet2DModel":
        _require(cfg, "time_embedding_type", ("positional",), source)
        _require(cfg, "class_embed_type", (None,), source)
        add_attention = bool(cfg.get("add_attention", True))
        head_dim = cfg.get("attention_head_dim", 8)
        head_dim = int(head_dim) if head_dim is not None else channels[-1]
        attn_groups = cfg.get("attn_norm_num_groups")
        mid_norm = attn_groups is not None or not scale_shift
        if attn_groups is not None and int(attn_groups) != groups:
            raise ValueError(f"{source}: attn_norm_num_groups must equal norm_num_groups ({groups})")
        return PixelUNetConfig(
            in_channels=int(cfg.get("in_channels", 3)),
            out_channels=int(cfg.get("out_channels", 3)),
            channels=channels,
            layers_per_block=int(cfg.get("layers_per_block", 2)),
            attention=attention,
            mid_attention="self" if add_attention else "none",
            head_dim=head_dim,
            context_dim=0,
            class_embedding=False,
            scale_shift=scale_shift,
            mid_attention_norm=mid_norm,
            norm_groups=groups,
            norm_eps=eps,
        )
    _require(cfg, "class_embed_type", ("identity",), source)
    _require(cfg, "mid_block_type", ("UNetMidBlock2DSimpleCrossAttn",), source)
    for key in ("encoder_hid_dim", "addition_embed_type", "time_cond_proj_dim"):
        _require(cfg, key, (None,), source)
    _require(cfg, "only_cross_attention", (False,), source)
    head_dim = cfg.get("attention_head_dim", 8)
    if isinstance(head_dim, list | tuple):
        if len(set(head_dim)) != 1:
            raise ValueError(f"{source}: per-level attention_head_dim {head_dim} is not supported")
        head_dim = head_dim[0]
    return PixelUNetConfig(
        in_channels=int(cfg.get("in_channels", 3)),
        out_channels=int(cfg.get("out_channels", 6)),
        channels=channels,
        layers_per_block=int(cfg.get("layers_per_block", 2)),
        attention=attention,
        mid_attention="context",
        head_dim=int(head_dim),
        context_dim=int(cfg["cross_attention_dim"]),
        class_embedding=True,
        scale_shift=scale_shift,
        norm_groups=groups,
        norm_eps=eps,
    )
