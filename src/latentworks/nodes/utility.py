"""Small utility nodes that ComfyUI's current templates use around the model nodes: SaveImageAdvanced,
ImageCompare and ResolutionSelector, with ComfyUI's class names, inputs, defaults and ranges.

- **SaveImageAdvanced** saves like SaveImage and passes its images on. ComfyUI's ``format`` input is a dynamic
  combo whose sub-inputs reach the API as ``format.bit_depth`` and ``format.input_color_space``; they are
  declared here under those names so editor widgets map by position. Only 8-bit sRGB PNG is written
  (EXR/AVIF and 16-bit are refused with a message saying so).
- **ImageCompare** shows two optional images side by side in the editor; here it stores both as previews
  (``ui: {"a_images": [...], "b_images": [...]}``, as ComfyUI answers).
- **ResolutionSelector** computes ``width, height`` for an aspect ratio and a megapixel target, each
  rounded to ``multiple`` pixels: ``scale = sqrt(megapixels * 2**20 / (w * h))``, ``width = round(w * scale /
  multiple) * multiple`` (and the same for height).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from latentworks.graph.types import InputSpec, NodeResult, NodeSpec, OutputSpec
from latentworks.nodes.image import _save

ASPECT_RATIOS: dict[str, tuple[int, int]] = {
    "1:1 (Square)": (1, 1),
    "3:2 (Photo)": (3, 2),
    "4:3 (Standard)": (4, 3),
    "16:9 (Widescreen)": (16, 9),
    "21:9 (Ultrawide)": (21, 9),
    "2:3 (Portrait Photo)": (2, 3),
    "3:4 (Portrait Standard)": (3, 4),
    "9:16 (Portrait Widescreen)": (9, 16),
}
SAVE_FORMATS = ("png", "exr", "avif")


def resolution_for(aspect_ratio: str, megapixels: float, multiple: int = 8) -> tuple[int, int]:
    """(width, height) with the ratio ``aspect_ratio`` and about ``megapixels`` * 2**20 pixels."""
    if aspect_ratio not in ASPECT_RATIOS:
        raise ValueError(f"aspect_ratio {aspect_ratio!r} is not one of {', '.join(ASPECT_RATIOS)}")
    w, h = ASPECT_RATIOS[aspect_ratio]
    scale = math.sqrt(megapixels * 1024 * 1024 / (w * h))
    return max(multiple, round(w * scale / multiple) * multiple), max(
        multiple, round(h * scale / multiple) * multiple
    )


def _resolution(ctx: Any, aspect_ratio: str, megapixels: float, multiple: int = 8) -> tuple[int, int]:
    return resolution_for(aspect_ratio, megapixels, multiple)


def _save_advanced(ctx: Any, images: torch.Tensor, filename_prefix: str, **options: Any) -> NodeResult:
    fmt = options.get("format", "png")
    depth = options.get("format.bit_depth", "8-bit")
    space = options.get("format.input_color_space", "sRGB")
    if fmt != "png" or depth != "8-bit" or space != "sRGB":
        raise ValueError(
            f"SaveImageAdvanced: format {fmt!r}, bit depth {depth!r}, colour space {space!r} is not supported "
            "yet; latentworks writes 8-bit sRGB PNG (set format to 'png' and bit_depth to '8-bit')"
        )
    saved = _save(ctx, images, filename_prefix, "output", options.get("prompt"), options.get("extra_pnginfo"))
    return NodeResult(outputs=(images,), ui=saved.ui)


def _compare(
    ctx: Any, image_a: torch.Tensor | None = None, image_b: torch.Tensor | None = None
) -> NodeResult:
    ui: dict[str, list[Any]] = {"a_images": [], "b_images": []}
    for key, images, prefix in (("a_images", image_a, "compare.a"), ("b_images", image_b, "compare.b")):
        if images is not None and len(images) > 0:
            ui[key] = list((_save(ctx, images, prefix, "temp").ui or {}).get("images", []))
    return NodeResult(outputs=(), ui=ui)


def utility_nodes() -> list[NodeSpec]:
    def I(name: str, type_: str, **kw: Any) -> InputSpec:  # noqa: E743, N802
        return InputSpec(name=name, type=type_, **kw)

    hidden = (I("prompt", "PROMPT", hidden=True), I("extra_pnginfo", "EXTRA_PNGINFO", hidden=True))
    return [
        NodeSpec(
            name="SaveImageAdvanced",
            display_name="Save Image (Advanced)",
            category="image",
            execute=_save_advanced,
            output_node=True,
            description="Saves the input images to the output folder (8-bit sRGB PNG) and passes them on.",
            inputs=(
                I("images", "IMAGE"),
                I("filename_prefix", "STRING", default="ComfyUI"),
                I("format", "COMBO", choices=SAVE_FORMATS, default="png"),
                I("format.bit_depth", "COMBO", choices=("8-bit", "16-bit"), default="8-bit", optional=True),
                I("format.input_color_space", "COMBO", choices=("sRGB",), default="sRGB", optional=True),
                *hidden,
            ),
            outputs=(OutputSpec(type="IMAGE", name="images"),),
        ),
        NodeSpec(
            name="ImageCompare",
            display_name="Image Compare",
            category="image",
            execute=_compare,
            output_node=True,
            description="Compares two images side by side (both are stored as previews).",
            inputs=(I("image_a", "IMAGE", optional=True), I("image_b", "IMAGE", optional=True)),
        ),
        NodeSpec(
            name="ResolutionSelector",
            display_name="Resolution Selector",
            category="utils",
            execute=_resolution,
            description="Width and height for an aspect ratio and a megapixel target, rounded to a multiple.",
            inputs=(
                I("aspect_ratio", "COMBO", choices=tuple(ASPECT_RATIOS), default="1:1 (Square)"),
                I("megapixels", "FLOAT", default=1.0, min=0.1, max=16.0, step=0.1),
                I("multiple", "INT", default=8, min=8, max=128, step=4),
            ),
            outputs=(OutputSpec(type="INT", name="width"), OutputSpec(type="INT", name="height")),
        ),
    ]
