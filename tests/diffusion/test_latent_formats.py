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
    if fmt.channel_mean:  # per-channel statistics (Qwen-Image): (z - mean_c) / std_c * scale
        mean = torch.tensor(fmt.channel_mean, dtype=z.dtype)[:, None, None]
        std = torch.tensor(fmt.channel_std, dtype=z.dtype)[:, None, None]
        torch.testing.assert_close(zin, (z - mean) / std * fmt.scale_factor)
    else:
        torch.testing.assert_close(zin, (z - fmt.shift_factor) * fmt.scale_factor)
    torch.testing.assert_close(fmt.process_out(zin), z, rtol=1e-12, atol=1e-12)


def test_preview_is_linear_map_to_uint8() -> None:
    """SDXL's preview is ``rgb = z . factors + bias``, mapped from [-1, 1] to [0, 255], pixel by pixel. The
    expected pixels are worked by hand from the published SDXL factors (rows per latent channel)
    (.3651 .4232 .4341), (-.2533 -.0042 .1068), (.1076 .1111 -.0362), (-.3165 -.2492 -.2188) and bias
    (.1084 -.0175 -.0011)."""
    fmt = families.get("sdxl").latent_format
    z = torch.zeros(1, 4, 2, 3)
    z[0, :, 1, 2] = torch.tensor([1.0, -1.0, 0.5, 2.0])
    img = fmt.preview(z)
    assert img.shape == (1, 2, 3, 3) and img.dtype == torch.uint8
    # z = 0: (1 + bias) * 127.5 = (141.32, 125.27, 127.36).
    assert img[0, 0, 0].tolist() == [141, 125, 127] and bool((img[0, 0] == img[0, 0, 0]).all())
    # R = .3651 + .2533 + .0538 - .6330 + .1084 = .1476 -> 146.32; G = .4232 + .0042 + .05555 - .4984 - .0175
    # = -.03295 -> 123.30; B = .4341 - .1068 - .0181 - .4376 - .0011 = -.1295 -> 110.99.
    assert img[0, 1, 2].tolist() == [146, 123, 111]
    # 100 x that latent: R = 100 * .0392 + .1084 > 1, G and B < -1: saturated; zero pixels unchanged.
    big = fmt.preview(100 * z)
    assert big[0, 1, 2].tolist() == [255, 0, 0] and torch.equal(big[0, 0], img[0, 0])
    # Pixel by pixel: moving latent pixels moves preview pixels the same way.
    r = torch.randn(2, 4, 5, 7, generator=torch.Generator().manual_seed(1)) * 0.5
    perm = torch.randperm(35, generator=torch.Generator().manual_seed(2))
    moved = r.flatten(2)[:, :, perm].reshape(2, 4, 5, 7)
    assert torch.equal(fmt.preview(moved), fmt.preview(r).flatten(1, 2)[:, perm].reshape(2, 5, 7, 3))


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
