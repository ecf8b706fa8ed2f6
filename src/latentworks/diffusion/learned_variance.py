"""DDPM with a learned variance (Nichol & Dhariwal 2021, "Improved DDPM", section 3.1), as unCLIP's decoder
samples, plus the small denoiser wrappers unCLIP's stages need.

A learned-range network outputs, beside its noise estimate, a value ``v`` in about [-1, 1] per element that
interpolates the reverse step's log-variance between the posterior variance ``beta_tilde`` and ``beta``:
``log var = (v + 1) / 2 * log(beta) + (1 - v) / 2 * log(beta_tilde)`` (eq. 15; diffusers' ``learned_range``).

The denoiser contract stays ``D(x, sigma, cond) -> x0``: a :class:`VarianceDenoiser` is a denoiser that can
also say its ``v`` (``with_variance``), and :func:`sample_ddpm_learned_range` is a pure sampler over it. Every
quantity comes from the sigmas alone, in VE space as the other samplers (``alpha_bar = 1 / (1 + sigma^2)``;
between the levels of two steps ``beta = 1 - alpha_bar_t / alpha_bar_s``, the "respaced" beta of Nichol &
Dhariwal appendix B). With ``v = -1`` everywhere the step is the plain DDPM posterior step (``sample_ddpm``).

Wrappers:

- :class:`LearnedRangeEpsDenoiser`: an eps network whose output is ``[eps, v]`` along the channels;
- :class:`GuidedVarianceDenoiser`: classifier-free guidance of the x0 (equivalently eps) estimate, the variance
  taken from the conditional branch (GLIDE and unCLIP do so);
- :class:`ClampedDenoiser`: static thresholding of x0 to [-limit, limit] (DDPM's ``clip_denoised``);
- :class:`LastStepDenoiser`: a second network for the last step (Karlo's ``super_res_last``).
"""

from __future__ import annotations

import math
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from latentworks.diffusion.denoisers import (
    DiscreteModelSampling,
    EpsDenoiser,
    Interpolation,
    _out_dtype,
    interpolation_of,
)
from latentworks.diffusion.guidance import GuidedCond, _cat_cond
from latentworks.diffusion.samplers import NoiseFn, SamplingCancelled, StepCallback, StepInfo


@runtime_checkable
class VarianceDenoiser(Protocol):
    """A denoiser that can also give its learned variance interpolation ``v`` (same shape as x0), or None
    when it has none (the step then uses the posterior variance, ``v = -1``)."""

    @property
    def interpolation(self) -> Interpolation: ...

    def __call__(self, x: Tensor, sigma: Tensor, cond: Any = None) -> Tensor: ...

    def with_variance(self, x: Tensor, sigma: Tensor, cond: Any = None) -> tuple[Tensor, Tensor | None]: ...


def _with_variance(denoiser: Any, x: Tensor, sigma: Tensor, cond: Any) -> tuple[Tensor, Tensor | None]:
    if isinstance(denoiser, VarianceDenoiser):
        return denoiser.with_variance(x, sigma, cond)
    return denoiser(x, sigma, cond), None


class LearnedRangeEpsDenoiser(EpsDenoiser):
    """An eps-prediction network with ``2C`` output channels: ``[eps (C), v (C)]`` (diffusers' ``learned_range``
    decoders: ``out_channels = 2 * in_channels``)."""

    def with_variance(self, x: Tensor, sigma: Tensor | float, cond: Any = None) -> tuple[Tensor, Tensor]:
        x_in, t = self.network_input(x, sigma)
        out = self.model(x_in, t, cond)  # (B, 2C, ...)
        c = x.shape[1]
        if out.shape[1] != 2 * c:
            raise ValueError(
                f"a learned-range network outputs 2 x {c} channels (noise and variance), got {out.shape[1]}"
            )
        eps, v = out[:, :c], out[:, c:]
        return self.network_output(x, sigma, eps), v.to(_out_dtype(x))

    def __call__(self, x: Tensor, sigma: Tensor | float, cond: Any = None) -> Tensor:
        return self.with_variance(x, sigma, cond)[0]


class GuidedVarianceDenoiser:
    """Classifier-free guidance ``x0 = x0_u + scale * (x0_c - x0_u)`` over a (variance) denoiser; ``v`` is the
    conditional branch's. Called with ``cond=GuidedCond(cond, uncond)``; one batched call (cond first, as
    :class:`~latentworks.diffusion.guidance.CFGDenoiser`); ``scale == 1`` skips the unconditional half."""

    def __init__(self, denoiser: Any, scale: float) -> None:
        self.denoiser, self.scale = denoiser, float(scale)

    @property
    def interpolation(self) -> Interpolation:
        return interpolation_of(self.denoiser)

    def with_variance(self, x: Tensor, sigma: Tensor, cond: Any = None) -> tuple[Tensor, Tensor | None]:
        if not isinstance(cond, GuidedCond):
            raise TypeError(
                f"GuidedVarianceDenoiser expects cond=GuidedCond(cond, uncond), got {type(cond).__name__}"
            )
        if self.scale == 1.0:
            return _with_variance(self.denoiser, x, sigma, cond.cond)
        if cond.uncond is None:
            raise ValueError("guidance scale != 1 needs an uncond conditioning")
        b = x.shape[0]
        s = torch.as_tensor(sigma, device=x.device)
        s = s.expand(b) if s.ndim == 0 else s
        x0, v = _with_variance(
            self.denoiser, torch.cat([x, x]), torch.cat([s, s]), _cat_cond([cond.cond, cond.uncond])
        )
        x0_c, x0_u = x0[:b], x0[b:]
        return x0_u + self.scale * (x0_c - x0_u), None if v is None else v[:b]

    def __call__(self, x: Tensor, sigma: Tensor, cond: Any = None) -> Tensor:
        return self.with_variance(x, sigma, cond)[0]


class ClampedDenoiser:
    """x0 clamped to ``[-limit, limit]`` (static thresholding; diffusers' ``clip_sample`` / ``clip_sample_range``)."""

    def __init__(self, denoiser: Any, limit: float) -> None:
        if not limit > 0:
            raise ValueError(f"the clamp limit must be > 0, got {limit}")
        self.denoiser, self.limit = denoiser, float(limit)

    @property
    def interpolation(self) -> Interpolation:
        return interpolation_of(self.denoiser)

    def with_variance(self, x: Tensor, sigma: Tensor, cond: Any = None) -> tuple[Tensor, Tensor | None]:
        x0, v = _with_variance(self.denoiser, x, sigma, cond)
        return x0.clamp(-self.limit, self.limit), v

    def __call__(self, x: Tensor, sigma: Tensor, cond: Any = None) -> Tensor:
        return self.with_variance(x, sigma, cond)[0]


class LastStepDenoiser:
    """``last`` at noise levels ``sigma <= sigma_last`` (the schedule's last non-zero level), ``first`` above:
    Karlo runs ``super_res_first`` for every step but the last, which ``super_res_last`` takes."""

    def __init__(self, first: Any, last: Any, sigma_last: float) -> None:
        self.first, self.last, self.sigma_last = first, last, float(sigma_last)

    @property
    def interpolation(self) -> Interpolation:
        return interpolation_of(self.first)

    def _pick(self, sigma: Tensor | float) -> Any:
        s = torch.as_tensor(sigma).reshape(-1)
        # a relative margin: sigmas pass through float32 on their way here
        return self.last if float(s.max()) <= self.sigma_last * (1 + 1e-5) else self.first

    def with_variance(self, x: Tensor, sigma: Tensor, cond: Any = None) -> tuple[Tensor, Tensor | None]:
        return _with_variance(self._pick(sigma), x, sigma, cond)

    def __call__(self, x: Tensor, sigma: Tensor, cond: Any = None) -> Tensor:
        return self._pick(sigma)(x, sigma, cond)


def spaced_timesteps(steps: int, num_timesteps: int = 1000) -> list[int]:
    """Karlo's (and diffusers' ``UnCLIPScheduler``'s) timesteps: ``round(i * (N - 1) / (steps - 1))`` for
    i = steps-1 .. 0, so the first step is always the last training step and the last one step 0."""
    if not 2 <= steps <= num_timesteps:
        raise ValueError(f"unCLIP stages take between 2 and {num_timesteps} steps, got {steps}")
    ratio = (num_timesteps - 1) / (steps - 1)
    # numpy's round half to even, as the release computes it
    return [int(round(i * ratio)) for i in reversed(range(steps))]


def spaced_sigmas(model_sampling: DiscreteModelSampling, steps: int) -> Tensor:
    """The noise levels of :func:`spaced_timesteps` (float64, descending) with the closing 0."""
    ts = spaced_timesteps(steps, model_sampling.num_timesteps)
    return torch.cat([model_sampling.sigmas[ts], torch.zeros(1, dtype=torch.float64)])


def sample_ddpm_learned_range(
    denoiser: Any,
    x: Tensor,
    sigmas: Tensor,
    *,
    cond: object = None,
    noise: NoiseFn | None = None,
    callback: StepCallback | None = None,
) -> Tensor:
    """DDPM ancestral sampling whose variance the network chooses (Nichol & Dhariwal 2021, eq. 15).

    Each step draws from ``N(mu, var)`` where ``mu`` is the forward-process posterior mean given ``x0 = D(x)``
    (as ``sample_ddpm``) and ``var`` interpolates, per element, between the posterior variance and the step's
    beta in log space by the denoiser's ``v`` (:class:`VarianceDenoiser`; a plain denoiser gives the posterior
    variance). The last step (to sigma 0) returns x0. VE space: ``x = x_vp / sqrt(alpha_bar)``.
    """
    if noise is None:
        raise ValueError("sample_ddpm_learned_range is stochastic: pass noise=gaussian_noise(x, generator)")
    levels = [float(s) for s in torch.as_tensor(sigmas).detach().to(torch.float64).cpu()]
    if len(levels) < 2 or any(b >= a for a, b in zip(levels[:-1], levels[1:])) or levels[-1] < 0:
        raise ValueError(f"sigmas must be a decreasing 1-D tensor of >= 2 levels ending >= 0, got {levels}")
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    out_dtype, x = x.dtype, x.to(dtype)
    total = len(levels) - 1
    for i in range(total):
        sigma, sigma_next = levels[i], levels[i + 1]
        sigma_vec = torch.full((x.shape[0],), sigma, dtype=dtype, device=x.device)
        denoised, v = _with_variance(denoiser, x, sigma_vec, cond)
        denoised = denoised.to(dtype)
        if sigma_next == 0:
            x = denoised
        else:
            # VP quantities of the two levels (Ho et al. 2020, eq. 7, with the respaced beta)
            abar_t, abar_s = 1 / (1 + sigma**2), 1 / (1 + sigma_next**2)
            beta = 1 - abar_t / abar_s
            log_posterior = math.log((1 - abar_s) / (1 - abar_t) * beta)
            if v is None:
                log_var: Tensor | float = log_posterior
            else:
                frac = (v.to(dtype) + 1) / 2
                log_var = frac * math.log(beta) + (1 - frac) * log_posterior
            std_ve = torch.exp(0.5 * torch.as_tensor(log_var, dtype=dtype)) * math.sqrt(1 + sigma_next**2)
            mean = torch.lerp(denoised, x, sigma_next**2 / sigma**2)  # posterior mean in VE space
            x = mean + std_ve * noise(sigma, sigma_next).to(dtype)
        if callback is not None:
            try:
                stop = callback(StepInfo(i, total, x, sigma, sigma_next, denoised)) is False
            except SamplingCancelled:
                stop = True
            if stop:
                break
    return x.to(out_dtype)


__all__ = [
    "ClampedDenoiser",
    "GuidedVarianceDenoiser",
    "LastStepDenoiser",
    "LearnedRangeEpsDenoiser",
    "VarianceDenoiser",
    "sample_ddpm_learned_range",
    "spaced_sigmas",
    "spaced_timesteps",
]
