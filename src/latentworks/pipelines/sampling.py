"""The one sampling path: turns a network plus conditionings into denoised latents.

The pipeline, the KSampler nodes and training previews all call :func:`denoise_latents` with seeds from
:func:`seeds_for`, so identical settings give bit-identical latents whichever way they are reached.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from latentworks.checkpoints.lora import AppliedLora, apply_loras
from latentworks.diffusion.conditioning import Conditioning
from latentworks.diffusion.control import ControlDenoiser
from latentworks.diffusion.denoisers import Denoiser, ModelSampling, make_denoiser
from latentworks.diffusion.guidance import (
    CFGDenoiser,
    DualCFGDenoiser,
    DualGuidedCond,
    GuidanceNorm,
    GuidedCond,
    InpaintDenoiser,
    noised_start,
)
from latentworks.diffusion.noise import SeededNoiseSampler, seeded_noise
from latentworks.diffusion.regions import ConditionList, is_entry_list
from latentworks.diffusion.samplers import StepInfo, get_sampler

SEED_MODULUS = 2**63


def _has_control(*conds: object) -> bool:
    """Whether any conditioning, entry of a conditioning list or DualCFGGuider prompt carries a ControlNet."""
    for c in conds:
        if isinstance(c, Conditioning):
            found = bool(c.control)
        elif isinstance(c, tuple | list):  # a conditioning list: its entries' conds
            found = _has_control(*[getattr(e, "cond", e) for e in c])
        else:  # DualGuidance (its second prompt) or None
            found = c is not None and _has_control(getattr(c, "cond2", None))
        if found:
            return True
    return False


"""Per-sample seeds wrap around here, so the seed of every sample is a valid non-negative int64."""


def seeds_for(seed: int, batch: int) -> list[int]:
    """The seeds of a batch of ``batch`` samples started from ``seed``: sample i gets ``(seed + i) % 2**63``.

    The one seeding rule: image i of a batch equals a single run with seed ``seeds_for(seed, batch)[i]``.
    For seeds in [0, 2**63 - batch] it is simply ``seed + i``.
    """
    if batch < 1:
        raise ValueError(f"batch must be at least 1, got {batch}")
    return [(int(seed) + i) % SEED_MODULUS for i in range(batch)]


@dataclass(frozen=True)
class DualGuidance:
    """A second prompt for DualCFGGuider's guidance (:class:`~latentworks.diffusion.guidance.DualCFGDenoiser`):
    ``cond2`` sits between the prompt and the negative; ``scale2`` guides cond2 away from the negative, the
    sampler's ``guidance`` the prompt away from cond2."""

    cond2: Conditioning | ConditionList
    scale2: float
    nested: bool = False


class SamplingModel(Protocol):
    """What :func:`denoise_latents` needs of a model: a loaded model folder, or :class:`NetworkModel`."""

    @property
    def denoiser_net(self) -> nn.Module: ...  # network(x_in, t, cond) -> prediction

    @property
    def prediction(self) -> str: ...  # "eps" | "v" | "x0" | "flow" | "edm"

    @property
    def model_sampling(self) -> ModelSampling: ...

    @property
    def loras(self) -> tuple[AppliedLora, ...]: ...  # applied to denoiser_net while sampling

    @property
    def guidance_norm(self) -> GuidanceNorm | None: ...  # CFG renormalisation (CFGNorm node, Qwen-Image)


@dataclass(frozen=True)
class NetworkModel:
    """A bare network with its objective, for sampling without a model folder (training previews)."""

    denoiser_net: nn.Module
    prediction: str
    model_sampling: ModelSampling
    loras: tuple[AppliedLora, ...] = ()
    guidance_norm: GuidanceNorm | None = None


def model_loras(model: SamplingModel) -> AbstractContextManager[object]:
    """Apply the LoRAs in ``model.loras`` (``(ResolvedLora, strength)`` pairs, added by
    ``checkpoints.lora.add_lora``) to ``model.denoiser_net`` in place until the context exits; a no-op
    context when there are none."""
    if not model.loras:
        return nullcontext()
    return apply_loras(model.denoiser_net, list(model.loras))


def denoise_latents(
    model: SamplingModel,
    x0: Tensor,
    sigmas: Tensor,
    seeds: list[int],
    cond: Conditioning | ConditionList,
    uncond: Conditioning | ConditionList | None,
    guidance: float,
    sampler: str,
    *,
    add_noise: bool = True,
    mask: Tensor | None = None,
    differential: bool | float = False,
    masked_from_noise: bool = False,
    callback: Callable[[StepInfo], object] | None = None,
    sampler_options: dict[str, Any] | None = None,
    guidance_interval: tuple[float, float] | None = None,
    rescale_cfg: float = 0.0,
    dual: DualGuidance | None = None,
) -> Tensor:
    """Sample from model-space latents ``x0`` (B, C, h, w) along ``sigmas``.

    ``model`` is a loaded model folder (network, prediction, model sampling) or a :class:`NetworkModel`.
    Sample i draws its initial and SDE noise from ``seeds[i]`` (make them with :func:`seeds_for`).
    ``cond`` / ``uncond`` are the prompt's and the negative prompt's ``Conditioning`` (B rows);
    ``uncond`` is unused when ``guidance == 1``. ``add_noise=False`` starts from ``x0`` as it is
    (KSamplerAdvanced continuing a run); ``mask`` (B, 1, h, w), 1 = regenerate, keeps the rest of
    ``x0`` (:class:`~latentworks.diffusion.guidance.InpaintDenoiser`); ``differential`` turns the soft mask into
    differential diffusion's per-step threshold (a float in (0, 1) blends that with the soft mask: its strength); ``masked_from_noise`` starts the masked region from noise
    alone (``x0 * (1 - mask)`` is noised), so a full-strength inpaint with mask 1 equals plain generation.
    With fewer than two sigmas there is nothing to do and ``x0`` comes back.
    ``guidance_interval`` ``(sigma_lo, sigma_hi)``: guide only at those noise levels (see
    :class:`~latentworks.diffusion.guidance.CFGDenoiser`); None = at every step.
    ``cond``/``uncond`` may also be conditioning lists (tuples of ``CondEntry``: prompts over areas, masks and
    noise-level ranges, see :mod:`latentworks.diffusion.regions`); ``rescale_cfg`` is RescaleCFG's multiplier
    and ``dual`` switches to DualCFGGuider's two-prompt guidance (``cond`` = cond1, ``guidance`` = its scale).

    LoRAs listed in ``model.loras`` (see :func:`model_loras`) are applied to the network
    for this call only and removed afterwards (bit-exact), so a model shared with other callers is
    unchanged outside it.
    """
    if len(sigmas) < 2:
        return x0
    if len(seeds) != x0.shape[0]:
        raise ValueError(f"got {len(seeds)} seeds for a batch of {x0.shape[0]} latents; give one per sample")
    shape = tuple(x0.shape[1:])
    device = x0.device
    noise = seeded_noise(shape, seeds, device=device)
    denoiser = make_denoiser(model.denoiser_net, model.prediction, model.model_sampling)
    start = x0 * (1 - mask) if mask is not None and masked_from_noise else x0
    x = noised_start(start, noise, sigmas[0], denoiser.interpolation) if add_noise else start
    lists = dual is not None or is_entry_list(cond) or is_entry_list(uncond)
    norm = getattr(model, "guidance_norm", None)  # CFG renormalisation (Qwen-Image, the CFGNorm node)
    # ControlNets ride on the conditionings; the wrapper runs them at each step (it sits inside CFG).
    if lists and _has_control(cond, uncond, dual):
        raise ValueError(
            "ControlNet together with area, mask or timestep-range conditioning (or DualCFGGuider) is not "
            "supported yet: apply the ControlNet to a plain prompt"
        )
    controlled: Denoiser = denoiser
    if not lists and _has_control(cond, uncond):
        controlled = ControlDenoiser(denoiser)

    def inpaint(inner: Denoiser) -> Denoiser:
        if mask is None:
            return inner
        span = (float(sigmas[0]), float(sigmas[-1])) if differential else None
        strength = 1.0 if isinstance(differential, bool) else float(differential)
        return InpaintDenoiser(inner, x0, mask, noise, differential=span, differential_strength=strength)

    guided: Denoiser
    guided_cond: GuidedCond | DualGuidedCond
    if not lists:  # one prompt each: the inpaint blend inside CFG, as always (bit-identical results)
        guided = CFGDenoiser(
            inpaint(controlled), guidance, interval=guidance_interval, rescale_cfg=rescale_cfg, norm=norm
        )
        guided_cond = GuidedCond(cond, uncond if guidance != 1.0 else None)
    else:  # conditioning lists evaluate crops of x, so the inpaint blend goes outside the guidance
        multiple = int(getattr(getattr(model.denoiser_net, "config", None), "patch_size", 1) or 1)
        if dual is not None:
            guided = DualCFGDenoiser(
                denoiser, guidance, dual.scale2, nested=dual.nested, crop_multiple=multiple
            )
            guided_cond = DualGuidedCond(cond, dual.cond2, uncond)
        else:
            guided = CFGDenoiser(
                denoiser,
                guidance,
                interval=guidance_interval,
                rescale_cfg=rescale_cfg,
                crop_multiple=multiple,
                norm=norm,
            )
            guided_cond = GuidedCond(cond, uncond if guidance != 1.0 else None)
        guided = inpaint(guided)
    with torch.no_grad(), model_loras(model):
        return get_sampler(sampler)(
            guided,
            x,
            sigmas.to(device),
            cond=guided_cond,
            noise=SeededNoiseSampler(seeds, shape, device=device),
            callback=callback,
            **(sampler_options or {}),
        )
