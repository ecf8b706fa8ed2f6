"""The super-resolution stage's conditioning: noise augmentation and how the U-Net reads it."""

from __future__ import annotations

import pytest
import torch

from latentworks.diffusion.conditioning import CONCAT_KEY, Conditioning
from latentworks.models.superres import (
    PRESETS,
    augment_low_res,
    check_superres_config,
    superres_conditioning,
)
from latentworks.models.unet import CLASS_INPUT_KEY, UNet
from latentworks.models.unet import PRESETS as UNET_PRESETS


def _images(b: int = 3, size: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_level_zero_leaves_the_low_res_image_exactly() -> None:
    low, noise = _images(), torch.randn(3, 3, 8, 8)
    out = augment_low_res(low, torch.zeros(3), noise)
    assert torch.equal(out, low)


def test_levels_mix_image_and_noise_per_sample() -> None:
    low, noise = _images(), torch.randn(3, 3, 8, 8, dtype=torch.float32)
    out = augment_low_res(low, torch.tensor([0.0, 0.25, 1.0]), noise)
    assert torch.equal(out[0], low[0])
    torch.testing.assert_close(out[1], 0.75 * low[1] + 0.25 * noise[1], rtol=0, atol=1e-6)
    torch.testing.assert_close(out[2], noise[2], rtol=0, atol=0)


def test_levels_outside_zero_one_are_refused() -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        augment_low_res(_images(), torch.tensor([0.0, 0.5, 1.5]), torch.randn(3, 3, 8, 8))


def test_conditioning_upsamples_a_flat_image_to_the_same_flat_image_at_level_zero() -> None:
    # Bicubic upsampling of a constant image is that constant (the kernel's weights sum to 1).
    low = torch.full((2, 3, 4, 4), 0.3)
    low[1] = -0.7
    cond = Conditioning(tokens=torch.zeros(2, 2, 16))
    c = superres_conditioning(cond, low, torch.zeros(2), torch.randn(2, 3, 8, 8), size=8, level_dim=16)
    concat = c.extra[CONCAT_KEY]
    assert concat.shape == (2, 3, 8, 8)
    torch.testing.assert_close(concat[0], torch.full((3, 8, 8), 0.3), rtol=0, atol=1e-6)
    torch.testing.assert_close(concat[1], torch.full((3, 8, 8), -0.7), rtol=0, atol=1e-6)
    assert c.extra[CLASS_INPUT_KEY].shape == (2, 16)


def test_the_network_reads_both_the_low_res_image_and_the_level() -> None:
    torch.manual_seed(0)
    net = UNet(PRESETS["tiny-sr"]).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # zero-initialised layers would hide an input
    x, low, noise = _images(2, 8, 1), _images(2, 4, 2), torch.randn(2, 3, 8, 8)
    cond = Conditioning(tokens=torch.randn(2, 3, 16))
    t = torch.full((2,), 500.0)

    def run(low_: torch.Tensor, level: float) -> torch.Tensor:
        c = superres_conditioning(cond, low_, torch.full((2,), level), noise, size=8, level_dim=16)
        with torch.no_grad():
            return net(x, t, c)

    base = run(low, 0.0)
    assert base.shape == (2, 3, 8, 8)
    assert (run(low, 0.0) - base).abs().max() == 0
    assert (run(-low, 0.0) - base).abs().max() > 1e-3  # another low-res image
    assert (run(low, 0.3) - base).abs().max() > 1e-3  # another level (its embedding and the noise)


def test_a_text_to_image_unet_is_not_a_superres_model() -> None:
    with pytest.raises(ValueError, match="input channels"):
        check_superres_config(UNET_PRESETS["tiny"])
