"""ControlNet inputs of the Python API: ``pipe(prompt, control=[Control(image, controlnet, strength, ...)])``.

A :class:`Control` names a control image and a ControlNet (a loaded :class:`~latentworks.models.controlnet.ControlNet`
or a file path); :func:`attach_controls` turns each into a
:class:`~latentworks.diffusion.control.ControlInput` on the prompt's and the negative prompt's conditioning,
as ComfyUI's ControlNetApplyAdvanced does. Plain tuples ``(image, controlnet, strength, start, end)`` (the
last three optional) work too. FLUX ControlNets read the control image through the pipeline's VAE
(``encoder``); a Union ControlNet takes its control mode from ``Control.mode``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from latentworks.diffusion.conditioning import Conditioning
from latentworks.diffusion.control import ControlInput, LatentHintEncoder
from latentworks.families.control_lora import ControlLoRA
from latentworks.families.controlnet import load_controlnet
from latentworks.models.controlnet import ControlNet
from latentworks.models.controlnet_flux import FluxControlNet, UnionMode
from latentworks.models.t2i_adapter import T2IAdapter

ControlNetLike = ControlNet | T2IAdapter | FluxControlNet | UnionMode | ControlLoRA


@dataclass(frozen=True)
class Control:
    """One ControlNet for a generation.

    Attributes:
        image: the control image (edges, depth, pose...): a PIL image, or a (3, H, W) / (N, 3, H, W) tensor in
            [0, 1]. It is resized to the output size (centre crop to the aspect ratio, nearest-exact).
        controlnet: a loaded ControlNet (SD or FLUX) or T2I-Adapter, or the path of its file or diffusers folder.
        strength: residual scale (0 = off, 1 = as trained).
        start / end: the fraction of the steps where it acts (0 = first step, 1 = last).
        mode: the control mode of a Union ControlNet (an index into its table; InstantX FLUX Union: 0 canny,
            1 tile, 2 depth, 3 blur, 4 pose, 5 gray, 6 low quality); None = no mode.
    """

    image: Image.Image | Tensor
    controlnet: ControlNetLike | str | Path
    strength: float = 1.0
    start: float = 0.0
    end: float = 1.0
    mode: int | None = None


def as_control(item: Control | Sequence[Any]) -> Control:
    """A :class:`Control` from itself or from a tuple ``(image, controlnet[, strength[, start[, end]]])``."""
    if isinstance(item, Control):
        return item
    if isinstance(item, tuple | list) and 2 <= len(item) <= 6:
        return Control(*item)
    raise TypeError(
        "each control must be a Control(image, controlnet, strength, start, end, mode) or a tuple "
        f"(image, controlnet[, strength[, start[, end[, mode]]]]), got {type(item).__name__}"
    )


def image_to_hint(image: Image.Image | Tensor) -> Tensor:
    """A control image as an (N, 3, H, W) float tensor in [0, 1]."""
    if isinstance(image, Image.Image):
        arr = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0  # (H, W, 3)
        return torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0)
    if isinstance(image, Tensor) and image.ndim in (3, 4) and image.shape[-3] == 3:
        return (image if image.ndim == 4 else image.unsqueeze(0)).float()
    shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
    raise ValueError(f"a control image must be a PIL image or a (3, H, W) / (N, 3, H, W) tensor, got {shape}")


def attach_controls(
    cond: Conditioning,
    uncond: Conditioning | None,
    controls: Sequence[Control | Sequence[Any]],
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    encoder: LatentHintEncoder | None = None,
) -> tuple[Conditioning, Conditioning | None, list[dict[str, Any]]]:
    """``cond`` and ``uncond`` with every control added (the same ControlInput on both), and a description of
    each for the generation parameters. ControlNet files are loaded in ``dtype`` on ``device``; ``encoder``
    (the pipeline's VAE) encodes the control images of FLUX ControlNets."""
    described = []
    for item in controls:
        c = as_control(item)
        net = c.controlnet
        if isinstance(net, str | Path):
            net = load_controlnet(net, dtype=dtype, device=device)
        if not isinstance(net, ControlNetLike):
            raise TypeError(
                f"controlnet must be a ControlNet, a T2I-Adapter or a file path, got {type(net).__name__}"
            )
        if c.mode is not None:
            if not isinstance(net, FluxControlNet | UnionMode):
                raise ValueError(
                    f"Control.mode={c.mode} is for Union ControlNets; {net.source_name} has no modes"
                )
            net = net.with_mode(c.mode)
        name = net.source_name
        control = ControlInput(
            net, image_to_hint(c.image), strength=float(c.strength), start_percent=float(c.start),
            end_percent=float(c.end), encoder=encoder if getattr(net, "hint_space", "pixel") == "latent" else None,
        )  # fmt: skip
        described.append({"controlnet": name, "strength": c.strength, "start": c.start, "end": c.end})
        if c.mode is not None:
            described[-1]["mode"] = c.mode
        if c.strength == 0:
            continue
        cond = cond.with_control(control)
        uncond = None if uncond is None else uncond.with_control(control)
    return cond, uncond, described
