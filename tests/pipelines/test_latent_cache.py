"""The latent cache's scale: the latents training draws (``mean + std * eps``) come out unit-variance."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from latentworks.pipelines.latents import load_latent_cache, save_latent_cache


def test_the_scale_counts_the_posterior_noise(tmp_path: Path) -> None:
    """Means of std 3 and a posterior std of 4: the draws have std sqrt(3^2 + 4^2) = 5, so the scale is
    1/5 (from the means alone it would be 1/3 and the draws' std 5/3)."""
    g = torch.Generator().manual_seed(0)
    mean = 3.0 * torch.randn(256, 4, 8, 8, generator=g) + 0.5
    std = torch.full_like(mean, 4.0)
    made = save_latent_cache(tmp_path / "lat.safetensors", mean, std, ["x"] * 256)
    back = load_latent_cache(tmp_path / "lat.safetensors")
    assert made.scale == back.scale == pytest.approx(1 / 5, rel=0.01)
    assert back.shift == pytest.approx(0.5, abs=0.02)
    z = back.sample(torch.arange(256), torch.Generator().manual_seed(1))
    assert float(z.std()) == pytest.approx(1.0, abs=0.02)
