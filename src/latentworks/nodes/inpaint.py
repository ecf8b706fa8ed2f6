"""Inpainting nodes with ComfyUI's names and inputs: InpaintModelConditioning, DifferentialDiffusion, GrowMask,
ThresholdMask. (VAEEncodeForInpaint and SetLatentNoiseMask live with the encode and sampling nodes,
ImagePadForOutpaint and LoadImageMask with the image nodes.)

MASK is (B, H, W) or (H, W) float in [0, 1], 1 = generate. Schemas follow ComfyUI's ``nodes.py``
(InpaintModelConditioning), ``comfy_extras/nodes_differential_diffusion.py`` and ``nodes_mask.py``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from latentworks.graph.types import NodeSpec, OutputSpec, input_spec
from latentworks.nodes.image import _encode_pixels
from latentworks.nodes.payloads import ConditioningPayload, Latent, ModelPayload, VAEPayload
from latentworks.nodes.sampling import DIFFERENTIAL_KEY

MAX_GROW = 16384  # ComfyUI's GrowMask range: +-MAX_RESOLUTION


def _as_batch(mask: Tensor) -> Tensor:
    """MASK (H, W) or (B, H, W) -> (B, 1, H, W) float."""
    return (mask if mask.ndim == 3 else mask[None]).float()[:, None]


def _inpaint_model_conditioning(
    ctx: Any,
    positive: ConditioningPayload,
    negative: ConditioningPayload,
    vae: VAEPayload,
    pixels: Tensor,
    mask: Tensor,
    noise_mask: bool = True,
) -> tuple[Any, ...]:
    f = vae.factor
    h, w = (pixels.shape[1] // f) * f, (pixels.shape[2] // f) * f
    m = F.interpolate(_as_batch(mask), size=pixels.shape[1:3], mode="bilinear")[..., :h, :w]  # (B, 1, H, W)
    pixels = pixels[:, :h, :w, :3]
    keep = (m.round() < 0.5).permute(0, 2, 3, 1).to(pixels)  # grey (0.5) where the model will generate
    masked = (pixels - 0.5) * keep + 0.5
    concat_latent = _encode_pixels(ctx, vae, masked)
    latent = Latent(samples=_encode_pixels(ctx, vae, pixels), factor=f, noise_mask=m if noise_mask else None)
    pos = replace(positive, concat_latent=concat_latent, concat_mask=m)
    neg = replace(negative, concat_latent=concat_latent, concat_mask=m)
    return (pos, neg, latent)


def _differential_diffusion(ctx: Any, model: ModelPayload, strength: float = 1.0) -> tuple[Any, ...]:
    folder = model.folder
    return (ModelPayload(replace(folder, meta={**folder.meta, DIFFERENTIAL_KEY: float(strength)})),)


def grow(mask: Tensor, expand: int, tapered_corners: bool) -> Tensor:
    """Dilate (``expand > 0``) or erode (``< 0``) ``mask`` (B, H, W) by one pixel ``|expand|`` times, with a
    3x3 square neighbourhood, or a plus-shaped one (``tapered_corners``), as ComfyUI's GrowMask."""
    m = mask[:, None]  # (B, 1, H, W)
    sign = 1.0 if expand > 0 else -1.0
    m = m * sign  # erosion = -dilation(-m)
    for _ in range(abs(expand)):
        p = F.pad(m, (1, 1, 1, 1), value=float("-inf"))
        shifts = [p[..., 1:-1, :-2], p[..., 1:-1, 2:], p[..., :-2, 1:-1], p[..., 2:, 1:-1], m]
        if not tapered_corners:
            shifts += [p[..., :-2, :-2], p[..., :-2, 2:], p[..., 2:, :-2], p[..., 2:, 2:]]
        m = torch.stack(shifts).amax(0)
    return (m * sign)[:, 0]


def _grow_mask(ctx: Any, mask: Tensor, expand: int, tapered_corners: bool) -> tuple[Any, ...]:
    m = mask if mask.ndim == 3 else mask[None]
    return (grow(m.float(), int(expand), bool(tapered_corners)),)


def _threshold_mask(ctx: Any, mask: Tensor, value: float) -> tuple[Any, ...]:
    return ((mask > value).float(),)


def inpaint_nodes() -> list[NodeSpec]:
    I = input_spec  # noqa: E741, N806

    return [
        NodeSpec(
            name="InpaintModelConditioning",
            display_name="InpaintModelConditioning",
            category="conditioning/inpaint",
            execute=_inpaint_model_conditioning,
            description="Give an inpainting model the mask and the masked image; the latent is the whole image "
            "encoded, with the mask as its noise mask (noise_mask) so any model keeps the rest.",
            inputs=(
                I("positive", "CONDITIONING"),
                I("negative", "CONDITIONING"),
                I("vae", "VAE"),
                I("pixels", "IMAGE"),
                I("mask", "MASK"),
                I("noise_mask", "BOOLEAN", default=True),
            ),
            outputs=(
                OutputSpec(type="CONDITIONING", name="positive"),
                OutputSpec(type="CONDITIONING", name="negative"),
                OutputSpec(type="LATENT", name="latent"),
            ),
        ),
        NodeSpec(
            name="DifferentialDiffusion",
            display_name="Differential Diffusion",
            category="_for_testing",
            execute=_differential_diffusion,
            description="Soft noise masks become per-step thresholds: grey areas change a little, white fully.",
            inputs=(
                I("model", "MODEL"),
                I("strength", "FLOAT", default=1.0, min=0.0, max=1.0, step=0.01, optional=True),
            ),
            outputs=(OutputSpec(type="MODEL"),),
        ),
        NodeSpec(
            name="GrowMask",
            display_name="GrowMask",
            category="mask",
            execute=_grow_mask,
            description="Grow (or, negative, shrink) a mask by whole pixels.",
            inputs=(
                I("mask", "MASK"),
                I("expand", "INT", default=0, min=-MAX_GROW, max=MAX_GROW, step=1),
                I("tapered_corners", "BOOLEAN", default=True),
            ),
            outputs=(OutputSpec(type="MASK"),),
        ),
        NodeSpec(
            name="ThresholdMask",
            display_name="ThresholdMask",
            category="mask",
            execute=_threshold_mask,
            description="1 where the mask exceeds value, else 0.",
            inputs=(I("mask", "MASK"), I("value", "FLOAT", default=0.5, min=0.0, max=1.0, step=0.01)),
            outputs=(OutputSpec(type="MASK"),),
        ),
    ]
