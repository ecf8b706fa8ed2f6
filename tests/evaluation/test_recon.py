import math

import pytest
import torch

from latentworks.nn.image_metrics import psnr, psnr_of_constant_offset, ssim


def test_identical_images():
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    assert torch.isinf(psnr(x, x)).all()
    assert torch.allclose(ssim(x, x), torch.ones(2, dtype=torch.float64))


@pytest.mark.parametrize("offset", [0.01, 0.1, 0.5])
def test_constant_offset_psnr(offset):
    x = torch.rand(3, 3, 8, 8) * 2 - 1
    got = psnr(x, x + offset, data_range=2.0)
    want = 10 * math.log10(4 / offset**2)
    assert torch.allclose(got, torch.full((3,), want, dtype=torch.float64), atol=1e-6)
    assert abs(psnr_of_constant_offset(offset) - want) < 1e-12


def test_ssim_constant_offset_analytic():
    # SSIM of x vs x + c: the structure/contrast term is exactly 1 (same variances and covariance),
    # luminance term is (2 mu (mu + c) + C1) / (mu^2 + (mu+c)^2 + C1) per window.
    torch.manual_seed(0)
    x = (torch.full((1, 1, 11, 11), 0.2) + 0.05 * torch.randn(1, 1, 11, 11)).double()
    c = 0.3
    got = ssim(x, x + c, data_range=2.0).item()
    from latentworks.nn.image_metrics import _gaussian_window

    w = _gaussian_window(11, 1.5, 1, torch.float64)
    mu = (x.double() * w).sum().item()
    c1 = (0.01 * 2) ** 2
    want = (2 * mu * (mu + c) + c1) / (mu**2 + (mu + c) ** 2 + c1)
    assert abs(got - want) < 1e-9


def test_ssim_decreases_with_noise():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(1, 3, 32, 32, generator=g) * 2 - 1
    n = torch.randn(1, 3, 32, 32, generator=g)
    vals = [ssim(x, x + s * n).item() for s in (0.0, 0.05, 0.2, 0.5)]
    assert vals == sorted(vals, reverse=True) and vals[-1] < 0.5
