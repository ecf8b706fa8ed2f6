"""Network configs from tensor names and shapes alone (no config download): the shape readers that family
detection (:func:`latentworks.families.detect_checkpoint`) is built on.

Each reader takes ``{key: shape}`` (what a safetensors header gives without reading any tensor data) with the
component's prefix removed: :func:`unet_config_from_ldm` (an LDM U-Net), :func:`mmdit_config_from_sai` (an SAI
MM-DiT), :func:`flux_config_from_bfl` (a BFL FLUX transformer), :func:`detect_vae` (an autoencoder in LDM or
diffusers layout). :func:`text_encoder_prefixes` and :func:`find_vae_prefix` find the other components of a
full single file (the denoiser sits under ``model.diffusion_model.``, the VAE under ``first_stage_model.`` or
``vae.``).

Everything in the configs is read from shapes: widths, depths, context / pooled dims, input and output
channels, qk-norm, dual-attention blocks, guidance embedding. What shapes cannot tell is fixed by the family
and documented at the place it is decided:

- U-Net attention heads: SD 1.x uses 8 heads, SD 2.x / SDXL 64-wide heads (head counts do not change
  parameter shapes);
- SDXL time ids: pooled width 1280 (OpenCLIP bigG) and 256-wide id embeddings, so ``num_time_ids =
  (adm_in - 1280) / 256`` (6 for base, 5 for the refiner);
- SD3 / SD3.5: 64-wide heads (``num_heads = width / 64``, which equals the depth in every released model);
- FLUX RoPE axes: ``(16, 56, 56)`` for 128-wide heads (FLUX.1); other head widths keep those proportions;
- SD 2.x eps vs v prediction: see :func:`sd2_prediction`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from torch import Tensor

from latentworks.checkpoints.keymaps.qwenimage_vae import DIFFUSERS_MARKER as QWEN_VAE_DIFFUSERS_MARKER
from latentworks.checkpoints.keymaps.qwenimage_vae import WAN_MARKER as QWEN_VAE_WAN_MARKER
from latentworks.models.autoencoder import AutoencoderConfig
from latentworks.models.flux import FluxConfig
from latentworks.models.mmdit import MMDiTConfig
from latentworks.models.unet import UNetConfig

Shapes = Mapping[str, Sequence[int]]

DENOISER_PREFIXES = ("model.diffusion_model.", "")
VAE_PREFIXES = ("first_stage_model.", "vae.", "")
# (key prefix in the file, component name); first match per component name wins.
TEXT_ENCODER_PREFIXES = (
    ("cond_stage_model.transformer.", "clip_l"),  # SD 1.x: HF CLIP ViT-L/14 (older files lack text_model.)
    ("cond_stage_model.model.", "clip_h"),  # SD 2.x: OpenCLIP ViT-H
    ("conditioner.embedders.0.transformer.", "clip_l"),  # SDXL base: HF CLIP-L
    ("conditioner.embedders.1.model.", "clip_g"),  # SDXL base: OpenCLIP bigG
    ("conditioner.embedders.0.model.", "clip_g"),  # SDXL refiner: OpenCLIP bigG only
    ("text_encoders.clip_l.transformer.", "clip_l"),  # SD3 / FLUX all-in-one files
    ("text_encoders.clip_g.transformer.", "clip_g"),
    ("text_encoders.t5xxl.transformer.", "t5xxl"),
    ("text_encoders.qwen25_7b.transformer.", "qwen25vl_7b"),  # ComfyUI's all-in-one Qwen-Image files
)
# Markers of each denoiser layout (relative to its prefix).
UNET_MARKER = "input_blocks.0.0.weight"
MMDIT_MARKER = "x_embedder.proj.weight"
FLUX_MARKER = "img_in.weight"
FLUX_MARKER_2 = "time_in.in_layer.weight"  # img_in alone is not enough: other DiTs use the name
VAE_LDM_MARKER = "encoder.conv_in.weight"
VAE_DIFFUSERS_MARKER = "encoder.down_blocks.0.resnets.0.conv1.weight"

SD2_V_KEY = "output_blocks.11.1.transformer_blocks.0.norm1.bias"
SD2_V_STD_THRESHOLD = 0.09


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


def indices(shapes: Shapes, prefix: str) -> list[int]:
    """Sorted distinct N of keys ``{prefix}N.*``."""
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    return sorted({int(m.group(1)) for k in shapes if (m := pat.match(k))})


def strip_prefix(shapes: Shapes, prefix: str) -> dict[str, tuple[int, ...]]:
    n = len(prefix)
    return {k[n:]: tuple(v) for k, v in shapes.items() if k.startswith(prefix)}


def key_starts(shapes: Shapes, limit: int = 8) -> str:
    starts: dict[str, None] = {}
    for k in shapes:
        starts.setdefault(".".join(k.split(".")[:2]) + ".", None)
        if len(starts) >= limit:
            break
    return ", ".join(repr(s) for s in starts) or "(no keys)"


def _need(shapes: Mapping[str, tuple[int, ...]], key: str, source: str, what: str) -> tuple[int, ...]:
    if key not in shapes:
        raise ValueError(
            f"{source}: looks like {what} but lacks {key!r}; the file is incomplete or not {what}"
        )
    return shapes[key]


def text_encoder_prefixes(shapes: Shapes) -> dict[str, str]:
    """``{component: key prefix}`` for every known text encoder found in ``shapes``."""
    found: dict[str, str] = {}
    for prefix, name in TEXT_ENCODER_PREFIXES:
        if name not in found and any(k.startswith(prefix) for k in shapes):
            found[name] = prefix
    return found


# --------------------------------------------------------------------------------------------------
# VAE
# --------------------------------------------------------------------------------------------------


def find_vae_prefix(shapes: Shapes) -> str | None:
    """The prefix of an autoencoder in ``shapes`` (LDM or diffusers layout; the Qwen-Image VAE under a
    prefix), or None when there is none."""
    for prefix in VAE_PREFIXES:
        if prefix and any(f"{prefix}{m}" in shapes for m in (QWEN_VAE_DIFFUSERS_MARKER, QWEN_VAE_WAN_MARKER)):
            return prefix  # the Qwen-Image VAE (diffusers or Wan names) inside a single file
        if f"{prefix}{VAE_LDM_MARKER}" in shapes and (
            f"{prefix}decoder.conv_in.weight" in shapes or f"{prefix}{VAE_DIFFUSERS_MARKER}" in shapes
        ):
            return prefix
    return None


def detect_vae(shapes: Shapes, *, source: str = "VAE") -> tuple[AutoencoderConfig, str]:
    """Config and layout (``"ldm"`` | ``"diffusers"``) of the autoencoder in ``shapes``.

    Keys may carry a ``first_stage_model.`` / ``vae.`` prefix. GroupNorm groups (32) and eps (1e-6) are not
    visible in shapes and take the value every SD-family VAE uses.
    """
    prefix = find_vae_prefix(shapes)
    if prefix is None:
        raise ValueError(
            f"{source}: no autoencoder keys found (looked for {VAE_LDM_MARKER!r} and 'decoder.conv_in.weight' "
            f"under the prefixes {list(VAE_PREFIXES)}); keys start with {key_starts(shapes)}"
        )
    s = strip_prefix(shapes, prefix)
    if f"{VAE_DIFFUSERS_MARKER}" in s:
        layout, down, block, mid_attn = (
            "diffusers",
            "encoder.down_blocks",
            "resnets",
            "encoder.mid_block.attentions.0",
        )
        mid_attn_key = f"{mid_attn}.to_q.weight"
    else:
        layout, down, block = "ldm", "encoder.down", "block"
        mid_attn_key = "encoder.mid.attn_1.q.weight"
    levels = indices(s, f"{down}.")
    channels = tuple(_need(s, f"{down}.{i}.{block}.0.conv1.weight", source, "a VAE")[0] for i in levels)
    conv_in = _need(s, "encoder.conv_in.weight", source, "a VAE")
    config = AutoencoderConfig(
        in_channels=conv_in[1],
        out_channels=_need(s, "decoder.conv_out.weight", source, "a VAE")[0],
        latent_channels=_need(s, "decoder.conv_in.weight", source, "a VAE")[1],
        channels=channels,
        layers_per_block=len(indices(s, f"{down}.0.{block}.")),
        use_quant_conv="quant_conv.weight" in s,
        use_post_quant_conv="post_quant_conv.weight" in s,
        mid_attention=mid_attn_key in s,
    )
    return config, layout


# --------------------------------------------------------------------------------------------------
# U-Net (SD 1.x / 2.x / SDXL)
# --------------------------------------------------------------------------------------------------


def sd2_prediction(shapes: Shapes, get_tensor: Callable[[str], Tensor] | None, prefix: str) -> str:
    """eps or v for an SD 2.x U-Net, which shapes cannot tell apart.

    1. A ``v_pred`` key anywhere in the file (written by some trainers) means v.
    2. Else the known heuristic (used by ComfyUI, observed on the released 2.0/2.1 weights): the standard
       deviation of ``output_blocks.11.1.transformer_blocks.0.norm1.bias`` is above 0.09 in the 768-v
       models and below it in the 512 eps models. It needs the tensor (``get_tensor``); without it, or when
       the key is absent (inpainting models, which are eps), the answer is eps. Callers who know better pass
       ``prediction=`` to :func:`detect_checkpoint`.
    """
    if "v_pred" in shapes:
        return "v"
    key = f"{prefix}{SD2_V_KEY}"
    if get_tensor is None or key not in shapes:
        return "eps"
    bias = get_tensor(key).float()
    return "v" if bias.std(unbiased=False).item() > SD2_V_STD_THRESHOLD else "eps"


def _transformer_depth(s: Mapping[str, tuple[int, ...]], block: str) -> int:
    return len(indices(s, f"{block}.1.transformer_blocks."))


def unet_config_from_ldm(s: Mapping[str, tuple[int, ...]], source: str) -> UNetConfig:
    """An LDM U-Net's config from its (un-prefixed) shapes."""
    what = "an LDM U-Net"
    conv_in = _need(s, "input_blocks.0.0.weight", source, what)
    blocks = indices(s, "input_blocks.")
    # Walk the input blocks: runs of ResBlocks separated by downsamplers (``.0.op``) form the levels.
    levels: list[list[int]] = [[]]
    for idx in blocks[1:]:
        if f"input_blocks.{idx}.0.op.weight" in s:
            levels.append([])
        elif f"input_blocks.{idx}.0.in_layers.0.weight" in s:
            levels[-1].append(idx)
    if not levels[-1] or len({len(lv) for lv in levels}) != 1:
        raise ValueError(f"{source}: the U-Net input blocks do not form levels of equal length: {levels}")
    channels = tuple(
        _need(s, f"input_blocks.{lv[0]}.0.out_layers.3.weight", source, what)[0] for lv in levels
    )
    depths = tuple(_transformer_depth(s, f"input_blocks.{lv[0]}") for lv in levels)
    mid_depth = _transformer_depth(s, "middle_block") if "middle_block.1.norm.weight" in s else 0
    ctx = [v for k, v in s.items() if k.endswith("attn2.to_k.weight")]
    if not ctx:
        raise ValueError(
            f"{source}: the U-Net has no cross-attention (attn2.to_k) keys; not an SD-family U-Net"
        )
    context_dim = ctx[0][1]
    proj_in = [v for k, v in s.items() if k.endswith(".proj_in.weight")]
    kwargs: dict[str, Any] = {}
    if "label_emb.0.0.weight" in s and context_dim == 1024:
        # SD 2.1 unCLIP: OpenCLIP-H text, a class embedding of the noise-augmented image embedding + its
        # noise-level embedding (2 x 1024 for CLIP-H images, 2 x 768 for CLIP-L), no size ids
        kwargs |= {"pooled_dim": s["label_emb.0.0.weight"][1], "num_time_ids": 0}
    elif "label_emb.0.0.weight" in s:
        adm_in = s["label_emb.0.0.weight"][1]
        pooled, id_dim = 1280, 256  # SDXL: OpenCLIP-bigG pooled output + 256-wide sinusoidal size/crop ids
        if adm_in <= pooled or (adm_in - pooled) % id_dim:
            raise ValueError(
                f"{source}: label_emb.0.0.weight takes {adm_in} inputs, which is not 1280 + a multiple of 256 "
                "(SDXL pooled + time ids); this U-Net's added conditioning is not supported"
            )
        kwargs |= {"pooled_dim": pooled, "num_time_ids": (adm_in - pooled) // id_dim, "time_id_dim": id_dim}
    if context_dim == 768 and not kwargs:
        heads: dict[str, Any] = {"num_heads": 8, "head_dim": None}  # SD 1.x: 8 heads at every level
    else:
        heads = {"num_heads": None, "head_dim": 64}  # SD 2.x / SDXL: 64-wide heads
    return UNetConfig(
        in_channels=conv_in[1],
        out_channels=_need(s, "out.2.weight", source, what)[0],
        channels=channels,
        layers_per_block=len(levels[0]),
        transformer_depth=depths,
        mid_transformer_depth=mid_depth,
        context_dim=context_dim,
        use_linear_projection=bool(proj_in) and len(proj_in[0]) == 2,
        upcast_attention=context_dim == 1024 and not kwargs,  # SD 2.x (matters in half precision only)
        **heads,
        **kwargs,
    )


# --------------------------------------------------------------------------------------------------
# MM-DiT (SD3 / SD3.5) and FLUX
# --------------------------------------------------------------------------------------------------

SD3_HEAD_DIM = 64


def mmdit_config_from_sai(s: Mapping[str, tuple[int, ...]], source: str) -> MMDiTConfig:
    """An SAI MM-DiT's config from its (un-prefixed) shapes."""
    what = "an SAI MM-DiT"
    patch = _need(s, "x_embedder.proj.weight", source, what)  # (D, C, p, p)
    width, in_channels, p = patch[0], patch[1], patch[2]
    depth = len(indices(s, "joint_blocks."))
    num_pos = _need(s, "pos_embed", source, what)[-2]
    side = round(num_pos**0.5)
    if side * side != num_pos:
        raise ValueError(f"{source}: pos_embed holds {num_pos} positions, not a square grid")
    out = _need(s, "final_layer.linear.weight", source, what)[0] // (p * p)
    qk_norm: Literal["rms_norm"] | None = (
        "rms_norm" if "joint_blocks.0.x_block.attn.ln_q.weight" in s else None
    )
    dual = tuple(i for i in range(depth) if f"joint_blocks.{i}.x_block.attn2.qkv.weight" in s)
    return MMDiTConfig(
        in_channels=in_channels,
        out_channels=None if out == in_channels else out,
        sample_size=min(128, side * p),  # not in shapes: SD3's 128 (1024 px), capped by the position grid
        patch_size=p,
        width=width,
        depth=depth,
        num_heads=width // SD3_HEAD_DIM if width % SD3_HEAD_DIM == 0 else 1,
        mlp_ratio=_need(s, "joint_blocks.0.x_block.mlp.fc1.weight", source, what)[0] / width,
        context_dim=_need(s, "context_embedder.weight", source, what)[1],
        pooled_dim=_need(s, "y_embedder.mlp.0.weight", source, what)[1],
        pos_embed_max_size=side,
        qk_norm=qk_norm,
        dual_attention_layers=dual,
    )


def _rope_axes(head_dim: int) -> tuple[int, int, int]:
    """FLUX.1's (16, 56, 56) split of a 128-wide head, scaled to ``head_dim`` (not visible in shapes)."""
    if head_dim == 128:
        return (16, 56, 56)
    first = 2 * max(1, round(head_dim / 16))
    rest = (head_dim - first) // 2
    if rest % 2:
        first, rest = first + 2, rest - 1
    return (first, rest, rest)


def flux_config_from_bfl(s: Mapping[str, tuple[int, ...]], source: str) -> FluxConfig:
    """A BFL FLUX transformer's config from its (un-prefixed) shapes."""
    what = "a BFL FLUX transformer"
    img_in = _need(s, "img_in.weight", source, what)  # (D, C * p * p)
    width, p = img_in[0], 2
    doubles, singles = indices(s, "double_blocks."), indices(s, "single_blocks.")
    if doubles:
        head_dim = _need(s, "double_blocks.0.img_attn.norm.query_norm.scale", source, what)[0]
        hidden = _need(s, "double_blocks.0.img_mlp.0.weight", source, what)[0]
    else:
        head_dim = _need(s, "single_blocks.0.norm.query_norm.scale", source, what)[0]
        hidden = _need(s, "single_blocks.0.linear1.weight", source, what)[0] - 3 * width
    in_channels = img_in[1] // (p * p)
    out = _need(s, "final_layer.linear.weight", source, what)[0] // (p * p)
    return FluxConfig(
        in_channels=in_channels,
        out_channels=None if out == in_channels else out,
        patch_size=p,
        width=width,
        num_heads=width // head_dim,
        double_depth=len(doubles),
        single_depth=len(singles),
        mlp_ratio=hidden / width,
        context_dim=_need(s, "txt_in.weight", source, what)[1],
        pooled_dim=_need(s, "vector_in.in_layer.weight", source, what)[1],
        axes_dim=_rope_axes(head_dim),
        guidance_embed="guidance_in.in_layer.weight" in s,
    )
