"""Upscale-model nodes with ComfyUI's names and inputs: UpscaleModelLoader and ImageUpscaleWithModel
(ComfyUI's ``comfy_extras/nodes_upscale_model.py``).

Models are ``.safetensors`` files under ``models_dir/upscale_models`` (pickled ``.pth`` files are not listed:
convert them, or use ``latentworks upscale --allow-pickle`` on the command line); spandrel detects the
architecture (``pipelines.upscale``). The image is upscaled in 512-pixel tiles with 32 pixels of context, as
ComfyUI does, reporting progress per tile (and stopping there when the job is cancelled).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor

from latentworks.graph.types import NodeSpec, OutputSpec, input_spec
from latentworks.nodes.loaders import list_weights, resolve_weights
from latentworks.pipelines.upscale import DEFAULT_OVERLAP, DEFAULT_TILE, UpscaleModel, load_upscale_model

UPSCALE_FOLDERS = ("upscale_models",)


def _upscale(ctx: Any, upscale_model: UpscaleModel, image: Tensor) -> tuple[Any, ...]:
    from latentworks.pipelines.upscale import upscale_images

    b, h, w, _ = image.shape
    s = upscale_model.scale
    ctx.check_pixels(
        w * s, h * s, b, inputs="image", advice="Use a smaller image or a smaller upscale model."
    )
    x = image[..., :3].movedim(-1, 1).float()  # (B, 3, H, W) in [0, 1]
    out = upscale_images(
        upscale_model,
        x,
        tile=DEFAULT_TILE,
        overlap=DEFAULT_OVERLAP,
        callback=lambda done, total: ctx.progress(done, total),
    )
    return (out.movedim(1, -1).clamp(0, 1),)


def upscale_nodes(models_dir: Path | None) -> list[NodeSpec]:
    I = input_spec  # noqa: E741, N806

    def loader(ctx: Any, model_name: str) -> tuple[Any, ...]:
        path = resolve_weights(models_dir, UPSCALE_FOLDERS, model_name, what="upscale model")
        return (load_upscale_model(path, device=getattr(ctx, "device", None) or "cpu"),)

    return [
        NodeSpec(
            name="UpscaleModelLoader",
            display_name="Load Upscale Model",
            category="loaders",
            execute=loader,
            description="Load an upscale model (ESRGAN, Real-ESRGAN, SwinIR, ... through spandrel).",
            inputs=(I("model_name", "COMBO", choices=lambda: list_weights(models_dir, UPSCALE_FOLDERS)),),
            outputs=(OutputSpec(type="UPSCALE_MODEL"),),
        ),
        NodeSpec(
            name="ImageUpscaleWithModel",
            display_name="Upscale Image (using Model)",
            category="image/upscaling",
            execute=_upscale,
            description="Upscale an image with an upscale model, in tiles.",
            inputs=(I("upscale_model", "UPSCALE_MODEL"), I("image", "IMAGE")),
            outputs=(OutputSpec(type="IMAGE"),),
        ),
    ]
