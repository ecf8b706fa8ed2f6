"""Latent nodes with ComfyUI's schemas: EmptySD3LatentImage, LatentUpscaleBy, LatentFromBatch,
RepeatLatentBatch, LatentComposite and LatentBlend (``nodes.py``, ``comfy_extras/nodes_sd3.py``).

A LATENT may be "empty" (a pixel size whose channels the model decides, from EmptyLatentImage); the batch
and resize nodes keep it empty, the compositing nodes materialise it as zeros shaped like the other input.
Not reproduced: ComfyUI's ``batch_index`` list (which lets a batch slice reuse its original noise); here a
slice is sampled with seeds seed, seed + 1, ... like any other batch.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

from latentworks.graph.types import NodeSpec, OutputSpec, input_spec
from latentworks.nodes.payloads import Latent
from latentworks.nodes.resize import LATENT_METHODS, resize

MAX_RESOLUTION = 16384  # ComfyUI's nodes.MAX_RESOLUTION
SD3_CHANNELS = 16  # SD3 / FLUX latents
SD3_FACTOR = 8


def _empty_sd3(ctx: Any, width: int, height: int, batch_size: int = 1) -> tuple[Any, ...]:
    ctx.check_pixels(width, height, batch_size, inputs="width, height, batch_size")
    shape = (batch_size, SD3_CHANNELS, height // SD3_FACTOR, width // SD3_FACTOR)
    ctx.check_latent(shape, inputs="width, height, batch_size")
    # An empty latent, as EmptyLatentImage: the sampler materialises zeros of the model's shape, which is
    # (B, 16, H // 8, W // 8) for SD3 and FLUX. ComfyUI makes the 16-channel zeros at once but its sampler
    # swaps an all-zero latent of the wrong channel count for the model's, so both give any model zeros.
    return (Latent(pixel_size=(int(height), int(width)), batch_size=int(batch_size), factor=SD3_FACTOR),)


def _upscale_by(ctx: Any, samples: Latent, upscale_method: str, scale_by: float) -> tuple[Any, ...]:
    f = samples.factor
    if samples.samples is None:  # empty: scale the pixel size, in whole latent cells as ComfyUI does
        h, w = samples.pixel_size  # type: ignore[misc]
        nh, nw = max(1, round(h // f * scale_by)) * f, max(1, round(w // f * scale_by)) * f
        ctx.check_pixels(nw, nh, samples.batch_size, inputs="scale_by")
        return (replace(samples, pixel_size=(nh, nw)),)
    z = samples.samples
    th, tw = max(1, round(z.shape[2] * scale_by)), max(1, round(z.shape[3] * scale_by))
    ctx.check_pixels(tw * f, th * f, z.shape[0], inputs="scale_by")
    ctx.check_latent((z.shape[0], z.shape[1], th, tw), inputs="scale_by")
    return (replace(samples, samples=resize(z, tw, th, upscale_method)),)


def _mask_to_batch(mask: Tensor, batch: int) -> Tensor:
    """Repeat a (b, 1, H, W) noise mask until it covers ``batch`` latents (ComfyUI's rule)."""
    if mask.shape[0] < batch:
        mask = mask.repeat(math.ceil(batch / mask.shape[0]), 1, 1, 1)[:batch]
    return mask


def _from_batch(ctx: Any, samples: Latent, batch_index: int, length: int) -> tuple[Any, ...]:
    b = samples.batch
    if batch_index < 0:  # counted from the end, as in ComfyUI
        batch_index += b
    start = max(0, min(b - 1, batch_index))
    count = min(b - start, length)
    mask = samples.noise_mask
    if mask is not None and mask.shape[0] > 1:
        mask = _mask_to_batch(mask, b)[start : start + count].clone()
    if samples.samples is None:
        return (replace(samples, batch_size=count, noise_mask=mask),)
    return (replace(samples, samples=samples.samples[start : start + count].clone(), noise_mask=mask),)


def _repeat_batch(ctx: Any, samples: Latent, amount: int) -> tuple[Any, ...]:
    mask = samples.noise_mask
    if mask is not None and mask.shape[0] > 1:
        mask = _mask_to_batch(mask, samples.batch).repeat(amount, 1, 1, 1)
    if samples.samples is None:
        h, w = samples.pixel_size  # type: ignore[misc]
        ctx.check_pixels(w, h, samples.batch_size * amount, inputs="amount")
        return (replace(samples, batch_size=samples.batch_size * amount, noise_mask=mask),)
    z = samples.samples
    ctx.check_latent((z.shape[0] * amount, *z.shape[1:]), inputs="amount")
    return (replace(samples, samples=z.repeat(amount, 1, 1, 1), noise_mask=mask),)  # a b a b


def _materialise_like(ctx: Any, latent: Latent, other: Latent, name: str) -> Tensor:
    """``latent``'s samples; an empty latent becomes zeros with ``other``'s channels."""
    if latent.samples is not None:
        return latent.samples
    if other.samples is None:
        raise ValueError(f"{name}: both latents are empty; sample one of them first (KSampler)")
    h, w = latent.pixel_size  # type: ignore[misc]
    shape = (latent.batch_size, other.samples.shape[1], h // other.factor, w // other.factor)
    ctx.check_latent(shape, inputs=name)
    return torch.zeros(shape, dtype=other.samples.dtype, device=other.samples.device)


def composite_feather_mask(
    height: int, width: int, feather: int, top: bool, bottom: bool, left: bool, right: bool
) -> Tensor:
    """LatentComposite's blend weights for the pasted block, (height, width): the t-th row/column (from 0)
    from a feathered edge is weighted (t + 1) / feather; weights from two edges multiply (ComfyUI's rule)."""

    def ramp(n: int, first: bool, last: bool) -> Tensor:
        idx = torch.arange(n, dtype=torch.float32)
        r = torch.ones(n)
        if first:
            r = r * torch.where(idx < feather, (idx + 1) / feather, torch.ones(n))
        if last:
            back = n - 1 - idx
            r = r * torch.where(back < feather, (back + 1) / feather, torch.ones(n))
        return r

    return ramp(height, top, bottom)[:, None] * ramp(width, left, right)[None, :]


def _composite(
    ctx: Any, samples_to: Latent, samples_from: Latent, x: int, y: int, feather: int
) -> tuple[Any, ...]:
    f = samples_to.factor
    dst = _materialise_like(ctx, samples_to, samples_from, "samples_to")
    src = _materialise_like(ctx, samples_from, samples_to, "samples_from")
    x, y, feather = x // f, y // f, feather // f  # pixels to latent cells
    out = dst.clone()
    block = src[:, :, : dst.shape[2] - y, : dst.shape[3] - x]
    bh, bw = block.shape[2], block.shape[3]
    if bh <= 0 or bw <= 0:
        return (replace(samples_to, samples=out, pixel_size=None),)
    region = out[:, :, y : y + bh, x : x + bw]
    if feather == 0:
        out[:, :, y : y + bh, x : x + bw] = block
    else:
        m = composite_feather_mask(
            bh, bw, feather, y != 0, y + bh < dst.shape[2], x != 0, x + bw < dst.shape[3]
        ).to(block)
        out[:, :, y : y + bh, x : x + bw] = block * m + region * (1 - m)
    return (replace(samples_to, samples=out, pixel_size=None),)


def _blend(ctx: Any, samples1: Latent, samples2: Latent, blend_factor: float) -> tuple[Any, ...]:
    a = _materialise_like(ctx, samples1, samples2, "samples1")
    b = _materialise_like(ctx, samples2, samples1, "samples2")
    if a.shape != b.shape:  # ComfyUI resizes samples2 to samples1 (bicubic, centre crop)
        if a.shape[1] != b.shape[1]:
            raise ValueError(
                f"LatentBlend: samples1 has {a.shape[1]} channels and samples2 {b.shape[1]}; "
                "blend latents of the same model"
            )
        b = resize(b, a.shape[3], a.shape[2], "bicubic", "center")
    return (replace(samples1, samples=a * blend_factor + b * (1 - blend_factor), pixel_size=None),)


def latent_ops_nodes() -> list[NodeSpec]:
    I = input_spec  # noqa: E741, N806

    step8 = {"default": 0, "min": 0, "max": MAX_RESOLUTION, "step": 8}
    return [
        NodeSpec(
            name="EmptySD3LatentImage",
            category="latent/sd3",
            execute=_empty_sd3,
            description="An empty latent: zeros of (batch_size, 16, height // 8, width // 8) for SD3 and FLUX.",
            inputs=(
                I("width", "INT", default=1024, min=16, max=MAX_RESOLUTION, step=16),
                I("height", "INT", default=1024, min=16, max=MAX_RESOLUTION, step=16),
                I("batch_size", "INT", default=1, min=1, max=4096),
            ),
            outputs=(OutputSpec(type="LATENT"),),
        ),
        NodeSpec(
            name="LatentUpscaleBy",
            display_name="Upscale Latent By",
            category="latent",
            execute=_upscale_by,
            inputs=(
                I("samples", "LATENT"),
                I("upscale_method", "COMBO", choices=LATENT_METHODS),
                I("scale_by", "FLOAT", default=1.5, min=0.01, max=8.0, step=0.01),
            ),
            outputs=(OutputSpec(type="LATENT"),),
        ),
        NodeSpec(
            name="LatentFromBatch",
            display_name="Latent From Batch",
            category="latent/batch",
            execute=_from_batch,
            inputs=(
                I("samples", "LATENT"),
                I("batch_index", "INT", default=0, min=-MAX_RESOLUTION, max=MAX_RESOLUTION),
                I("length", "INT", default=1, min=1, max=64),
            ),
            outputs=(OutputSpec(type="LATENT"),),
        ),
        NodeSpec(
            name="RepeatLatentBatch",
            display_name="Repeat Latent Batch",
            category="latent/batch",
            execute=_repeat_batch,
            inputs=(I("samples", "LATENT"), I("amount", "INT", default=1, min=1, max=64)),
            outputs=(OutputSpec(type="LATENT"),),
        ),
        NodeSpec(
            name="LatentComposite",
            display_name="Latent Composite",
            category="latent",
            execute=_composite,
            description="Paste samples_from into samples_to at (x, y) pixels, optionally feathered.",
            inputs=(
                I("samples_to", "LATENT"),
                I("samples_from", "LATENT"),
                I("x", "INT", **step8),
                I("y", "INT", **step8),
                I("feather", "INT", **step8),
            ),
            outputs=(OutputSpec(type="LATENT"),),
        ),
        NodeSpec(
            name="LatentBlend",
            display_name="Latent Blend",
            category="_for_testing",
            execute=_blend,
            description="blend_factor * samples1 + (1 - blend_factor) * samples2.",
            inputs=(
                I("samples1", "LATENT"),
                I("samples2", "LATENT"),
                I("blend_factor", "FLOAT", default=0.5, min=0, max=1, step=0.01),
            ),
            outputs=(OutputSpec(type="LATENT"),),
        ),
    ]
