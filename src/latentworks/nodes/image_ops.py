"""Image nodes with ComfyUI's schemas: GetImageSize, ImageScale, ImageScaleBy, ImageScaleToTotalPixels,
ImageInvert, ImageBatch, ImageCrop, ImagePadForOutpaint and LoadImageMask.

IMAGE is (B, H, W, C) float in [0, 1]; MASK is (B, H, W) (ComfyUI's ImagePadForOutpaint returns a single
(H, W) mask, and so does this). Schemas follow ComfyUI's ``nodes.py`` and ``comfy_extras/nodes_images.py``,
``nodes_post_processing.py``. Every node that makes a new size checks the job's pixel budget first.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor

from latentworks.graph.budgets import BudgetExceeded
from latentworks.graph.types import NodeSpec, OutputSpec, input_spec
from latentworks.nodes.budgets import decoder_refused, file_fingerprint
from latentworks.nodes.image import _input_path, list_inputs
from latentworks.nodes.resize import CROP_METHODS, IMAGE_METHODS, resize
from latentworks.pipelines.inpaint import pad_for_outpaint

MAX_RESOLUTION = 16384  # ComfyUI's nodes.MAX_RESOLUTION
MASK_CHANNELS = ("alpha", "red", "green", "blue")


def _resize_image(image: Tensor, width: int, height: int, method: str, crop: str = "disabled") -> Tensor:
    return resize(image.movedim(-1, 1), width, height, method, crop).movedim(1, -1)


def _get_image_size(ctx: Any, image: Tensor, unique_id: Any = None) -> tuple[Any, ...]:
    return (int(image.shape[2]), int(image.shape[1]), int(image.shape[0]))


def _image_scale(
    ctx: Any, image: Tensor, upscale_method: str, width: int, height: int, crop: str
) -> tuple[Any, ...]:
    if width == 0 and height == 0:
        return (image,)
    h, w = image.shape[1], image.shape[2]
    if width == 0:  # keep the aspect ratio
        width = max(1, round(w * height / h))
    elif height == 0:
        height = max(1, round(h * width / w))
    ctx.check_pixels(width, height, image.shape[0], inputs="width, height")
    return (_resize_image(image, width, height, upscale_method, crop),)


def _image_scale_by(ctx: Any, image: Tensor, upscale_method: str, scale_by: float) -> tuple[Any, ...]:
    width, height = round(image.shape[2] * scale_by), round(image.shape[1] * scale_by)
    ctx.check_pixels(width, height, image.shape[0], inputs="scale_by")
    return (_resize_image(image, max(1, width), max(1, height), upscale_method),)


def total_pixels_size(
    width: int, height: int, megapixels: float, resolution_steps: int = 1
) -> tuple[int, int]:
    """ComfyUI's ImageScaleToTotalPixels size: scale both sides by sqrt(megapixels * 2**20 / (w * h)), then
    round each to a multiple of ``resolution_steps``."""
    scale = math.sqrt(megapixels * 1024 * 1024 / (width * height))
    new_w = round(width * scale / resolution_steps) * resolution_steps
    new_h = round(height * scale / resolution_steps) * resolution_steps
    return int(new_w), int(new_h)


def _image_scale_to_total_pixels(
    ctx: Any, image: Tensor, upscale_method: str, megapixels: float, resolution_steps: int = 1
) -> tuple[Any, ...]:
    width, height = total_pixels_size(image.shape[2], image.shape[1], megapixels, resolution_steps)
    ctx.check_pixels(width, height, image.shape[0], inputs="megapixels")
    return (_resize_image(image, max(1, width), max(1, height), upscale_method),)


def _image_invert(ctx: Any, image: Tensor) -> tuple[Any, ...]:
    return (1.0 - image,)


def _image_batch(ctx: Any, image1: Tensor, image2: Tensor) -> tuple[Any, ...]:
    h, w = image1.shape[1], image1.shape[2]
    ctx.check_pixels(w, h, image1.shape[0] + image2.shape[0], inputs="image1, image2")
    if image1.shape[-1] != image2.shape[-1]:
        raise ValueError(
            f"ImageBatch: image1 has {image1.shape[-1]} channels and image2 {image2.shape[-1]}; "
            "batch images with the same number of channels"
        )
    if image1.shape[1:] != image2.shape[1:]:  # ComfyUI resizes image2 to image1 (bilinear, centre crop)
        image2 = _resize_image(image2, w, h, "bilinear", "center")
    return (torch.cat((image1, image2.to(image1.dtype)), dim=0),)


def _image_crop(ctx: Any, image: Tensor, width: int, height: int, x: int, y: int) -> tuple[Any, ...]:
    x = min(x, image.shape[2] - 1)  # as ComfyUI: the crop starts inside the image and may be smaller
    y = min(y, image.shape[1] - 1)
    return (image[:, y : y + height, x : x + width, :],)


def _pad_for_outpaint(
    ctx: Any, image: Tensor, left: int, top: int, right: int, bottom: int, feathering: int
) -> tuple[Any, ...]:
    b, h, w, _ = image.shape
    ctx.check_pixels(w + left + right, h + top + bottom, b, inputs="left, top, right, bottom")
    return pad_for_outpaint(image, left, top, right, bottom, feathering)


def image_ops_nodes(input_dir: Path | None) -> list[NodeSpec]:
    I = input_spec  # noqa: E741, N806

    def load_image_mask(ctx: Any, image: str, channel: str) -> tuple[Any, ...]:
        if channel not in MASK_CHANNELS:
            raise ValueError(f"LoadImageMask: channel {channel!r} is not one of {list(MASK_CHANNELS)}")
        path = _input_path(Path(ctx.input_dir or input_dir or "."), image)
        try:
            opened = Image.open(path)
        except Image.DecompressionBombError as e:
            problem = decoder_refused(e, ctx.budgets)
            raise BudgetExceeded(
                f"LoadImageMask (node {ctx.node_id}), input image {image!r}: {problem}"
            ) from e
        with opened:
            ctx.check_pixels(
                opened.width, opened.height, inputs=f"image {image!r}", advice="Use a smaller image."
            )
            im = ImageOps.exif_transpose(opened)
            if im.getbands() != ("R", "G", "B", "A"):
                if im.mode == "I":  # 16-bit greyscale PNG: ComfyUI scales to 8 bits first
                    im = im.point(lambda p: p * (1 / 255))
                im = im.convert("RGBA")
            band = channel[0].upper()
            m = torch.from_numpy(np.array(im.getchannel(band)).astype(np.float32) / 255.0)
        if band == "A":
            m = 1.0 - m  # transparent = 1 = "generate here", as LoadImage
        return (m[None],)

    def load_image_mask_fingerprint(image: str, channel: str = "alpha") -> Any:
        try:
            return file_fingerprint(_input_path(Path(input_dir or "."), image))
        except (ValueError, OSError):
            return None

    size = {"min": 0, "max": MAX_RESOLUTION, "step": 1}
    pad = {"default": 0, "min": 0, "max": MAX_RESOLUTION, "step": 8}
    return [
        NodeSpec(
            name="GetImageSize",
            display_name="Get Image Size",
            category="image",
            execute=_get_image_size,
            description="Returns width and height of the image, and passes it through unchanged.",
            inputs=(I("image", "IMAGE"), I("unique_id", "UNIQUE_ID", hidden=True)),
            outputs=(
                OutputSpec(type="INT", name="width"),
                OutputSpec(type="INT", name="height"),
                OutputSpec(type="INT", name="batch_size"),
            ),
        ),
        NodeSpec(
            name="ImageScale",
            display_name="Upscale Image",
            category="image/upscaling",
            execute=_image_scale,
            description="Resize to width x height (0 keeps the aspect ratio).",
            inputs=(
                I("image", "IMAGE"),
                I("upscale_method", "COMBO", choices=IMAGE_METHODS),
                I("width", "INT", default=512, **size),
                I("height", "INT", default=512, **size),
                I("crop", "COMBO", choices=CROP_METHODS),
            ),
            outputs=(OutputSpec(type="IMAGE"),),
        ),
        NodeSpec(
            name="ImageScaleBy",
            display_name="Upscale Image By",
            category="image/upscaling",
            execute=_image_scale_by,
            inputs=(
                I("image", "IMAGE"),
                I("upscale_method", "COMBO", choices=IMAGE_METHODS),
                I("scale_by", "FLOAT", default=1.0, min=0.01, max=8.0, step=0.01),
            ),
            outputs=(OutputSpec(type="IMAGE"),),
        ),
        NodeSpec(
            name="ImageScaleToTotalPixels",
            category="image/upscaling",
            execute=_image_scale_to_total_pixels,
            description="Resize to about megapixels * 2**20 pixels, keeping the aspect ratio.",
            inputs=(
                I("image", "IMAGE"),
                I("upscale_method", "COMBO", choices=IMAGE_METHODS),
                I("megapixels", "FLOAT", default=1.0, min=0.01, max=16.0, step=0.01),
                I("resolution_steps", "INT", default=1, min=1, max=256, extra={"advanced": True}),
            ),
            outputs=(OutputSpec(type="IMAGE"),),
        ),
        NodeSpec(
            name="ImageInvert",
            display_name="Invert Image",
            category="image",
            execute=_image_invert,
            inputs=(I("image", "IMAGE"),),
            outputs=(OutputSpec(type="IMAGE"),),
        ),
        NodeSpec(
            name="ImageBatch",
            display_name="Batch Images",
            category="image",
            execute=_image_batch,
            description="Join two image batches; image2 is resized to image1's size if they differ.",
            inputs=(I("image1", "IMAGE"), I("image2", "IMAGE")),
            outputs=(OutputSpec(type="IMAGE"),),
        ),
        NodeSpec(
            name="ImageCrop",
            display_name="Crop Image",
            category="image/transform",
            execute=_image_crop,
            inputs=(
                I("image", "IMAGE"),
                I("width", "INT", default=512, min=1, max=MAX_RESOLUTION, step=1),
                I("height", "INT", default=512, min=1, max=MAX_RESOLUTION, step=1),
                I("x", "INT", default=0, min=0, max=MAX_RESOLUTION, step=1),
                I("y", "INT", default=0, min=0, max=MAX_RESOLUTION, step=1),
            ),
            outputs=(OutputSpec(type="IMAGE"),),
        ),
        NodeSpec(
            name="ImagePadForOutpaint",
            display_name="Pad Image for Outpainting",
            category="image",
            execute=_pad_for_outpaint,
            description="Pad with grey and return a mask that is 1 on the padding, feathered into the image.",
            inputs=(
                I("image", "IMAGE"),
                I("left", "INT", **pad),
                I("top", "INT", **pad),
                I("right", "INT", **pad),
                I("bottom", "INT", **pad),
                I("feathering", "INT", default=40, min=0, max=MAX_RESOLUTION, step=1),
            ),
            outputs=(OutputSpec(type="IMAGE"), OutputSpec(type="MASK")),
        ),
        NodeSpec(
            name="LoadImageMask",
            display_name="Load Image (as Mask)",
            category="mask",
            execute=load_image_mask,
            fingerprint=load_image_mask_fingerprint,
            description="Load one channel of an uploaded image as a mask (alpha is inverted: transparent = 1).",
            inputs=(
                I("image", "COMBO", choices=lambda: list_inputs(input_dir), extra={"image_upload": True}),
                I("channel", "COMBO", choices=MASK_CHANNELS),
            ),
            outputs=(OutputSpec(type="MASK"),),
        ),
    ]
