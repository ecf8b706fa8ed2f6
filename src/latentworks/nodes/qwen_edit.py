"""Qwen-Image-Edit nodes with ComfyUI's names and inputs: TextEncodeQwenImageEdit and ReferenceLatent.

TextEncodeQwenImageEdit (clip, prompt, optional vae and image) encodes the prompt with the input image read by
Qwen2.5-VL's vision tower, in the release's edit template, and, given a VAE, attaches the image's latents as the
reference the transformer sees (``cond.extra["reference_latents"]``). ReferenceLatent attaches a LATENT as that
reference. Without an image the prompt is encoded as for text-to-image (as ComfyUI does).

The input image is resized as diffusers' QwenImageEditPipeline does (the family's edit area, 1024 x 1024, at its
aspect ratio, sides multiples of 32, Lanczos), so a workflow and ``pipe(prompt, image=...)`` see the same
image; ComfyUI keeps the exact area (``area`` resampling) and pads the latents to whole 2x2 patches instead.
Chained ReferenceLatent nodes add further references (``reference_latents.1``, ...), as ComfyUI's list does.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

from latentworks import families
from latentworks.graph.types import NodeSpec, OutputSpec, input_spec
from latentworks.models.qwenimage import with_reference_latents
from latentworks.nodes.image import _encode_pixels
from latentworks.nodes.payloads import ClipPayload, ConditioningPayload, Latent, VAEPayload
from latentworks.pipelines.text_to_image import resize_for_edit


def _with_reference(cond: ConditioningPayload, latents: torch.Tensor) -> ConditioningPayload:
    """``cond`` with ``latents`` appended as its next reference (Qwen-Image-Edit reads several, each at the next
    RoPE frame, as ComfyUI's list of reference latents)."""
    return ConditioningPayload(with_reference_latents(cond.cond, [latents]))


def _text_encode_edit(
    ctx: Any, clip: ClipPayload, prompt: str, vae: VAEPayload | None = None, image: torch.Tensor | None = None
) -> tuple[Any, ...]:
    encoder = clip.encoder
    if image is None:
        return (ConditioningPayload(encoder.encode([prompt])),)
    family = families.get(getattr(encoder, "family", None))
    recipe = family.generation.edit_text
    if recipe is None or not hasattr(encoder, "encode_with_image"):
        raise ValueError(
            f"TextEncodeQwenImageEdit: the CLIP input is a {family.title} text encoder, which cannot read an "
            "image; load Qwen2.5-VL-7B with CLIPLoader type qwen_image"
        )
    pixels = (image[0, :, :, :3].clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    picture = resize_for_edit(Image.fromarray(np.ascontiguousarray(pixels)), family.generation.edit_area)
    cond = ConditioningPayload(encoder.encode_with_image([prompt], [picture], recipe))
    if vae is not None:
        resized = torch.from_numpy(np.asarray(picture, dtype=np.float32) / 255.0)[None]  # (1, H, W, 3)
        cond = _with_reference(cond, _encode_pixels(ctx, vae, resized))
    return (cond,)


def _reference_latent(
    ctx: Any, conditioning: ConditioningPayload, latent: Latent | None = None
) -> tuple[Any, ...]:
    if latent is None:
        return (conditioning,)
    if latent.samples is None:
        raise ValueError("ReferenceLatent: the latent is empty (no samples); encode an image with VAEEncode")
    return (_with_reference(conditioning, latent.samples[:1]),)


def qwen_edit_nodes() -> list[NodeSpec]:
    I = input_spec  # noqa: E741, N806

    return [
        NodeSpec(
            name="TextEncodeQwenImageEdit",
            category="advanced/conditioning",
            description="Encode an editing instruction with the input image (read by Qwen2.5-VL's vision "
            "tower); with a VAE, the image's latents become the transformer's reference.",
            execute=_text_encode_edit,
            inputs=(
                I("clip", "CLIP"),
                I("prompt", "STRING", default="", multiline=True, extra={"dynamicPrompts": True}),
                I("vae", "VAE", optional=True),
                I("image", "IMAGE", optional=True),
            ),
            outputs=(OutputSpec(type="CONDITIONING"),),
        ),
        NodeSpec(
            name="ReferenceLatent",
            category="advanced/conditioning/edit_models",
            description="Attach a latent as the reference image of an editing model (Qwen-Image-Edit).",
            execute=_reference_latent,
            inputs=(I("conditioning", "CONDITIONING"), I("latent", "LATENT", optional=True)),
            outputs=(OutputSpec(type="CONDITIONING"),),
        ),
    ]
