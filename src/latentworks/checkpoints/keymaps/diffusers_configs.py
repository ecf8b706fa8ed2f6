"""diffusers component configs (``config.json``, ``scheduler_config.json``) <-> our config dataclasses.

Field by field, both directions: :func:`unet_config_from_diffusers` / :func:`unet_config_to_diffusers`
(``UNet2DConditionModel``), the same for ``AutoencoderKL`` (with the latent scale and shift),
``SD3Transformer2DModel``, ``FluxTransformer2DModel``, and the scheduler config <-> (prediction, sampling
spec as in ``model.json``). A field we cannot express is an error naming it. Used by
:mod:`latentworks.checkpoints.diffusers_folder`.
"""

from __future__ import annotations

from typing import Any

from latentworks.diffusion.denoisers import FLUX_DYNAMIC_SHIFT
from latentworks.diffusion.latent_formats import LatentFormat
from latentworks.models.autoencoder import AutoencoderConfig
from latentworks.models.flux import FluxConfig
from latentworks.models.mmdit import MMDiTConfig
from latentworks.models.unet import UNetConfig

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
    "class_embed_type": (None, "projection"),  # projection: SD 2.1 unCLIP's image-embedding class input
    "addition_embed_type_num_heads": (64,),
}
_UNET_USED = {
    "sample_size", "in_channels", "out_channels", "down_block_types", "up_block_types", "block_out_channels",
    "layers_per_block", "dropout", "norm_num_groups", "cross_attention_dim", "transformer_layers_per_block",
    "reverse_transformer_layers_per_block", "attention_head_dim", "num_attention_heads", "use_linear_projection",
    "upcast_attention", "addition_time_embed_dim", "projection_class_embeddings_input_dim", "num_class_embeds",
    "only_cross_attention",
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
    if cfg.get("num_class_embeds") is not None:  # SD x4 upscaler: a learned embedding of the noise level
        if cfg.get("class_embed_type") is not None:
            raise ValueError(
                f"{source}: num_class_embeds with class_embed_type={cfg['class_embed_type']!r} is not supported "
                "(only the plain label embedding, class_embed_type null)"
            )
        added["num_classes"] = int(cfg["num_class_embeds"])
    cross_only = cfg.get("only_cross_attention", False)
    if isinstance(cross_only, bool):
        if cross_only:  # diffusers then makes the middle block cross-only as well, which ours cannot
            raise ValueError(
                f"{source}: only_cross_attention=true is not supported (a per-level list, as the x4 upscaler's, is)"
            )
    else:
        added["only_cross_attention"] = tuple(
            bool(v) for v in _per_level(cross_only, n, "only_cross_attention", source)
        )
    if cfg.get("class_embed_type") == "projection":  # SD 2.1 unCLIP: class input = augmented image embedding
        added |= {"pooled_dim": int(cfg["projection_class_embeddings_input_dim"]), "num_time_ids": 0}
    elif cfg.get("addition_embed_type") == "text_time":
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
        added |= {"pooled_dim": pooled, "num_time_ids": num_time_ids, "time_id_dim": time_id_dim}
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
    if config.num_classes:
        out["num_class_embeds"] = config.num_classes
    if any(config.only_cross_attention):
        out["only_cross_attention"] = list(config.only_cross_attention)
    if config.has_added_conditioning and config.num_time_ids == 0:
        out |= {"class_embed_type": "projection", "projection_class_embeddings_input_dim": config.pooled_dim}
    elif config.has_added_conditioning:
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
        if cfg.get("time_shift_type", "exponential") != "exponential":
            raise ValueError(
                f"{source}: time_shift_type={cfg.get('time_shift_type')!r} is not supported (exponential only)"
            )
        spec: dict[str, Any] = {"kind": "flow", "shift": float(cfg.get("shift", 1.0)), "multiplier": 1000.0}
        if cfg.get("use_dynamic_shifting", False):
            spec["shift"] = (
                1.0  # diffusers ignores ``shift`` under dynamic shifting (FLUX.1 ships 3.0 unused)
            )
            d = FLUX_DYNAMIC_SHIFT
            spec["dynamic_shift"] = {
                "base_seq_len": int(cfg.get("base_image_seq_len", d["base_seq_len"])),
                "max_seq_len": int(cfg.get("max_image_seq_len", d["max_seq_len"])),
                "base_shift": float(cfg.get("base_shift", d["base_shift"])),
                "max_shift": float(cfg.get("max_shift", d["max_shift"])),
            }
        if int(cfg.get("num_train_timesteps", 1000)) != 1000:
            spec["num_train_timesteps"] = int(cfg["num_train_timesteps"])
        if cfg.get("shift_terminal"):  # Qwen-Image: the schedule is stretched to end at this sigma
            spec["shift_terminal"] = float(cfg["shift_terminal"])
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
            dyn = FLUX_DYNAMIC_SHIFT | dyn
            out |= {
                "base_image_seq_len": dyn["base_seq_len"],
                "max_image_seq_len": dyn["max_seq_len"],
                "base_shift": dyn["base_shift"],
                "max_shift": dyn["max_shift"],
            }
        if sampling.get("shift_terminal"):
            out |= {"shift_terminal": float(sampling["shift_terminal"]), "time_shift_type": "exponential"}
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
