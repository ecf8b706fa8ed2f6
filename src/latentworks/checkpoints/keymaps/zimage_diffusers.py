"""Key and config maps: diffusers ``ZImageTransformer2DModel`` <-> our :class:`~latentworks.models.zimage.ZImage`.

Same rule engine as the SD3 and FLUX maps (:mod:`latentworks.checkpoints.keymaps.sd3_diffusers`); every rule
is a ``copy`` except the attention projection, which diffusers splits into ``to_q``, ``to_k``, ``to_v`` and we
keep fused as ``qkv`` (as the released single files do). diffusers keeps one patch embedder and final layer
per patch size in ``all_x_embedder`` / ``all_final_layer``, keyed ``"{patch}-{frame patch}"`` (``"2-1"``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from latentworks.checkpoints.keymaps.sd3_diffusers import KeyRule, apply_rules, expected_shapes
from latentworks.models.zimage import ZImage, ZImageConfig

LAYOUT = "diffusers Z-Image"
TIME_HIDDEN_DIM = 1024  # fixed in diffusers' TimestepEmbedder(mid_size=1024)
PAD_MULTIPLE = 32  # diffusers' SEQ_MULTI_OF
AXES_LENS = (
    1536,
    512,
    512,
)  # RoPE table sizes diffusers precomputes (ComfyUI's for Z-Image); ours needs none


def _linear(ours: str, theirs: str, *, bias: bool = True) -> list[KeyRule]:
    params = ("weight", "bias") if bias else ("weight",)
    return [KeyRule(f"{ours}.{p}", (f"{theirs}.{p}",)) for p in params]


def _block_rules(ours: str, theirs: str, config: ZImageConfig, *, modulated: bool) -> list[KeyRule]:
    d = config.width
    qkv = tuple(f"{theirs}.attention.{n}.weight" for n in ("to_q", "to_k", "to_v"))
    rules = [
        KeyRule(f"{ours}.attention.qkv.weight", qkv, "cat", (d, d, d)),
        KeyRule(f"{ours}.attention.q_norm.weight", (f"{theirs}.attention.norm_q.weight",)),
        KeyRule(f"{ours}.attention.k_norm.weight", (f"{theirs}.attention.norm_k.weight",)),
        *_linear(f"{ours}.attention.out", f"{theirs}.attention.to_out.0", bias=False),
        *(KeyRule(f"{ours}.feed_forward.{w}.weight", (f"{theirs}.feed_forward.{w}.weight",))
          for w in ("w1", "w2", "w3")),
        *(KeyRule(f"{ours}.{n}.weight", (f"{theirs}.{n}.weight",))
          for n in ("attention_norm1", "attention_norm2", "ffn_norm1", "ffn_norm2")),
    ]  # fmt: skip
    if modulated:
        rules += _linear(f"{ours}.modulation", f"{theirs}.adaLN_modulation.0")
    return rules


def zimage_diffusers_rules(config: ZImageConfig) -> list[KeyRule]:
    """The full table for ``config``."""
    patch = f"{config.patch_size}-1"
    rules = [
        *_linear("x_embedder", f"all_x_embedder.{patch}"),
        *_linear("t_embedder.fc1", "t_embedder.mlp.0"),
        *_linear("t_embedder.fc2", "t_embedder.mlp.2"),
        KeyRule("cap_norm.weight", ("cap_embedder.0.weight",)),
        *_linear("cap_embedder", "cap_embedder.1"),
        KeyRule("x_pad_token", ("x_pad_token",)),
        KeyRule("cap_pad_token", ("cap_pad_token",)),
        *_linear("final_layer.modulation.linear", f"all_final_layer.{patch}.adaLN_modulation.1"),
        *_linear("final_layer.linear", f"all_final_layer.{patch}.linear"),
    ]
    for i in range(config.refiner_depth):
        rules += _block_rules(f"noise_refiner.{i}", f"noise_refiner.{i}", config, modulated=True)
        rules += _block_rules(f"context_refiner.{i}", f"context_refiner.{i}", config, modulated=False)
    for i in range(config.depth):
        rules += _block_rules(f"layers.{i}", f"layers.{i}", config, modulated=True)
    return rules


def zimage_from_diffusers(state_dict: Mapping[str, Tensor], config: ZImageConfig) -> dict[str, Tensor]:
    """diffusers ``ZImageTransformer2DModel`` state dict -> ours (load with ``strict=True``)."""
    shapes = expected_shapes(ZImage, config)
    return apply_rules(state_dict, zimage_diffusers_rules(config), shapes, to_ours=True, layout=LAYOUT)


def zimage_to_diffusers(state_dict: Mapping[str, Tensor], config: ZImageConfig) -> dict[str, Tensor]:
    """Our Z-Image state dict -> diffusers ``ZImageTransformer2DModel`` layout."""
    shapes = expected_shapes(ZImage, config)
    return apply_rules(state_dict, zimage_diffusers_rules(config), shapes, to_ours=False, layout=LAYOUT)


def zimage_config_from_diffusers(cfg: Mapping[str, Any], *, source: str = "config.json") -> ZImageConfig:
    """A diffusers ``ZImageTransformer2DModel`` config.json -> our config.

    Raises:
        ValueError: a variant we do not implement (several patch sizes, grouped-query attention, no qk-norm,
            the Omni model's SigLIP branch), naming the entry.
    """

    def entry(name: str, default: Any) -> Any:
        return cfg.get(name, default)

    patches, frames = list(entry("all_patch_size", [2])), list(entry("all_f_patch_size", [1]))
    if len(patches) != 1 or frames != [1]:
        raise ValueError(
            f"{source}: all_patch_size={patches}, all_f_patch_size={frames}; only one 2D patch size "
            "(frame patch 1) is supported, as every released Z-Image uses"
        )
    dim, heads = int(entry("dim", 3840)), int(entry("n_heads", 30))
    if int(entry("n_kv_heads", heads)) != heads:
        raise ValueError(
            f"{source}: n_kv_heads={cfg['n_kv_heads']} != n_heads={heads} (grouped-query attention)"
        )
    if not entry("qk_norm", True):
        raise ValueError(f"{source}: qk_norm=false is not supported (every released Z-Image uses qk-norm)")
    if entry("siglip_feat_dim", None) is not None:
        raise ValueError(f"{source}: siglip_feat_dim is set: the Z-Image Omni branch is not supported")
    return ZImageConfig(
        in_channels=int(entry("in_channels", 16)),
        patch_size=int(patches[0]),
        width=dim,
        num_heads=heads,
        depth=int(entry("n_layers", 30)),
        refiner_depth=int(entry("n_refiner_layers", 2)),
        ffn_dim=int(dim / 3 * 8),
        context_dim=int(entry("cap_feat_dim", 2560)),
        time_hidden_dim=TIME_HIDDEN_DIM,
        axes_dim=tuple(int(a) for a in entry("axes_dims", [32, 48, 48])),
        theta=float(entry("rope_theta", 256.0)),
        norm_eps=float(entry("norm_eps", 1e-5)),
        time_scale=float(entry("t_scale", 1000.0)),
        pad_multiple=PAD_MULTIPLE,
    )


def zimage_config_to_diffusers(config: ZImageConfig) -> dict[str, Any]:
    """Our config -> diffusers ``ZImageTransformer2DModel`` config.json entries.

    Raises:
        ValueError: a config diffusers cannot express (its FFN width, timestep MLP width and padding multiple
            are fixed by its code).
    """
    fixed = {
        "ffn_dim": (config.ffn_dim, int(config.width / 3 * 8)),
        "time_hidden_dim": (config.time_hidden_dim, TIME_HIDDEN_DIM),
        "pad_multiple": (config.pad_multiple, PAD_MULTIPLE),
    }
    for name, (got, want) in fixed.items():
        if got != want:
            raise ValueError(
                f"ZImageConfig.{name}={got} cannot be written for diffusers, whose ZImageTransformer2DModel "
                f"fixes it to {want} for width {config.width}"
            )
    return {
        "_class_name": "ZImageTransformer2DModel",
        "all_patch_size": [config.patch_size],
        "all_f_patch_size": [1],
        "in_channels": config.in_channels,
        "dim": config.width,
        "n_layers": config.depth,
        "n_refiner_layers": config.refiner_depth,
        "n_heads": config.num_heads,
        "n_kv_heads": config.num_heads,
        "norm_eps": config.norm_eps,
        "qk_norm": True,
        "cap_feat_dim": config.context_dim,
        "rope_theta": config.theta,
        "t_scale": config.time_scale,
        "axes_dims": list(config.axes_dim),
        "axes_lens": list(AXES_LENS),
    }
