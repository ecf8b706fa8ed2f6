"""unCLIP image-embedding math: the cosine noise schedule, noise augmentation and slerp, against closed forms."""

from __future__ import annotations

import math

import pytest
import torch

from latentworks.models.unclip import (
    ImageEmbeddingAugmentor,
    noise_level_of,
    slerp,
    squaredcos_alphas_cumprod,
)


def test_schedule_is_the_cosine_alpha_bar_ratio() -> None:
    acp = squaredcos_alphas_cumprod()
    f = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    for i in (0, 10, 500, 900):
        assert acp[i].item() == pytest.approx(f((i + 1) / 1000) / f(0), rel=1e-9)
    assert acp[-1].item() < 1e-6 and torch.all(acp[1:] < acp[:-1])


def test_augmentation_at_the_last_level_is_almost_pure_noise_around_the_statistics() -> None:
    mean, std = torch.randn(1, 6), torch.rand(1, 6) + 0.5
    aug = ImageEmbeddingAugmentor(mean, std)
    e, noise = torch.randn(2, 6) * 10, torch.randn(2, 6)
    out = aug(e, 999, noise)
    assert out.shape == (2, 12)
    torch.testing.assert_close(out[:, :6], mean + std * noise, atol=5e-3, rtol=0)  # sqrt(abar_999) ~ 5e-5
    mid = aug(e, 500, noise)[:, :6]  # DDPM's q(x_t | x_0) in the normalised space (Ho et al. 2020, eq. 4)
    f = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    abar = f(501 / 1000) / f(0)
    want = (math.sqrt(abar) * (e - mean) / std + math.sqrt(1 - abar) * noise) * std + mean
    torch.testing.assert_close(mid, want, atol=1e-4, rtol=1e-5)
    half = torch.arange(3) / 3.0
    torch.testing.assert_close(out[0, 6:9], torch.cos(999 * torch.exp(-math.log(10000) * half)))
    assert noise_level_of(0.0) == 0 and noise_level_of(1.0) == 999 and noise_level_of(0.5) == 500
    with pytest.raises(ValueError, match=r"\(B, 6\)"):
        aug(torch.zeros(1, 5), 0, torch.zeros(1, 5))


def test_slerp_endpoints_midpoint_and_norms() -> None:
    a, b = torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([[0.0, 2.0, 0.0]])
    torch.testing.assert_close(slerp(a, b, 0.0), a)
    torch.testing.assert_close(slerp(a, b, 1.0), b)
    mid = slerp(a, b, 0.5)  # 45 degrees, length 1.5
    torch.testing.assert_close(mid, torch.tensor([[1.5 / math.sqrt(2), 1.5 / math.sqrt(2), 0.0]]))
    third = slerp(a, b, 1 / 3)  # 30 degrees along the arc
    angle = math.degrees(math.atan2(third[0, 1].item(), third[0, 0].item()))
    assert angle == pytest.approx(30.0, abs=1e-5)
    torch.testing.assert_close(slerp(a, 3 * a, 0.5), 2 * a)  # parallel: linear
