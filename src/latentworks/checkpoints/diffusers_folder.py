"""diffusers folders (``model_index.json`` + one folder per component): read them into our models, write
our models as them.

A diffusers folder looks like::

    model_index.json                     pipeline class and the class of each component ([null, null] = absent)
    unet/ | transformer/                 config.json + diffusion_pytorch_model.safetensors[.index.json + shards]
    vae/                                 config.json (scaling_factor, shift_factor) + weights
    scheduler/scheduler_config.json      beta schedule and prediction type, or flow-matching shift
    text_encoder{,_2,_3}/                transformers' config.json + model.safetensors[.index.json + shards]
    tokenizer{,_2,_3}/                   tokenizer files (handed on as paths)

Reading is data-driven: each component's ``config.json`` is mapped field by field to our config dataclass
(:func:`unet_config_from_diffusers`, :func:`vae_config_from_diffusers`, :func:`mmdit_config_from_diffusers`,
:func:`flux_config_from_diffusers`); a field we cannot express is an error naming it. Weights go through the
key maps in :mod:`latentworks.checkpoints.keymaps`. Writing inverts every step, so diffusers'
``<Component>.from_pretrained(path, subfolder=...)`` (and the pipeline, given text encoders and tokenizers)
loads what we write. Text encoders are passed through in transformers' own layout.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from latentworks.checkpoints.io import CheckpointError, load_state_dict, read_metadata, save_file_atomic
from latentworks.checkpoints.keymaps.flux_diffusers import flux_from_diffusers, flux_to_diffusers
from latentworks.checkpoints.keymaps.sd3_diffusers import sd3_from_diffusers, sd3_to_diffusers
from latentworks.checkpoints.keymaps.sd_diffusers import (
    unet_from_diffusers,
    unet_to_diffusers,
    vae_from_diffusers,
    vae_to_diffusers,
)
from latentworks.diffusion.latent_formats import LATENT_FORMATS, LatentFormat
from latentworks.models.autoencoder import Autoencoder, AutoencoderConfig
from latentworks.models.flux import Flux, FluxConfig
from latentworks.models.mmdit import MMDiT, MMDiTConfig
from latentworks.models.unet import UNet, UNetConfig

DenoiserConfig = UNetConfig | MMDiTConfig | FluxConfig
TextEncoderEntry = tuple[dict[str, Tensor], dict[str, Any]]

FAMILIES = ("sd1", "sd2", "sdxl", "sdxl-refiner", "sd3", "flux")
PIPELINE_CLASS = {
    "sd1": "StableDiffusionPipeline",
    "sd2": "StableDiffusionPipeline",
    "sdxl": "StableDiffusionXLPipeline",
    "sdxl-refiner": "StableDiffusionXLImg2ImgPipeline",
    "sd3": "StableDiffusion3Pipeline",
    "flux": "FluxPipeline",
}
DENOISER_KIND = {
    "sd1": "unet",
    "sd2": "unet",
    "sdxl": "unet",
    "sdxl-refiner": "unet",
    "sd3": "mmdit",
    "flux": "flux",
}
LATENT_FORMAT_OF = {
    "sd1": "sd15",
    "sd2": "sd2",
    "sdxl": "sdxl",
    "sdxl-refiner": "sdxl",
    "sd3": "sd3",
    "flux": "flux",
}
# Which text encoder sits in which folder, per family (used to write, and to read when the config's width
# is not one of the released encoders').
TEXT_SLOTS: dict[str, dict[str, str]] = {
    "sd1": {"text_encoder": "clip_l"},
    "sd2": {"text_encoder": "clip_h"},
    "sdxl": {"text_encoder": "clip_l", "text_encoder_2": "clip_g"},
    "sdxl-refiner": {"text_encoder_2": "clip_g"},
    "sd3": {"text_encoder": "clip_l", "text_encoder_2": "clip_g", "text_encoder_3": "t5xxl"},
    "flux": {"text_encoder": "clip_l", "text_encoder_2": "t5xxl"},
}
CLIP_BY_WIDTH = {768: "clip_l", 1024: "clip_h", 1280: "clip_g"}
TEXT_ENCODER_CLASS = {"clip_l": "CLIPTextModel", "clip_h": "CLIPTextModel", "clip_g": "CLIPTextModelWithProjection",
                      "t5xxl": "T5EncoderModel"}  # fmt: skip
TOKENIZER_CLASS = {"clip_l": "CLIPTokenizer", "clip_h": "CLIPTokenizer", "clip_g": "CLIPTokenizer",
                   "t5xxl": "T5TokenizerFast"}  # fmt: skip
DIFFUSERS_WEIGHTS = "diffusion_pytorch_model"
TRANSFORMERS_WEIGHTS = "model"


# --------------------------------------------------------------------------------------------------
# Config field checks
# --------------------------------------------------------------------------------------------------


def _norm(v: Any) -> Any:
    return tuple(_norm(x) for x in v) if isinstance(v, list | tuple) else v


def _check_fields(
    cfg: dict[str, Any], source: str, used: set[str], fixed: dict[str, tuple[Any, ...]]
) -> None:
    """Refuse fields we cannot express: ``fixed`` lists the accepted values of fields our model hard-codes;
    fields in neither ``used`` nor ``fixed`` are accepted only when unset (None/False/empty)."""
    for key, value in cfg.items():
        if key.startswith("_"):
            continue
        if key in fixed:
            if _norm(value) not in fixed[key]:
                allowed = " or ".join(repr(a) for a in fixed[key])
                raise ValueError(
                    f"{source}: {key}={value!r} is not supported; latentworks implements only {key}={allowed}. "
                    "This model variant cannot be loaded."
                )
        elif key not in used and value not in (None, False, (), [], {}):
            raise ValueError(
                f"{source}: unsupported field {key}={value!r}; latentworks has no equivalent, so this model "
                "variant cannot be loaded (remove the field only if it is unset in the original model)"
            )


def _per_level(value: Any, n: int, name: str, source: str) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * n
    value = tuple(value)
    if len(value) != n:
        raise ValueError(f"{source}: {name}={list(value)} needs one entry per level ({n} levels)")
    return value


# --------------------------------------------------------------------------------------------------
# U-Net: diffusers UNet2DConditionModel config <-> UNetConfig
# --------------------------------------------------------------------------------------------------

_UNET_FIXED: dict[str, tuple[Any, ...]] = {
    "center_input_sample": (False,),
    "flip_sin_to_cos": (True,),
    "freq_shift": (0,),
    "mid_block_type": ("UNetMidBlock2DCrossAttn",),
    "downsample_padding": (1,),
    "mid_block_scale_factor": (1, 1.0),
    "act_fn": ("silu",),
    "norm_eps": (1e-5,),
    "resnet_time_scale_shift": ("default",),
    "resnet_out_scale_factor": (1, 1.0),
    "time_embedding_type": ("positional",),
    "conv_in_kernel": (3,),
    "conv_out_kernel": (3,),
    "attention_type": ("default",),
    "addition_embed_type": (None, "text_time"),
    "addition_embed_type_num_heads": (64,),
}
_UNET_USED = {
    "sample_size", "in_channels", "out_channels", "down_block_types", "up_block_types", "block_out_channels",
    "layers_per_block", "dropout", "norm_num_groups", "cross_attention_dim", "transformer_layers_per_block",
    "reverse_transformer_layers_per_block", "attention_head_dim", "num_attention_heads", "use_linear_projection",
    "upcast_attention", "addition_time_embed_dim", "projection_class_embeddings_input_dim",
}  # fmt: skip


def unet_config_from_diffusers(
    cfg: dict[str, Any], *, num_time_ids: int = 6, source: str = "unet/config.json"
) -> UNetConfig:
    """diffusers ``UNet2DConditionModel`` config -> :class:`UNetConfig`.

    ``num_time_ids`` is not in the U-Net config (diffusers only stores the summed width
    ``projection_class_embeddings_input_dim = pooled + num_time_ids * addition_time_embed_dim``): 6 for
    SDXL base, 5 for the refiner (``requires_aesthetics_score`` in its ``model_index.json``).
    """
    if cfg.get("_class_name", "UNet2DConditionModel") != "UNet2DConditionModel":
        raise ValueError(f"{source}: expected a UNet2DConditionModel, got {cfg['_class_name']!r}")
    _check_fields(cfg, source, _UNET_USED, _UNET_FIXED)
    if cfg.get("num_attention_heads") is not None:
        raise ValueError(
            f"{source}: num_attention_heads is set; diffusers itself does not support it for U-Nets"
        )
    down = tuple(cfg.get("down_block_types", ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)))
    n = len(down)
    bad = [t for t in down if t not in ("CrossAttnDownBlock2D", "DownBlock2D")]
    if bad:
        raise ValueError(
            f"{source}: down block types {bad} are not supported (CrossAttnDownBlock2D, DownBlock2D)"
        )
    expected_up = tuple(t.replace("Down", "Up") for t in reversed(down))
    up = tuple(cfg.get("up_block_types", expected_up))
    if up != expected_up:
        raise ValueError(
            f"{source}: up_block_types {list(up)} must mirror down_block_types: {list(expected_up)}"
        )
    layers = _per_level(cfg.get("transformer_layers_per_block", 1), n, "transformer_layers_per_block", source)
    reverse = cfg.get("reverse_transformer_layers_per_block")
    if reverse is not None and _norm(reverse) != tuple(reversed(layers)):
        raise ValueError(
            f"{source}: reverse_transformer_layers_per_block={reverse} differs from the down path"
        )
    channels = tuple(cfg.get("block_out_channels", (320, 640, 1280, 1280)))
    if not isinstance(cfg.get("layers_per_block", 2), int):
        raise ValueError(
            f"{source}: a per-level layers_per_block is not supported, got {cfg['layers_per_block']}"
        )
    if not isinstance(cfg.get("cross_attention_dim", 1280), int):
        raise ValueError(f"{source}: a per-level cross_attention_dim is not supported")
    # diffusers' attention_head_dim is the number of heads (per level)
    heads = _per_level(cfg.get("attention_head_dim", 8), n, "attention_head_dim", source)
    head_spec: dict[str, Any]
    if len(set(heads)) == 1:
        head_spec = {"num_heads": heads[0], "head_dim": None}
    elif len({c // h for c, h in zip(channels, heads, strict=True)}) == 1 and all(
        c % h == 0 for c, h in zip(channels, heads, strict=True)
    ):
        head_spec = {"num_heads": None, "head_dim": channels[0] // heads[0]}
    else:
        head_spec = {"num_heads": heads, "head_dim": None}
    added: dict[str, Any] = {}
    if cfg.get("addition_embed_type") == "text_time":
        time_id_dim = cfg.get("addition_time_embed_dim")
        total = cfg.get("projection_class_embeddings_input_dim")
        if not isinstance(time_id_dim, int) or not isinstance(total, int):
            raise ValueError(
                f"{source}: addition_embed_type='text_time' needs addition_time_embed_dim and "
                "projection_class_embeddings_input_dim"
            )
        pooled = total - num_time_ids * time_id_dim
        if pooled < 1:
            raise ValueError(
                f"{source}: projection_class_embeddings_input_dim={total} leaves no room for a pooled vector "
                f"next to {num_time_ids} time ids of width {time_id_dim}"
            )
        added = {"pooled_dim": pooled, "num_time_ids": num_time_ids, "time_id_dim": time_id_dim}
    return UNetConfig(
        in_channels=cfg.get("in_channels", 4),
        out_channels=cfg.get("out_channels", 4),
        channels=channels,
        layers_per_block=cfg.get("layers_per_block", 2),
        transformer_depth=tuple(
            d if t.startswith("CrossAttn") else 0 for d, t in zip(layers, down, strict=True)
        ),
        mid_transformer_depth=layers[-1],
        context_dim=cfg.get("cross_attention_dim", 1280),
        use_linear_projection=bool(cfg.get("use_linear_projection", False)),
        upcast_attention=bool(cfg.get("upcast_attention", False)),
        norm_groups=cfg.get("norm_num_groups", 32),
        dropout=float(cfg.get("dropout", 0.0)),
        **head_spec,
        **added,
    )


def unet_config_to_diffusers(config: UNetConfig, *, sample_size: int = 64) -> dict[str, Any]:
    """:class:`UNetConfig` -> diffusers ``UNet2DConditionModel`` config (inverse of the above)."""
    n = len(config.channels)
    if config.transformer_depth[-1] not in (0, config.mid_transformer_depth):
        raise ValueError(
            "diffusers gives the middle block the last level's transformer depth; "
            f"transformer_depth[-1]={config.transformer_depth[-1]} != mid_transformer_depth="
            f"{config.mid_transformer_depth} cannot be written as a diffusers U-Net"
        )
    # Levels without attention ignore their entry, except the last one, which diffusers' middle block reads.
    used = {d for d in config.transformer_depth if d} | {config.mid_transformer_depth}
    layers: int | list[int] = used.pop() if len(used) == 1 else [d or 1 for d in config.transformer_depth]
    if isinstance(layers, list):
        layers[-1] = config.mid_transformer_depth
    down = ["CrossAttnDownBlock2D" if d else "DownBlock2D" for d in config.transformer_depth]
    heads = [config.heads_at(i)[0] for i in range(n)]
    out: dict[str, Any] = {
        "_class_name": "UNet2DConditionModel",
        "sample_size": sample_size,
        "in_channels": config.in_channels,
        "out_channels": config.out_channels,
        "down_block_types": down,
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "up_block_types": [t.replace("Down", "Up") for t in reversed(down)],
        "block_out_channels": list(config.channels),
        "layers_per_block": config.layers_per_block,
        "transformer_layers_per_block": layers,
        "attention_head_dim": heads[0] if len(set(heads)) == 1 else heads,
        "cross_attention_dim": config.context_dim,
        "use_linear_projection": config.use_linear_projection,
        "upcast_attention": config.upcast_attention,
        "norm_num_groups": config.norm_groups,
        "norm_eps": 1e-5,
        "dropout": config.dropout,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "act_fn": "silu",
    }
    if config.has_added_conditioning:
        out |= {
            "addition_embed_type": "text_time",
            "addition_time_embed_dim": config.time_id_dim,
            "projection_class_embeddings_input_dim": config.added_conditioning_dim,
        }
    return out


# --------------------------------------------------------------------------------------------------
# VAE: diffusers AutoencoderKL config <-> AutoencoderConfig (+ scale and shift)
# --------------------------------------------------------------------------------------------------

_VAE_USED = {"in_channels", "out_channels", "down_block_types", "up_block_types", "block_out_channels",
             "layers_per_block", "latent_channels", "norm_num_groups", "sample_size", "scaling_factor",
             "shift_factor", "force_upcast", "use_quant_conv", "use_post_quant_conv", "mid_block_add_attention"}  # fmt: skip


def vae_config_from_diffusers(
    cfg: dict[str, Any], *, source: str = "vae/config.json"
) -> tuple[AutoencoderConfig, float, float]:
    """diffusers ``AutoencoderKL`` config -> (:class:`AutoencoderConfig`, scaling_factor, shift_factor)."""
    if cfg.get("_class_name", "AutoencoderKL") != "AutoencoderKL":
        raise ValueError(f"{source}: expected an AutoencoderKL, got {cfg['_class_name']!r}")
    _check_fields(cfg, source, _VAE_USED, {"act_fn": ("silu",)})
    channels = tuple(cfg.get("block_out_channels", (64,)))
    down = tuple(cfg.get("down_block_types", ("DownEncoderBlock2D",)))
    up = tuple(cfg.get("up_block_types", ("UpDecoderBlock2D",)))
    if down != ("DownEncoderBlock2D",) * len(channels) or up != ("UpDecoderBlock2D",) * len(channels):
        raise ValueError(
            f"{source}: block types {list(down)} / {list(up)} are not supported; expected "
            f"{len(channels)} x DownEncoderBlock2D / UpDecoderBlock2D"
        )
    config = AutoencoderConfig(
        in_channels=cfg.get("in_channels", 3),
        out_channels=cfg.get("out_channels", 3),
        latent_channels=cfg.get("latent_channels", 4),
        channels=channels,
        layers_per_block=cfg.get("layers_per_block", 1),
        norm_groups=cfg.get("norm_num_groups", 32),
        use_quant_conv=bool(cfg.get("use_quant_conv", True)),
        use_post_quant_conv=bool(cfg.get("use_post_quant_conv", True)),
        mid_attention=bool(cfg.get("mid_block_add_attention", True)),
    )
    shift = cfg.get("shift_factor")
    return config, float(cfg.get("scaling_factor", 0.18215)), float(shift or 0.0)


def vae_config_to_diffusers(
    config: AutoencoderConfig, latent_format: LatentFormat, *, sample_size: int = 512
) -> dict[str, Any]:
    """:class:`AutoencoderConfig` + latent format -> diffusers ``AutoencoderKL`` config."""
    if config.norm_eps != 1e-6:
        raise ValueError(f"diffusers' AutoencoderKL fixes norm eps at 1e-6; this VAE uses {config.norm_eps}")
    n = len(config.channels)
    return {
        "_class_name": "AutoencoderKL",
        "in_channels": config.in_channels,
        "out_channels": config.out_channels,
        "down_block_types": ["DownEncoderBlock2D"] * n,
        "up_block_types": ["UpDecoderBlock2D"] * n,
        "block_out_channels": list(config.channels),
        "layers_per_block": config.layers_per_block,
        "act_fn": "silu",
        "latent_channels": config.latent_channels,
        "norm_num_groups": config.norm_groups,
        "sample_size": sample_size,
        "scaling_factor": latent_format.scale_factor,
        "shift_factor": latent_format.shift_factor or None,
        "use_quant_conv": config.use_quant_conv,
        "use_post_quant_conv": config.use_post_quant_conv,
        "mid_block_add_attention": config.mid_attention,
        "force_upcast": True,
    }


# --------------------------------------------------------------------------------------------------
# Transformers: SD3Transformer2DModel <-> MMDiTConfig, FluxTransformer2DModel <-> FluxConfig
# --------------------------------------------------------------------------------------------------

_MMDIT_USED = {"sample_size", "patch_size", "in_channels", "num_layers", "attention_head_dim",
               "num_attention_heads", "joint_attention_dim", "caption_projection_dim", "pooled_projection_dim",
               "out_channels", "pos_embed_max_size", "dual_attention_layers", "qk_norm"}  # fmt: skip


def mmdit_config_from_diffusers(
    cfg: dict[str, Any], *, source: str = "transformer/config.json"
) -> MMDiTConfig:
    """diffusers ``SD3Transformer2DModel`` config -> :class:`MMDiTConfig` (defaults are diffusers')."""
    _check_fields(cfg, source, _MMDIT_USED, {})
    heads, head_dim = cfg.get("num_attention_heads", 18), cfg.get("attention_head_dim", 64)
    width = heads * head_dim
    if cfg.get("caption_projection_dim", 1152) != width:
        raise ValueError(
            f"{source}: caption_projection_dim={cfg.get('caption_projection_dim')} must equal "
            f"num_attention_heads * attention_head_dim = {width} (one width for both streams)"
        )
    in_channels = cfg.get("in_channels", 16)
    out_channels = cfg.get("out_channels", 16)
    return MMDiTConfig(
        in_channels=in_channels,
        out_channels=None if out_channels in (None, in_channels) else out_channels,
        sample_size=cfg.get("sample_size", 128),
        patch_size=cfg.get("patch_size", 2),
        width=width,
        depth=cfg.get("num_layers", 18),
        num_heads=heads,
        context_dim=cfg.get("joint_attention_dim", 4096),
        pooled_dim=cfg.get("pooled_projection_dim", 2048),
        pos_embed_max_size=cfg.get("pos_embed_max_size", 96),
        qk_norm=cfg.get("qk_norm"),
        dual_attention_layers=tuple(cfg.get("dual_attention_layers") or ()),
    )


def mmdit_config_to_diffusers(config: MMDiTConfig) -> dict[str, Any]:
    """:class:`MMDiTConfig` -> diffusers ``SD3Transformer2DModel`` config."""
    if config.mlp_ratio != 4.0:
        raise ValueError(
            f"diffusers' SD3Transformer2DModel fixes mlp_ratio at 4, this model has {config.mlp_ratio}"
        )
    return {
        "_class_name": "SD3Transformer2DModel",
        "sample_size": config.sample_size,
        "patch_size": config.patch_size,
        "in_channels": config.in_channels,
        "num_layers": config.depth,
        "attention_head_dim": config.head_dim,
        "num_attention_heads": config.num_heads,
        "joint_attention_dim": config.context_dim,
        "caption_projection_dim": config.width,
        "pooled_projection_dim": config.pooled_dim,
        "out_channels": config.output_channels,
        "pos_embed_max_size": config.pos_embed_max_size,
        "dual_attention_layers": list(config.dual_attention_layers),
        "qk_norm": config.qk_norm,
    }


_FLUX_USED = {"in_channels", "out_channels", "num_layers", "num_single_layers", "attention_head_dim",
              "num_attention_heads", "joint_attention_dim", "pooled_projection_dim", "guidance_embeds",
              "axes_dims_rope"}  # fmt: skip


def flux_config_from_diffusers(cfg: dict[str, Any], *, source: str = "transformer/config.json") -> FluxConfig:
    """diffusers ``FluxTransformer2DModel`` config -> :class:`FluxConfig`.

    diffusers counts channels after 2x2 packing (``in_channels=64`` for 16 latent channels) and sets
    ``patch_size=1`` (the packing happens in the pipeline); ours counts latent channels and packs inside.
    """
    _check_fields(cfg, source, _FLUX_USED, {"patch_size": (1,)})
    packed_in = cfg.get("in_channels", 64)
    packed_out = cfg.get("out_channels") or packed_in
    if packed_in % 4 or packed_out % 4:
        raise ValueError(
            f"{source}: in/out_channels {packed_in}/{packed_out} must be 4 x latent channels (2x2 packing)"
        )
    heads, head_dim = cfg.get("num_attention_heads", 24), cfg.get("attention_head_dim", 128)
    return FluxConfig(
        in_channels=packed_in // 4,
        out_channels=None if packed_out == packed_in else packed_out // 4,
        patch_size=2,
        width=heads * head_dim,
        num_heads=heads,
        double_depth=cfg.get("num_layers", 19),
        single_depth=cfg.get("num_single_layers", 38),
        context_dim=cfg.get("joint_attention_dim", 4096),
        pooled_dim=cfg.get("pooled_projection_dim", 768),
        axes_dim=tuple(cfg.get("axes_dims_rope", (16, 56, 56))),
        guidance_embed=bool(cfg.get("guidance_embeds", False)),
    )


def flux_config_to_diffusers(config: FluxConfig) -> dict[str, Any]:
    """:class:`FluxConfig` -> diffusers ``FluxTransformer2DModel`` config."""
    if config.patch_size != 2 or config.mlp_ratio != 4.0 or config.theta != 10000.0:
        raise ValueError(
            "diffusers' FluxTransformer2DModel fixes 2x2 packing, mlp_ratio 4 and RoPE theta 10000; this model has "
            f"patch_size={config.patch_size}, mlp_ratio={config.mlp_ratio}, theta={config.theta}"
        )
    return {
        "_class_name": "FluxTransformer2DModel",
        "patch_size": 1,
        "in_channels": 4 * config.in_channels,
        "out_channels": 4 * config.output_channels,
        "num_layers": config.double_depth,
        "num_single_layers": config.single_depth,
        "attention_head_dim": config.head_dim,
        "num_attention_heads": config.num_heads,
        "joint_attention_dim": config.context_dim,
        "pooled_projection_dim": config.pooled_dim,
        "guidance_embeds": config.guidance_embed,
        "axes_dims_rope": list(config.axes_dim),
    }


# --------------------------------------------------------------------------------------------------
# Scheduler config <-> (prediction, sampling spec as in model.json)
# --------------------------------------------------------------------------------------------------

_BETAS = {"scaled_linear": "scaled_linear", "linear": "linear", "squaredcos_cap_v2": "cosine"}
_PREDICTION = {"epsilon": "eps", "v_prediction": "v"}


def scheduler_from_diffusers(
    cfg: dict[str, Any], *, source: str = "scheduler/scheduler_config.json"
) -> tuple[str, dict[str, Any]]:
    """A diffusers scheduler config -> (prediction ``"eps"|"v"|"flow"``, sampling spec).

    Discrete schedulers give ``{"kind": "discrete", "betas", "linear_start", "linear_end", "num_timesteps",
    "zero_terminal_snr"}``. Flow matching gives ``{"kind": "flow", "shift", "multiplier": 1000}``, plus for
    FLUX's dynamic shifting ``"dynamic_shift": {base_seq_len, max_seq_len, base_shift, max_shift}`` - the
    keyword arguments of :meth:`FlowModelSampling.flux` / ``flux_shift_mu``, applied per image size.
    Sampler-only options (timestep spacing, Karras sigmas...) are inference choices and are not carried.
    """
    name = cfg.get("_class_name", "")
    if name.startswith("FlowMatch") or (not name and "beta_schedule" not in cfg and "shift" in cfg):
        if cfg.get("time_shift_type", "exponential") != "exponential" or cfg.get("shift_terminal"):
            raise ValueError(
                f"{source}: time_shift_type={cfg.get('time_shift_type')!r} / shift_terminal="
                f"{cfg.get('shift_terminal')!r} are not supported (exponential shift, no terminal stretch)"
            )
        spec: dict[str, Any] = {"kind": "flow", "shift": float(cfg.get("shift", 1.0)), "multiplier": 1000.0}
        if cfg.get("use_dynamic_shifting", False):
            spec["shift"] = (
                1.0  # diffusers ignores ``shift`` under dynamic shifting (FLUX.1 ships 3.0 unused)
            )
            spec["dynamic_shift"] = {
                "base_seq_len": int(cfg.get("base_image_seq_len", 256)),
                "max_seq_len": int(cfg.get("max_image_seq_len", 4096)),
                "base_shift": float(cfg.get("base_shift", 0.5)),
                "max_shift": float(cfg.get("max_shift", 1.15)),
            }
        if int(cfg.get("num_train_timesteps", 1000)) != 1000:
            spec["num_train_timesteps"] = int(cfg["num_train_timesteps"])
        return "flow", spec
    if cfg.get("trained_betas") is not None:
        raise ValueError(f"{source}: explicit trained_betas are not supported; use a named beta_schedule")
    schedule = cfg.get("beta_schedule", "linear")
    if schedule not in _BETAS:
        raise ValueError(f"{source}: beta_schedule={schedule!r} is not supported; known: {sorted(_BETAS)}")
    prediction = cfg.get("prediction_type", "epsilon")
    if prediction not in _PREDICTION:
        raise ValueError(
            f"{source}: prediction_type={prediction!r} is not supported; latentworks runs 'epsilon' and "
            "'v_prediction' models"
        )
    return _PREDICTION[prediction], {
        "kind": "discrete",
        "betas": _BETAS[schedule],
        "linear_start": float(cfg.get("beta_start", 0.0001)),
        "linear_end": float(cfg.get("beta_end", 0.02)),
        "num_timesteps": int(cfg.get("num_train_timesteps", 1000)),
        "zero_terminal_snr": bool(cfg.get("rescale_betas_zero_snr", False)),
    }


def scheduler_to_diffusers(prediction: str, sampling: dict[str, Any]) -> dict[str, Any]:
    """(prediction, sampling spec) -> a diffusers scheduler config (Euler for discrete models)."""
    kind = sampling.get("kind")
    if kind == "flow":
        if prediction != "flow":
            raise ValueError(f"a flow sampling spec needs prediction='flow', got {prediction!r}")
        if float(sampling.get("multiplier", 1000.0)) != 1000.0:
            raise ValueError(
                "diffusers' flow-matching models take timestep = 1000 * sigma; multiplier must be 1000"
            )
        dyn = sampling.get("dynamic_shift")
        out: dict[str, Any] = {
            "_class_name": "FlowMatchEulerDiscreteScheduler",
            "num_train_timesteps": int(sampling.get("num_train_timesteps", 1000)),
            "shift": float(sampling.get("shift", 1.0)),
            "use_dynamic_shifting": dyn is not None,
        }
        if dyn is not None:
            out |= {
                "base_image_seq_len": dyn.get("base_seq_len", 256),
                "max_image_seq_len": dyn.get("max_seq_len", 4096),
                "base_shift": dyn.get("base_shift", 0.5),
                "max_shift": dyn.get("max_shift", 1.15),
            }
        return out
    if kind != "discrete":
        raise ValueError(f"unknown sampling kind {kind!r}; choose 'discrete' or 'flow'")
    inverse_pred = {v: k for k, v in _PREDICTION.items()}
    if prediction not in inverse_pred:
        raise ValueError(f"a discrete model's prediction must be 'eps' or 'v', got {prediction!r}")
    inverse_betas = {v: k for k, v in _BETAS.items()}
    betas = sampling.get("betas", "scaled_linear")
    if betas not in inverse_betas:
        raise ValueError(f"beta schedule {betas!r} has no diffusers name; known: {sorted(inverse_betas)}")
    zero_snr = bool(sampling.get("zero_terminal_snr", False))
    return {
        "_class_name": "EulerDiscreteScheduler",
        "num_train_timesteps": int(sampling.get("num_timesteps", 1000)),
        "beta_start": float(sampling.get("linear_start", 0.00085)),
        "beta_end": float(sampling.get("linear_end", 0.012)),
        "beta_schedule": inverse_betas[betas],
        "prediction_type": inverse_pred[prediction],
        "rescale_betas_zero_snr": zero_snr,
        "timestep_spacing": "trailing" if zero_snr else "leading",
        "steps_offset": 1,
    }


# --------------------------------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------------------------------


def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path.parent}: expected {what} at {path}, but the file does not exist")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _cast(t: Tensor, dtype: torch.dtype | None, device: str | torch.device) -> Tensor:
    return t.to(device=device, dtype=dtype if dtype is not None and t.is_floating_point() else t.dtype)


class LazySafetensors(Mapping[str, Tensor]):
    """The tensors of one or more safetensors files (shards), each read from the memory map and cast only
    when looked up. The key maps look every tensor up once and keep only their output, so converting
    costs about the converted weights in memory, not file + copy."""

    def __init__(
        self, files: list[Path], *, dtype: torch.dtype | None = None, device: str | torch.device = "cpu"
    ) -> None:
        from safetensors import safe_open

        self.dtype, self.device = dtype, device
        self._where: dict[str, Path] = {}
        self._handles: dict[Path, Any] = {}
        for path in files:
            read_metadata(path)  # validates the header: truncated / corrupt files raise CheckpointError
            handle = safe_open(str(path), framework="pt")
            self._handles[path] = handle
            self._where |= dict.fromkeys(handle.keys(), path)

    def __getitem__(self, key: str) -> Tensor:
        path = self._where[key]  # KeyError for unknown keys, as a dict
        return _cast(self._handles[path].get_tensor(key), self.dtype, self.device)

    def __contains__(self, key: object) -> bool:  # without reading the tensor (Mapping's default would)
        return key in self._where

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)


def read_weights(
    folder: Path,
    stem: str = DIFFUSERS_WEIGHTS,
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    allow_pickle: bool = False,
    variant: str | None = None,
) -> Mapping[str, Tensor]:
    """A component's weights: ``<stem>.safetensors``, or shards listed in ``<stem>.safetensors.index.json``
    (safetensors are read lazily, see :class:`LazySafetensors`); ``<stem>.bin`` (and its index) only with
    ``allow_pickle=True``. ``variant="fp16"`` reads ``<stem>.fp16.safetensors`` (diffusers' naming)."""
    v = f".{variant}" if variant else ""
    single, index = folder / f"{stem}{v}.safetensors", folder / f"{stem}.safetensors.index{v}.json"
    if single.is_file():
        return LazySafetensors([single], dtype=dtype, device=device)
    if index.is_file():
        files = _shard_files(index)
        weights = LazySafetensors(files, dtype=dtype, device=device)
        missing = sorted(set(_read_json(index, "a shard index")["weight_map"]) - set(weights))
        if missing:
            raise CheckpointError(f"{index}: tensors {missing[:5]} are listed but not in their shards")
        return weights
    pickled, pickled_index = folder / f"{stem}{v}.bin", folder / f"{stem}.bin.index{v}.json"
    if pickled.is_file() or pickled_index.is_file():
        if not allow_pickle:
            raise CheckpointError(
                f"{folder}: only pickled weights ({stem}{v}.bin) were found; pickles can run code, so they are "
                f"refused. Convert them to {stem}{v}.safetensors, or pass allow_pickle=True (CLI: --allow-pickle) "
                "if you trust them."
            )
        files = [pickled] if pickled.is_file() else _shard_files(pickled_index)
        out: dict[str, Tensor] = {}
        for path in files:
            out |= {k: _cast(t, dtype, device) for k, t in load_state_dict(path, allow_pickle=True).items()}
        return out
    others = sorted(p.name for p in folder.glob(f"{stem}*") if p.suffix in (".safetensors", ".bin", ".json"))
    hint = (
        f"; the folder has {others} (a variant? pass variant='fp16' for {stem}.fp16.safetensors)"
        if others
        else ""
    )
    raise FileNotFoundError(
        f"{folder}: no weights found; expected {single.name} (or {index.name} with its shards){hint}"
    )


def _shard_files(index: Path) -> list[Path]:
    weight_map = _read_json(index, "a shard index").get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index}: has no 'weight_map' of tensor name -> shard file")
    files = [index.parent / shard for shard in sorted(set(weight_map.values()))]
    for path in files:
        if not path.is_file():
            raise FileNotFoundError(f"{index}: lists shard {path.name}, which is missing from {index.parent}")
    return files


def write_weights(
    tensors: dict[str, Tensor], folder: Path, stem: str, *, max_shard_bytes: int | None = None
) -> None:
    """Write ``<stem>.safetensors``, or shards ``<stem>-0000i-of-0000n.safetensors`` + index when the tensors
    exceed ``max_shard_bytes``. Weights of an earlier write in another layout are removed first (a stale
    single file would otherwise shadow new shards for every reader)."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in (folder / f"{stem}.safetensors", folder / f"{stem}.safetensors.index.json"):
        old.unlink(missing_ok=True)
    for old in folder.glob(f"{stem}-*-of-*.safetensors"):
        old.unlink()
    meta = {"format": "pt"}
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    if max_shard_bytes is None or total <= max_shard_bytes:
        save_file_atomic(tensors, folder / f"{stem}.safetensors", metadata=meta)
        return
    shards: list[dict[str, Tensor]] = [{}]
    size = 0
    for key, t in tensors.items():
        n = t.numel() * t.element_size()
        if shards[-1] and size + n > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = t
        size += n
    weight_map: dict[str, str] = {}
    for i, shard in enumerate(shards):
        name = f"{stem}-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file_atomic(shard, folder / name, metadata=meta)
        weight_map |= dict.fromkeys(shard, name)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / f"{stem}.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


# --------------------------------------------------------------------------------------------------
# Reading a folder
# --------------------------------------------------------------------------------------------------


@dataclass
class DiffusersFolder:
    """What a diffusers folder holds, in our terms. Components the folder lacks are ``None`` / empty.

    ``denoiser_state`` and ``vae_state`` are in our parameter layout (load with ``strict=True``);
    ``text_encoders`` maps ``"clip_l"|"clip_h"|"clip_g"|"t5xxl"`` to (transformers state dict, config.json dict);
    ``tokenizers`` maps the same names to tokenizer folders.
    """

    path: Path
    family: str | None
    denoiser_kind: str | None
    denoiser_config: DenoiserConfig | None
    denoiser_state: dict[str, Tensor] | None
    vae_config: AutoencoderConfig | None
    vae_state: dict[str, Tensor] | None
    latent_format: LatentFormat | None
    prediction: str | None
    sampling: dict[str, Any] | None
    text_encoders: dict[str, TextEncoderEntry] = field(default_factory=dict)
    tokenizers: dict[str, Path] = field(default_factory=dict)

    @property
    def behaviour_family(self) -> str | None:
        """The key of :data:`latentworks.pipelines.families.FAMILY_BEHAVIOUR` for this model: ``sd2-v`` for
        v-prediction SD 2.x, ``flux-dev`` / ``flux-schnell`` by the guidance embedding, else ``family``."""
        if self.family == "sd2" and self.prediction == "v":
            return "sd2-v"
        if self.family == "flux" and isinstance(self.denoiser_config, FluxConfig):
            return "flux-dev" if self.denoiser_config.guidance_embed else "flux-schnell"
        return self.family

    def build_denoiser(self) -> nn.Module:
        """Our denoising network with the folder's weights (the state dict's tensors, not copies)."""
        if self.denoiser_config is None or self.denoiser_state is None:
            raise ValueError(f"{self.path}: this diffusers folder has no unet/ or transformer/ to build")
        cls = {"unet": UNet, "mmdit": MMDiT, "flux": Flux}[self.denoiser_kind or ""]
        return _build(cls, self.denoiser_config, self.denoiser_state)

    def build_vae(self) -> Autoencoder:
        """Our autoencoder with the folder's weights."""
        if self.vae_config is None or self.vae_state is None:
            raise ValueError(f"{self.path}: this diffusers folder has no vae/ to build")
        return _build(Autoencoder, self.vae_config, self.vae_state)


def _build(cls: Any, config: Any, state: dict[str, Tensor]) -> Any:
    with torch.device("meta"):
        model = cls(config)
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval().requires_grad_(False)


def _listed(index: dict[str, Any], name: str, path: Path) -> bool:
    """True when model_index.json lists ``name`` as present, or (no index) its folder exists."""
    if not index:
        return (path / name).is_dir()
    entry = index.get(name)
    return isinstance(entry, list | tuple) and len(entry) == 2 and entry[1] is not None


def text_encoder_key(config: dict[str, Any], *, family: str | None, slot: str) -> str:
    """``"clip_l"|"clip_h"|"clip_g"|"t5xxl"`` for the text encoder in folder ``slot``.

    Decided from its config (T5 by model_type; CLIP by hidden_size 768/1024/1280); for other widths (tests,
    fine-tunes) from the family's usual folder layout (:data:`TEXT_SLOTS`).
    """
    model_type = str(config.get("model_type", ""))
    if model_type.startswith(("t5", "umt5")):
        return "t5xxl"
    if model_type.startswith("clip"):
        width = config.get("hidden_size") or config.get("text_config", {}).get("hidden_size")
        if width in CLIP_BY_WIDTH:
            return CLIP_BY_WIDTH[width]
    if family is not None and slot in TEXT_SLOTS.get(family, {}):
        return TEXT_SLOTS[family][slot]
    raise ValueError(
        f"{slot}/config.json: cannot tell which text encoder this is (model_type={model_type!r}, "
        f"hidden_size={config.get('hidden_size')!r}); expected a CLIP text model of width 768/1024/1280 or a T5"
    )


_PIPELINE_FAMILY = {
    "StableDiffusionPipeline": "sd1", "StableDiffusionImg2ImgPipeline": "sd1", "StableDiffusionInpaintPipeline": "sd1",
    "StableDiffusionXLPipeline": "sdxl", "StableDiffusionXLImg2ImgPipeline": "sdxl",
    "StableDiffusionXLInpaintPipeline": "sdxl", "StableDiffusion3Pipeline": "sd3",
    "StableDiffusion3Img2ImgPipeline": "sd3", "FluxPipeline": "flux", "FluxImg2ImgPipeline": "flux",
}  # fmt: skip


def _family_from_pipeline(index: dict[str, Any]) -> str | None:
    """The family a pipeline class implies (used only when the folder has no denoiser to decide from)."""
    family = _PIPELINE_FAMILY.get(index.get("_class_name", ""))
    if family == "sdxl" and index.get("requires_aesthetics_score"):
        return "sdxl-refiner"
    return family


def read_diffusers_folder(
    path: str | Path,
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    allow_pickle: bool = False,
    variant: str | None = None,
) -> DiffusersFolder:
    """Read a diffusers folder (see the module docstring) into our configs and state dicts.

    ``model_index.json`` says which components exist (``[null, null]`` = absent); without it, every
    component folder present is read. A component it lists whose folder or files are missing is an error
    naming the folder and the file expected. ``dtype`` casts floating-point weights as they are read;
    ``variant="fp16"`` reads diffusers' ``*.fp16.safetensors`` weight files.
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"diffusers folder not found: {root}")
    index = (
        _read_json(root / "model_index.json", "model_index.json")
        if (root / "model_index.json").is_file()
        else {}
    )
    if not index and not any((root / c).is_dir() for c in ("unet", "transformer", "vae")):
        raise FileNotFoundError(
            f"{root}: not a diffusers folder; expected model_index.json and component folders "
            "(unet/ or transformer/, vae/, scheduler/, text_encoder/, tokenizer/)"
        )
    family = _family_from_pipeline(index)
    num_time_ids = 5 if index.get("requires_aesthetics_score") else 6

    def component(name: str) -> Path:
        folder = root / name
        if not folder.is_dir():
            raise FileNotFoundError(
                f"{root}: model_index.json lists the component {name!r} but the folder {folder} is missing; "
                f"expected {folder / 'config.json'} and its weights"
            )
        return folder

    def weights(folder: Path, stem: str = DIFFUSERS_WEIGHTS) -> Mapping[str, Tensor]:
        return read_weights(
            folder, stem, dtype=dtype, device=device, allow_pickle=allow_pickle, variant=variant
        )

    kind: str | None = None
    denoiser_config: DenoiserConfig | None = None
    denoiser_state = None
    if _listed(index, "unet", root):
        folder = component("unet")
        cfg = _read_json(folder / "config.json", "the U-Net config")
        unet_cfg = unet_config_from_diffusers(
            cfg, num_time_ids=num_time_ids, source=str(folder / "config.json")
        )
        denoiser_state = unet_from_diffusers(weights(folder), unet_cfg)
        kind, denoiser_config = "unet", unet_cfg
        if unet_cfg.has_added_conditioning:
            family = "sdxl-refiner" if unet_cfg.num_time_ids == 5 else "sdxl"
        else:
            family = "sd2" if unet_cfg.context_dim == 1024 else "sd1"
    elif _listed(index, "transformer", root):
        folder = component("transformer")
        cfg = _read_json(folder / "config.json", "the transformer config")
        source = str(folder / "config.json")
        name = cfg.get("_class_name")
        if name == "SD3Transformer2DModel":
            mm = mmdit_config_from_diffusers(cfg, source=source)
            denoiser_state = sd3_from_diffusers(weights(folder), mm)
            kind, denoiser_config, family = "mmdit", mm, "sd3"
        elif name == "FluxTransformer2DModel":
            fx = flux_config_from_diffusers(cfg, source=source)
            denoiser_state = flux_from_diffusers(weights(folder), fx)
            kind, denoiser_config, family = "flux", fx, "flux"
        else:
            raise ValueError(
                f"{source}: transformer class {name!r} is not supported; expected SD3Transformer2DModel or "
                "FluxTransformer2DModel"
            )

    vae_config = vae_state = None
    latent_format = LATENT_FORMATS[LATENT_FORMAT_OF[family]] if family else None
    if _listed(index, "vae", root):
        folder = component("vae")
        vae_config, scale, shift = vae_config_from_diffusers(
            _read_json(folder / "config.json", "the VAE config"), source=str(folder / "config.json")
        )
        vae_state = vae_from_diffusers(weights(folder), vae_config)
        if latent_format is not None and latent_format.channels == vae_config.latent_channels:
            latent_format = replace(latent_format, scale_factor=scale, shift_factor=shift)
        else:
            latent_format = LatentFormat(
                channels=vae_config.latent_channels, scale_factor=scale, shift_factor=shift
            )

    prediction: str | None = None
    sampling: dict[str, Any] | None = None
    if _listed(index, "scheduler", root):
        folder = component("scheduler")
        prediction, sampling = scheduler_from_diffusers(
            _read_json(folder / "scheduler_config.json", "the scheduler config"),
            source=str(folder / "scheduler_config.json"),
        )
    elif family in ("sd3", "flux"):  # no scheduler: the families' released defaults
        prediction = "flow"
        sampling = {"kind": "flow", "shift": 3.0, "multiplier": 1000.0}
        if family == "flux":
            sampling = {"kind": "flow", "shift": 1.0, "multiplier": 1000.0,
                        "dynamic_shift": {"base_seq_len": 256, "max_seq_len": 4096, "base_shift": 0.5, "max_shift": 1.15}}  # fmt: skip

    text_encoders: dict[str, TextEncoderEntry] = {}
    tokenizers: dict[str, Path] = {}
    for suffix in ("", "_2", "_3"):
        slot = f"text_encoder{suffix}"
        if not _listed(index, slot, root):
            continue
        folder = component(slot)
        cfg = _read_json(folder / "config.json", "the text encoder config")
        key = text_encoder_key(cfg, family=family, slot=slot)
        if key in text_encoders:
            raise ValueError(f"{root}: two text encoders resolve to {key!r}; the second is {folder}")
        text_encoders[key] = (dict(weights(folder, TRANSFORMERS_WEIGHTS)), cfg)
        tokenizer = root / f"tokenizer{suffix}"
        if _listed(index, f"tokenizer{suffix}", root):
            tokenizers[key] = component(f"tokenizer{suffix}")
        elif tokenizer.is_dir():
            tokenizers[key] = tokenizer
    return DiffusersFolder(
        path=root,
        family=family,
        denoiser_kind=kind,
        denoiser_config=denoiser_config,
        denoiser_state=denoiser_state,
        vae_config=vae_config,
        vae_state=vae_state,
        latent_format=latent_format,
        prediction=prediction,
        sampling=sampling,
        text_encoders=text_encoders,
        tokenizers=tokenizers,
    )


# --------------------------------------------------------------------------------------------------
# Writing a folder
# --------------------------------------------------------------------------------------------------


def _write_json(data: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


def write_diffusers_folder(
    path: str | Path,
    *,
    family: str,
    denoiser_kind: str,
    denoiser_config: DenoiserConfig,
    denoiser_state: dict[str, Tensor],
    vae_config: AutoencoderConfig | None,
    vae_state: dict[str, Tensor] | None,
    latent_format: LatentFormat,
    prediction: str,
    sampling: dict[str, Any],
    text_encoders: dict[str, TextEncoderEntry] | None = None,
    tokenizers: dict[str, Path] | None = None,
    max_shard_bytes: int | None = None,
) -> Path:
    """Write our model as a diffusers folder that diffusers' ``from_pretrained`` loads.

    ``text_encoders`` / ``tokenizers`` (keyed ``clip_l``...) go to the family's usual folders
    (:data:`TEXT_SLOTS`); tokenizer folders are copied. Weights larger than ``max_shard_bytes`` are sharded.
    Components not given are written as ``[null, null]`` in ``model_index.json``.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose one of {', '.join(FAMILIES)}")
    if DENOISER_KIND[family] != denoiser_kind:
        raise ValueError(
            f"family {family!r} needs denoiser_kind={DENOISER_KIND[family]!r}, got {denoiser_kind!r}"
        )
    text_encoders, tokenizers = text_encoders or {}, tokenizers or {}
    slots = TEXT_SLOTS[family]
    unknown = sorted((set(text_encoders) | set(tokenizers)) - set(slots.values()))
    if unknown:
        raise ValueError(
            f"family {family!r} has no text encoder slot for {unknown}; it uses {sorted(slots.values())}"
        )
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    index: dict[str, Any] = {
        "_class_name": PIPELINE_CLASS[family],
        "_diffusers_version": _diffusers_version(),
    }

    if isinstance(denoiser_config, UNetConfig):
        if denoiser_kind != "unet":
            raise ValueError(f"denoiser_kind={denoiser_kind!r} does not match a UNetConfig")
        sample = 128 if family.startswith("sdxl") else (96 if prediction == "v" else 64)
        cfg, theirs, name = (
            unet_config_to_diffusers(denoiser_config, sample_size=sample),
            unet_to_diffusers(denoiser_state, denoiser_config),
            "unet",
        )
    elif isinstance(denoiser_config, MMDiTConfig):
        cfg, theirs, name = (
            mmdit_config_to_diffusers(denoiser_config),
            sd3_to_diffusers(denoiser_state, denoiser_config),
            "transformer",
        )
    elif isinstance(denoiser_config, FluxConfig):
        cfg, theirs, name = (
            flux_config_to_diffusers(denoiser_config),
            flux_to_diffusers(denoiser_state, denoiser_config),
            "transformer",
        )
    else:
        raise TypeError(
            f"denoiser_config must be a UNetConfig, MMDiTConfig or FluxConfig, got {type(denoiser_config).__name__}"
        )
    _write_json(cfg, root / name / "config.json")
    write_weights(theirs, root / name, DIFFUSERS_WEIGHTS, max_shard_bytes=max_shard_bytes)
    index[name] = ["diffusers", cfg["_class_name"]]

    if vae_config is not None and vae_state is not None:
        if vae_config.latent_channels != latent_format.channels:
            raise ValueError(
                f"the VAE has {vae_config.latent_channels} latent channels but the latent format {latent_format.channels}"
            )
        _write_json(vae_config_to_diffusers(vae_config, latent_format), root / "vae" / "config.json")
        write_weights(
            vae_to_diffusers(vae_state, vae_config),
            root / "vae",
            DIFFUSERS_WEIGHTS,
            max_shard_bytes=max_shard_bytes,
        )
        index["vae"] = ["diffusers", "AutoencoderKL"]
    else:
        index["vae"] = [None, None]

    scheduler = scheduler_to_diffusers(prediction, sampling)
    _write_json(scheduler, root / "scheduler" / "scheduler_config.json")
    index["scheduler"] = ["diffusers", scheduler["_class_name"]]

    for slot, key in slots.items():
        suffix = slot.removeprefix("text_encoder")
        if key in text_encoders:
            state, config = text_encoders[key]
            config = {**config}
            if not config.get("architectures"):  # transformers' to_dict() gives None when unset
                config["architectures"] = [TEXT_ENCODER_CLASS[key]]
            _write_json(config, root / slot / "config.json")
            write_weights(dict(state), root / slot, TRANSFORMERS_WEIGHTS, max_shard_bytes=max_shard_bytes)
            index[slot] = ["transformers", config["architectures"][0]]
        else:
            index[slot] = [None, None]
        if key in tokenizers:
            target = root / f"tokenizer{suffix}"
            if target.exists():
                shutil.rmtree(target)
            shutil.copytree(tokenizers[key], target)
            index[f"tokenizer{suffix}"] = ["transformers", TOKENIZER_CLASS[key]]
        else:
            index[f"tokenizer{suffix}"] = [None, None]
    if family in ("sd1", "sd2"):
        index |= {
            "safety_checker": [None, None],
            "feature_extractor": [None, None],
            "requires_safety_checker": False,
        }
        index.setdefault("image_encoder", [None, None])
    elif family == "sdxl":
        index |= {"force_zeros_for_empty_prompt": True}
    elif family == "sdxl-refiner":
        index |= {"requires_aesthetics_score": True, "force_zeros_for_empty_prompt": False}
        index |= {"text_encoder": [None, None], "tokenizer": [None, None]}  # the refiner has bigG only
    _write_json(index, root / "model_index.json")
    return root


def _diffusers_version() -> str:
    try:
        from importlib.metadata import version

        return version("diffusers")
    except Exception:  # noqa: BLE001 - diffusers is optional; the field is informational
        return "0.30.0"
