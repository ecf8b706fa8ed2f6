"""ControlNet nodes with ComfyUI's names and inputs: ControlNetLoader, ControlNetApplyAdvanced, ControlNetApply
(the deprecated one-conditioning form old workflows use), SetUnionControlNetType and the Canny preprocessor.

A ControlNet is applied to a CONDITIONING: the node returns the conditioning with a
:class:`~latentworks.diffusion.control.ControlInput` added (image, strength, start/end percent), and the sampler
runs it at each step (:class:`~latentworks.diffusion.control.ControlDenoiser`). ControlNetApplyAdvanced gives
the prompt and the negative prompt the same control, as ComfyUI does; ControlNetApply only the one it is given.
FLUX ControlNets read the control image VAE-encoded: ControlNetApplyAdvanced's optional ``vae`` input is then
required (as in ComfyUI), and the image is encoded at sampling, at the latent's size.

SetUnionControlNetType picks the control mode of a Union ControlNet by ComfyUI's type names, which map to mode
indices 0..7 (ComfyUI's ``UNION_CONTROLNET_TYPES``, written for the SDXL ControlNet++ union); a FLUX Union
ControlNet reads the index in its own table (InstantX / Shakker-Labs: 0 canny, 1 tile, 2 depth, 3 blur,
4 pose, 5 gray, 6 low quality), exactly as ComfyUI passes it on.

Canny runs OpenCV's ``cv2.Canny`` (optional dependency ``opencv-python``; extra ``latentworks[control]``) on
the image's luminance with the thresholds scaled from ComfyUI's [0, 1] range to 0..255. ComfyUI computes Canny
with kornia (Gaussian blur first), so edge maps are close to, not bit-identical with, ComfyUI's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from latentworks.data.edges import canny_edges
from latentworks.diffusion.control import ControlInput, LatentHintEncoder
from latentworks.diffusion.latent_formats import LatentFormat
from latentworks.families import by_config
from latentworks.families.control_lora import ControlLoRA
from latentworks.families.controlnet import load_controlnet
from latentworks.graph.types import NodeSpec, OutputSpec, input_spec
from latentworks.models.controlnet import ControlNet
from latentworks.models.controlnet_flux import FluxControlNet, UnionMode
from latentworks.models.t2i_adapter import T2IAdapter
from latentworks.nodes.loaders import list_weights, resolve_weights
from latentworks.nodes.payloads import ConditioningPayload, VAEPayload

CONTROLNET_FOLDERS = ("controlnet", "t2i_adapter")

# ComfyUI's SetUnionControlNetType choices (comfy/cldm/control_types.py): type name -> mode index
UNION_CONTROLNET_TYPES: dict[str, int] = {
    "openpose": 0,
    "depth": 1,
    "hed/pidi/scribble/ted": 2,
    "canny/lineart/anime_lineart/mlsd": 3,
    "normal": 4,
    "segment": 5,
    "tile": 6,
    "repaint": 7,
}


@dataclass(frozen=True, eq=False)
class ControlNetPayload:
    """CONTROL_NET: a loaded control network and the file it came from."""

    network: ControlNet | T2IAdapter | FluxControlNet | UnionMode | ControlLoRA
    name: str


def vae_hint_encoder(vae: VAEPayload, network: FluxControlNet | UnionMode) -> LatentHintEncoder:
    """Encodes control images with ``vae`` into the model-space latents a FLUX ControlNet reads (posterior mode,
    then the latent format's scale and shift: the VAE's own, else the ControlNet family's)."""
    fmt: LatentFormat | None = vae.latent_format
    if fmt is None:
        family = by_config(network.config.flux)
        fmt = family.latent_format if family is not None else None
    if fmt is None:
        raise ValueError(
            "cannot tell the latent scale and shift for this ControlNet's VAE; use the checkpoint's VAE"
        )
    latent_format = fmt
    net = vae.vae

    def encode(pixels: Tensor) -> Tensor:  # (N, 3, H, W) in [0, 1] -> (N, C, H / f, W / f)
        p = next(net.parameters())
        with torch.no_grad():
            z = net.encode(pixels.to(p.device, p.dtype) * 2 - 1).mode().float()
        return latent_format.process_in(z)

    return LatentHintEncoder(encode, vae.factor)


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
    control_net: ControlNetPayload,
    image: Tensor,
    strength: float,
    start: float,
    end: float,
    vae: VAEPayload | None = None,
    *,
    node: str = "ControlNetApplyAdvanced",
) -> ControlInput:
    net = control_net.network
    encoder = None
    if isinstance(net, FluxControlNet | UnionMode):
        if vae is None:
            raise ValueError(
                f"{control_net.name} is a FLUX ControlNet, which reads the control image through the VAE: "
                + (
                    "connect the model's VAE to the 'vae' input of Apply ControlNet"
                    if node == "ControlNetApplyAdvanced"
                    else "use Apply ControlNet (ControlNetApplyAdvanced) with the model's VAE connected to 'vae'"
                )
            )
        encoder = vae_hint_encoder(vae, net)
    return ControlInput(
        net,
        image_to_hint(image),
        strength=float(strength),
        start_percent=float(start),
        end_percent=float(end),
        encoder=encoder,
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
        control = _control(control_net, image, strength, start_percent, end_percent, vae)
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
        control = _control(control_net, image, strength, 0.0, 1.0, node="ControlNetApply")
        return (apply_control(conditioning, control),)

    def set_union_type(ctx: Any, control_net: ControlNetPayload, type: str) -> tuple[Any, ...]:  # noqa: A002
        net = control_net.network
        mode = None if type == "auto" else UNION_CONTROLNET_TYPES.get(type)
        if type != "auto" and mode is None:
            raise ValueError(
                f"unknown union ControlNet type {type!r}; choose one of {list(UNION_CONTROLNET_TYPES)}"
            )
        if isinstance(net, FluxControlNet | UnionMode) and net.config.num_modes is not None:
            return (ControlNetPayload(net.with_mode(mode), control_net.name),)
        if mode is None:
            return (control_net,)
        raise ValueError(
            f"{control_net.name} is not a Union ControlNet (it has no control modes), so type {type!r} cannot be "
            "set; set type to 'auto' or remove the SetUnionControlNetType node"
        )

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
                "(control_model.*) or diffusers layout, a Control-LoRA, a FLUX ControlNet (InstantX / Union, "
                "diffusers layout), or a diffusers T2I-Adapter, detected from the weights."
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
            name="SetUnionControlNetType",
            category="conditioning/controlnet",
            description=(
                "Choose the control mode of a Union ControlNet (FLUX InstantX / Shakker-Labs Union); 'auto' adds no "
                "mode. The names are ComfyUI's; a FLUX Union ControlNet reads their index (0 = canny for InstantX)."
            ),
            execute=set_union_type,
            inputs=(
                I("control_net", "CONTROL_NET"),
                I("type", "COMBO", choices=["auto", *UNION_CONTROLNET_TYPES]),
            ),
            outputs=(OutputSpec(type="CONTROL_NET"),),
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
