"""DDPM with a learned variance (Nichol & Dhariwal 2021, "Improved DDPM", Sec. 3.1), as DeepFloyd IF samples.

A learned-variance network outputs, beside eps, a per-pixel value ``v`` in about [-1, 1] that interpolates the
reverse step's log-variance between the posterior variance ``beta_tilde_t`` and ``beta_t``:

    log var = frac * log(beta_t) + (1 - frac) * log(beta_tilde_t),    frac = (v + 1) / 2     (eq. 15)

Everything here speaks the project's sigma language (VE: ``x = x0 + sigma n``; a DDPM sample ``x_vp`` at step t
is ``x_vp = x / sqrt(1 + sigma_t^2)``), so the pieces fit the rest of :mod:`latentworks.diffusion`:

- :class:`LearnedVarianceDenoiser` wraps the network (eps + v channels) as ``D(x, sigma, cond) -> x0`` (the
  ordinary denoiser contract) and ``D.with_variance(...) -> (x0, v)``;
- :class:`LearnedVarianceGuidance` is classifier-free guidance over such a denoiser (guided x0, the
  conditional branch's v, as DeepFloyd and diffusers take it), followed by Imagen's dynamic thresholding
  (:func:`~latentworks.diffusion.guidance.dynamic_threshold`) or a plain clip;
- :func:`sample_ddpm_learned_variance` is the sampler, a pure function of the same shape as
  :func:`~latentworks.diffusion.samplers.sample_ddpm` (which it equals when ``v = -1``: the posterior variance);
- :func:`ddpm_timesteps` / :func:`timestep_sigmas` give the integer steps diffusers' ``DDPMScheduler`` visits
  and their sigmas, ending in 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from latentworks.diffusion.conditioning import Conditioning
from latentworks.diffusion.denoisers import DiscreteModelSampling, EpsDenoiser, Interpolation
from latentworks.diffusion.guidance import dynamic_threshold
from latentworks.diffusion.samplers import NoiseFn, StepCallback, _need_noise, _Run

SPACINGS = ("leading", "trailing", "linspace")


def ddpm_timesteps(steps: int, num_train: int = 1000, spacing: str = "leading", offset: int = 0) -> list[int]:
    """The descending integer training steps a ``steps``-step DDPM run visits (diffusers' ``timestep_spacing``).

    ``leading``: ``[0, r, 2r, ...]`` reversed with ``r = num_train // steps`` (plus ``offset``), diffusers'
    default and DeepFloyd IF's; ``trailing``: from ``num_train - 1`` down in steps of ``num_train / steps``;
    ``linspace``: ``steps`` evenly spaced values from ``num_train - 1`` to 0.
    """
    if not 1 <= steps <= num_train:
        raise ValueError(f"steps must be between 1 and the {num_train} training steps, got {steps}")
    if spacing == "leading":
        ts = [i * (num_train // steps) + offset for i in reversed(range(steps))]
    elif spacing == "trailing":
        ts = [int(v) for v in np.round(np.arange(num_train, 0, -num_train / steps)) - 1]
    elif spacing == "linspace":
        ts = [int(v) for v in np.linspace(0, num_train - 1, steps).round()[::-1]]
    else:
        raise ValueError(f"unknown timestep spacing {spacing!r}; choose one of: {', '.join(SPACINGS)}")
    out = [int(t) for t in ts]
    if len(set(out)) != len(out) or max(out) >= num_train:
        raise ValueError(
            f"{steps} steps with {spacing!r} spacing repeat a step or pass {num_train - 1}: {out}"
        )
    return out


def timestep_sigmas(model_sampling: DiscreteModelSampling, timesteps: Sequence[int]) -> Tensor:
    """The sigmas (float64, descending, with a trailing 0) of the training steps ``timesteps``."""
    table = model_sampling.sigmas
    return torch.cat([table[torch.as_tensor(list(timesteps))], table.new_zeros(1)])


class VarianceDenoiser(Protocol):
    """A denoiser that can also return the learned variance interpolation ``v`` (shaped like x)."""

    @property
    def interpolation(self) -> Interpolation: ...

    def __call__(self, x: Tensor, sigma: Tensor, cond: Any = None) -> Tensor: ...

    def with_variance(self, x: Tensor, sigma: Tensor, cond: Any = None) -> tuple[Tensor, Tensor]: ...


class LearnedVarianceDenoiser(EpsDenoiser):
    """An eps network with ``2C`` output channels (eps, then v) as a denoiser (Karras et al. 2022's VP wrapping).

    The network's timestep for a table sigma is rounded to the integer step when it lies within 1e-3 of one
    (diffusers passes integer steps; the log-sigma interpolation returns them up to float error)."""

    def with_variance(self, x: Tensor, sigma: Tensor | float, cond: Any = None) -> tuple[Tensor, Tensor]:
        x_in, t = self.network_input(x, sigma)
        rounded = t.round()
        t = torch.where((t - rounded).abs() < 1e-3, rounded, t)
        out = self.model(x_in, t, cond)  # (B, 2C, ...)
        channels = x.shape[1]
        if out.shape[1] != 2 * channels:
            raise ValueError(
                f"a learned-variance network must return 2 x {channels} channels (eps and v), got {out.shape[1]}"
            )
        eps, v = out[:, :channels], out[:, channels:]
        return self.network_output(x, sigma, eps), v.to(x.dtype)

    def __call__(self, x: Tensor, sigma: Tensor | float, cond: Any = None) -> Tensor:
        return self.with_variance(x, sigma, cond)[0]


class LearnedVarianceGuidance:
    """Classifier-free guidance over a :class:`VarianceDenoiser`: ``x0 = x0_u + scale (x0_c - x0_u)`` (the same
    as guiding eps: x0 is affine in eps), ``v = v_c``; then dynamic thresholding of x0 (``threshold``
    percentile, at most ``threshold_max``, Imagen Sec. 2.3) or, without it, clipping to ``[-clip, clip]``.

    Called as ``D(x, sigma, (cond, uncond))``; ``uncond`` may be None when ``scale == 1``.
    """

    def __init__(
        self,
        denoiser: VarianceDenoiser,
        scale: float,
        *,
        threshold: float | None = None,
        threshold_max: float | None = None,
        clip: float | None = None,
    ) -> None:
        if threshold is not None and not 0 < threshold <= 1:
            raise ValueError(f"threshold is a percentile in (0, 1] such as 0.995, got {threshold}")
        if clip is not None and clip <= 0:
            raise ValueError(f"clip must be positive, got {clip}")
        self.denoiser, self.scale = denoiser, float(scale)
        self.threshold, self.threshold_max, self.clip = threshold, threshold_max, clip

    @property
    def interpolation(self) -> Interpolation:
        return self.denoiser.interpolation

    def with_variance(self, x: Tensor, sigma: Tensor, cond: Any = None) -> tuple[Tensor, Tensor]:
        positive, negative = cond
        if self.scale == 1.0:
            x0, v = self.denoiser.with_variance(x, sigma, positive)
        else:
            if negative is None:
                raise ValueError("guidance scale != 1 needs an uncond (the empty prompt's conditioning)")
            b = x.shape[0]
            both, v_both = self.denoiser.with_variance(
                torch.cat([x, x]), torch.cat([sigma, sigma]), Conditioning.cat([negative, positive])
            )  # (2B, ...): uncond first, as diffusers batches it
            x0 = both[:b] + self.scale * (both[b:] - both[:b])
            v = v_both[b:]
        if self.threshold is not None:
            x0 = dynamic_threshold(x0, self.threshold, self.threshold_max)
        elif self.clip is not None:
            x0 = x0.clamp(-self.clip, self.clip)
        return x0, v

    def __call__(self, x: Tensor, sigma: Tensor, cond: Any = None) -> Tensor:
        return self.with_variance(x, sigma, cond)[0]


def sample_ddpm_learned_variance(
    denoiser: VarianceDenoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    cond: object = None,
    noise: NoiseFn | None = None,
    callback: StepCallback | None = None,
) -> Tensor:
    """DDPM ancestral sampling with the learned variance of Nichol & Dhariwal 2021 (eq. 15), in VE space.

    Each step from ``sigma`` to ``sigma'`` draws from ``N(mean, var)``: the mean is the forward-process
    posterior's (as :func:`~latentworks.diffusion.samplers.sample_ddpm`), and the variance, in DDPM's own
    (VP) scale, is ``exp(frac log beta + (1 - frac) log beta_tilde)`` with ``abar = 1 / (1 + sigma^2)``,
    ``beta = 1 - abar / abar'`` and ``beta_tilde = beta (1 - abar') / (1 - abar)``; VE space multiplies it
    by ``1 + sigma'^2``. The last step (``sigma' = 0``) returns the denoised x0 and draws no noise, as
    diffusers' scheduler.
    """
    run = _Run("ddpm_learned_variance", denoiser, x, sigmas, cond, callback)
    if run.interp.is_flow:
        raise ValueError("ddpm_learned_variance: needs a discrete (VE) model sampling, not a flow model")
    noise = _need_noise("ddpm_learned_variance", noise)
    x = run.x
    for i in range(run.total):
        sigma, sigma_next = run.sigmas[i], run.sigmas[i + 1]
        sigma_vec = torch.full((run.batch,), sigma, dtype=run.dtype, device=x.device)
        denoised, v = denoiser.with_variance(x, sigma_vec, cond)
        denoised = denoised.to(run.dtype)
        if sigma_next == 0:
            x = denoised
        else:
            mean_x0 = 1.0 - sigma_next**2 / sigma**2  # = v / sigma^2 of sample_ddpm (alpha = 1)
            mean_x = sigma_next**2 / sigma**2
            abar, abar_next = 1.0 / (1.0 + sigma**2), 1.0 / (1.0 + sigma_next**2)
            beta = 1.0 - abar / abar_next
            beta_tilde = max(beta * (1.0 - abar_next) / (1.0 - abar), 1e-20)
            frac = (v.to(run.dtype) + 1.0) / 2.0
            log_var = frac * math.log(beta) + (1.0 - frac) * math.log(beta_tilde)  # VP scale
            std = torch.exp(0.5 * log_var) * math.sqrt(1.0 + sigma_next**2)  # VE scale
            x = mean_x * x + mean_x0 * denoised + std * noise(sigma, sigma_next)
        if run.stop(i, x, sigma, sigma_next, denoised):
            break
    return run.finish(x)
