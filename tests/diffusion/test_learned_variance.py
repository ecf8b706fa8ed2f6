"""The learned-range DDPM sampler and unCLIP's stage wrappers: one step against diffusers' UnCLIPScheduler
(float64 tables, no clipping), the posterior-variance limit against ``sample_ddpm``, the timesteps against
``UnCLIPScheduler.set_timesteps``, and the guidance / clamp / last-step wrappers on toy denoisers."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from latentworks.diffusion.denoisers import VE, DiscreteModelSampling, make_betas
from latentworks.diffusion.guidance import GuidedCond
from latentworks.diffusion.learned_variance import (
    ClampedDenoiser,
    GuidedVarianceDenoiser,
    LastStepDenoiser,
    LearnedRangeEpsDenoiser,
    sample_ddpm_learned_range,
    spaced_sigmas,
    spaced_timesteps,
)
from latentworks.diffusion.samplers import gaussian_noise, sample_ddpm

diffusers = pytest.importorskip("diffusers")


class _Fixed(nn.Module):
    """A 'network' that outputs a fixed (B, 2C, ...) tensor whatever it is given."""

    def __init__(self, out: Tensor) -> None:
        super().__init__()
        self.out = out

    def forward(self, x: Tensor, t: Tensor, cond: object = None) -> Tensor:
        return self.out.to(x.dtype)


@pytest.mark.parametrize("steps", [2, 7, 25, 64])
def test_spaced_timesteps_match_unclip_scheduler(steps: int) -> None:
    scheduler = diffusers.UnCLIPScheduler()
    scheduler.set_timesteps(steps)
    assert spaced_timesteps(steps) == scheduler.timesteps.tolist()
    with pytest.raises(ValueError, match="between 2 and 1000"):
        spaced_timesteps(1)


def test_one_learned_range_step_matches_unclip_scheduler() -> None:
    torch.manual_seed(0)
    betas = make_betas("cosine")  # float64 tables on both sides
    sampling = DiscreteModelSampling(betas)
    scheduler = diffusers.UnCLIPScheduler(variance_type="learned_range", clip_sample=False)
    scheduler.betas, scheduler.alphas = betas.clone(), 1 - betas
    scheduler.alphas_cumprod, scheduler.one = (
        torch.cumprod(1 - betas, 0),
        torch.tensor(1.0, dtype=torch.float64),
    )
    t, prev = 700, 350
    x_vp = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    out = torch.cat(
        [torch.randn(2, 3, 4, 4), torch.rand(2, 3, 4, 4) * 2 - 1], 1
    ).double()  # eps, v in [-1, 1]
    theirs = scheduler.step(
        out, t, x_vp, prev_timestep=prev, generator=torch.Generator().manual_seed(3)
    ).prev_sample

    sigmas = torch.cat([sampling.sigmas[[t, prev]], torch.zeros(1, dtype=torch.float64)])
    denoiser = LearnedRangeEpsDenoiser(_Fixed(out), sampling)
    draws = gaussian_noise(x_vp, torch.Generator().manual_seed(3))
    seen: list[Tensor] = []
    sample_ddpm_learned_range(
        denoiser, x_vp * math.sqrt(1 + float(sigmas[0]) ** 2), sigmas, noise=draws,
        callback=lambda info: seen.append(info.x) or False,
    )  # fmt: skip
    ours_vp = seen[0] / math.sqrt(1 + float(sigmas[1]) ** 2)
    torch.testing.assert_close(ours_vp, theirs, rtol=1e-9, atol=1e-9)


def test_without_a_variance_it_is_ddpm() -> None:
    sampling = DiscreteModelSampling(make_betas("cosine"))
    sigmas = spaced_sigmas(sampling, 5)

    def denoiser(x: Tensor, sigma: Tensor, cond: object = None) -> Tensor:
        return torch.tanh(x / (1 + sigma.view(-1, 1)))

    denoiser.interpolation = VE  # type: ignore[attr-defined]
    x = torch.randn(3, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * float(sigmas[0])
    a = sample_ddpm_learned_range(
        denoiser, x, sigmas, noise=gaussian_noise(x, torch.Generator().manual_seed(2))
    )
    b = sample_ddpm(denoiser, x, sigmas, noise=gaussian_noise(x, torch.Generator().manual_seed(2)))
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_guidance_clamp_and_last_step_wrappers() -> None:
    sampling = DiscreteModelSampling(make_betas("cosine"))

    class Net(nn.Module):  # eps = cond (B, 1, 1) broadcast; v = 10 * cond
        def forward(self, x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
            return torch.cat([cond.expand_as(x), 10 * cond.expand_as(x)], 1)

    inner = LearnedRangeEpsDenoiser(Net(), sampling)
    x, sigma = torch.zeros(1, 1, 2), torch.tensor([2.0])
    cond, uncond = torch.full((1, 1, 1), 0.5), torch.full((1, 1, 1), -0.25)
    x0, v = GuidedVarianceDenoiser(inner, 3.0).with_variance(x, sigma, GuidedCond(cond, uncond))
    # x0 = x - sigma * eps: guided eps = -0.25 + 3 * 0.75 = 2.0 -> x0 = -4; v from the conditional branch
    torch.testing.assert_close(x0, torch.full_like(x, -4.0))
    torch.testing.assert_close(v, torch.full_like(x, 5.0))
    clamped, v2 = ClampedDenoiser(GuidedVarianceDenoiser(inner, 3.0), 1.5).with_variance(
        x, sigma, GuidedCond(cond, uncond)
    )
    torch.testing.assert_close(clamped, torch.full_like(x, -1.5))
    assert v2 is not None
    first = LearnedRangeEpsDenoiser(Net(), sampling)
    last = ClampedDenoiser(first, 0.1)
    switch = LastStepDenoiser(first, last, sigma_last=0.5)
    assert (
        switch(x, torch.tensor([0.5]), cond).abs().max().item() <= 0.1 + 1e-6
    )  # the last network at sigma_last
    assert switch(x, torch.tensor([0.6]), cond).abs().max().item() > 0.1
