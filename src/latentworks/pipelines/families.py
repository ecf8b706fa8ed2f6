"""Apply a family's generation behaviour (:class:`~latentworks.families.base.Generation`) at sampling time.

The pipeline and the sampler nodes are family-agnostic; the few things that are not (native resolution,
default settings, SDXL's size conditioning, FLUX's distilled guidance and resolution-dependent shift) are
data on each family (``latentworks.families.get(name).generation``), applied here by two small functions:
:func:`add_conditioning_extras` and :func:`sampling_for_size`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from latentworks import families
from latentworks.diffusion.conditioning import Conditioning
from latentworks.diffusion.denoisers import FlowModelSampling
from latentworks.diffusion.schedules import stretch_to_terminal
from latentworks.families.base import Generation
from latentworks.models.unet import CLASS_INPUT_KEY


def behaviour_of(family: str | None) -> Generation:
    """The generation behaviour of ``family`` (None = our own models); unknown names are an error listing the
    known ones."""
    return families.get(family).generation


def add_conditioning_extras(
    behaviour: Generation,
    cond: Conditioning,
    *,
    height: int,
    width: int,
    guidance: float,
    negative: bool = False,
) -> Conditioning:
    """Add the family's extra vectors (SDXL size ids, FLUX guidance) to ``cond`` for an image of this size.

    Vectors ``cond`` already carries win (e.g. a FluxGuidance node's guidance); only missing ones are added.
    """
    b = cond.batch_size
    device = cond.tokens.device
    extra = size_conditioning(
        behaviour, [(height, width, 0, 0)] * b, height=height, width=width, negative=negative
    )
    extra = {k: v.to(device) for k, v in extra.items()}
    if (
        behaviour.class_input_dim
    ):  # unCLIP without an image (the negative prompt): zeros, as ComfyUI and diffusers
        extra[CLASS_INPUT_KEY] = torch.zeros(b, behaviour.class_input_dim, device=device)
    if behaviour.distilled_guidance:
        extra["guidance"] = torch.full((b,), float(guidance), dtype=torch.float32, device=device)
    extra = {k: v for k, v in extra.items() if k not in cond.extra}
    return cond.with_extra(**extra) if extra else cond


def size_conditioning(
    behaviour: Generation,
    originals: Sequence[tuple[float, float, float, float]],
    *,
    height: int,
    width: int,
    negative: bool = False,
) -> dict[str, torch.Tensor]:
    """The family's size ids (SDXL's micro-conditioning, Podell et al. 2023 sec. 2.2) for a batch of images
    generated (or trained) at ``height`` x ``width``: ``originals`` holds, per image, its original height and
    width and the top/left of its crop, in pixels. ``{"time_ids": (B, n)}``, or ``{}`` for families without
    size conditioning. Generation passes the target size and a zero crop (what ComfyUI and diffusers do)."""
    rows: list[list[float]]
    if behaviour.size_conditioning == "size-ids":
        rows = [[oh, ow, top, left, height, width] for oh, ow, top, left in originals]
    elif behaviour.size_conditioning == "size-aesthetic-ids":
        rows = [[oh, ow, top, left, 2.5 if negative else 6.0] for oh, ow, top, left in originals]
    else:
        return {}
    return {"time_ids": torch.tensor(rows, dtype=torch.float32)}


def cfg_scale(behaviour: Generation, guidance: float) -> float:
    """The classifier-free guidance scale the sampler should use (1 = no CFG, one call per step)."""
    return 1.0 if behaviour.distilled_guidance else guidance


def sampling_for_size(
    model_sampling: Any,
    spec: Mapping[str, Any] | None,
    *,
    latent_height: int,
    latent_width: int,
    patch: int = 2,
) -> Any:
    """The model sampling for an image of this size: when the model's sampling ``spec`` (its ``model.json``
    form) carries a ``dynamic_shift`` (FLUX.1-dev, Qwen-Image), one whose shift matches the image's token
    count with those constants; otherwise ``model_sampling`` unchanged.

    The token count is the latent grid over ``patch`` x ``patch`` packing ((H / 16) * (W / 16) for FLUX's
    8x VAE), as diffusers' FluxPipeline computes it from the packed latents.
    """
    dynamic = spec.get("dynamic_shift") if isinstance(spec, Mapping) else None
    if not dynamic:
        return model_sampling
    seq_len = (latent_height // patch) * (latent_width // patch)
    return FlowModelSampling.flux(
        seq_len, multiplier=getattr(model_sampling, "multiplier", 1000.0), **dynamic
    )


def model_sampling_for(model: Any, *, latent_height: int, latent_width: int) -> Any:
    """The model sampling to schedule with for a latent of this size: ``model``'s own (a loaded model folder),
    shifted for the image's token count when its sampling spec says so (see :func:`sampling_for_size`). A
    ModelSampling* node's patch removes the spec's ``dynamic_shift``, so a patched model keeps its sampling."""
    return sampling_for_size(
        model.model_sampling,
        model.meta.get("denoiser", {}).get("sampling"),
        latent_height=latent_height,
        latent_width=latent_width,
        patch=int(getattr(model.denoiser_net.config, "patch_size", 2)),
    )


def release_schedule(model: Any, sigmas: torch.Tensor) -> torch.Tensor:
    """``sigmas`` with what the model's sampling spec adds to every schedule: ``shift_terminal``
    (Qwen-Image's diffusers scheduler stretches the schedule to end at it). The pipeline applies it, as
    diffusers does; workflows sample as ComfyUI does, without it."""
    spec = model.meta.get("denoiser", {}).get("sampling")
    terminal = spec.get("shift_terminal") if isinstance(spec, Mapping) else None
    if not terminal or len(sigmas) < 2:
        return sigmas
    return stretch_to_terminal(sigmas, float(terminal))
