"""Model samplings and denoiser wrappers: oracle tests against diffusers and analytic x0 recovery."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from latentworks.diffusion.denoisers import (
    FLOW,
    VE,
    DiscreteModelSampling,
    EDMDenoiser,
    EDMModelSampling,
    EpsDenoiser,
    FlowDenoiser,
    FlowModelSampling,
    VDenoiser,
    X0Denoiser,
    flux_shift_mu,
    make_betas,
    make_denoiser,
    time_shift_exponential,
    time_shift_static,
)

diffusers = pytest.importorskip("diffusers")

DIFFUSERS_BETAS = {"linear": "linear", "scaled_linear": "scaled_linear", "cosine": "squaredcos_cap_v2"}


def _diffusers_euler(kind: str, **kw):
    return diffusers.EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule=DIFFUSERS_BETAS[kind], **kw
    )


# ---------------------------------------------------------------------------------------------
# Discrete model sampling vs diffusers
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["linear", "scaled_linear", "cosine"])
@pytest.mark.parametrize("zsnr", [False, True])
def test_discrete_sigma_table_matches_diffusers(kind: str, zsnr: bool) -> None:
    sched = _diffusers_euler(kind, rescale_betas_zero_snr=zsnr)
    ddpm = diffusers.DDPMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule=DIFFUSERS_BETAS[kind], rescale_betas_zero_snr=zsnr
    )
    # diffusers clamps the zero-SNR alpha_bar to 2**-24; ours defaults to ComfyUI's value, so pass theirs.
    ms = DiscreteModelSampling(make_betas(kind), zero_terminal_snr=zsnr, terminal_alpha_bar=2.0**-24)
    if not zsnr:
        # Betas agree to a few float32 roundings (diffusers builds them in float32).
        torch.testing.assert_close(make_betas(kind), ddpm.betas.double(), rtol=5e-7, atol=1e-10)
    ac = sched.alphas_cumprod.double()
    ref = ((1 - ac) / ac).sqrt()
    # diffusers works in float32: alpha_bar carries ~1e-7 absolute error, which 1 - alpha_bar turns into
    # up to 0.2% relative error at the very smallest sigmas; above sigma 0.05 the tables agree to 5e-5.
    torch.testing.assert_close(ms.alphas_cumprod, ac, rtol=0, atol=1e-6)
    torch.testing.assert_close(
        ddpm.alphas_cumprod[:-1].double(), ac[:-1], rtol=0, atol=0
    )  # DDPM keeps 0 last
    big = ref > 0.05
    assert big.sum() > 950
    torch.testing.assert_close(ms.sigmas[big], ref[big], rtol=5e-5, atol=0)
    assert ms.sigma_max == pytest.approx(float(ref[-1]), rel=5e-5)
    assert ms.sigma_min == pytest.approx(float(ref[0]), rel=3e-3)
    assert torch.all(ms.sigmas[1:] > ms.sigmas[:-1])


def test_zero_snr_rescale_matches_diffusers_in_float64() -> None:
    from diffusers.schedulers.scheduling_euler_discrete import rescale_zero_terminal_snr as ref_rescale

    for kind in ("linear", "scaled_linear", "cosine"):
        betas = make_betas(kind)
        ms = DiscreteModelSampling(betas, zero_terminal_snr=True, terminal_alpha_bar=2.0**-24)
        ac = torch.cumprod(1 - ref_rescale(betas.clone()), 0)
        ac[-1] = 2.0**-24
        torch.testing.assert_close(ms.sigmas, ((1 - ac) / ac).sqrt(), rtol=1e-10, atol=0)


def test_zero_snr_default_terminal_is_finite_and_documented_value() -> None:
    ms = DiscreteModelSampling(make_betas("scaled_linear"), zero_terminal_snr=True)
    abar = 4.8973451890853435e-08
    assert float(ms.alphas_cumprod[-1]) == abar
    assert ms.sigma_max == pytest.approx(math.sqrt((1 - abar) / abar), rel=1e-12)
    assert math.isfinite(ms.sigma_max)


def test_timestep_matches_diffusers_sigma_to_t() -> None:
    ms = DiscreteModelSampling(make_betas("scaled_linear"))
    sched = _diffusers_euler("scaled_linear")
    g = torch.Generator().manual_seed(0)
    log_s = torch.empty(64, dtype=torch.float64).uniform_(
        math.log(ms.sigma_min), math.log(ms.sigma_max), generator=g
    )
    sigmas = torch.cat([log_s.exp(), ms.sigmas[[0, 1, 500, -1]], torch.tensor([1e-4, 1e3])])
    # Exact algorithm check: diffusers' interpolation run on our own float64 table.
    ref = sched._sigma_to_t(sigmas.numpy()[None], ms.log_sigmas.numpy()).reshape(-1)
    np.testing.assert_allclose(ms.timestep(sigmas).numpy(), ref, rtol=0, atol=1e-9)
    # And against diffusers' own (float32-accumulated) table.
    log_ref = np.log(((1 - sched.alphas_cumprod) / sched.alphas_cumprod).double().numpy() ** 0.5)
    ref2 = sched._sigma_to_t(sigmas.numpy()[None], log_ref).reshape(-1)
    np.testing.assert_allclose(ms.timestep(sigmas).numpy(), ref2, rtol=0, atol=2e-3)


@pytest.mark.parametrize(
    "ms",
    [
        DiscreteModelSampling(make_betas("linear")),
        DiscreteModelSampling(),
        EDMModelSampling(0.002, 80.0),
        FlowModelSampling(shift=3.0),
        FlowModelSampling.flux(4096),
    ],
    ids=repr,
)
def test_sigma_timestep_round_trip(ms) -> None:
    g = torch.Generator().manual_seed(1)
    log_s = torch.empty(100, dtype=torch.float64).uniform_(
        math.log(ms.sigma_min), math.log(ms.sigma_max), generator=g
    )
    s = log_s.exp()
    torch.testing.assert_close(ms.sigma(ms.timestep(s)), s, rtol=1e-12, atol=0)
    assert ms.timestep(s).dtype == torch.float64
    assert ms.timestep(s.float()).dtype == torch.float32


def test_discrete_timestep_at_table_entries_is_the_index() -> None:
    ms = DiscreteModelSampling()
    idx = torch.tensor([0, 1, 2, 499, 998, 999])
    torch.testing.assert_close(ms.timestep(ms.sigmas[idx]), idx.double(), rtol=0, atol=1e-9)
    torch.testing.assert_close(ms.sigma(idx.double()), ms.sigmas[idx], rtol=1e-12, atol=0)
    # Out-of-range sigmas clamp to the ends of the table.
    assert float(ms.timestep(torch.tensor(1e-5))) == 0.0
    assert float(ms.timestep(torch.tensor(1e5))) == 999.0


def test_flow_sampling_matches_diffusers_flow_match_table() -> None:
    sched = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    ms = FlowModelSampling(shift=3.0)
    torch.testing.assert_close(ms.sigmas.flip(0), sched.sigmas.double(), rtol=1e-6, atol=0)
    assert ms.sigma_max == 1.0 and ms.sigma_min == pytest.approx(sched.sigma_min, rel=1e-6)
    assert ms.interpolation == FLOW
    s = torch.tensor([0.25, 0.5, 1.0], dtype=torch.float64)
    torch.testing.assert_close(ms.timestep(s), s * 1000)


def test_time_shifts_match_diffusers() -> None:
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    for seq in (256, 1024, 4096, 6000):
        assert flux_shift_mu(seq) == pytest.approx(calculate_shift(seq), rel=1e-12)
    sched = diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    s = torch.linspace(1.0, 0.001, 50, dtype=torch.float64)
    for mu in (0.5, 1.15, 0.8):
        torch.testing.assert_close(
            time_shift_exponential(s, mu), sched.time_shift(mu, 1.0, s), rtol=1e-12, atol=0
        )
        # exponential shift with exponent 1 is the static shift with shift = exp(mu)
        torch.testing.assert_close(time_shift_exponential(s, mu), time_shift_static(s, math.exp(mu)))
    assert float(time_shift_exponential(torch.tensor([0.0]), 1.0)[0]) == 0.0
    assert time_shift_static(0.5, 3.0) == pytest.approx(0.75)


# ---------------------------------------------------------------------------------------------
# Wrappers recover x0 exactly from the true network output
# ---------------------------------------------------------------------------------------------


class _Oracle(torch.nn.Module):
    """A "network" that returns the exact target for a known x0 (it inverts the forward process)."""

    def __init__(self, x0: torch.Tensor, target) -> None:  # noqa: ANN001
        super().__init__()
        self.x0, self.target, self.calls = x0, target, []

    def forward(self, x_in, t, cond):  # noqa: ANN001
        self.calls.append((x_in.clone(), t.clone(), cond))
        return self.target(x_in, t, self.x0)


def _bc(v: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, 1, 1, 1)


def _setup(interp, ms):  # noqa: ANN001
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(3, 4, 5, 5, generator=g, dtype=torch.float64)
    n = torch.randn(3, 4, 5, 5, generator=g, dtype=torch.float64)
    lo, hi = math.log(ms.sigma_min), math.log(ms.sigma_max)
    sigma = torch.tensor([lo + 0.1 * (hi - lo), 0.5 * (lo + hi), hi - 0.01], dtype=torch.float64).exp()
    if interp == FLOW:
        sigma = torch.tensor([0.05, 0.5, 0.97], dtype=torch.float64)
    return x0, n, sigma, interp.noise(x0, n, _bc(sigma))


def test_eps_wrapper_recovers_x0() -> None:
    ms = DiscreteModelSampling()
    x0, n, sigma, x = _setup(VE, ms)

    def eps(x_in, t, x0):  # noqa: ANN001
        s = _bc(ms.sigma(t))
        return (x_in * (s**2 + 1).sqrt() - x0) / s  # x_in is the VP sample sqrt(abar) (x0 + s n)

    net = _Oracle(x0, eps)
    d = EpsDenoiser(net, ms)
    torch.testing.assert_close(d(x, sigma, "c"), x0, rtol=0, atol=1e-10)
    x_in, t, cond = net.calls[0]
    torch.testing.assert_close(x_in, x / _bc((sigma**2 + 1).sqrt()))
    torch.testing.assert_close(t, ms.timestep(sigma))
    assert cond == "c" and d.interpolation == VE and d.model_sampling is ms


def test_v_wrapper_recovers_x0() -> None:
    ms = DiscreteModelSampling(make_betas("linear"), zero_terminal_snr=True)
    x0, n, sigma, x = _setup(VE, ms)

    def v(x_in, t, x0):  # noqa: ANN001
        s = _bc(ms.sigma(t))
        a, b = 1 / (s**2 + 1).sqrt(), s / (s**2 + 1).sqrt()
        noise = (x_in - a * x0) / b
        return a * noise - b * x0

    torch.testing.assert_close(VDenoiser(_Oracle(x0, v), ms)(x, sigma), x0, rtol=0, atol=1e-9)


def test_x0_wrapper_passes_prediction_through() -> None:
    ms = DiscreteModelSampling()
    x0, n, sigma, x = _setup(VE, ms)
    torch.testing.assert_close(X0Denoiser(_Oracle(x0, lambda x_in, t, x0: x0), ms)(x, sigma), x0)


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_flow_wrapper_recovers_x0(shift: float) -> None:
    ms = FlowModelSampling(shift=shift)
    x0, n, sigma, x = _setup(FLOW, ms)

    def velocity(x_in, t, x0):  # noqa: ANN001
        s = _bc(t / 1000)  # the network sees t = sigma * 1000, unshifted
        noise = (x_in - (1 - s) * x0) / s
        return noise - x0

    d = FlowDenoiser(_Oracle(x0, velocity), ms)
    torch.testing.assert_close(d(x, sigma), x0, rtol=0, atol=1e-10)
    assert d.interpolation == FLOW


def test_edm_wrapper_recovers_x0() -> None:
    ms = EDMModelSampling(0.002, 80.0, sigma_data=0.5)
    x0, n, sigma, x = _setup(VE, ms)
    sd = 0.5

    def f(x_in, t, x0):  # noqa: ANN001
        s = _bc(torch.exp(4 * t))  # c_noise = ln(sigma) / 4
        c_in = 1 / (s**2 + sd**2).sqrt()
        xx = x_in / c_in
        c_skip, c_out = sd**2 / (s**2 + sd**2), s * sd / (s**2 + sd**2).sqrt()
        return (x0 - c_skip * xx) / c_out

    torch.testing.assert_close(EDMDenoiser(_Oracle(x0, f), ms)(x, sigma), x0, rtol=0, atol=1e-9)


def test_scalar_sigma_is_broadcast_and_bad_sigma_rejected() -> None:
    ms = DiscreteModelSampling()
    x = torch.randn(2, 4, 3, 3)
    net = _Oracle(x, lambda x_in, t, x0: torch.zeros_like(x_in))
    out = EpsDenoiser(net, ms)(x, 2.0)
    assert net.calls[0][1].shape == (2,)
    torch.testing.assert_close(out, x)
    with pytest.raises(ValueError, match=r"\(B,\)"):
        EpsDenoiser(net, ms)(x, torch.ones(3))


class _HalfNet(torch.nn.Module):
    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones((), dtype=dtype))
        self.seen: list[torch.dtype] = []

    def forward(self, x_in, t, cond):  # noqa: ANN001
        self.seen.append(x_in.dtype)
        return x_in * self.w


@pytest.mark.parametrize("x_dtype", [torch.float32, torch.float16, torch.float64])
def test_model_runs_in_its_dtype_and_result_in_x_dtype(x_dtype: torch.dtype) -> None:
    net = _HalfNet(torch.bfloat16)
    x = torch.randn(2, 4, 3, 3).to(x_dtype)
    out = EpsDenoiser(net, DiscreteModelSampling())(x, torch.tensor([1.0, 3.0]))
    assert net.seen == [torch.bfloat16]
    assert out.dtype == x_dtype
    # The arithmetic around the bf16 network is float32: only the network output is rounded.
    s = torch.tensor([1.0, 3.0]).reshape(-1, 1, 1, 1)
    expected = x.float() - s * (x.float() / (s**2 + 1).sqrt()).bfloat16().float()
    torch.testing.assert_close(out.float(), expected.to(x_dtype).float())


def test_make_denoiser_factory_and_errors() -> None:
    net = _HalfNet(torch.float32)
    assert isinstance(make_denoiser(net, "eps", DiscreteModelSampling()), EpsDenoiser)
    assert isinstance(make_denoiser(net, "v"), VDenoiser)
    assert isinstance(make_denoiser(net, "x0"), X0Denoiser)
    assert isinstance(make_denoiser(net, "flow", FlowModelSampling(3.0)), FlowDenoiser)
    assert make_denoiser(net, "edm").model_sampling.sigma_data == 0.5
    with pytest.raises(ValueError, match="eps, v, x0, flow, edm"):
        make_denoiser(net, "epsilon")
    with pytest.raises(ValueError, match="FlowModelSampling"):
        make_denoiser(net, "flow", DiscreteModelSampling())
    with pytest.raises(ValueError, match="VE"):
        make_denoiser(net, "eps", FlowModelSampling())


def test_model_sampling_validation() -> None:
    with pytest.raises(ValueError, match="1-D"):
        DiscreteModelSampling(torch.ones(2, 2) * 0.1)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        DiscreteModelSampling(torch.tensor([0.1, -0.2]))
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        EDMModelSampling(80.0, 0.002)
    with pytest.raises(ValueError, match="shift"):
        FlowModelSampling(shift=0.0)
