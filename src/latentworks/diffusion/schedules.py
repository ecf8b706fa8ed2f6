"""Noise schedules: functions ``(model_sampling, steps) -> sigmas``.

A schedule is a descending float32 tensor of ``steps + 1`` noise levels ending in exactly 0; a sampler
takes ``steps`` steps from ``sigmas[i]`` to ``sigmas[i + 1]``. ``SCHEDULERS`` registers them under
ComfyUI's names with ComfyUI's semantics (re-derived from the papers; differences are noted per
function). Plain functions such as ``karras_sigmas(n, sigma_min, sigma_max)`` work without a model.

For flow models a resolution shift is a schedule transform: schedules that place points uniformly in
the model's time ("normal", "sgm_uniform") apply ``model_sampling.time_shift``; table-based ones
("simple", "ddim_uniform", "beta") read the already-shifted table ``model_sampling.sigmas``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from latentworks.diffusion.denoisers import ModelSampling

Schedule = Callable[[Any, int], Tensor]


def _finish(sigmas: Tensor | list[float], append_zero: bool = True) -> Tensor:
    """float64 values -> float32 schedule with an exact trailing 0."""
    s = torch.as_tensor(sigmas, dtype=torch.float64).reshape(-1)
    if append_zero:
        s = torch.cat([s, s.new_zeros(1)])
    out = s.to(torch.float32)
    out[-1] = 0.0
    return out


def _check_steps(steps: int) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")


def _time_shift(model_sampling: Any, sigma: Tensor) -> Tensor:
    shift = getattr(model_sampling, "time_shift", None)
    return sigma if shift is None else shift(sigma)


def _table(model_sampling: Any) -> Tensor:
    table = getattr(model_sampling, "sigmas", None)
    if table is None:
        raise ValueError(
            f"{type(model_sampling).__name__} has no 'sigmas' table of training noise levels, which this "
            "scheduler needs; use normal, karras, exponential, sgm_uniform, linear_quadratic or kl_optimal"
        )
    return torch.as_tensor(table, dtype=torch.float64).cpu()


# --------------------------------------------------------------------------------------------------
# Plain schedules (no model needed)
# --------------------------------------------------------------------------------------------------


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Tensor:
    """Karras et al. 2022, eq. 5: ``(smax^(1/rho) + i/(n-1) (smin^(1/rho) - smax^(1/rho)))^rho``, + 0."""
    _check_steps(n)
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return _finish((hi + ramp * (lo - hi)) ** rho)


def exponential_sigmas(n: int, sigma_min: float, sigma_max: float) -> Tensor:
    """``n`` levels evenly spaced in log-sigma from ``sigma_max`` down to ``sigma_min``, + 0."""
    _check_steps(n)
    return _finish(torch.linspace(math.log(sigma_max), math.log(sigma_min), n, dtype=torch.float64).exp())


def kl_optimal_sigmas(n: int, sigma_min: float, sigma_max: float) -> Tensor:
    """Sabour et al. 2024 ("Align Your Steps"), eq. 11: even spacing in ``atan(sigma)``, + 0."""
    _check_steps(n)
    if n == 1:
        return _finish([sigma_max])
    u = torch.arange(n, dtype=torch.float64) / (n - 1)
    return _finish(torch.tan((1 - u) * math.atan(sigma_max) + u * math.atan(sigma_min)))


def linear_quadratic_sigmas(
    n: int, sigma_max: float = 1.0, threshold_noise: float = 0.025, linear_steps: int | None = None
) -> Tensor:
    """Mochi's linear-then-quadratic schedule (Genmo 2024), scaled by ``sigma_max``.

    The first ``linear_steps`` (default n // 2) steps lower the noise linearly by ``threshold_noise`` in
    total; the rest follow a quadratic reaching 0, continuous in value and slope at the join.
    """
    _check_steps(n)
    if n == 1:
        return _finish([sigma_max])
    k = n // 2 if linear_steps is None else linear_steps
    if not 0 < k < n:
        raise ValueError(f"linear_steps must be in [1, {n - 1}] for {n} steps, got {k}")
    q = n - k  # quadratic steps
    step_diff = k - threshold_noise * n
    quad = step_diff / (k * q**2)
    lin = threshold_noise / k - 2 * step_diff / q**2
    const = quad * k**2
    done = [i * threshold_noise / k for i in range(k)]
    done += [quad * i**2 + lin * i + const for i in range(k, n)]
    return _finish([(1.0 - d) * sigma_max for d in done])


def _betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b) by its continued fraction (modified Lentz)."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    if x > (a + 1) / (a + b + 2):
        return 1.0 - _betainc(b, a, 1.0 - x)
    log_front = (
        a * math.log(x)
        + b * math.log1p(-x)
        - math.log(a)
        - (math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b))
    )
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        for num in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return math.exp(log_front) * h


def beta_ppf(q: float, a: float, b: float) -> float:
    """Quantile function of the Beta(a, b) distribution (bisection on ``_betainc``; |error| < 1e-14)."""
    if q <= 0:
        return 0.0
    if q >= 1:
        return 1.0
    lo, hi = 0.0, 1.0
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if _betainc(a, b, mid) < q:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-15:
            break
    return 0.5 * (lo + hi)


# --------------------------------------------------------------------------------------------------
# Registered schedules (model_sampling, steps) -> sigmas
# --------------------------------------------------------------------------------------------------


def normal_schedule(model_sampling: ModelSampling, steps: int) -> Tensor:
    """``steps`` points uniform in the model's timestep from timestep(sigma_max) to timestep(sigma_min),
    mapped back to sigma (and through the flow time shift), + 0.

    For a discrete model this is diffusers' ``timestep_spacing="linspace"`` (diffusers interpolates
    sigma linearly between integer steps, we log-linearly, so they agree exactly at integer steps); for
    a flow model with a static shift it is ``FlowMatchEulerDiscreteScheduler.set_timesteps(steps)``.
    """
    _check_steps(steps)
    ms = model_sampling
    start = ms.timestep(torch.tensor(ms.sigma_max, dtype=torch.float64))
    end = ms.timestep(torch.tensor(ms.sigma_min, dtype=torch.float64))
    t = torch.linspace(float(start), float(end), steps, dtype=torch.float64)
    return _finish(_time_shift(ms, ms.sigma(t).to(torch.float64)))


def sgm_uniform_schedule(model_sampling: ModelSampling, steps: int) -> Tensor:
    """Like ``normal`` but with ``steps + 1`` uniform timesteps of which the last (sigma_min) is replaced
    by 0 (the "trailing"-like spacing of Stability's sgm code base)."""
    _check_steps(steps)
    ms = model_sampling
    start = ms.timestep(torch.tensor(ms.sigma_max, dtype=torch.float64))
    end = ms.timestep(torch.tensor(ms.sigma_min, dtype=torch.float64))
    t = torch.linspace(float(start), float(end), steps + 1, dtype=torch.float64)[:-1]
    return _finish(_time_shift(ms, ms.sigma(t).to(torch.float64)))


def simple_schedule(model_sampling: ModelSampling, steps: int) -> Tensor:
    """Every (N / steps)-th entry of the training table, from the noisiest down, + 0.

    With a flow table this is FLUX's ``linspace(1, 1/steps, steps)`` (through the time shift) whenever
    ``steps`` divides N."""
    _check_steps(steps)
    table = _table(model_sampling)
    stride = table.numel() / steps
    return _finish([float(table[-(1 + int(i * stride))]) for i in range(steps)])


def ddim_uniform_schedule(model_sampling: ModelSampling, steps: int) -> Tensor:
    """DDIM's "leading" spacing with offset 1: table entries ``1 + i * (N // steps)``, i < steps,
    descending, + 0 (diffusers' ``DDIMScheduler(timestep_spacing="leading", steps_offset=1)``).

    ComfyUI keeps stepping while the index is below N, which adds one extra step when N // steps does
    not divide N - 1 (e.g. 7 steps -> 8); we return exactly ``steps`` steps, as diffusers does."""
    _check_steps(steps)
    table = _table(model_sampling)
    n = table.numel()
    if steps > n - 1:
        raise ValueError(f"ddim_uniform supports at most {n - 1} steps for this model, got {steps}")
    idx = 1 + torch.arange(steps) * max(n // steps, 1)
    return _finish(table[idx].flip(0))


def beta_schedule(model_sampling: ModelSampling, steps: int, alpha: float = 0.6, beta: float = 0.6) -> Tensor:
    """Lee et al. 2024 ("Beta Sampling is All You Need"): table indices at the Beta(alpha, beta)
    quantiles of ``1 - i/steps``, rounded, descending, + 0.

    As in ComfyUI, a repeated index (possible only for very many steps) is dropped, so the result may
    then be shorter than ``steps + 1``."""
    _check_steps(steps)
    table = _table(model_sampling)
    last = table.numel() - 1
    picked: list[float] = []
    prev = -1
    for i in range(steps):
        t = int(round(beta_ppf(1.0 - i / steps, alpha, beta) * last))
        if t != prev:
            picked.append(float(table[t]))
            prev = t
    return _finish(picked)


def linear_quadratic_schedule(model_sampling: ModelSampling, steps: int) -> Tensor:
    """``linear_quadratic_sigmas(steps, sigma_max)`` (Mochi's schedule, designed for flow models)."""
    return linear_quadratic_sigmas(steps, sigma_max=float(model_sampling.sigma_max))


def karras_schedule(model_sampling: ModelSampling, steps: int) -> Tensor:
    """``karras_sigmas`` between the model's sigma_min and sigma_max (rho = 7); equals diffusers'
    ``EulerDiscreteScheduler(use_karras_sigmas=True)``."""
    return karras_sigmas(steps, float(model_sampling.sigma_min), float(model_sampling.sigma_max))


def exponential_schedule(model_sampling: ModelSampling, steps: int) -> Tensor:
    """``exponential_sigmas`` between the model's sigma_min and sigma_max."""
    return exponential_sigmas(steps, float(model_sampling.sigma_min), float(model_sampling.sigma_max))


def kl_optimal_schedule(model_sampling: ModelSampling, steps: int) -> Tensor:
    """``kl_optimal_sigmas`` between the model's sigma_min and sigma_max."""
    return kl_optimal_sigmas(steps, float(model_sampling.sigma_min), float(model_sampling.sigma_max))


SCHEDULERS: dict[str, Schedule] = {
    "normal": normal_schedule,
    "karras": karras_schedule,
    "exponential": exponential_schedule,
    "sgm_uniform": sgm_uniform_schedule,
    "simple": simple_schedule,
    "ddim_uniform": ddim_uniform_schedule,
    "beta": beta_schedule,
    "linear_quadratic": linear_quadratic_schedule,
    "kl_optimal": kl_optimal_schedule,
}


def validate_sigmas(sigmas: Tensor) -> Tensor:
    """Check that ``sigmas`` is a usable schedule and return it; raise ValueError saying what is wrong.

    A schedule is a non-empty 1-D tensor of finite, non-increasing noise levels ending in 0.
    """
    if not isinstance(sigmas, Tensor):
        raise ValueError(f"sigmas must be a torch.Tensor, got {type(sigmas).__name__}")
    if sigmas.ndim != 1:
        raise ValueError(f"sigmas must be 1-D, got shape {tuple(sigmas.shape)}")
    if sigmas.numel() == 0:
        raise ValueError("sigmas is empty; a schedule needs at least its final 0")
    if not bool(torch.isfinite(sigmas).all()):
        bad = torch.nonzero(~torch.isfinite(sigmas)).flatten().tolist()
        raise ValueError(f"sigmas has non-finite values at positions {bad}")
    if bool((sigmas < 0).any()):
        raise ValueError(
            f"sigmas has negative values at positions {torch.nonzero(sigmas < 0).flatten().tolist()}"
        )
    rises = torch.nonzero(sigmas[1:] > sigmas[:-1]).flatten()
    if rises.numel():
        i = int(rises[0])
        raise ValueError(
            f"sigmas must be non-increasing, but sigmas[{i + 1}] = {float(sigmas[i + 1]):.6g} > "
            f"sigmas[{i}] = {float(sigmas[i]):.6g}"
        )
    if float(sigmas[-1]) != 0.0:
        raise ValueError(f"sigmas must end in 0 (append one with torch.cat), last is {float(sigmas[-1]):.6g}")
    return sigmas


def stretch_to_terminal(sigmas: Tensor, terminal: float) -> Tensor:
    """Stretch a flow schedule (descending, ending in 0) so that its last non-zero sigma is ``terminal``:
    ``1 - sigma`` is scaled by ``(1 - terminal) / (1 - sigma_last)``, so sigma 1 stays 1 (diffusers'
    ``FlowMatchEulerDiscreteScheduler.stretch_shift_to_terminal``, used by Qwen-Image's scheduler config)."""
    if not 0 < terminal < 1:
        raise ValueError(f"terminal sigma must be in (0, 1), got {terminal}")
    body, tail = sigmas[:-1], sigmas[-1:]
    if body.numel() == 0 or float(tail.abs().max()) != 0.0:
        raise ValueError("stretch_to_terminal expects a schedule with at least one step, ending in 0")
    one_minus = 1.0 - body.to(torch.float64)
    stretched = 1.0 - one_minus * ((1.0 - terminal) / one_minus[-1])
    return torch.cat([stretched.to(sigmas.dtype), tail])


def get_sigmas(model_sampling: ModelSampling, scheduler: str, steps: int, denoise: float = 1.0) -> Tensor:
    """The ``scheduler`` schedule of ``steps`` steps for ``model_sampling``.

    ``denoise < 1`` (img2img strength) builds the schedule for ``int(steps / denoise)`` steps and keeps
    its last ``steps + 1`` levels, so sampling starts from a partially noised input (see
    ``guidance.noised_start``).
    """
    try:
        fn = SCHEDULERS[scheduler]
    except KeyError:
        raise ValueError(f"unknown scheduler {scheduler!r}; choose one of: {', '.join(SCHEDULERS)}") from None
    _check_steps(steps)
    if not 0.0 < denoise <= 1.0:
        raise ValueError(f"denoise must be in (0, 1] (1 = full generation), got {denoise}")
    if denoise < 1.0:
        sigmas = fn(model_sampling, int(steps / denoise))[-(steps + 1) :]
    else:
        sigmas = fn(model_sampling, steps)
    return validate_sigmas(sigmas)
