"""Qwen-Image's transformer config from what a file or folder says: tensor shapes (ComfyUI single files, which
use diffusers' tensor names, bare or under ``model.diffusion_model.``) and diffusers' ``transformer/config.json``.

No family knowledge here (that is :mod:`latentworks.families.qwenimage`); only shapes and config fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from latentworks.checkpoints.detect import indices
from latentworks.checkpoints.keymaps.diffusers_configs import _check_fields
from latentworks.models.qwenimage import QwenImageConfig

# Keys (relative to the denoiser prefix) that say "a Qwen-Image transformer": the RMS norm over the
# Qwen2.5-VL states is unique to it (ComfyUI's model detection keys on it too), img_in rules out stray norms.
QWENIMAGE_MARKERS = ("txt_norm.weight", "img_in.weight")
RELEASED_AXES = (16, 56, 56)  # axes_dims_rope of every released Qwen-Image (head_dim 128); not in the shapes
_WHAT = "a Qwen-Image transformer"


def _need(shapes: Mapping[str, tuple[int, ...]], key: str, source: str) -> tuple[int, ...]:
    if key not in shapes:
        raise ValueError(
            f"{source}: looks like {_WHAT} but lacks {key!r}; the file is incomplete or not {_WHAT}"
        )
    return tuple(shapes[key])


def _axes_for(head_dim: int, source: str) -> tuple[int, int, int]:
    if head_dim != sum(RELEASED_AXES):
        raise ValueError(
            f"{source}: {_WHAT} with {head_dim}-channel heads; its RoPE split is not stored in the file and only "
            f"the released 128-channel split {RELEASED_AXES} is known. Load it from a diffusers folder whose "
            "config.json names axes_dims_rope."
        )
    return RELEASED_AXES


def qwenimage_config_from_shapes(s: Mapping[str, tuple[int, ...]], source: str) -> QwenImageConfig:
    """A Qwen-Image transformer's config from its (un-prefixed) shapes in diffusers' / ComfyUI's names."""
    img_in = _need(s, "img_in.weight", source)  # (D, C * p * p)
    width, p = img_in[0], 2  # 2x2 packing: every release, and what ComfyUI assumes too
    depth = len(indices(s, "transformer_blocks."))
    if depth == 0:
        raise ValueError(f"{source}: looks like {_WHAT} but has no transformer_blocks.N tensors")
    head_dim = _need(s, "transformer_blocks.0.attn.norm_q.weight", source)[0]
    hidden = _need(s, "transformer_blocks.0.img_mlp.net.0.proj.weight", source)[0]
    out = _need(s, "proj_out.weight", source)[0] // (p * p)
    in_channels = img_in[1] // (p * p)
    return QwenImageConfig(
        in_channels=in_channels,
        out_channels=None if out == in_channels else out,
        patch_size=p,
        width=width,
        num_heads=width // head_dim,
        depth=depth,
        mlp_ratio=hidden / width,
        context_dim=_need(s, "txt_norm.weight", source)[0],
        axes_dim=_axes_for(head_dim, source),
    )


_USED = {"patch_size", "in_channels", "out_channels", "num_layers", "attention_head_dim", "num_attention_heads",
         "joint_attention_dim", "axes_dims_rope"}  # fmt: skip
# guidance_embeds, zero_cond_t (Edit-2511), use_additional_t_cond and use_layer3d_rope (Layered) must be unset:
# _check_fields refuses any other field that is set.


def qwenimage_config_from_diffusers(
    cfg: dict[str, Any], *, source: str = "transformer/config.json"
) -> QwenImageConfig:
    """diffusers ``QwenImageTransformer2DModel`` config -> :class:`QwenImageConfig`.

    diffusers counts input channels after 2x2 packing (``in_channels=64``) but output channels before it
    (``out_channels=16``); ours counts latent channels on both sides.
    """
    _check_fields(cfg, source, _USED, {})
    p = int(cfg.get("patch_size", 2))
    packed_in = int(cfg.get("in_channels", 64))
    if packed_in % (p * p):
        raise ValueError(
            f"{source}: in_channels={packed_in} must be {p * p} x latent channels ({p}x{p} packing)"
        )
    in_channels = packed_in // (p * p)
    out = cfg.get("out_channels", 16) or in_channels
    heads, head_dim = int(cfg.get("num_attention_heads", 24)), int(cfg.get("attention_head_dim", 128))
    return QwenImageConfig(
        in_channels=in_channels,
        out_channels=None if out == in_channels else int(out),
        patch_size=p,
        width=heads * head_dim,
        num_heads=heads,
        depth=int(cfg.get("num_layers", 60)),
        context_dim=int(cfg.get("joint_attention_dim", 3584)),
        axes_dim=tuple(int(a) for a in cfg.get("axes_dims_rope", RELEASED_AXES)),
    )


def qwenimage_config_to_diffusers(config: QwenImageConfig) -> dict[str, Any]:
    """:class:`QwenImageConfig` -> diffusers ``QwenImageTransformer2DModel`` config."""
    if config.mlp_ratio != 4.0 or config.theta != 10000.0:
        raise ValueError(
            "diffusers' QwenImageTransformer2DModel fixes mlp_ratio 4 and RoPE theta 10000; this model has "
            f"mlp_ratio={config.mlp_ratio}, theta={config.theta}"
        )
    return {
        "_class_name": "QwenImageTransformer2DModel",
        "patch_size": config.patch_size,
        "in_channels": config.in_channels * config.patch_size**2,
        "out_channels": config.output_channels,
        "num_layers": config.depth,
        "attention_head_dim": config.head_dim,
        "num_attention_heads": config.num_heads,
        "joint_attention_dim": config.context_dim,
        "guidance_embeds": False,
        "axes_dims_rope": list(config.axes_dim),
    }
