"""Samplers against exact answers on a Gaussian mixture (whose ideal denoiser is known in closed form).

Deterministic samplers: the probability-flow ODE is integrated from sigma_max down to
``SIGMA_MIN = 0.1`` and compared with a DOP853 reference solution (rtol 1e-10) *at the same final
sigma*. We stop at sigma_min > 0 rather than 0 so that every step of every sampler is a regular
step of its method (several samplers deliberately take a first-order step to sigma = 0, which
would cap the measured order at ~2) and so that the error is dominated by the method's global
truncation error. Multistep samplers with ``lower_order_final`` get it switched off for the same
reason. Step counts 8, 16, 32, 64 (Karras rho = 7 spacing on VE; the SD3 shift = 3 schedule from
sigma = 1 on FLOW); the empirical order is the least-squares slope of log(error) vs log(steps) over
16, 32, 64 (8 steps is pre-asymptotic for this problem and is reported but not fitted).

Stochastic samplers: 20k samples from pure noise must reproduce the mixture's component weights
(assignment by maximum posterior), mean and covariance; see the tolerances below.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from latentworks.diffusion.analytic import GaussianMixture, default_test_mixture
from latentworks.diffusion.denoisers import FLOW, VE, Interpolation
from latentworks.diffusion.samplers import SAMPLERS, gaussian_noise

SIGMA_MIN = 0.1
STEPS = (8, 16, 32, 64)
FITTED = slice(1, None)  # fit over 16, 32, 64


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    return (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho


def flow_sigmas(n: int, sigma_min: float, shift: float = 3.0) -> torch.Tensor:
    """SD3's shifted schedule sigma = shift t / (1 + (shift - 1) t), t uniform, from sigma = 1."""
    t_min = sigma_min / (shift - (shift - 1) * sigma_min)
    t = torch.linspace(1, t_min, n, dtype=torch.float64)
    return shift * t / (1 + (shift - 1) * t)


def smooth_mixture() -> GaussianMixture:
    return GaussianMixture([0.5, 0.3, 0.2], [[1.5, 0.5], [-1.0, 1.0], [0.0, -1.5]], stds=[0.5, 0.6, 0.7])


SETUPS = {
    "ve": (VE, 20.0, lambda n: karras_sigmas(n + 1, SIGMA_MIN, 20.0)),
    "flow": (FLOW, 1.0, lambda n: flow_sigmas(n + 1, SIGMA_MIN)),
}


@pytest.fixture(scope="module")
def problems():
    mixture = smooth_mixture()
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(32, 2, dtype=torch.float64, generator=gen)
    out = {}
    for key, (interp, sigma_max, _) in SETUPS.items():
        x_start = noise * sigma_max  # VE: x ~ N(x0, 20^2) ~ noise * 20; FLOW: x = noise at sigma = 1
        ref = mixture.reference_ode_solution(x_start, (sigma_max, SIGMA_MIN), interp, rtol=1e-10, atol=1e-11)
        out[key] = (mixture.denoiser(interp), x_start, ref)
    return out


def empirical_order(name: str, key: str, problems, **opts) -> tuple[float, list[float]]:
    denoiser, x_start, ref = problems[key]
    make_sigmas = SETUPS[key][2]
    errors = []
    for n in STEPS:
        out = SAMPLERS[name](denoiser, x_start, make_sigmas(n), **opts)
        errors.append((out - ref).pow(2).sum(-1).mean().sqrt().item())  # RMS over the 32 trajectories
    slope = -np.polyfit(np.log(STEPS[FITTED]), np.log(errors[FITTED]), 1)[0]
    return float(slope), errors


# (sampler, setup, options, lower bound, upper bound on the fitted order)
ORDER_CASES = [
    # first order: 1 +- 0.15
    ("euler", "ve", {}, 0.85, 1.15),
    ("euler", "flow", {}, 0.85, 1.15),
    ("ddim", "ve", {}, 0.85, 1.15),
    ("ddim", "flow", {}, 0.85, 1.15),
    # second order: >= 1.7 (and not accidentally first order)
    ("heun", "ve", {}, 1.7, 2.5),
    ("heun", "flow", {}, 1.7, 2.5),
    ("dpmpp_2m", "ve", {}, 1.7, 2.5),
    ("dpmpp_2m", "flow", {}, 1.7, 2.5),
    ("res_multistep", "ve", {}, 1.7, 2.5),
    ("res_multistep", "flow", {}, 1.7, 2.5),
    ("dpm_2", "ve", {}, 1.7, 2.5),
    ("dpm_2", "flow", {}, 1.7, 2.5),
    ("heunpp2", "ve", {}, 1.7, 2.6),
    ("heunpp2", "flow", {}, 1.7, 2.6),
    # iPNDM's fixed Adams-Bashforth coefficients assume equal steps: on the strongly non-uniform
    # Karras grid the method is second order; on the near-uniform flow grid it is third order.
    ("ipndm", "ve", {}, 1.7, 2.5),
    ("ipndm", "flow", {}, 2.5, 5.0),
    # third-order class: >= 2.5
    ("lms", "ve", {"order": 3}, 2.5, 5.0),
    ("lms", "ve", {"order": 4}, 2.5, 5.5),
    ("lms", "flow", {"order": 4}, 2.5, 5.5),
    ("deis", "ve", {"order": 3}, 2.5, 5.0),
    ("deis", "flow", {"order": 3}, 2.5, 5.0),
    ("uni_pc", "ve", {"lower_order_final": False}, 2.5, 5.5),
    ("uni_pc", "flow", {"lower_order_final": False}, 2.5, 5.5),
    ("uni_pc_bh2", "ve", {"lower_order_final": False}, 2.5, 5.5),
]


@pytest.mark.parametrize(
    ("name", "key", "opts", "low", "high"),
    ORDER_CASES,
    ids=[f"{c[0]}-{c[1]}-{'-'.join(f'{k}={v}' for k, v in c[2].items())}" for c in ORDER_CASES],
)
def test_convergence_order(problems, name, key, opts, low, high):
    order, errors = empirical_order(name, key, problems, **opts)
    assert low <= order <= high, f"{name} on {key}: order {order:.2f}, errors {errors}"
    assert errors[-1] < errors[0], f"{name} on {key} does not converge: {errors}"


def test_uni_pc_lower_order_final_costs_an_order(problems):
    """With the first-order final step (diffusers' default) the global order drops to ~2: this
    is why the order tests switch it off, and shows the option really changes the last step."""
    with_final, _ = empirical_order("uni_pc", "ve", problems)
    without_final, _ = empirical_order("uni_pc", "ve", problems, lower_order_final=False)
    assert without_final > with_final + 0.5


def test_ddpm_equals_euler_ancestral():
    """The DDPM posterior step and the ancestral Euler step with eta = 1 are the same map."""
    mixture = default_test_mixture()
    for interp, sigmas in [(VE, karras_sigmas(11, 0.05, 20.0)), (FLOW, flow_sigmas(11, 0.05))]:
        sigmas = torch.cat([sigmas, sigmas.new_zeros(1)])
        x = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * float(
            sigmas[0]
        )
        a = SAMPLERS["ddpm"](
            mixture.denoiser(interp), x, sigmas, noise=gaussian_noise(x, torch.Generator().manual_seed(2))
        )
        b = SAMPLERS["euler_ancestral"](
            mixture.denoiser(interp), x, sigmas, noise=gaussian_noise(x, torch.Generator().manual_seed(2))
        )
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_posterior_mean_matches_monte_carlo():
    """The closed-form denoiser equals a brute-force Bayes estimate E[x0 | x] (self-normalised
    importance weights over 400k prior draws), for VE and FLOW, including sigma = 1 on FLOW."""
    mixture = default_test_mixture()
    gen = torch.Generator().manual_seed(3)
    prior, _ = mixture.sample(400_000, gen)  # (N, 2)
    points = torch.tensor([[0.3, -0.2], [1.2, 0.8], [-0.5, 0.5]], dtype=torch.float64)
    for interp, sigma in [(VE, 0.5), (VE, 2.0), (FLOW, 0.4), (FLOW, 0.8), (FLOW, 1.0)]:
        alpha = 1 - sigma if interp.is_flow else 1.0
        exact = mixture.posterior_mean(points, sigma, interp)
        for p, e in zip(points, exact):
            logw = -((p - alpha * prior) ** 2).sum(-1) / (2 * sigma**2)
            w = torch.softmax(logw, 0)
            estimate = (w[:, None] * prior).sum(0)
            ess = 1.0 / (w**2).sum()
            tol = 4 * prior.std(0).max() / ess.sqrt() + 1e-3  # 4 standard errors
            assert (estimate - e).abs().max() < tol, (interp, sigma, estimate, e)


# --------------------------------------------------------------------------------------------------
# Stochastic samplers reproduce the distribution
# --------------------------------------------------------------------------------------------------

NUM_SAMPLES = 20_000


def _assert_moments(mixture: GaussianMixture, samples: torch.Tensor, what: str, scale: float = 1.0) -> None:
    """Tolerances (20k samples): component weights within 0.02 absolute (binomial std <= 0.0035,
    plus assignment overlap and discretisation); mean within 0.04 (std of the mean ~0.008);
    covariance entries within 0.06 (std ~0.01 for unit-scale variance)."""
    assert torch.isfinite(samples).all(), what
    labels = mixture.log_component_likelihood(samples).argmax(-1)
    ref, ref_labels = mixture.sample(200_000, torch.Generator().manual_seed(123))
    ref_assigned = torch.bincount(
        mixture.log_component_likelihood(ref).argmax(-1), minlength=3
    ).double() / len(ref)
    weights = torch.bincount(labels, minlength=mixture.num_components).double() / len(samples)
    assert (weights - ref_assigned).abs().max() < 0.02 * scale, f"{what}: weights {weights} vs {ref_assigned}"
    assert (samples.mean(0) - mixture.mean()).abs().max() < 0.04 * scale, f"{what}: mean {samples.mean(0)}"
    cov = torch.cov(samples.T)
    assert (cov - mixture.covariance()).abs().max() < 0.06 * scale, (
        f"{what}: cov {cov} vs {mixture.covariance()}"
    )


# (sampler, options, steps, also on FLOW). Step counts are chosen so that the discretisation error
# of the moments is below the tolerances (measured: at these counts the covariance error is
# <= 0.045 for every case). ddpm is covered by test_ddpm_equals_euler_ancestral (identical map);
# the FLOW versions of the remaining samplers are covered exactly by test_flow_equals_conjugated_ve.
STOCHASTIC_CASES = [
    ("euler_ancestral", {}, 150, True),
    ("dpm_2_ancestral", {}, 50, False),
    ("dpmpp_2s_ancestral", {}, 50, True),
    ("dpmpp_sde", {}, 150, False),
    ("dpmpp_2m_sde", {}, 100, True),
    ("dpmpp_2m_sde", {"solver_type": "heun"}, 100, False),
    ("dpmpp_3m_sde", {}, 100, True),
    ("euler", {"s_churn": 10.0}, 200, False),
]
_CASES = [(n, o, s, i) for n, o, s, f in STOCHASTIC_CASES for i in ([VE, FLOW] if f else [VE])]


def _start(interp: Interpolation, steps: int, num: int, gen: torch.Generator):
    if interp.is_flow:
        sigmas = torch.cat([flow_sigmas(steps, 0.01), torch.zeros(1, dtype=torch.float64)])
        return torch.randn(num, 2, dtype=torch.float64, generator=gen), sigmas
    sigmas = torch.cat([karras_sigmas(steps, 0.01, 80.0), torch.zeros(1, dtype=torch.float64)])
    return torch.randn(num, 2, dtype=torch.float64, generator=gen) * 80.0, sigmas


@pytest.mark.parametrize(
    ("name", "opts", "steps", "interp"),
    _CASES,
    ids=[f"{c[0]}{'-' + '-'.join(map(str, c[1].values())) if c[1] else ''}-{c[3].name}" for c in _CASES],
)
def test_stochastic_sampler_reproduces_mixture(name: str, opts: dict, steps: int, interp: Interpolation):
    mixture = default_test_mixture()
    gen = torch.Generator().manual_seed(11)
    x, sigmas = _start(interp, steps, NUM_SAMPLES, gen)
    out = SAMPLERS[name](mixture.denoiser(interp), x, sigmas, noise=gaussian_noise(x, gen), **opts)
    _assert_moments(mixture, out, f"{name} {interp.name}")


@pytest.mark.parametrize("interp", [VE, FLOW], ids=["ve", "flow"])
def test_lcm_with_exact_consistency_function_samples_the_mixture(interp: Interpolation):
    """LCM multistep sampling (predict x0, re-noise) is exact at any step count when the model is
    the exact consistency function; 3 steps, 4k samples (tolerances doubled for 5x fewer samples)."""
    mixture = default_test_mixture()
    gen = torch.Generator().manual_seed(5)
    x, sigmas = _start(interp, 3, 4000, gen)
    out = SAMPLERS["lcm"](
        mixture.consistency_function(interp, rtol=1e-6), x, sigmas, noise=gaussian_noise(x, gen)
    )
    _assert_moments(mixture, out, f"lcm {interp.name}", scale=2.0)


# samplers whose steps are defined through lambda = log(alpha / sigma) (or are DDIM-type), so a FLOW
# run is exactly the VE run conjugated by alpha: x_flow = alpha * x_ve, sigma_ve = sigma / alpha.
CONJUGATE = [
    "euler",
    "ddim",
    "euler_ancestral",
    "dpmpp_2s_ancestral",
    "dpmpp_sde",
    "dpmpp_2m",
    "res_multistep",
    "dpmpp_2m_sde",
    "dpmpp_3m_sde",
    "ddpm",
    "lcm",
    "uni_pc",
    "uni_pc_bh2",
]


@pytest.mark.parametrize("name", CONJUGATE)
def test_flow_equals_conjugated_ve(name: str):
    """The FLOW derivation (module docstring of samplers.py) says: running a sampler on a flow model
    equals running it in VE space on x / alpha with sigma_ve = sigma / alpha and mapping back. Check
    it step for step with identical noise (start below sigma = 1 so the VE start is finite)."""
    mixture = default_test_mixture()
    flow_sig = torch.cat([flow_sigmas(12, 0.02)[1:], torch.zeros(1, dtype=torch.float64)])
    ve_sig = flow_sig / (1 - flow_sig)
    gen = torch.Generator().manual_seed(9)
    x_flow = torch.randn(16, 2, dtype=torch.float64, generator=gen)
    draws = torch.randn(40, 16, 2, dtype=torch.float64, generator=gen)

    def noise_fn():
        it = iter(draws)
        return lambda s, sn: next(it)

    out_flow = SAMPLERS[name](mixture.denoiser(FLOW), x_flow, flow_sig, noise=noise_fn())
    out_ve = SAMPLERS[name](mixture.denoiser(VE), x_flow / (1 - flow_sig[0]), ve_sig, noise=noise_fn())
    torch.testing.assert_close(out_flow, out_ve, rtol=1e-9, atol=1e-9)


def test_moment_check_can_fail():
    """The moment check has power: the same run with 30% too much noise is rejected."""
    mixture = default_test_mixture()
    gen = torch.Generator().manual_seed(11)
    x, sigmas = _start(VE, 50, NUM_SAMPLES, gen)
    out = SAMPLERS["dpmpp_2s_ancestral"](
        mixture.denoiser(VE), x, sigmas, noise=gaussian_noise(x, gen), s_noise=1.3
    )
    with pytest.raises(AssertionError):
        _assert_moments(mixture, out, "euler_ancestral with s_noise=1.3")
