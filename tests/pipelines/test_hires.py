"""Hires fix (two passes) on the tiny model: the second pass starts from the upscaled first pass."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

RUN = dict(steps=3, guidance=3.0, sampler="euler", scheduler="normal")


def test_latent_hires_second_pass_starts_from_the_upscaled_first_pass(tiny_pipe) -> None:  # noqa: ANN001
    first = tiny_pipe("a cat", seed=3, **RUN)
    up = F.interpolate(first.latents, scale_factor=2, mode="bilinear", align_corners=False)
    light = tiny_pipe("a cat", seed=3, hires_scale=2, hires_denoise=0.002, hires_steps=1, **RUN)
    assert light.latents.shape == up.shape and light.images[0].size == (32, 32)
    # a tiny denoise leaves the upscaled latents almost as they were; a full one does not
    light_change = float((light.latents - up).abs().mean())
    assert light_change < 0.03
    full = tiny_pipe("a cat", seed=3, hires_scale=2, hires_denoise=1.0, **RUN)
    assert float((full.latents - up).abs().mean()) > 5 * light_change
    assert light.parameters["hires"] == {"scale": 2, "denoise": 0.002, "upscale": "latent", "steps": 1}
    assert light.parameters["width"] == 32


def test_pixel_hires_keeps_the_seeding_rule(tiny_pipe) -> None:  # noqa: ANN001
    both = tiny_pipe("a cat", seed=7, batch=2, hires_scale=1.5, hires_upscale="pixel", **RUN)
    second = tiny_pipe("a cat", seed=8, hires_scale=1.5, hires_upscale="pixel", **RUN)
    assert both.latents.shape[-2:] == (12, 12)  # 16 px * 1.5 = 24 px, f2 VAE
    assert torch.allclose(both.latents[1:], second.latents, atol=1e-5)


def test_bad_hires_options(tiny_pipe) -> None:  # noqa: ANN001
    with pytest.raises(ValueError, match="hires_denoise must be in"):
        tiny_pipe("a cat", hires_scale=2, hires_denoise=0, **RUN)
    with pytest.raises(ValueError, match="no such file"):
        tiny_pipe("a cat", hires_scale=2, hires_upscale="missing.safetensors", **RUN)
