"""Samplers: pure functions that integrate a denoiser from noise to data.

Every sampler has one signature::

    sample_<name>(denoiser, x, sigmas, *, cond=None, noise=None, callback=None, **opts) -> Tensor

* ``denoiser`` follows the contract ``D(x, sigma_vec, cond) -> x0_hat`` with ``sigma_vec`` (B,)
  (see ``latentworks.diffusion.denoisers``). Its interpolation (VE or FLOW) is read with
  ``interpolation_of(denoiser)``.
* ``x`` (B, ...) is the starting sample at noise level ``sigmas[0]``; ``sigmas`` is a descending
  1-D tensor (a schedule, usually ending in 0).
* ``noise`` is a callable ``(sigma, sigma_next) -> Tensor shaped like x`` returning *unit* Gaussian
  noise for the step ``sigma -> sigma_next``; randomness is always passed in (``gaussian_noise``
  builds one from a generator or one generator per sample). Stochastic samplers raise
  ``ValueError`` without it.
* ``callback`` receives a ``StepInfo`` after every step; returning ``False`` or raising
  ``SamplingCancelled`` stops sampling cleanly and the current ``x`` is returned.
* Arithmetic runs in float32 whatever the model dtype (float64 when ``x`` is float64); the
  denoiser receives ``x`` in that working dtype (a model wrapper casts to its weights' dtype) and
  the result comes back in ``x``'s dtype. Per-step scalars are computed in Python float64.

Both interpolations share the probability-flow ODE ``dx/dsigma = (x - D(x, sigma)) / sigma``, so
deterministic samplers need no case split. With ``x = alpha x0 + sigma n`` (VE: ``alpha = 1``,
FLOW: ``alpha = 1 - sigma``) the exponential-integrator (DDIM / DPM-Solver++) first-order step is
``x' = (sigma'/sigma) x + (alpha' - (sigma'/sigma) alpha) D``; for both interpolations the
coefficient of D is ``1 - sigma'/sigma`` (alpha is affine in sigma), so the DDIM step *is* the Euler
step ``torch.lerp(D, x, sigma'/sigma)``. Half-log-SNR is ``lambda = log(alpha / sigma)``.

Stochastic steps on FLOW (derivation used by ``_ancestral_step``): dividing by alpha maps a flow
sample to VE space, ``x_ve = x / alpha``, ``sigma_ve = sigma / alpha``. There the ancestral split
of Karras et al. / k-diffusion applies: ``sigma_up = min(s_n, eta * s_n * sqrt(1 - (s_n/s)^2))``,
``sigma_down = sqrt(s_n^2 - sigma_up^2)`` (VE sigmas); the deterministic part moves to
``sigma_down`` and fresh noise of std ``sigma_up`` is added. Mapping back to flow space, the
deterministic part is the same ODE step to the flow level ``sd = sd_ve / (1 + sd_ve)``, and
``x_next = (alpha_n / alpha_d) x_d + alpha_n * sigma_up_ve * n``. The marginal check: if
``x_d = alpha_d x0 + sd n1`` then ``x_next = alpha_n (x0 + sd_ve n1 + su_ve n)`` has noise std
``alpha_n sqrt(sd_ve^2 + su_ve^2) = alpha_n s_n,ve = sigma_next``. At the first flow step
(``sigma = 1``, ``sigma_ve = inf``) the ratio ``s_n/s`` is written as
``sigma_n (1 - sigma) / (sigma (1 - sigma_n))`` which is 0 there: no division by zero. The
lambda-based SDE solvers use the general (alpha, sigma) form of Lu et al. (DPM-Solver++, 2022),
which is exactly the VE formula conjugated by alpha; at ``sigma = 1`` (lambda = -inf) they take
the exact h -> inf limit, and multistep history from that level drops out (its weight -> 0).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from latentworks.diffusion.denoisers import Denoiser, Interpolation, interpolation_of

NoiseFn = Callable[[float, float], Tensor]
"""``noise(sigma, sigma_next) -> unit Gaussian noise shaped like x`` for one step."""


@dataclass(frozen=True)
class StepInfo:
    """What a callback sees after step ``i`` (0-based) of ``total``.

    ``x`` is the sample after the step (at ``sigma_next``), ``denoised`` the denoiser's prediction
    made during the step (at ``sigma``), both in the sampler's working dtype.
    """

    i: int
    total: int
    x: Tensor
    sigma: float
    sigma_next: float
    denoised: Tensor


class SamplingCancelled(Exception):
    """Raise from a callback to stop sampling; the sampler returns the current sample."""


StepCallback = Callable[[StepInfo], Any]


SamplerFn = Callable[..., Tensor]
"""``(denoiser, x, sigmas, *, cond=None, noise=None, callback=None, **opts) -> Tensor``; each sampler
declares its own keyword options, so an unknown option raises TypeError."""


def gaussian_noise(
    x: Tensor, generator: torch.Generator | Sequence[torch.Generator] | None = None
) -> NoiseFn:
    """A noise callable drawing unit Gaussian noise shaped like ``x``.

    ``generator`` may be one ``torch.Generator`` for the whole batch or a sequence of B generators,
    one per sample, so that sample b of a batch equals a single run seeded like generator b.
    """
    shape, device = tuple(x.shape), x.device
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    if generator is None or isinstance(generator, torch.Generator):

        def draw(sigma: float, sigma_next: float) -> Tensor:
            return torch.randn(shape, generator=generator, device=device, dtype=dtype)

        return draw
    generators = list(generator)
    if len(generators) != shape[0]:
        raise ValueError(f"got {len(generators)} generators for a batch of {shape[0]}; pass one per sample")

    def draw_per_sample(sigma: float, sigma_next: float) -> Tensor:
        return torch.stack(
            [torch.randn(shape[1:], generator=g, device=device, dtype=dtype) for g in generators]
        )

    return draw_per_sample


# --------------------------------------------------------------------------------------------------
# The sampling loop's shared plumbing
# --------------------------------------------------------------------------------------------------


class _Run:
    """Validation, dtype handling, denoiser calls and callbacks for one sampling run."""

    def __init__(
        self,
        name: str,
        denoiser: Denoiser,
        x: Tensor,
        sigmas: Tensor,
        cond: object,
        callback: StepCallback | None,
    ) -> None:
        if not isinstance(x, Tensor) or x.ndim < 1 or not x.is_floating_point():
            raise ValueError(f"{name}: x must be a floating-point tensor with a batch dimension (B, ...)")
        sig = torch.as_tensor(sigmas).detach()
        if sig.ndim != 1 or sig.numel() < 2:
            raise ValueError(
                f"{name}: sigmas must be a 1-D tensor with at least 2 entries (start and end noise level), "
                f"got shape {tuple(sig.shape)}"
            )
        values = [float(v) for v in sig.to(torch.float64).cpu()]
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"{name}: sigmas must be finite, got {values}")
        if min(values) < 0:
            raise ValueError(f"{name}: sigmas must be non-negative, got {values}")
        if any(b >= a for a, b in zip(values[:-1], values[1:])):
            raise ValueError(f"{name}: sigmas must be strictly decreasing, got {values}")
        self.interp: Interpolation = interpolation_of(denoiser)
        if self.interp.is_flow and values[0] > 1:
            raise ValueError(f"{name}: flow models need sigmas in [0, 1], got sigmas[0] = {values[0]}")
        self.name = name
        self.denoiser = denoiser
        self.cond = cond
        self.callback = callback
        self.out_dtype = x.dtype
        self.dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        self.x = x.to(self.dtype)
        self.sigmas = values
        self.total = len(values) - 1
        self.batch = x.shape[0]

    def denoise(self, x: Tensor, sigma: float) -> Tensor:
        sigma_vec = torch.full((self.batch,), sigma, dtype=self.dtype, device=x.device)  # (B,)
        out = self.denoiser(x, sigma_vec, self.cond)
        return out if out.dtype == self.dtype else out.to(self.dtype)

    def stop(self, i: int, x: Tensor, sigma: float, sigma_next: float, denoised: Tensor) -> bool:
        """Report step ``i``; True when the callback asked to stop."""
        if self.callback is None:
            return False
        try:
            return self.callback(StepInfo(i, self.total, x, sigma, sigma_next, denoised)) is False
        except SamplingCancelled:
            return True

    def finish(self, x: Tensor) -> Tensor:
        return x if x.dtype == self.out_dtype else x.to(self.out_dtype)

    # ---- interpolation scalars (Python float64) ----------------------------------------------------

    def alpha(self, sigma: float) -> float:
        return 1.0 - sigma if self.interp.is_flow else 1.0

    def lam(self, sigma: float) -> float:
        """Half-log-SNR ``log(alpha / sigma)``: +inf at sigma = 0, -inf at the flow level sigma = 1."""
        a = self.alpha(sigma)
        if sigma == 0:
            return math.inf
        if a <= 0:
            return -math.inf
        return math.log(a / sigma)

    def sigma_of_lam(self, lam: float) -> float:
        sigma_ve = math.exp(-lam)
        return sigma_ve / (1.0 + sigma_ve) if self.interp.is_flow else sigma_ve


def _need_noise(name: str, noise: NoiseFn | None, why: str = "") -> NoiseFn:
    if noise is None:
        raise ValueError(
            f"{name} is stochastic{why} and needs noise: pass noise=gaussian_noise(x, generator) "
            "(or any callable (sigma, sigma_next) -> unit Gaussian noise shaped like x)"
        )
    return noise


def _ancestral_step(run: _Run, sigma: float, sigma_next: float, eta: float) -> tuple[float, float, float]:
    """Split ``sigma -> sigma_next`` into a deterministic move to ``sigma_down`` plus fresh noise.

    Returns ``(sigma_down, sigma_up, scale)`` with ``x_next = scale * x_down + sigma_up * n`` in the
    run's own space; the split is made in VE space (see the module docstring for FLOW).
    """
    if sigma_next == 0 or eta == 0:
        return sigma_next, 0.0, 1.0
    if not run.interp.is_flow:
        sigma_up = min(sigma_next, eta * math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2))
        return math.sqrt(max(sigma_next**2 - sigma_up**2, 0.0)), sigma_up, 1.0
    alpha_next = 1.0 - sigma_next
    next_ve = sigma_next / alpha_next
    ratio = sigma_next * (1.0 - sigma) / (sigma * alpha_next)  # next_ve / sigma_ve, 0 at sigma = 1
    up_ve = min(next_ve, eta * next_ve * math.sqrt(max(1.0 - ratio**2, 0.0)))
    down_ve = math.sqrt(max(next_ve**2 - up_ve**2, 0.0))
    sigma_down = down_ve / (1.0 + down_ve)
    return sigma_down, alpha_next * up_ve, alpha_next / (1.0 - sigma_down)


def _churn(
    run: _Run,
    x: Tensor,
    i: int,
    sigma: float,
    s_churn: float,
    s_tmin: float,
    s_tmax: float,
    s_noise: float,
    noise: NoiseFn | None,
    name: str,
) -> tuple[Tensor, float]:
    """Karras et al. 2022, Algorithm 2, lines 4-6: raise the noise level to sigma_hat = sigma (1 + gamma).

    gamma is applied to the VE sigma (for FLOW: sigma_ve = sigma / (1 - sigma)), and the forward
    noising transition ``x_hat = (a_hat / a) x + sqrt(sigma_hat^2 - (a_hat sigma / a)^2) n`` keeps the
    marginal exact for both interpolations. Skipped at the flow level sigma = 1 (already pure noise).
    """
    if s_churn <= 0 or not (s_tmin <= sigma <= s_tmax) or run.alpha(sigma) <= 0:
        return x, sigma
    gamma = min(s_churn / run.total, math.sqrt(2.0) - 1.0)
    a = run.alpha(sigma)
    hat_ve = sigma / a * (1.0 + gamma)
    sigma_hat = hat_ve / (1.0 + hat_ve) if run.interp.is_flow else hat_ve
    a_hat = run.alpha(sigma_hat)
    k = a_hat / a
    std = math.sqrt(max(sigma_hat**2 - (k * sigma) ** 2, 0.0)) * s_noise
    n = _need_noise(name, noise, " with s_churn > 0")(sigma, run.sigmas[i + 1])
    return (x * k if k != 1.0 else x) + std * n, sigma_hat


def _quadrature_weights(
    nodes: Sequence[float],
    a: float,
    b: float,
    kernel: Callable[[np.ndarray], np.ndarray] | None = None,
) -> list[float]:
    """Weights w_j = integral_a^b L_j(t) kernel(t) dt of the Lagrange basis through ``nodes``.

    Gauss-Legendre with 8 points: exact for the polynomial part (degree <= 3 here) and accurate to
    ~1e-16 for the smooth ``exp`` kernel used by DEIS.
    """
    nodes_np = np.asarray(nodes, dtype=np.float64)
    k = len(nodes_np)
    weights = []
    gx, gw = np.polynomial.legendre.leggauss(8)
    t = 0.5 * (b - a) * gx + 0.5 * (b + a)
    gw = gw * 0.5 * (b - a) * (kernel(t) if kernel is not None else 1.0)
    for j in range(k):
        basis = np.ones_like(t)
        for m in range(k):
            if m != j:
                basis *= (t - nodes_np[m]) / (nodes_np[j] - nodes_np[m])
        weights.append(float((gw * basis).sum()))
    return weights


# --------------------------------------------------------------------------------------------------
# First- and second-order ODE samplers (Karras et al. 2022)
# --------------------------------------------------------------------------------------------------


def sample_euler(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    cond: object = None,
    noise: NoiseFn | None = None,
    callback: StepCallback | None = None,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = math.inf,
    s_noise: float = 1.0,
) -> Tensor:
    """Euler on the probability-flow ODE, with optional churn: Karras et al. 2022, Algorithm 2 with
    Euler steps only. ``x' = x + (sigma' - sigma_hat) (x - D) / sigma_hat``. Stochastic iff
    ``s_churn > 0``. On FLOW this is the flow-matching Euler step."""
    run = _Run("euler", denoiser, x, sigmas, cond, callback)
    x = run.x
    for i in range(run.total):
        sigma, sigma_next = run.sigmas[i], run.sigmas[i + 1]
        x, sigma_hat = _churn(run, x, i, sigma, s_churn, s_tmin, s_tmax, s_noise, noise, "euler")
        denoised = run.denoise(x, sigma_hat)
        x = torch.lerp(denoised, x, sigma_next / sigma_hat)
        if run.stop(i, x, sigma, sigma_next, denoised):
            break
    return run.finish(x)


def sample_ddim(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    cond: object = None,
    noise: NoiseFn | None = None,
    callback: StepCallback | None = None,
) -> Tensor:
    """Deterministic DDIM (Song et al. 2021, eq. 12 with eta = 0) in data-prediction form:
    ``x' = alpha' D + sigma' (x - alpha D) / sigma``. In VE space (and for FLOW) this is exactly the
    Euler step, written here from the DDIM formula."""
    run = _Run("ddim", denoiser, x, sigmas, cond, callback)
    x = run.x
    for i in range(run.total):
        sigma, sigma_next = run.sigmas[i], run.sigmas[i + 1]
        denoised = run.denoise(x, sigma)
        a, a_next = run.alpha(sigma), run.alpha(sigma_next)
        eps_scale = sigma_next / sigma  # sigma' * eps_hat, eps_hat = (x - a D) / sigma
        x = eps_scale * x + (a_next - eps_scale * a) * denoised
        if run.stop(i, x, sigma, sigma_next, denoised):
            break
    return run.finish(x)


def sample_heun(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    cond: object = None,
    noise: NoiseFn | None = None,
    callback: StepCallback | None = None,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = math.inf,
    s_noise: float = 1.0,
) -> Tensor:
    """Heun's second-order method: Karras et al. 2022, Algorithm 2 (Algorithm 1 when s_churn = 0).
    The step to sigma = 0 is an Euler step (the slope at 0 is undefined)."""
    run = _Run("heun", denoiser, x, sigmas, cond, callback)
    x = run.x
    for i in range(run.total):
        sigma, sigma_next = run.sigmas[i], run.sigmas[i + 1]
        x, sigma_hat = _churn(run, x, i, sigma, s_churn, s_tmin, s_tmax, s_noise, noise, "heun")
        denoised = run.denoise(x, sigma_hat)
        x_euler = torch.lerp(denoised, x, sigma_next / sigma_hat)
        if sigma_next == 0:
            x = x_euler
        else:
            denoised_2 = run.denoise(x_euler, sigma_next)
            dt = sigma_next - sigma_hat
            # x + dt/2 * (d + d_2), d = (x - D) / sigma_hat, d_2 = (x_euler - D_2) / sigma_next
            x = x + (0.5 * dt / sigma_hat) * (x - denoised) + (0.5 * dt / sigma_next) * (x_euler - denoised_2)
        if run.stop(i, x, sigma, sigma_next, denoised):
            break
    return run.finish(x)


def sample_heunpp2(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    cond: object = None,
    noise: NoiseFn | None = None,
    callback: StepCallback | None = None,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = math.inf,
    s_noise: float = 1.0,
) -> Tensor:
    """Heun++ (ComfyUI's ``heunpp2``): Heun with a third, look-ahead slope.

    Slopes are taken at sigma_i (x), sigma_{i+1} (Euler predictor) and sigma_{i+2} (a second
    Euler predictor), and the step integrates the quadratic through the three slopes over
    [sigma_i, sigma_{i+1}] exactly. Second order. (The original sd-webui implementation weights the
    slopes by sigma_{i+1} / (k sigma_0), which is only first-order consistent; we keep the idea and
    the 3 evaluations per step but use the consistent quadrature weights.) Penultimate step: Heun;
    last step: Euler.
    """
    run = _Run("heunpp2", denoiser, x, sigmas, cond, callback)
    x = run.x
    for i in range(run.total):
        sigma, sigma_next = run.sigmas[i], run.sigmas[i + 1]
        x, sigma_hat = _churn(run, x, i, sigma, s_churn, s_tmin, s_tmax, s_noise, noise, "heunpp2")
        denoised = run.denoise(x, sigma_hat)
        d = (x - denoised) / sigma_hat
        dt = sigma_next - sigma_hat
        x_2 = x + dt * d
        if i == run.total - 1 or sigma_next == 0:
            x = x_2
        else:
            d_2 = (x_2 - run.denoise(x_2, sigma_next)) / sigma_next
            sigma_after = run.sigmas[i + 2]
            if i == run.total - 2 or sigma_after == 0:
                x = x + (0.5 * dt) * (d + d_2)
            else:
                x_3 = x_2 + (sigma_after - sigma_next) * d_2
                d_3 = (x_3 - run.denoise(x_3, sigma_after)) / sigma_after
                w = _quadrature_weights([sigma_hat, sigma_next, sigma_after], sigma_hat, sigma_next)
                x = x + w[0] * d + w[1] * d_2 + w[2] * d_3
        if run.stop(i, x, sigma, sigma_next, denoised):
            break
    return run.finish(x)


def _dpm2_step(run: _Run, x: Tensor, denoised: Tensor, sigma: float, sigma_to: float) -> Tensor:
    """DPM-Solver-2 as in k-diffusion: midpoint in log sigma (Lu et al. 2022, Algorithm 1 with r=1/2,
    applied to the sigma-ODE). Euler when going to 0."""
    if sigma_to == 0:
        return denoised.clone()
    sigma_mid = math.exp(0.5 * (math.log(sigma) + math.log(sigma_to)))
    x_2 = torch.lerp(denoised, x, sigma_mid / sigma)
    denoised_2 = run.denoise(x_2, sigma_mid)
    return x + ((sigma_to - sigma) / sigma_mid) * (x_2 - denoised_2)


def sample_dpm_2(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    cond: object = None,
    noise: NoiseFn | None = None,
    callback: StepCallback | None = None,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = math.inf,
    s_noise: float = 1.0,
) -> Tensor:
    """DPM-Solver-2 (Lu et al. 2022, "DPM-Solver", Algorithm 1, r = 1/2) in Karras' sigma form:
    a midpoint step at the geometric mean of sigma and sigma'. Second order. Optional churn."""
    run = _Run("dpm_2", denoiser, x, sigmas, cond, callback)
    x = run.x
    for i in range(run.total):
        sigma, sigma_next = run.sigmas[i], run.sigmas[i + 1]
        x, sigma_hat = _churn(run, x, i, sigma, s_churn, s_tmin, s_tmax, s_noise, noise, "dpm_2")
        denoised = run.denoise(x, sigma_hat)
        x = _dpm2_step(run, x, denoised, sigma_hat, sigma_next)
        if run.stop(i, x, sigma, sigma_next, denoised):
            break
    return run.finish(x)


def sample_dpm_2_ancestral(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    cond: object = None,
    noise: NoiseFn | None = None,
    callback: StepCallback | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
) -> Tensor:
    """Ancestral DPM-Solver-2: a DPM-2 step to sigma_down, then fresh noise of std sigma_up
    (ancestral split as in k-diffusion; FLOW via the VE-space split, see module docstring)."""
    run = _Run("dpm_2_ancestral", denoiser, x, sigmas, cond, callback)
    if eta > 0:
        noise = _need_noise("dpm_2_ancestral", noise)
    x = run.x
    for i in range(run.total):
        sigma, sigma_next = run.sigmas[i], run.sigmas[i + 1]
        denoised = run.denoise(x, sigma)
        sigma_down, sigma_up, scale = _ancestral_step(run, sigma, sigma_next, eta)
        x = _dpm2_step(run, x, denoised, sigma, sigma_down)
        if sigma_up > 0:
            assert noise is not None
            x = scale * x + (sigma_up * s_noise) * noise(sigma, sigma_next)
        if run.stop(i, x, sigma, sigma_next, denoised):
            break
    return run.finish(x)


def sample_euler_ancestral(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    cond: object = None,
    noise: NoiseFn | None = None,
    callback: StepCallback | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
) -> Tensor:
    """Ancestral Euler (Ho et al. 2020 sampling in Karras' sigma form, as k-diffusion): Euler to
    sigma_down, then fresh noise of std sigma_up. With eta = 1 this equals ``ddpm``. FLOW uses the
    VE-space split derived in the module docstring."""
    run = _Run("euler_ancestral", denoiser, x, sigmas, cond, callback)
    if eta > 0:
        noise = _need_noise("euler_ancestral", noise)
    x = run.x
    for i in range(run.total):
        sigma, sigma_next = run.sigmas[i], run.sigmas[i + 1]
        denoised = run.denoise(x, sigma)
        sigma_down, sigma_up, scale = _ancestral_step(run, sigma, sigma_next, eta)
        x = torch.lerp(denoised, x, sigma_down / sigma)
        if sigma_up > 0:
            assert noise is not None
            x = scale * x + (sigma_up * s_noise) * noise(sigma, sigma_next)
        if run.stop(i, x, sigma, sigma_next, denoised):
            break
    return run.finish(x)


def sample_ddpm(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    cond: object = None,
    noise: NoiseFn | None = None,
    callback: StepCallback | None = None,
) -> Tensor:
    """DDPM ancestral sampling (Ho et al. 2020, eq. 6-7): draw x' from the forward-process posterior
    q(x' | x, x0 = D).

    With the forward transition from level sigma' to sigma ``x = k x' + sqrt(v) n``,
    ``k = alpha / alpha'``, ``v = sigma^2 - k^2 sigma'^2``, and the prior ``x' ~ N(alpha' x0, sigma'^2)``,
    the posterior is ``N((v / sigma^2) alpha' x0 + (k sigma'^2 / sigma^2) x, sigma'^2 v / sigma^2)``.
    This is written for both interpolations (at the flow level sigma = 1: k = 0, v = 1, the step
    draws from the prior around D) and equals euler_ancestral with eta = 1.
    """
    run = _Run("ddpm", denoiser, x, sigmas, cond, callback)
    noise = _need_noise("ddpm", noise)
    x = run.x
    for i in range(run.total):
        sigma, sigma_next = run.sigmas[i], run.sigmas[i + 1]
        denoised = run.denoise(x, sigma)
        if sigma_next == 0:
            x = denoised
        else:
            k = run.alpha(sigma) / run.alpha(sigma_next)
            v = sigma**2 - (k * sigma_next) ** 2
            mean_x0 = v / sigma**2 * run.alpha(sigma_next)
            mean_x = k * sigma_next**2 / sigma**2
            std = sigma_next * math.sqrt(max(v, 0.0)) / sigma
            x = mean_x * x + mean_x0 * denoised + std * noise(sigma, sigma_next)
        if run.stop(i, x, sigma, sigma_next, denoised):
            break
    return run.finish(x)


def sample_lcm(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    cond: object = None,
    noise: NoiseFn | None = None,
    callback: StepCallback | None = None,
) -> Tensor:
    """Latent Consistency Model multistep sampling (Luo et al. 2023, Algorithm 1): predict x0, then
    re-noise it to the next level, ``x' = alpha' D + sigma' n``."""
    run = _Run("lcm", denoiser, x, sigmas, cond, callback)
    noise = _need_noise("lcm", noise)
    x = run.x
    for i in range(run.total):
        sigma, sigma_next = run.sigmas[i], run.sigmas[i + 1]
        denoised = run.denoise(x, sigma)
        x = denoised
        if sigma_next > 0:
            a_next = run.alpha(sigma_next)
            x = (a_next * denoised if a_next != 1.0 else denoised) + sigma_next * noise(sigma, sigma_next)
        if run.stop(i, x, sigma, sigma_next, denoised):
            break
    return run.finish(x)


# --------------------------------------------------------------------------------------------------
# Linear multistep samplers in sigma (LMS, iPNDM, DEIS)
# --------------------------------------------------------------------------------------------------


def sample_lms(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    cond: object = None,
    noise: NoiseFn | None = None,
    callback: StepCallback | None = None,
    order: int = 4,
) -> Tensor:
    """Linear multistep (variable-step Adams-Bashforth in sigma) as in k-diffusion / Karras et al.
    2022 (Appendix D.2 baseline): the slope d = (x - D) / sigma is interpolated by the Lagrange
    polynomial through the last ``order`` slopes and integrated exactly over [sigma, sigma']."""
    if order < 1:
        raise ValueError(f"lms: order must be >= 1, got {order}")
    run = _Run("lms", denoiser, x, sigmas, cond, callback)
    x = run.x
    slopes: list[Tensor] = []
    for i in range(run.total):
        sigma, sigma_next = run.sigmas[i], run.sigmas[i + 1]
        denoised = run.denoise(x, sigma)
        slopes.insert(0, (x - denoised) / sigma)
        del slopes[order:]
        nodes = [run.sigmas[i - j] for j in range(len(slopes))]
        weights = _quadrature_weights(nodes, sigma, sigma_next)
        for w, d in zip(weights, slopes):
            x = x + w * d
        if run.stop(i, x, sigma, sigma_next, denoised):
            break
    return run.finish(x)


_IPNDM_COEFFS = (
    (1.0,),
    (3.0 / 2, -1.0 / 2),
    (23.0 / 12, -16.0 / 12, 5.0 / 12),
    (55.0 / 24, -59.0 / 24, 37.0 / 24, -9.0 / 24),
)


def sample_ipndm(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    cond: object = None,
    noise: NoiseFn | None = None,
    callback: StepCallback | None = None,
    order: int = 4,
) -> Tensor:
    """Improved PNDM (Zhang & Chen 2023, DEIS paper, Sec. 4 / eq. 21): fixed-coefficient
    Adams-Bashforth of up to 4th order on the slope d = (x - D) / sigma, with lower-order warm start.

    The fixed coefficients assume equal steps: on a uniform sigma grid the method has order
    ``order``; on strongly non-uniform grids (Karras spacing) it is second order.
    """
    if not 1 <= order <= 4:
        raise ValueError(f"ipndm: order must be 1..4, got {order}")
    run = _Run("ipndm", denoiser, x, sigmas, cond, callback)
    x = run.x
    slopes: list[Tensor] = []
    for i in range(run.total):
        sigma, sigma_next = run.sigmas[i], run.sigmas[i + 1]
        denoised = run.denoise(x, sigma)
        slopes.insert(0, (x - denoised) / sigma)
        del slopes[order:]
        dt = sigma_next - sigma
        for c, d in zip(_IPNDM_COEFFS[len(slopes) - 1], slopes):
            x = x + (dt * c) * d
        if run.stop(i, x, sigma, sigma_next, denoised):
            break
    return run.finish(x)


def sample_deis(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    cond: object = None,
    noise: NoiseFn | None = None,
    callback: StepCallback | None = None,
    order: int = 3,
) -> Tensor:
    """DEIS, t-AB variant (Zhang & Chen 2023, "Fast Sampling of Diffusion Models with Exponential
    Integrator", Sec. 3.3-3.4) with time t = log sigma (= -lambda on VE).

    The slope d = (x - D) / sigma is extrapolated by the Lagrange polynomial P in t through the last
    ``order`` steps, and the step integrates ``dx = P(t) e^t dt`` exactly (Gauss-Legendre). The
    final step to sigma = 0 is first order (returns D), like DPM-Solver++'s ``lower_order_final``.
    """
    if order < 1:
        raise ValueError(f"deis: order must be >= 1, got {order}")
    run = _Run("deis", denoiser, x, sigmas, cond, callback)
    x = run.x
    slopes: list[Tensor] = []
    log_sigmas: list[float] = []
    for i in range(run.total):
        sigma, sigma_next = run.sigmas[i], run.sigmas[i + 1]
        denoised = run.denoise(x, sigma)
        slopes.insert(0, (x - denoised) / sigma)
        log_sigmas.insert(0, math.log(sigma))
        del slopes[order:], log_sigmas[order:]
        if sigma_next == 0:
            # lower order final: extrapolating the polynomial to log sigma = -inf is unreliable
            # after a coarse last step, so the step to 0 is first order (it returns D).
            weights = [-sigma]
        else:
            weights = _quadrature_weights(log_sigmas, log_sigmas[0], math.log(sigma_next), kernel=np.exp)
        for w, d in zip(weights, slopes):
            x = x + w * d
        if run.stop(i, x, sigma, sigma_next, denoised):
            break
    return run.finish(x)


# --------------------------------------------------------------------------------------------------
# DPM-Solver++ family (Lu et al. 2022, "DPM-Solver++"), data prediction, lambda = log(alpha/sigma)
# --------------------------------------------------------------------------------------------------


def sample_dpmpp_2m(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    cond: object = None,
    noise: NoiseFn | None = None,
    callback: StepCallback | None = None,
) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2): second-order multistep in lambda with data
    prediction. First step and the step to sigma = 0 are first order (DDIM), as in k-diffusion and
    diffusers' ``lower_order_final``."""

    def step(run: _Run, x: Tensor, d: Tensor, d_old: Tensor, sigma: float, sigma_next: float, h: float,
             h_last: float) -> Tensor:  # fmt: skip
        half_inv_r = h / (2.0 * h_last)  # 1 / (2 r), r = h_last / h
        return torch.lerp((1.0 + half_inv_r) * d - half_inv_r * d_old, x, sigma_next / sigma)

    return _two_step_multistep(_Run("dpmpp_2m", denoiser, x, sigmas, cond, callback), step)


def _two_step_multistep(run: _Run, second_order: Callable[..., Tensor]) -> Tensor:
    """The loop DPM-Solver++(2M) and RES multistep share: a first-order (DDIM) step first, to sigma = 0 and
    after a non-finite lambda step; otherwise ``second_order(run, x, denoised, old_denoised, sigma,
    sigma_next, h, h_last)`` with h the step in lambda and h_last the previous one."""
    x = run.x
    old_denoised: Tensor | None = None
    h_last = math.inf
    for i in range(run.total):
        sigma, sigma_next = run.sigmas[i], run.sigmas[i + 1]
        denoised = run.denoise(x, sigma)
        h = run.lam(sigma_next) - run.lam(sigma)
        if old_denoised is None or sigma_next == 0 or not math.isfinite(h_last) or not math.isfinite(h):
            x = torch.lerp(denoised, x, sigma_next / sigma)
        else:
            x = second_order(run, x, denoised, old_denoised, sigma, sigma_next, h, h_last)
        old_denoised, h_last = denoised, h
        if run.stop(i, x, sigma, sigma_next, denoised):
            break
    return run.finish(x)


def sample_res_multistep(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    cond: object = None,
    noise: NoiseFn | None = None,
    callback: StepCallback | None = None,
) -> Tensor:
    """RES second-order multistep (Zhang, Tao, Chen et al. 2023, "Improved order analysis and design of
    exponential integrator for diffusion models", arXiv 2308.02157), deterministic (ComfyUI's
    ``res_multistep``).

    In lambda = log(alpha / sigma) the exact step is x' = (sigma'/sigma) x + alpha' * int_0^h e^{-(h-u)} D du.
    With D linear through the last two predictions, D(u) = D_i + u (D_i - D_{i-1}) / h_last, the integral is
    h (phi1(-h) D_i + phi2(-h) (D_i - D_{i-1}) / r), r = h_last / h, phi1(z) = (e^z - 1) / z,
    phi2(z) = (phi1(z) - 1) / z: the phi-function weights where DPM-Solver++(2M) uses the midpoint rule.
    First step and the step to sigma = 0 are first order (DDIM), as in dpmpp_2m."""

    def step(run: _Run, x: Tensor, d: Tensor, d_old: Tensor, sigma: float, sigma_next: float, h: float,
             h_last: float) -> Tensor:  # fmt: skip
        phi1 = -math.expm1(-h) / h  # phi1(-h)
        phi2 = (1.0 - phi1) / h  # phi2(-h)
        b_old = -phi2 * h / h_last  # weight of D_{i-1}: -phi2 / r
        b_new = phi1 - b_old  # weight of D_i: phi1 + phi2 / r
        return (sigma_next / sigma) * x + (run.alpha(sigma_next) * h) * (b_new * d + b_old * d_old)

    return _two_step_multistep(_Run("res_multistep", denoiser, x, sigmas, cond, callback), step)


def sample_dpmpp_2s_ancestral(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    cond: object = None,
    noise: NoiseFn | None = None,
    callback: StepCallback | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
) -> Tensor:
    """Ancestral DPM-Solver++(2S) (Lu et al. 2022, Algorithm 1, r = 1/2) as in k-diffusion: a
    single-step second-order step to sigma_down (midpoint in lambda) plus fresh noise sigma_up.
    From the flow level sigma = 1 (lambda = -inf) the step is the first-order limit."""
    run = _Run("dpmpp_2s_ancestral", denoiser, x, sigmas, cond, callback)
    if eta > 0:
        noise = _need_noise("dpmpp_2s_ancestral", noise)
    x = run.x
    for i in range(run.total):
        sigma, sigma_next = run.sigmas[i], run.sigmas[i + 1]
        denoised = run.denoise(x, sigma)
        sigma_down, sigma_up, scale = _ancestral_step(run, sigma, sigma_next, eta)
        lam_s = run.lam(sigma)
        if sigma_down == 0 or not math.isfinite(lam_s):
            x = torch.lerp(denoised, x, sigma_down / sigma)
        else:
            sigma_mid = run.sigma_of_lam(0.5 * (lam_s + run.lam(sigma_down)))
            x_2 = torch.lerp(denoised, x, sigma_mid / sigma)
            denoised_2 = run.denoise(x_2, sigma_mid)
            x = torch.lerp(denoised_2, x, sigma_down / sigma)
        if sigma_up > 0:
            assert noise is not None
            x = scale * x + (sigma_up * s_noise) * noise(sigma, sigma_next)
        if run.stop(i, x, sigma, sigma_next, denoised):
            break
    return run.finish(x)


def sample_dpmpp_sde(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    cond: object = None,
    noise: NoiseFn | None = None,
    callback: StepCallback | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
    r: float = 0.5,
) -> Tensor:
    """DPM-Solver++(stochastic) as in k-diffusion: two ancestral sub-steps per step, to the
    intermediate level lambda_s + r h and then to sigma', the second using the blended prediction
    ``(1 - 1/(2r)) D + 1/(2r) D_mid``. Calls ``noise`` twice per step: (sigma, sigma_mid) then
    (sigma, sigma'). From the flow level sigma = 1 the step is a single ancestral Euler step."""
    if not r > 0:
        raise ValueError(f"dpmpp_sde: r must be > 0, got {r}")
    run = _Run("dpmpp_sde", denoiser, x, sigmas, cond, callback)
    if eta > 0:
        noise = _need_noise("dpmpp_sde", noise)
    x = run.x

    def ancestral(x_in: Tensor, den: Tensor, sigma: float, sigma_to: float) -> Tensor:
        sigma_down, sigma_up, scale = _ancestral_step(run, sigma, sigma_to, eta)
        out = torch.lerp(den, x_in, sigma_down / sigma)
        if sigma_up > 0:
            assert noise is not None
            out = scale * out + (sigma_up * s_noise) * noise(sigma, sigma_to)
        return out

    for i in range(run.total):
        sigma, sigma_next = run.sigmas[i], run.sigmas[i + 1]
        denoised = run.denoise(x, sigma)
        lam_s = run.lam(sigma)
        if sigma_next == 0:
            x = denoised
        elif not math.isfinite(lam_s):
            x = ancestral(x, denoised, sigma, sigma_next)
        else:
            sigma_mid = run.sigma_of_lam(lam_s + r * (run.lam(sigma_next) - lam_s))
            fac = 1.0 / (2.0 * r)
            x_2 = ancestral(x, denoised, sigma, sigma_mid)
            denoised_2 = run.denoise(x_2, sigma_mid)
            denoised_d = (1.0 - fac) * denoised + fac * denoised_2
            x = ancestral(x, denoised_d, sigma, sigma_next)
        if run.stop(i, x, sigma, sigma_next, denoised):
            break
    return run.finish(x)


def sample_dpmpp_2m_sde(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    cond: object = None,
    noise: NoiseFn | None = None,
    callback: StepCallback | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
    solver_type: str = "midpoint",
) -> Tensor:
    """DPM-Solver++(2M) SDE (Lu et al. 2022, Sec. 4 / Appendix; diffusers "sde-dpmsolver++"):

    ``x' = (sigma'/sigma) e^{-eta h} x + alpha' (1 - e^{-(1+eta) h}) D + alpha' C (D - D_prev) / r
    + sigma' sqrt(1 - e^{-2 eta h}) s_noise n`` with ``C = (1 - e^{-(1+eta)h}) / 2`` (midpoint) or
    ``(1 - e^{-(1+eta)h}) / (-(1+eta)h) + 1`` (heun). The step to 0 returns D."""
    if solver_type not in ("midpoint", "heun"):
        raise ValueError(f"dpmpp_2m_sde: solver_type must be 'midpoint' or 'heun', got {solver_type!r}")
    run = _Run("dpmpp_2m_sde", denoiser, x, sigmas, cond, callback)
    if eta > 0:
        noise = _need_noise("dpmpp_2m_sde", noise)
    x = run.x
    old_denoised: Tensor | None = None
    h_last = math.inf
    for i in range(run.total):
        sigma, sigma_next = run.sigmas[i], run.sigmas[i + 1]
        denoised = run.denoise(x, sigma)
        h = run.lam(sigma_next) - run.lam(sigma)
        if sigma_next == 0:
            x = denoised
        else:
            eta_h = eta * h if eta > 0 else 0.0
            a_next = run.alpha(sigma_next)
            one_minus = -math.expm1(-h - eta_h)
            x = (sigma_next / sigma * math.exp(-eta_h)) * x + (a_next * one_minus) * denoised
            if old_denoised is not None and math.isfinite(h_last) and math.isfinite(h):
                inv_r = h / h_last
                if solver_type == "midpoint":
                    coef = 0.5 * one_minus
                else:
                    coef = one_minus / (-h - eta_h) + 1.0
                x = x + (a_next * coef * inv_r) * (denoised - old_denoised)
            if eta > 0:
                assert noise is not None
                x = x + (sigma_next * math.sqrt(-math.expm1(-2.0 * eta_h)) * s_noise) * noise(
                    sigma, sigma_next
                )
        old_denoised, h_last = denoised, h
        if run.stop(i, x, sigma, sigma_next, denoised):
            break
    return run.finish(x)


def sample_dpmpp_3m_sde(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    cond: object = None,
    noise: NoiseFn | None = None,
    callback: StepCallback | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
) -> Tensor:
    """DPM-Solver++(3M) SDE (Lu et al. 2022, third-order multistep with the SDE noise term, as in
    k-diffusion): first and second divided differences of D in lambda with the phi_2, phi_3
    exponential-integrator weights of h (1 + eta). The step to 0 returns D."""
    run = _Run("dpmpp_3m_sde", denoiser, x, sigmas, cond, callback)
    if eta > 0:
        noise = _need_noise("dpmpp_3m_sde", noise)
    x = run.x
    history: list[tuple[Tensor, float]] = []  # (denoised, h) of previous steps, newest first
    for i in range(run.total):
        sigma, sigma_next = run.sigmas[i], run.sigmas[i + 1]
        denoised = run.denoise(x, sigma)
        h = run.lam(sigma_next) - run.lam(sigma)
        if sigma_next == 0:
            x = denoised
        else:
            h_eta = h * (eta + 1.0)
            a_next = run.alpha(sigma_next)
            eta_h = eta * h if eta > 0 else 0.0
            x = (sigma_next / sigma * math.exp(-eta_h)) * x + (a_next * -math.expm1(-h_eta)) * denoised
            # contiguous finite-h history only: a step from the flow level sigma = 1 has h = inf
            usable: list[tuple[Tensor, float]] = []
            for entry in history if math.isfinite(h) else []:
                if not math.isfinite(entry[1]):
                    break
                usable.append(entry)
            if usable:
                phi_2 = math.expm1(-h_eta) / h_eta + 1.0
                if len(usable) >= 2:
                    (den_1, h_1), (den_2, h_2) = usable[0], usable[1]
                    r0, r1 = h_1 / h, h_2 / h
                    d1_0 = (denoised - den_1) / r0
                    d1_1 = (den_1 - den_2) / r1
                    d1 = d1_0 + (d1_0 - d1_1) * (r0 / (r0 + r1))
                    d2 = (d1_0 - d1_1) / (r0 + r1)
                    phi_3 = phi_2 / h_eta - 0.5
                    x = x + (a_next * phi_2) * d1 - (a_next * phi_3) * d2
                else:
                    den_1, h_1 = usable[0]
                    x = x + (a_next * phi_2 * h / h_1) * (denoised - den_1)
            if eta > 0:
                assert noise is not None
                x = x + (sigma_next * math.sqrt(-math.expm1(-2.0 * eta_h)) * s_noise) * noise(
                    sigma, sigma_next
                )
        history.insert(0, (denoised, h))
        del history[2:]
        if run.stop(i, x, sigma, sigma_next, denoised):
            break
    return run.finish(x)


# --------------------------------------------------------------------------------------------------
# UniPC (Zhao et al. 2023), data prediction, B(h) variants bh1 / bh2
# --------------------------------------------------------------------------------------------------


def _unipc_update(
    run: _Run,
    x: Tensor,
    sigma: float,
    sigma_to: float,
    m0: Tensor,
    previous: Sequence[tuple[float, Tensor]],
    order: int,
    variant: str,
    model_t: Tensor | None,
) -> Tensor:
    """One UniP (``model_t is None``) or UniC step of order ``order`` from ``sigma`` to ``sigma_to``.

    Zhao et al. 2023, Algorithms 1-2 (UniPC-p, B(h) = h for bh1, e^h - 1 for bh2), data prediction:
    ``x_t = (sigma_t/sigma_s) x + alpha_t (1 - e^{-h}) m0 - alpha_t B(h) sum_k rho_k D1_k`` with
    ``D1_k = (m_k - m0) / r_k``, ``r_k = (lambda_k - lambda_s) / h`` and rho solving the order
    conditions ``R rho = b`` (predictor of order 2 uses rho = 1/2; corrector of order 1 too).
    ``previous`` holds (lambda_k, m_k) of earlier steps, newest first.
    """
    lam_s, lam_t = run.lam(sigma), run.lam(sigma_to)
    h = lam_t - lam_s
    a_t = run.alpha(sigma_to)
    hh = -h
    h_phi_1 = math.expm1(hh)  # e^{-h} - 1
    x_t = (sigma_to / sigma) * x + (-a_t * h_phi_1) * m0
    num_prev = order - 1
    corrector = model_t is not None
    if num_prev == 0 and not corrector:
        return x_t
    b_h = hh if variant == "bh1" else math.expm1(hh)
    rks = [(lam_k - lam_s) / h for lam_k, _ in previous[:num_prev]] + [1.0]
    if (order == 2 and not corrector) or (order == 1 and corrector):
        rhos = [0.5]
    else:
        r_mat, b_vec = [], []
        h_phi_k = h_phi_1 / hh - 1.0
        factorial = 1
        for k in range(1, order + 1):
            r_mat.append([rk ** (k - 1) for rk in rks])
            b_vec.append(h_phi_k * factorial / b_h)
            factorial *= k + 1
            h_phi_k = h_phi_k / hh - 1.0 / factorial
        r_np, b_np = np.array(r_mat), np.array(b_vec)
        rhos = list(np.linalg.solve(r_np, b_np) if corrector else np.linalg.solve(r_np[:-1, :-1], b_np[:-1]))
    coef = -a_t * b_h
    for rho, rk, (_, m_k) in zip(rhos, rks, previous[:num_prev]):
        x_t = x_t + (coef * float(rho) / rk) * (m_k - m0)
    if corrector:
        assert model_t is not None
        x_t = x_t + (coef * float(rhos[-1])) * (model_t - m0)
    return x_t


def _sample_unipc(
    name: str,
    variant: str,
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    cond: object,
    callback: StepCallback | None,
    order: int,
    lower_order_final: bool,
    use_corrector: bool,
) -> Tensor:
    if order < 1:
        raise ValueError(f"{name}: order must be >= 1, got {order}")
    run = _Run(name, denoiser, x, sigmas, cond, callback)
    x = run.x
    history: list[tuple[float, Tensor]] = []  # (lambda, D) newest first
    last_x: Tensor | None = None
    last_order = 1
    for i in range(run.total):
        sigma, sigma_next = run.sigmas[i], run.sigmas[i + 1]
        denoised = run.denoise(x, sigma)
        lam = run.lam(sigma)
        if use_corrector and last_x is not None and history and math.isfinite(history[0][0]):
            x = _unipc_update(
                run,
                last_x,
                run.sigmas[i - 1],
                sigma,
                history[0][1],
                history[1:],
                last_order,
                variant,
                denoised,
            )
        history.insert(0, (lam, denoised))
        del history[order:]
        # the flow level sigma = 1 (lambda = -inf) carries no usable history
        usable = next((k for k, (lam_k, _) in enumerate(history) if not math.isfinite(lam_k)), len(history))
        this_order = min(order, run.total - i) if lower_order_final else order
        this_order = max(1, min(this_order, usable))
        if not math.isfinite(run.lam(sigma_next) - lam):
            this_order = 1
        last_x, last_order = x, this_order
        x = _unipc_update(run, x, sigma, sigma_next, denoised, history[1:], this_order, variant, None)
        if run.stop(i, x, sigma, sigma_next, denoised):
            break
    return run.finish(x)


def sample_uni_pc(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    cond: object = None,
    noise: NoiseFn | None = None,
    callback: StepCallback | None = None,
    order: int = 3,
    lower_order_final: bool = True,
    use_corrector: bool = True,
) -> Tensor:
    """UniPC (Zhao et al. 2023) with B(h) = h ("bh1"), data prediction, multistep predictor UniP-p
    plus the free corrector UniC-p (reusing the next step's model call), warm start and
    ``lower_order_final`` as in diffusers' UniPCMultistepScheduler."""
    return _sample_unipc(
        "uni_pc", "bh1", denoiser, x, sigmas, cond, callback, order, lower_order_final, use_corrector
    )


def sample_uni_pc_bh2(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    *,
    cond: object = None,
    noise: NoiseFn | None = None,
    callback: StepCallback | None = None,
    order: int = 3,
    lower_order_final: bool = True,
    use_corrector: bool = True,
) -> Tensor:
    """UniPC with B(h) = e^h - 1 ("bh2"); otherwise as ``sample_uni_pc``."""
    return _sample_unipc(
        "uni_pc_bh2", "bh2", denoiser, x, sigmas, cond, callback, order, lower_order_final, use_corrector
    )


# --------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------

SAMPLERS: dict[str, SamplerFn] = {
    "euler": sample_euler,
    "euler_ancestral": sample_euler_ancestral,
    "heun": sample_heun,
    "heunpp2": sample_heunpp2,
    "dpm_2": sample_dpm_2,
    "dpm_2_ancestral": sample_dpm_2_ancestral,
    "lms": sample_lms,
    "dpmpp_2s_ancestral": sample_dpmpp_2s_ancestral,
    "dpmpp_sde": sample_dpmpp_sde,
    "dpmpp_2m": sample_dpmpp_2m,
    "dpmpp_2m_sde": sample_dpmpp_2m_sde,
    "dpmpp_3m_sde": sample_dpmpp_3m_sde,
    "ddpm": sample_ddpm,
    "ddim": sample_ddim,
    "uni_pc": sample_uni_pc,
    "uni_pc_bh2": sample_uni_pc_bh2,
    "lcm": sample_lcm,
    "ipndm": sample_ipndm,
    "deis": sample_deis,
    "res_multistep": sample_res_multistep,
}
"""Sampler functions under ComfyUI's names."""

STOCHASTIC_SAMPLERS: frozenset[str] = frozenset(
    {
        "euler_ancestral",
        "dpm_2_ancestral",
        "dpmpp_2s_ancestral",
        "dpmpp_sde",
        "dpmpp_2m_sde",
        "dpmpp_3m_sde",
        "ddpm",
        "lcm",
    }
)
"""Samplers that draw noise with their default options (euler/heun/heunpp2/dpm_2 do with s_churn > 0)."""


def is_stochastic(name: str) -> bool:
    """Whether sampler ``name`` needs ``noise`` with its default options."""
    get_sampler(name)
    return name in STOCHASTIC_SAMPLERS


def get_sampler(name: str) -> SamplerFn:
    """The sampler registered as ``name``; ValueError listing the valid names otherwise."""
    try:
        return SAMPLERS[name]
    except KeyError:
        raise ValueError(f"unknown sampler {name!r}; choose one of: {', '.join(SAMPLERS)}") from None


__all__ = [
    "SAMPLERS",
    "STOCHASTIC_SAMPLERS",
    "NoiseFn",
    "SamplerFn",
    "SamplingCancelled",
    "StepCallback",
    "StepInfo",
    "gaussian_noise",
    "get_sampler",
    "is_stochastic",
] + [f"sample_{n}" for n in SAMPLERS]
