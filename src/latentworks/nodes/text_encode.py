"""Family-specific prompt nodes with ComfyUI's schemas: CLIPTextEncodeSDXL, CLIPTextEncodeSDXLRefiner,
CLIPTextEncodeFlux and CLIPTextEncodeSD3 (ComfyUI ``comfy_extras/nodes_clip_sdxl.py``, ``nodes_flux.py``,
``nodes_sd3.py``).

Each text box goes to its own text encoder component (``PromptEncoder.encode_components``). The SDXL nodes
also set the size/crop ids that SDXL's UNet reads (``cond.extra["time_ids"]``): the base model's
``[height, width, crop_h, crop_w, target_height, target_width]`` and the refiner's
``[height, width, 0, 0, aesthetic_score]``; the sampler then keeps them instead of the image-size defaults.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from latentworks.checkpoints.lora import LoraTextEncoder
from latentworks.diffusion.conditioning import Conditioning
from latentworks.graph.types import InputSpec, NodeSpec, OutputSpec, input_spec
from latentworks.nodes.image_ops import MAX_RESOLUTION
from latentworks.nodes.payloads import ClipPayload, ConditioningPayload


def encode_parts(
    clip: ClipPayload, node: str, texts: Mapping[str, str], *, drop_empty: bool = False
) -> Conditioning:
    """Encode one text per component, or a clear error for an encoder that takes a single prompt."""
    enc = clip.encoder
    base = enc.base if isinstance(enc, LoraTextEncoder) else enc  # a LoraLoader's wrapper applies its LoRAs
    if hasattr(base, "encode_components"):
        return enc.encode_components(dict(texts), drop_empty=drop_empty)
    distinct = {t for t in texts.values()}
    if len(distinct) == 1:  # one text for all: the encoder's ordinary prompt
        return enc.encode([distinct.pop()])
    raise ValueError(
        f"{node}: this CLIP ({type(enc).__name__}) reads one prompt, not one per component "
        f"({', '.join(texts)}); give every text box the same prompt or use CLIPTextEncode"
    )


def _time_ids(cond: Conditioning, ids: list[float]) -> Conditioning:
    t = torch.tensor([ids] * cond.batch_size, dtype=torch.float32, device=cond.tokens.device)
    return cond.with_extra(time_ids=t)


def _sdxl(
    ctx: Any,
    clip: ClipPayload,
    width: int,
    height: int,
    crop_w: int,
    crop_h: int,
    target_width: int,
    target_height: int,
    text_g: str,
    text_l: str,
) -> tuple[Any, ...]:
    cond = encode_parts(clip, "CLIPTextEncodeSDXL", {"clip_g": text_g, "clip_l": text_l})
    ids = [height, width, crop_h, crop_w, target_height, target_width]
    return (ConditioningPayload(_time_ids(cond, [float(v) for v in ids])),)


def _sdxl_refiner(
    ctx: Any, ascore: float, width: int, height: int, text: str, clip: ClipPayload
) -> tuple[Any, ...]:
    cond = clip.encoder.encode([text])
    return (ConditioningPayload(_time_ids(cond, [float(height), float(width), 0.0, 0.0, float(ascore)])),)


def _flux(ctx: Any, clip: ClipPayload, clip_l: str, t5xxl: str, guidance: float) -> tuple[Any, ...]:
    cond = encode_parts(clip, "CLIPTextEncodeFlux", {"clip_l": clip_l, "t5xxl": t5xxl})
    g = torch.full((cond.batch_size,), float(guidance), dtype=torch.float32, device=cond.tokens.device)
    return (ConditioningPayload(cond.with_extra(guidance=g)),)


def _sd3(
    ctx: Any, clip: ClipPayload, clip_l: str, clip_g: str, t5xxl: str, empty_padding: str
) -> tuple[Any, ...]:
    texts = {"clip_l": clip_l, "clip_g": clip_g, "t5xxl": t5xxl}
    return (
        ConditioningPayload(
            encode_parts(clip, "CLIPTextEncodeSD3", texts, drop_empty=empty_padding == "none")
        ),
    )


def text_encode_nodes() -> list[NodeSpec]:
    I = input_spec  # noqa: E741, N806

    def text(name: str) -> InputSpec:
        return I(name, "STRING", default="", multiline=True, extra={"dynamicPrompts": True})

    def size(name: str, default: int) -> InputSpec:
        return I(name, "INT", default=default, min=0, max=MAX_RESOLUTION)

    out = (OutputSpec(type="CONDITIONING"),)
    return [
        NodeSpec(
            name="CLIPTextEncodeSDXL",
            category="advanced/conditioning",
            description="SDXL prompt: text_g for CLIP-G, text_l for CLIP-L, with the size and crop ids.",
            execute=_sdxl,
            inputs=(
                I("clip", "CLIP"),
                size("width", 1024),
                size("height", 1024),
                size("crop_w", 0),
                size("crop_h", 0),
                size("target_width", 1024),
                size("target_height", 1024),
                text("text_g"),
                text("text_l"),
            ),
            outputs=out,
        ),
        NodeSpec(
            name="CLIPTextEncodeSDXLRefiner",
            category="advanced/conditioning",
            description="SDXL refiner prompt with its aesthetic score and size ids.",
            execute=_sdxl_refiner,
            inputs=(
                I("ascore", "FLOAT", default=6.0, min=0.0, max=1000.0, step=0.01),
                size("width", 1024),
                size("height", 1024),
                text("text"),
                I("clip", "CLIP"),
            ),
            outputs=out,
        ),
        NodeSpec(
            name="CLIPTextEncodeFlux",
            category="advanced/conditioning/flux",
            description="FLUX prompt: clip_l for the pooled vector, t5xxl for the tokens, and the guidance.",
            execute=_flux,
            inputs=(
                I("clip", "CLIP"),
                text("clip_l"),
                text("t5xxl"),
                I("guidance", "FLOAT", default=3.5, min=0.0, max=100.0, step=0.1),
            ),
            outputs=out,
        ),
        NodeSpec(
            name="CLIPTextEncodeSD3",
            category="advanced/conditioning",
            description="SD3 prompt with one text per encoder; empty_padding 'none' leaves empty ones out.",
            execute=_sd3,
            inputs=(
                I("clip", "CLIP"),
                text("clip_l"),
                text("clip_g"),
                text("t5xxl"),
                I("empty_padding", "COMBO", choices=("none", "empty_prompt"), default="none"),
            ),
            outputs=out,
        ),
    ]
