"""The one place that turns a network plus prompts into denoised latents; used by the pipeline and
by the KSampler nodes, so both give identical results for identical settings."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import Tensor

from latentworks.diffusion.denoisers import make_denoiser
from latentworks.diffusion.guidance import CFGDenoiser, GuidedCond, InpaintDenoiser, noised_start
from latentworks.diffusion.noise import SeededNoiseSampler, seeded_noise
from latentworks.diffusion.samplers import StepInfo, get_sampler


def model_loras(model: Any) -> AbstractContextManager[Any]:
    """Apply the LoRAs in ``model.extra["loras"]`` (``(ResolvedLora, strength)`` pairs, added by
    ``checkpoints.lora.add_lora``) to ``model.denoiser_net`` in place until the context exits; a no-op
    context when there are none."""
    loras = tuple(getattr(model, "extra", {}).get("loras", ()))
    if not loras:
        return nullcontext()
    from latentworks.checkpoints.lora import apply_loras

    return apply_loras(model.denoiser_net, list(loras))


def denoise_latents(
    model: Any,
    x0: Tensor,
    sigmas: Tensor,
    seeds: list[int],
    cond: Any,
    uncond: Any,
    guidance: float,
    sampler: str,
    *,
    add_noise: bool = True,
    mask: Tensor | None = None,
    callback: Callable[[StepInfo], Any] | None = None,
    sampler_options: dict[str, Any] | None = None,
    guidance_interval: tuple[float, float] | None = None,
) -> Tensor:
    """Sample from model-space latents ``x0`` (B, C, h, w) along ``sigmas``.

    ``model`` is a loaded model folder (network, prediction, model sampling). Sample i draws its
    initial and SDE noise from ``seeds[i]``. ``add_noise=False`` starts from ``x0`` as it is
    (KSamplerAdvanced continuing a run); ``mask`` (B, 1, h, w), 1 = regenerate, keeps the rest of
    ``x0``. With fewer than two sigmas there is nothing to do and ``x0`` comes back.
    ``guidance_interval`` ``(sigma_lo, sigma_hi)``: guide only at those noise levels (see
    :class:`~latentworks.diffusion.guidance.CFGDenoiser`); None = at every step.

    LoRAs listed in ``model.extra["loras"]`` (see :func:`model_loras`) are applied to the network
    for this call only and removed afterwards (bit-exact), so a model shared with other callers is
    unchanged outside it.
    """
    if len(sigmas) < 2:
        return x0
    shape = tuple(x0.shape[1:])
    device = x0.device
    noise = seeded_noise(shape, seeds, device=device)
    denoiser = make_denoiser(model.denoiser_net, model.prediction, model.model_sampling)
    x = noised_start(x0, noise, sigmas[0], denoiser.interpolation) if add_noise else x0
    inner: Any = denoiser if mask is None else InpaintDenoiser(denoiser, x0, mask, noise)
    with torch.no_grad(), model_loras(model):
        return get_sampler(sampler)(
            CFGDenoiser(inner, guidance, interval=guidance_interval),
            x,
            sigmas.to(device),
            cond=GuidedCond(cond, uncond if guidance != 1.0 else None),
            noise=SeededNoiseSampler(seeds, shape, device=device),
            callback=callback,
            **(sampler_options or {}),
        )
