"""The learned-variance DDPM sampler and diffusers' timestep spacings."""

from __future__ import annotations

import pytest
import torch

from latentworks.diffusion.ddpm import ddpm_timesteps, sample_ddpm_learned_variance, timestep_sigmas
from latentworks.diffusion.denoisers import DiscreteModelSampling, make_betas
from latentworks.diffusion.samplers import sample_ddpm


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("steps", [1, 4, 7, 100])
def test_timesteps_match_diffusers_ddpm_scheduler(spacing: str, steps: int) -> None:
    diffusers = pytest.importorskip("diffusers")
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000, timestep_spacing=spacing)
    scheduler.set_timesteps(steps)
    assert ddpm_timesteps(steps, 1000, spacing) == [int(t) for t in scheduler.timesteps]


def test_timesteps_refuse_bad_input() -> None:
    with pytest.raises(ValueError, match="steps must be between 1 and the 1000"):
        ddpm_timesteps(0)
    with pytest.raises(ValueError, match="unknown timestep spacing 'karras'"):
        ddpm_timesteps(10, spacing="karras")


class _Constant:
    """A variance denoiser predicting x0 = 0.3 * x / (1 + sigma) and a fixed v (an arbitrary smooth map)."""

    interpolation = DiscreteModelSampling.interpolation

    def __init__(self, v: float) -> None:
        self.v = v

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: object = None) -> torch.Tensor:
        return 0.3 * x / (1 + sigma.view(-1, 1))

    def with_variance(self, x: torch.Tensor, sigma: torch.Tensor, cond: object = None):  # noqa: ANN201
        return self(x, sigma), torch.full_like(x, self.v)


def _noise(seed: int):  # noqa: ANN202
    g = torch.Generator().manual_seed(seed)
    return lambda *_: torch.randn(2, 5, generator=g, dtype=torch.float64)


def test_v_minus_one_is_plain_ddpm_and_v_plus_one_uses_beta() -> None:
    sampling = DiscreteModelSampling(make_betas("cosine"))
    sigmas = timestep_sigmas(sampling, ddpm_timesteps(5))
    x = torch.randn(2, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * sigmas[0]
    ours = sample_ddpm_learned_variance(_Constant(-1.0), x, sigmas, noise=_noise(1))
    plain = sample_ddpm(_Constant(-1.0), x, sigmas, noise=_noise(1))
    torch.testing.assert_close(ours, plain, atol=1e-12, rtol=1e-12)

    # one step at v = +1: the VE-space noise std is sqrt(beta_t (1 + sigma'^2)) with beta_t = 1 - abar_t / abar_t'
    s, s_next = float(sigmas[0]), float(sigmas[1])
    zero = lambda *_: torch.zeros(2, 5, dtype=torch.float64)  # noqa: E731
    one = lambda *_: torch.ones(2, 5, dtype=torch.float64)  # noqa: E731
    two = torch.tensor([s, s_next, 0.0], dtype=torch.float64)
    first = lambda noise: sample_ddpm_learned_variance(  # noqa: E731
        _Constant(1.0),
        x,
        two,
        noise=noise,
        callback=lambda info: False,  # stop after the first step
    )
    std = (first(one) - first(zero))[0, 0].item()
    beta = 1 - (1 + s_next**2) / (1 + s**2)
    assert std == pytest.approx((beta * (1 + s_next**2)) ** 0.5, rel=1e-9)


def test_the_sampler_needs_noise_and_a_discrete_model() -> None:
    sigmas = torch.tensor([3.0, 1.0, 0.0])
    with pytest.raises(ValueError, match="noise"):
        sample_ddpm_learned_variance(_Constant(0.0), torch.zeros(1, 2), sigmas)
