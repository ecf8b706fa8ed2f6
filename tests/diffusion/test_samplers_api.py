"""The sampler API contract: registry, noise injection, batching, callbacks, validation, dtypes."""

from __future__ import annotations

import pytest
import torch

from latentworks.diffusion.analytic import default_test_mixture
from latentworks.diffusion.denoisers import FLOW, VE
from latentworks.diffusion.samplers import (
    SAMPLERS,
    STOCHASTIC_SAMPLERS,
    SamplingCancelled,
    StepInfo,
    gaussian_noise,
    get_sampler,
    is_stochastic,
)

COMFY_NAMES = [
    "euler", "euler_ancestral", "heun", "heunpp2", "dpm_2", "dpm_2_ancestral", "lms", "dpmpp_2s_ancestral",
    "dpmpp_sde", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_3m_sde", "ddpm", "ddim", "uni_pc", "uni_pc_bh2", "lcm",
    "ipndm", "deis", "res_multistep",
]  # fmt: skip


def sigmas_ve(n: int = 8) -> torch.Tensor:
    return torch.cat([torch.logspace(1, -1.5, n, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)])


def start(batch: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)) * 10


def test_registry_has_comfyui_names():
    assert list(SAMPLERS) == COMFY_NAMES
    assert STOCHASTIC_SAMPLERS < set(SAMPLERS)
    assert is_stochastic("dpmpp_2m_sde") and not is_stochastic("dpmpp_2m")


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as info:
        get_sampler("eulr")
    assert "eulr" in str(info.value)
    for name in COMFY_NAMES:
        assert name in str(info.value)
    assert get_sampler("heun") is SAMPLERS["heun"]


@pytest.mark.parametrize("name", sorted(STOCHASTIC_SAMPLERS))
def test_stochastic_without_noise_raises(name):
    with pytest.raises(ValueError, match="noise"):
        SAMPLERS[name](default_test_mixture().denoiser(VE), start(), sigmas_ve())


@pytest.mark.parametrize("name", ["euler", "heun", "dpm_2", "heunpp2"])
def test_churn_without_noise_raises(name):
    with pytest.raises(ValueError, match="noise"):
        SAMPLERS[name](default_test_mixture().denoiser(VE), start(), sigmas_ve(), s_churn=5.0)


@pytest.mark.parametrize("name", COMFY_NAMES)
def test_batch_of_seeds_equals_single_runs(name):
    """Sample b of a batch run with per-sample generators equals a single run with generator b."""
    denoiser = default_test_mixture().denoiser(VE)
    x = start(3)
    seeds = [7, 8, 9]
    batch = SAMPLERS[name](
        denoiser, x, sigmas_ve(), noise=gaussian_noise(x, [torch.Generator().manual_seed(s) for s in seeds])
    )
    for b, seed in enumerate(seeds):
        single = SAMPLERS[name](
            denoiser,
            x[b : b + 1],
            sigmas_ve(),
            noise=gaussian_noise(x[b : b + 1], [torch.Generator().manual_seed(seed)]),
        )
        torch.testing.assert_close(batch[b : b + 1], single, rtol=1e-12, atol=1e-12)
    if name in STOCHASTIC_SAMPLERS:  # and the noise matters
        other = SAMPLERS[name](
            denoiser, x, sigmas_ve(), noise=gaussian_noise(x, torch.Generator().manual_seed(1))
        )
        assert not torch.allclose(other, batch)


@pytest.mark.parametrize("name", COMFY_NAMES)
def test_callback_sees_every_step(name):
    seen: list[StepInfo] = []
    sig = sigmas_ve(6)
    x = start()
    out = SAMPLERS[name](
        default_test_mixture().denoiser(VE),
        x,
        sig,
        noise=gaussian_noise(x, torch.Generator().manual_seed(0)),
        callback=seen.append,
    )
    assert [s.i for s in seen] == list(range(len(sig) - 1))
    assert all(s.total == len(sig) - 1 for s in seen)
    assert [s.sigma for s in seen] == [float(v) for v in sig[:-1]]
    assert [s.sigma_next for s in seen] == [float(v) for v in sig[1:]]
    torch.testing.assert_close(seen[-1].x, out)
    with pytest.raises(AttributeError):
        seen[0].i = 5  # frozen


@pytest.mark.parametrize("stopper", ["false", "raise"])
@pytest.mark.parametrize("name", ["euler", "dpmpp_2m", "uni_pc", "dpmpp_2m_sde", "heun"])
def test_callback_can_stop(name, stopper):
    calls: list[int] = []
    denoiser = default_test_mixture().denoiser(VE)

    def callback(info: StepInfo):
        calls.append(info.i)
        if info.i == 2:
            if stopper == "raise":
                raise SamplingCancelled
            return False
        return None

    x = start()
    sig = sigmas_ve(8)
    out = SAMPLERS[name](
        denoiser, x, sig, noise=gaussian_noise(x, torch.Generator().manual_seed(0)), callback=callback
    )
    assert calls == [0, 1, 2]
    # the returned sample is the state after step 2 (at sigma_3), i.e. a run over sigmas[:4]
    partial = SAMPLERS[name](denoiser, x, sig[:4], noise=gaussian_noise(x, torch.Generator().manual_seed(0)))
    if name in ("euler", "heun", "dpmpp_2m_sde"):  # no lower-order-final / end-of-schedule logic
        torch.testing.assert_close(out, partial)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(
    ("sigmas", "match"),
    [
        (torch.tensor([]), "at least 2"),
        (torch.tensor([1.0]), "at least 2"),
        (torch.tensor([[1.0, 0.0]]), "1-D"),
        (torch.tensor([float("nan"), 0.0]), "finite"),
        (torch.tensor([float("inf"), 1.0, 0.0]), "finite"),
        (torch.tensor([1.0, -0.5]), "non-negative"),
        (torch.tensor([1.0, 2.0, 0.0]), "decreasing"),
    ],
)
def test_bad_sigmas_raise(sigmas, match):
    for name in ("euler", "dpmpp_2m_sde", "uni_pc"):
        with pytest.raises(ValueError, match=match):
            SAMPLERS[name](
                default_test_mixture().denoiser(VE), start(), sigmas, noise=lambda s, sn: torch.zeros(4, 2)
            )


def test_flow_sigma_above_one_raises():
    with pytest.raises(ValueError, match="flow"):
        SAMPLERS["euler"](default_test_mixture().denoiser(FLOW), start(), torch.tensor([2.0, 0.0]))


@pytest.mark.parametrize("name", COMFY_NAMES)
def test_float32_arithmetic_and_dtype_round_trip(name):
    """A bfloat16 input is integrated in float32 (the denoiser sees float32) and returned as bfloat16;
    float64 inputs stay float64 throughout."""
    mixture = default_test_mixture()
    seen_dtypes = set()

    def denoiser(x, sigma, cond=None):
        seen_dtypes.add((x.dtype, sigma.dtype, tuple(sigma.shape)))
        return mixture.posterior_mean(x, sigma, VE).to(torch.bfloat16)  # a low-precision model

    x = start().to(torch.bfloat16)
    out = SAMPLERS[name](denoiser, x, sigmas_ve(), noise=gaussian_noise(x, torch.Generator().manual_seed(0)))
    assert out.dtype == torch.bfloat16
    assert seen_dtypes == {(torch.float32, torch.float32, (4,))}
    ref = SAMPLERS[name](
        mixture.denoiser(VE),
        start(),
        sigmas_ve(),
        noise=gaussian_noise(start(), torch.Generator().manual_seed(0)),
    )
    assert ref.dtype == torch.float64
    assert (out.double() - ref).abs().max() < 0.1  # bf16 model error, not garbage


def test_flow_sampling_from_sigma_one_is_finite():
    """Every sampler starts a flow run at sigma = 1 (lambda = -inf) without dividing by zero."""
    mixture = default_test_mixture()
    sig = torch.cat([torch.linspace(1.0, 0.05, 8, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)])
    x = torch.randn(16, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for name, fn in SAMPLERS.items():
        out = fn(mixture.denoiser(FLOW), x, sig, noise=gaussian_noise(x, torch.Generator().manual_seed(1)))
        assert torch.isfinite(out).all(), name
        assert (out - mixture.mean()).abs().max() < 5, name


def test_unknown_option_is_rejected():
    with pytest.raises(TypeError):
        SAMPLERS["euler"](default_test_mixture().denoiser(VE), start(), sigmas_ve(), etaa=1.0)
