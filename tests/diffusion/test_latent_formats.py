"""Latent formats: published scale/shift values, round trips, previews."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from latentworks import families
from latentworks.diffusion.latent_formats import LatentFormat

# every registered family's latent format, by family name
LATENT_FORMATS = {f.name: f.latent_format for f in families.REGISTRY if f.latent_format is not None}


def test_published_scale_and_shift() -> None:
    assert (
        families.get("sd15").latent_format.scale_factor == 0.18215
        and families.get("sd15").latent_format.shift_factor == 0
    )
    assert families.get("sdxl").latent_format.scale_factor == 0.13025
    assert (
        families.get("sd3").latent_format.scale_factor,
        families.get("sd3").latent_format.shift_factor,
    ) == (1.5305, 0.0609)
    assert (
        families.get("flux").latent_format.scale_factor,
        families.get("flux").latent_format.shift_factor,
    ) == (0.3611, 0.1159)
    for name, fmt in LATENT_FORMATS.items():
        assert len(fmt.rgb_factors) == fmt.channels, name


@pytest.mark.parametrize("name", list(LATENT_FORMATS))
def test_process_in_out_round_trip_and_formula(name: str) -> None:
    fmt = LATENT_FORMATS[name]
    z = torch.randn(2, fmt.channels, 5, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    zin = fmt.process_in(z)
    torch.testing.assert_close(zin, (z - fmt.shift_factor) * fmt.scale_factor)
    torch.testing.assert_close(fmt.process_out(zin), z, rtol=1e-12, atol=1e-12)


def test_preview_is_linear_map_to_uint8() -> None:
    fmt = families.get("sdxl").latent_format
    z = torch.randn(2, 4, 5, 7, generator=torch.Generator().manual_seed(1)) * 2
    img = fmt.preview(z)
    assert img.shape == (2, 5, 7, 3) and img.dtype == torch.uint8
    f = torch.tensor(fmt.rgb_factors)
    rgb = torch.einsum("bchw,ck->bhwk", z, f) + torch.tensor(fmt.rgb_bias)
    expected = ((rgb + 1) / 2 * 255).round().clamp(0, 255).to(torch.uint8)
    assert torch.equal(img, expected)
    assert img.min() == 0 and img.max() == 255  # large latents saturate


def test_preview_of_a_channel_follows_its_factor_row() -> None:
    fmt = families.get("sd15").latent_format
    z = torch.zeros(1, 4, 2, 2)
    z[:, 3] = 1.0  # the 4th SD channel is mostly "negative blue"
    px = fmt.preview(z)[0, 0, 0].int()
    expected = [round((1 + v) * 127.5) for v in fmt.rgb_factors[3]]
    assert px.tolist() == expected and px[2] < px[0]


def test_errors_and_frozen() -> None:
    fmt = families.get("flux").latent_format
    assert fmt is not None
    with pytest.raises(ValueError, match=r"\(B, 16"):
        fmt.process_in(torch.zeros(1, 4, 8, 8))
    with pytest.raises(ValueError, match="3 \\(R, G, B\\)"):
        LatentFormat(channels=2, scale_factor=1.0, rgb_factors=((1.0, 0.0, 0.0),))
    with pytest.raises(ValueError, match="no rgb_factors"):
        LatentFormat(channels=2, scale_factor=1.0).preview(torch.zeros(1, 2, 2, 2))
    with pytest.raises(dataclasses.FrozenInstanceError):
        fmt.scale_factor = 1.0  # type: ignore[misc]
