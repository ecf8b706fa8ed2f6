"""Multi-image editing nodes with ComfyUI's names and inputs: TextEncodeQwenImageEditPlus, FluxKontextImageScale
and FluxKontextMultiReferenceLatentMethod (the Qwen-Image-Edit-2509/2511 templates use all three).

TextEncodeQwenImageEditPlus (clip, prompt, optional vae, image1..image3) encodes the prompt with up to three
input images announced as "Picture N:" (N the input slot, as ComfyUI numbers them) and read by Qwen2.5-VL's
vision tower, in the 2509 release's template; given a VAE, each image's latents become a reference of the
transformer (``reference_latents``, ``reference_latents.1``, ...; see :mod:`latentworks.models.qwenimage`).
Sizes follow diffusers' ``QwenImageEditPlusPipeline``, so a workflow and ``pipe(prompt, edit_image=[a, b])`` see
the same inputs: the vision tower reads each image at 384 x 384 area, the VAE at 1024 x 1024 area, both at the
image's aspect ratio with sides multiples of 32 (Lanczos). ComfyUI keeps the exact area (``area`` resampling;
multiples of 8 for the VAE) instead. Of an image batch, the first image is used.

FluxKontextImageScale resizes an image to the preferred FLUX.1 Kontext resolution nearest its aspect ratio
(Lanczos after a centre crop to that ratio, as ComfyUI). FluxKontextMultiReferenceLatentMethod sets how the
references are placed (``index``, ``offset``, ``uxo/uno``, ``index_timestep_zero``); Qwen-Image reads it as
ComfyUI's Qwen-Image model does: ``uxo/uno`` places like ``offset``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

from latentworks import families
from latentworks.graph.types import NodeSpec, OutputSpec, input_spec
from latentworks.models.qwenimage import with_reference_latents, with_reference_method
from latentworks.nodes.image import _encode_pixels
from latentworks.nodes.payloads import ClipPayload, ConditioningPayload, VAEPayload
from latentworks.nodes.resize import resize
from latentworks.pipelines.text_to_image import resize_for_edit

# ComfyUI's PREFERED_KONTEXT_RESOLUTIONS (width, height): the sizes FLUX.1 Kontext was trained at, ~1 MP
KONTEXT_RESOLUTIONS = (
    (672, 1568), (688, 1504), (720, 1456), (752, 1392), (800, 1328), (832, 1248), (880, 1184), (944, 1104),
    (1024, 1024), (1104, 944), (1184, 880), (1248, 832), (1328, 800), (1392, 752), (1456, 720), (1504, 688),
    (1568, 672),
)  # fmt: skip
# the combo's options in ComfyUI's order; the first is the default
REFERENCE_METHOD_CHOICES = ("offset", "index", "uxo/uno", "index_timestep_zero")
_METHOD_FOR_QWEN = {
    "offset": "offset",
    "index": "index",
    "uxo/uno": "offset",
    "index_timestep_zero": "index_timestep_zero",
}


def _first_picture(image: torch.Tensor) -> Image.Image:
    """(B, H, W, C) in [0, 1] -> the first image as 8-bit RGB."""
    pixels = (image[0, :, :, :3].clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    return Image.fromarray(np.ascontiguousarray(pixels))


def _text_encode_edit_plus(
    ctx: Any,
    clip: ClipPayload,
    prompt: str,
    vae: VAEPayload | None = None,
    image1: torch.Tensor | None = None,
    image2: torch.Tensor | None = None,
    image3: torch.Tensor | None = None,
) -> tuple[Any, ...]:
    encoder = clip.encoder
    family = families.get(getattr(encoder, "family", None))
    gen = family.generation
    recipe = gen.edit_plus_text
    if recipe is None or not hasattr(encoder, "encode_with_image"):
        raise ValueError(
            f"TextEncodeQwenImageEditPlus: the CLIP input is a {family.title} text encoder, which cannot read "
            "images in Qwen-Image-Edit's template; load Qwen2.5-VL-7B with CLIPLoader type qwen_image"
        )
    given = [(n, _first_picture(im)) for n, im in ((1, image1), (2, image2), (3, image3)) if im is not None]
    seen = [resize_for_edit(picture, gen.edit_plus_vision_area) for _, picture in given]
    numbers = [n for n, _ in given]
    cond = encoder.encode_with_image([prompt], [seen], recipe, picture_numbers=numbers)
    if vae is not None and given:
        latents = []
        for _, picture in given:
            resized = resize_for_edit(picture, gen.edit_area)
            pixels = torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255.0)[None]  # (1, H, W, 3)
            latents.append(_encode_pixels(ctx, vae, pixels))
        cond = with_reference_latents(cond, latents)
    return (ConditioningPayload(cond),)


def _kontext_image_scale(ctx: Any, image: torch.Tensor) -> tuple[Any, ...]:
    height, width = image.shape[1], image.shape[2]
    aspect = width / height
    _, w, h = min((abs(aspect - w / h), w, h) for w, h in KONTEXT_RESOLUTIONS)
    out = resize(image.movedim(-1, 1), w, h, "lanczos", "center").movedim(1, -1)
    return (out,)


def _reference_method(
    ctx: Any, conditioning: ConditioningPayload, reference_latents_method: str
) -> tuple[Any, ...]:
    method = _METHOD_FOR_QWEN.get(reference_latents_method)
    if method is None:
        raise ValueError(
            f"FluxKontextMultiReferenceLatentMethod: unknown reference_latents_method {reference_latents_method!r}; "
            f"choose one of {', '.join(REFERENCE_METHOD_CHOICES)}"
        )
    return (ConditioningPayload(with_reference_method(conditioning.cond, method)),)


def edit_plus_nodes() -> list[NodeSpec]:
    I = input_spec  # noqa: E741, N806

    return [
        NodeSpec(
            name="TextEncodeQwenImageEditPlus",
            category="advanced/conditioning",
            description='Encode an editing instruction with up to three input images ("Picture 1" ... read by '
            "Qwen2.5-VL's vision tower); with a VAE, each image's latents become a reference of the transformer.",
            execute=_text_encode_edit_plus,
            inputs=(
                I("clip", "CLIP"),
                I("prompt", "STRING", default="", multiline=True, extra={"dynamicPrompts": True}),
                I("vae", "VAE", optional=True),
                I("image1", "IMAGE", optional=True),
                I("image2", "IMAGE", optional=True),
                I("image3", "IMAGE", optional=True),
            ),
            outputs=(OutputSpec(type="CONDITIONING"),),
        ),
        NodeSpec(
            name="FluxKontextImageScale",
            category="advanced/conditioning/flux",
            description="This node resizes the image to one that is more optimal for flux kontext.",
            execute=_kontext_image_scale,
            inputs=(I("image", "IMAGE"),),
            outputs=(OutputSpec(type="IMAGE"),),
        ),
        NodeSpec(
            name="FluxKontextMultiReferenceLatentMethod",
            category="advanced/conditioning/flux",
            display_name="Edit Model Reference Method",
            description="How an editing model places its reference latents: index (one RoPE frame each), offset "
            "(side by side in one frame), index_timestep_zero (index, references modulated at t = 0: "
            "Qwen-Image-Edit-2511).",
            execute=_reference_method,
            inputs=(
                I("conditioning", "CONDITIONING"),
                I("reference_latents_method", "COMBO", choices=REFERENCE_METHOD_CHOICES),
            ),
            outputs=(OutputSpec(type="CONDITIONING"),),
        ),
    ]
