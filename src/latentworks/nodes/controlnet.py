"""ControlNet nodes with ComfyUI's names and inputs: ControlNetLoader, ControlNetApplyAdvanced, ControlNetApply
(the deprecated one-conditioning form old workflows use) and the Canny preprocessor.

A ControlNet is applied to a CONDITIONING: the node returns the conditioning with a
:class:`~latentworks.diffusion.control.ControlInput` added (image, strength, start/end percent), and the sampler
runs it at each step (:class:`~latentworks.diffusion.control.ControlDenoiser`). ControlNetApplyAdvanced gives
the prompt and the negative prompt the same control, as ComfyUI does; ControlNetApply only the one it is given.

Canny runs OpenCV's ``cv2.Canny`` (optional dependency ``opencv-python``; extra ``latentworks[control]``) on
the image's luminance with the thresholds scaled from ComfyUI's [0, 1] range to 0..255. ComfyUI computes Canny
with kornia (Gaussian blur first), so edge maps are close to, not bit-identical with, ComfyUI's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from latentworks.data.edges import canny_edges
from latentworks.diffusion.control import ControlInput
from latentworks.families.controlnet import load_controlnet
from latentworks.graph.types import NodeSpec, OutputSpec, input_spec
from latentworks.models.controlnet import ControlNet
from latentworks.models.t2i_adapter import T2IAdapter
from latentworks.nodes.loaders import list_weights, resolve_weights
from latentworks.nodes.payloads import ConditioningPayload

CONTROLNET_FOLDERS = ("controlnet", "t2i_adapter")


@dataclass(frozen=True, eq=False)
class ControlNetPayload:
    """CONTROL_NET: a loaded control network and the file it came from."""

    network: ControlNet | T2IAdapter
    name: str


def image_to_hint(image: Tensor) -> Tensor:
    """IMAGE (B, H, W, C) in [0, 1] -> control hint (B, 3, H, W); a grey or RGBA image becomes RGB."""
    if image.ndim != 4:
        raise ValueError(
            f"ControlNet image must be an IMAGE batch (B, H, W, C), got shape {tuple(image.shape)}"
        )
    c = image.shape[-1]
    rgb = image[..., :3] if c >= 3 else image[..., :1].expand(*image.shape[:-1], 3)
    return rgb.permute(0, 3, 1, 2).float().contiguous()


def apply_control(cond: ConditioningPayload, control: ControlInput) -> ConditioningPayload:
    return ConditioningPayload(cond.cond.with_control(control))


def _control(
    control_net: ControlNetPayload, image: Tensor, strength: float, start: float, end: float
) -> ControlInput:
    return ControlInput(
        control_net.network,
        image_to_hint(image),
        strength=float(strength),
        start_percent=float(start),
        end_percent=float(end),
    )


def canny(image: Tensor, low_threshold: float, high_threshold: float) -> Tensor:
    """Canny edges of IMAGE (B, H, W, C) in [0, 1] -> IMAGE (B, H, W, 3) with edges 1, the rest 0.

    Thresholds are on ComfyUI's [0, 1] scale (x 255 for OpenCV's 8-bit hysteresis thresholds).
    """
    if image.ndim != 4:
        raise ValueError(f"Canny: expected an IMAGE batch (B, H, W, C), got shape {tuple(image.shape)}")
    edges = canny_edges(image_to_hint(image), low_threshold, high_threshold)  # (B, H, W) bool
    out = edges.float()  # (B, H, W)
    return out.unsqueeze(-1).expand(-1, -1, -1, 3).contiguous().to(image.device)


def controlnet_nodes(models_dir: Path | None) -> list[NodeSpec]:
    def loader(ctx: Any, control_net_name: str) -> tuple[Any, ...]:
        path = resolve_weights(models_dir, CONTROLNET_FOLDERS, control_net_name, what="ControlNet")
        device = getattr(ctx, "device", None) or "cpu"
        return (ControlNetPayload(load_controlnet(path, device=device), control_net_name),)

    def apply_advanced(
        ctx: Any,
        positive: ConditioningPayload,
        negative: ConditioningPayload,
        control_net: ControlNetPayload,
        image: Tensor,
        strength: float,
        start_percent: float,
        end_percent: float,
        vae: Any = None,
    ) -> tuple[Any, ...]:
        if strength == 0:
            return (positive, negative)
        control = _control(control_net, image, strength, start_percent, end_percent)
        return (apply_control(positive, control), apply_control(negative, control))

    def apply_old(
        ctx: Any,
        conditioning: ConditioningPayload,
        control_net: ControlNetPayload,
        image: Tensor,
        strength: float,
    ) -> tuple[Any, ...]:
        if strength == 0:
            return (conditioning,)
        return (apply_control(conditioning, _control(control_net, image, strength, 0.0, 1.0)),)

    def canny_node(ctx: Any, image: Tensor, low_threshold: float, high_threshold: float) -> tuple[Any, ...]:
        return (canny(image, float(low_threshold), float(high_threshold)),)

    I = input_spec  # noqa: E741, N806

    strength = I("strength", "FLOAT", default=1.0, min=0.0, max=10.0, step=0.01)
    return [
        NodeSpec(
            name="ControlNetLoader",
            display_name="Load ControlNet Model",
            category="loaders",
            description=(
                "Load a ControlNet (models/controlnet or models/t2i_adapter): SD1.x, SD2.x or SDXL, original "
                "(control_model.*) or diffusers layout, or a diffusers T2I-Adapter, detected from the weights."
            ),
            execute=loader,
            inputs=(
                I("control_net_name", "COMBO", choices=lambda: list_weights(models_dir, CONTROLNET_FOLDERS)),
            ),
            outputs=(OutputSpec(type="CONTROL_NET"),),
        ),
        NodeSpec(
            name="ControlNetApplyAdvanced",
            display_name="Apply ControlNet",
            category="conditioning/controlnet",
            description=(
                "Control generation with an image (edges, depth, pose...) through a ControlNet, on both the "
                "prompt and the negative prompt, between start_percent and end_percent of the steps."
            ),
            execute=apply_advanced,
            inputs=(
                I("positive", "CONDITIONING"),
                I("negative", "CONDITIONING"),
                I("control_net", "CONTROL_NET"),
                I("image", "IMAGE"),
                strength,
                I("start_percent", "FLOAT", default=0.0, min=0.0, max=1.0, step=0.001),
                I("end_percent", "FLOAT", default=1.0, min=0.0, max=1.0, step=0.001),
                I("vae", "VAE", optional=True),
            ),
            outputs=(
                OutputSpec(type="CONDITIONING", name="positive"),
                OutputSpec(type="CONDITIONING", name="negative"),
            ),
            validate_inputs=lambda start_percent=0.0, end_percent=1.0, **_: (
                True
                if not isinstance(start_percent, float | int)
                or not isinstance(end_percent, float | int)
                or start_percent <= end_percent
                else f"start_percent ({start_percent}) must not be after end_percent ({end_percent})"
            ),
        ),
        NodeSpec(
            name="ControlNetApply",
            display_name="Apply ControlNet (OLD)",
            category="conditioning/controlnet",
            description="Deprecated: apply a ControlNet to one conditioning for all steps. Use Apply ControlNet.",
            execute=apply_old,
            inputs=(
                I("conditioning", "CONDITIONING"),
                I("control_net", "CONTROL_NET"),
                I("image", "IMAGE"),
                strength,
            ),
            outputs=(OutputSpec(type="CONDITIONING"),),
        ),
        NodeSpec(
            name="Canny",
            category="image/preprocessors",
            description="Canny edge map of an image (OpenCV), the usual input of a canny ControlNet.",
            execute=canny_node,
            inputs=(
                I("image", "IMAGE"),
                I("low_threshold", "FLOAT", default=0.4, min=0.01, max=0.99, step=0.01),
                I("high_threshold", "FLOAT", default=0.8, min=0.01, max=0.99, step=0.01),
            ),
            outputs=(OutputSpec(type="IMAGE"),),
        ),
    ]
