"""What differs between model families at generation time, as data.

The pipeline and the sampler nodes are family-agnostic; the few things that are not (native resolution,
default settings, SDXL's size conditioning, FLUX's distilled guidance and resolution-dependent shift) are
described here, one :class:`FamilyBehaviour` per family, and applied by two small functions:
:func:`add_conditioning_extras` and :func:`sampling_for_size`.

Our own models (``model.json`` without a ``family``) use the ``latentworks`` entry: nothing extra.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from latentworks.diffusion.conditioning import Conditioning
from latentworks.diffusion.denoisers import FlowModelSampling


@dataclass(frozen=True, kw_only=True)
class FamilyBehaviour:
    """Generation-time behaviour of one family.

    Attributes:
        resolution: native (height, width) in pixels.
        defaults: steps, guidance, sampler, scheduler used when the caller gives none.
        size_conditioning: ``"sdxl"`` adds ``time_ids`` = (orig h, orig w, crop top, crop left, target h,
            target w); ``"sdxl-refiner"`` adds (orig h, orig w, crop top, crop left, aesthetic score) with
            score 6.0 for the prompt and 2.5 for the negative prompt (the refiner's training convention).
        distilled_guidance: FLUX.1-dev: the guidance scale goes into ``cond.extra["guidance"]`` and the
            sampler runs without classifier-free guidance (one network call per step).
        flux_shift: the flow shift depends on the image's token count (FLUX's dynamic shifting).
    """

    resolution: tuple[int, int]
    defaults: dict[str, Any] = field(default_factory=dict)
    size_conditioning: str | None = None
    distilled_guidance: bool = False
    flux_shift: bool = False


_SD = {"steps": 20, "guidance": 7.0, "sampler": "euler", "scheduler": "normal"}

FAMILY_BEHAVIOUR: dict[str, FamilyBehaviour] = {
    "latentworks": FamilyBehaviour(resolution=(64, 64)),
    "sd1": FamilyBehaviour(resolution=(512, 512), defaults=_SD),
    "sd2": FamilyBehaviour(resolution=(512, 512), defaults=_SD),
    "sd2-v": FamilyBehaviour(resolution=(768, 768), defaults=_SD),
    "sdxl": FamilyBehaviour(
        resolution=(1024, 1024), defaults={**_SD, "guidance": 5.0}, size_conditioning="sdxl"
    ),
    "sdxl-refiner": FamilyBehaviour(
        resolution=(1024, 1024), defaults={**_SD, "guidance": 5.0}, size_conditioning="sdxl-refiner"
    ),
    "sd3": FamilyBehaviour(
        resolution=(1024, 1024),
        defaults={"steps": 28, "guidance": 4.5, "sampler": "euler", "scheduler": "simple"},
    ),
    "flux-dev": FamilyBehaviour(
        resolution=(1024, 1024),
        defaults={"steps": 20, "guidance": 3.5, "sampler": "euler", "scheduler": "simple"},
        distilled_guidance=True,
        flux_shift=True,
    ),
    "flux-schnell": FamilyBehaviour(
        resolution=(1024, 1024),
        defaults={"steps": 4, "guidance": 1.0, "sampler": "euler", "scheduler": "simple"},
    ),  # schnell samples with shift 1 at every size (diffusers' scheduler config: no dynamic shifting)
}


def behaviour_of(family: str | None) -> FamilyBehaviour:
    """The behaviour for ``family`` (None = our own models); unknown names are an error listing the known."""
    key = family or "latentworks"
    if key not in FAMILY_BEHAVIOUR:
        raise ValueError(f"unknown model family {key!r}; known: {', '.join(FAMILY_BEHAVIOUR)}")
    return FAMILY_BEHAVIOUR[key]


def add_conditioning_extras(
    behaviour: FamilyBehaviour,
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
    extra: dict[str, torch.Tensor] = {}
    if behaviour.size_conditioning == "sdxl":
        ids: list[float] = [height, width, 0, 0, height, width]
        extra["time_ids"] = torch.tensor([ids] * b, dtype=torch.float32, device=device)
    elif behaviour.size_conditioning == "sdxl-refiner":
        ids = [height, width, 0, 0, 2.5 if negative else 6.0]
        extra["time_ids"] = torch.tensor([ids] * b, dtype=torch.float32, device=device)
    if behaviour.distilled_guidance:
        extra["guidance"] = torch.full((b,), float(guidance), dtype=torch.float32, device=device)
    extra = {k: v for k, v in extra.items() if k not in cond.extra}
    return cond.with_extra(**extra) if extra else cond


def cfg_scale(behaviour: FamilyBehaviour, guidance: float) -> float:
    """The classifier-free guidance scale the sampler should use (1 = no CFG, one call per step)."""
    return 1.0 if behaviour.distilled_guidance else guidance


def sampling_for_size(
    behaviour: FamilyBehaviour, model_sampling: Any, *, latent_height: int, latent_width: int, patch: int = 2
) -> Any:
    """FLUX: a model sampling whose shift matches this image's token count; others: unchanged.

    The token count is the latent grid over ``patch`` x ``patch`` packing ((H / 16) * (W / 16) for FLUX's
    8x VAE), as diffusers' FluxPipeline computes it from the packed latents.
    """
    if not behaviour.flux_shift:
        return model_sampling
    seq_len = (latent_height // patch) * (latent_width // patch)
    return FlowModelSampling.flux(seq_len, multiplier=getattr(model_sampling, "multiplier", 1000.0))


def model_sampling_for(model: Any, *, latent_height: int, latent_width: int) -> Any:
    """The model sampling to schedule with for a latent of this size: ``model``'s own (a loaded model folder),
    shifted for the image's token count when its family asks for it (FLUX)."""
    patch = int(getattr(model.denoiser_net.config, "patch_size", 2))
    return sampling_for_size(
        behaviour_of(model.meta.get("family")),
        model.model_sampling,
        latent_height=latent_height,
        latent_width=latent_width,
        patch=patch,
    )
