"""Schedules: oracle tests against diffusers, analytic properties, validity for every model sampling."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from latentworks.diffusion.denoisers import (
    DiscreteModelSampling,
    EDMModelSampling,
    FlowModelSampling,
    make_betas,
)
from latentworks.diffusion.schedules import (
    SCHEDULERS,
    beta_ppf,
    get_sigmas,
    karras_sigmas,
    kl_optimal_sigmas,
    linear_quadratic_sigmas,
    validate_sigmas,
)

diffusers = pytest.importorskip("diffusers")

SAMPLINGS = {
    "discrete": DiscreteModelSampling(make_betas("scaled_linear")),
    "discrete_zsnr": DiscreteModelSampling(make_betas("scaled_linear"), zero_terminal_snr=True),
    "edm": EDMModelSampling(0.002, 80.0),
    "flow": FlowModelSampling(shift=3.0),
    "flux": FlowModelSampling.flux(4096),
}


def _euler(**kw):
    return diffusers.EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", **kw
    )


# ---------------------------------------------------------------------------------------------
# Oracles
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("steps", [10, 25, 50])
def test_karras_matches_diffusers(steps: int) -> None:
    sched = _euler(use_karras_sigmas=True)
    sched.set_timesteps(steps)
    ours = get_sigmas(SAMPLINGS["discrete"], "karras", steps)
    # diffusers' table is float32-accumulated (~1e-5 relative); the final 0 is exact in both.
    torch.testing.assert_close(ours, sched.sigmas, rtol=5e-5, atol=0)


@pytest.mark.parametrize("steps", [10, 25])
def test_exponential_matches_diffusers(steps: int) -> None:
    sched = _euler(use_exponential_sigmas=True)
    sched.set_timesteps(steps)
    torch.testing.assert_close(
        get_sigmas(SAMPLINGS["discrete"], "exponential", steps), sched.sigmas, rtol=5e-5, atol=0
    )


@pytest.mark.parametrize(
    "steps", [4, 10, 28]
)  # 999 / (steps - 1) is an integer: diffusers' steps are integers
def test_normal_matches_diffusers_linspace(steps: int) -> None:
    sched = _euler(timestep_spacing="linspace")
    sched.set_timesteps(steps)
    torch.testing.assert_close(
        get_sigmas(SAMPLINGS["discrete"], "normal", steps), sched.sigmas, rtol=5e-5, atol=0
    )


@pytest.mark.parametrize("steps", [7, 10, 28])
def test_flow_static_shift_matches_flow_match_euler(steps: int) -> None:
    sched = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    sched.set_timesteps(steps)
    torch.testing.assert_close(
        get_sigmas(SAMPLINGS["flow"], "normal", steps), sched.sigmas, rtol=1e-6, atol=0
    )


@pytest.mark.parametrize("steps", [20, 25, 50])  # steps dividing 1000, as "simple" needs for exactness
@pytest.mark.parametrize("seq_len", [256, 1024, 4096])
def test_flux_dynamic_shift_matches_flow_match_euler(steps: int, seq_len: int) -> None:
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    sched = diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, shift=3.0)
    # What FluxPipeline does: sigmas = linspace(1, 1/steps, steps), mu from the image sequence length.
    sched.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=calculate_shift(seq_len))
    ours = get_sigmas(FlowModelSampling.flux(seq_len), "simple", steps)
    torch.testing.assert_close(ours, sched.sigmas, rtol=1e-6, atol=0)


@pytest.mark.parametrize("steps", [10, 20, 50])
def test_ddim_uniform_matches_diffusers_ddim_leading(steps: int) -> None:
    ddim = diffusers.DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        timestep_spacing="leading",
        steps_offset=1,
    )
    ddim.set_timesteps(steps)
    ms = SAMPLINGS["discrete"]
    ours = get_sigmas(ms, "ddim_uniform", steps)
    torch.testing.assert_close(ours[:-1].double(), ms.sigmas[ddim.timesteps].float().double())
    assert ours[-1] == 0


def test_beta_ppf_matches_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    for a, b in [(0.6, 0.6), (0.5, 2.0), (3.0, 0.7)]:
        for q in [1e-4, 0.01, 0.3, 0.5, 0.77, 0.99, 0.9999]:
            assert beta_ppf(q, a, b) == pytest.approx(float(stats.beta.ppf(q, a, b)), abs=1e-10)


def test_beta_schedule_uses_rounded_beta_quantiles_of_the_table() -> None:
    """Lee et al. 2024: table indices round(999 * F^-1(1 - i/steps)) with F the Beta(0.6, 0.6) CDF. The
    quantiles are scipy's (``scipy.stats.beta.ppf(1 - i/7, 0.6, 0.6) * 999`` = 999, 927.93, 782.37, 597.97,
    401.03, 216.63, 71.07), written out so the schedule's own ``beta_ppf`` is not the reference."""
    ms = SAMPLINGS["discrete"]
    idx = [999, 928, 782, 598, 401, 217, 71]
    expected = torch.cat([ms.sigmas[idx], torch.zeros(1, dtype=torch.float64)]).float()
    torch.testing.assert_close(get_sigmas(ms, "beta", 7), expected)


# ---------------------------------------------------------------------------------------------
# Analytic properties of the plain schedules
# ---------------------------------------------------------------------------------------------


def test_karras_sigmas_are_uniform_in_sigma_to_the_one_over_rho() -> None:
    s = karras_sigmas(12, 0.03, 14.6, rho=7.0).double()
    assert len(s) == 13 and s[-1] == 0
    assert float(s[0]) == pytest.approx(14.6, rel=1e-6) and float(s[-2]) == pytest.approx(0.03, rel=1e-6)
    root = s[:-1] ** (1 / 7)
    d = root[1:] - root[:-1]
    torch.testing.assert_close(d, d.mean().expand_as(d), rtol=1e-5, atol=1e-6)


def test_kl_optimal_is_uniform_in_arctan() -> None:
    s = kl_optimal_sigmas(9, 0.03, 14.6).double()
    a = torch.atan(s[:-1])
    torch.testing.assert_close(a[1:] - a[:-1], (a[1] - a[0]).expand(8), rtol=1e-5, atol=1e-6)
    assert float(s[0]) == pytest.approx(14.6, rel=1e-6) and float(s[-2]) == pytest.approx(0.03, rel=1e-5)


def test_linear_quadratic_is_linear_then_quadratic_and_continuous() -> None:
    n, thr = 20, 0.025
    s = linear_quadratic_sigmas(n, sigma_max=1.0, threshold_noise=thr).double()
    done = 1 - s  # fraction of noise removed
    k = n // 2
    torch.testing.assert_close(done[:k], torch.arange(k, dtype=torch.float64) * thr / k, rtol=0, atol=1e-6)
    quad = done[k:n]
    second = quad[2:] - 2 * quad[1:-1] + quad[:-2]  # constant second difference
    torch.testing.assert_close(second, second[0].expand_as(second), rtol=0, atol=1e-6)
    # the quadratic continues the line: its value at i = k equals the linear part extended one step
    assert float(done[k]) == pytest.approx(thr, abs=1e-6)
    assert float(s[-1]) == 0.0 and float(s[0]) == 1.0


# ---------------------------------------------------------------------------------------------
# Every registered schedule on every model sampling
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(SCHEDULERS))
@pytest.mark.parametrize("ms_name", list(SAMPLINGS))
@pytest.mark.parametrize("steps", [1, 9, 30])
def test_every_schedule_is_valid(name: str, ms_name: str, steps: int) -> None:
    ms = SAMPLINGS[ms_name]
    s = get_sigmas(ms, name, steps)
    assert s.dtype == torch.float32 and s.ndim == 1
    assert len(s) == steps + 1
    assert float(s[-1]) == 0.0
    assert torch.all(s[:-1] > 0) and torch.all(s[1:] <= s[:-1])
    assert float(s[0]) <= ms.sigma_max * (1 + 1e-6)
    if name not in ("ddim_uniform", "linear_quadratic"):  # DDIM's leading spacing starts below the top
        assert float(s[0]) == pytest.approx(ms.sigma_max, rel=1e-5)


def test_unknown_scheduler_lists_choices() -> None:
    with pytest.raises(ValueError, match="normal, karras, exponential, sgm_uniform, simple"):
        get_sigmas(SAMPLINGS["discrete"], "karas", 10)


def test_bad_steps_and_denoise_are_rejected() -> None:
    with pytest.raises(ValueError, match="steps"):
        get_sigmas(SAMPLINGS["discrete"], "karras", 0)
    with pytest.raises(ValueError, match="denoise"):
        get_sigmas(SAMPLINGS["discrete"], "karras", 10, denoise=0.0)
    with pytest.raises(ValueError, match="denoise"):
        get_sigmas(SAMPLINGS["discrete"], "karras", 10, denoise=1.5)


@pytest.mark.parametrize("name", ["normal", "karras", "simple"])
def test_denoise_returns_the_tail_of_the_longer_schedule(name: str) -> None:
    ms = SAMPLINGS["discrete"]
    part = get_sigmas(ms, name, 10, denoise=0.5)
    full = get_sigmas(ms, name, 20)
    assert len(part) == 11
    torch.testing.assert_close(part, full[-11:], rtol=0, atol=0)
    assert float(part[0]) < ms.sigma_max / 2
    # int(steps / denoise) as in ComfyUI: 10 / 0.3 -> 33 steps, keep the last 11 levels
    torch.testing.assert_close(get_sigmas(ms, name, 10, denoise=0.3), get_sigmas(ms, name, 33)[-11:])


@pytest.mark.parametrize(
    ("bad", "msg"),
    [
        (torch.ones(2, 3), "1-D"),
        (torch.tensor([]), "empty"),
        (torch.tensor([3.0, float("nan"), 0.0]), "non-finite values at positions \\[1\\]"),
        (torch.tensor([3.0, float("inf"), 0.0]), "non-finite"),
        (torch.tensor([3.0, 4.0, 0.0]), "non-increasing, but sigmas\\[1\\]"),
        (torch.tensor([3.0, 1.0]), "end in 0"),
        (torch.tensor([3.0, -1.0, 0.0]), "negative"),
        ([3.0, 0.0], "torch.Tensor"),
    ],
)
def test_validate_sigmas_says_what_is_wrong(bad, msg: str) -> None:  # noqa: ANN001
    with pytest.raises(ValueError, match=msg):
        validate_sigmas(bad)


def test_validate_sigmas_accepts_valid_and_plateaus() -> None:
    s = torch.tensor([3.0, 3.0, 1.0, 0.0])
    assert validate_sigmas(s) is s
    assert validate_sigmas(torch.zeros(1)).numel() == 1


def test_flow_schedules_never_exceed_one_and_shift_moves_noise_up() -> None:
    plain = get_sigmas(FlowModelSampling(shift=1.0), "simple", 10)
    shifted = get_sigmas(FlowModelSampling(shift=3.0), "simple", 10)
    assert torch.all(shifted[1:-1] > plain[1:-1])
    s = plain[:-1].double()
    torch.testing.assert_close(shifted[:-1].double(), 3 * s / (1 + 2 * s), rtol=1e-6, atol=0)
    assert math.isclose(float(plain[1]), 0.9, rel_tol=1e-6)
