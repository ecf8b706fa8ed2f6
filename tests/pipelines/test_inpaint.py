"""Inpainting and outpainting through the pipeline on the tiny random model (any model: latent noise mask), and
the mask helpers of ``pipelines.inpaint``."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from latentworks.diffusion.denoisers import DiscreteModelSampling
from latentworks.diffusion.guidance import InpaintDenoiser
from latentworks.pipelines.inpaint import (
    MaskSizeWarning,
    blur_mask,
    composite,
    grow_mask,
    mask_to_tensor,
    pad_image_for_outpaint,
)

SIZE = 16
RUN = dict(steps=3, guidance=3.0, sampler="euler", scheduler="normal", seed=11)


def _image() -> Image.Image:
    rng = np.random.default_rng(1)
    return Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))


def _square_mask() -> Image.Image:
    m = np.zeros((SIZE, SIZE), dtype=np.uint8)
    m[4:12, 4:12] = 255
    return Image.fromarray(m, mode="L")


def _px(im: Image.Image) -> np.ndarray:
    return np.asarray(im, dtype=np.int16)


def test_mask_zero_gives_the_input_back_up_to_vae_round_trip(tiny_pipe) -> None:  # noqa: ANN001
    image = _image()
    out = tiny_pipe("a cat", image=image, mask=Image.new("L", (SIZE, SIZE), 0), **RUN)
    round_trip = tiny_pipe.encode_images([image], (SIZE, SIZE))
    assert torch.allclose(out.latents, round_trip, atol=1e-5)
    assert np.abs(_px(out.images[0]) - _px(tiny_pipe.decode_latents(round_trip)[0])).max() <= 1


def test_mask_one_at_full_strength_equals_plain_generation(tiny_pipe) -> None:  # noqa: ANN001
    plain = tiny_pipe("a cat", width=SIZE, height=SIZE, **RUN)
    masked = tiny_pipe("a cat", image=_image(), mask=Image.new("L", (SIZE, SIZE), 255), **RUN)
    assert torch.allclose(masked.latents, plain.latents, atol=1e-6)
    # and it really depends on the mask: half a mask gives other latents
    half = tiny_pipe("a cat", image=_image(), mask=_square_mask(), **RUN)
    assert (half.latents - plain.latents).abs().max() > 1e-3


def test_composite_keeps_unmasked_pixels_exactly_and_changes_masked_ones(tiny_pipe) -> None:  # noqa: ANN001
    image, mask = _image(), _square_mask()
    out = tiny_pipe("a cat", image=image, mask=mask, composite=True, **RUN).images[0]
    keep = np.asarray(mask) == 0
    assert (np.asarray(out)[keep] == np.asarray(image)[keep]).all()
    assert np.abs(_px(out)[~keep] - _px(image)[~keep]).mean() > 5
    # without compositing the kept area is only the VAE's reconstruction, not the pixels themselves
    plain = tiny_pipe("a cat", image=image, mask=mask, **RUN).images[0]
    assert (np.asarray(plain)[keep] != np.asarray(image)[keep]).any()


def test_latent_noise_mask_keeps_the_unmasked_latents(tiny_pipe) -> None:  # noqa: ANN001
    image = _image()
    m = np.zeros((SIZE, SIZE), dtype=np.uint8)
    m[:, 8:] = 255  # right half (latent columns 4..7 with the f2 VAE)
    out = tiny_pipe("a cat", image=image, mask=Image.fromarray(m, mode="L"), **RUN)
    known = tiny_pipe.encode_images([image], (SIZE, SIZE))
    assert torch.allclose(out.latents[..., :4], known[..., :4], atol=1e-5)
    assert (out.latents[..., 4:] - known[..., 4:]).abs().max() > 1e-2


def test_differential_diffusion_thresholds_the_mask_per_step() -> None:
    ms = DiscreteModelSampling()
    mask = torch.tensor([0.0, 0.25, 0.5, 1.0]).view(1, 1, 1, 4)
    x0 = torch.zeros(1, 1, 1, 4)
    calls = []

    def denoiser(x: torch.Tensor, sigma: torch.Tensor, cond: object = None) -> torch.Tensor:
        calls.append(x)
        return torch.ones_like(x)

    denoiser.model_sampling = ms  # type: ignore[attr-defined]
    sigma_from, sigma_to = 10.0, 0.1
    d = InpaintDenoiser(denoiser, x0, mask, torch.zeros_like(x0), differential=(sigma_from, sigma_to))
    # threshold = (t(sigma) - t(sigma_to)) / (t(sigma_from) - t(sigma_to)), linear in the model's timestep
    t_from, t_to = (float(ms.timestep(torch.tensor(s))) for s in (sigma_from, sigma_to))
    for sigma in (10.0, 2.0, 0.5, 0.2):
        threshold = (float(ms.timestep(torch.tensor(sigma))) - t_to) / (t_from - t_to)
        expected = (mask >= threshold).float()
        assert torch.equal(d.step_mask(sigma), expected), sigma
        out = d(torch.full_like(x0, 5.0), torch.tensor([sigma]))
        assert torch.equal(out, expected)  # generated (1) where the step's mask is on, known (0) elsewhere
    assert d.step_mask(10.0).sum() == 1  # only fully white regenerates at the first step
    assert d.step_mask(0.1).sum() == 4  # everything by the end of the schedule


def test_differential_pipeline_keeps_black_and_changes_white(tiny_pipe) -> None:  # noqa: ANN001
    image = _image()
    m = np.zeros((SIZE, SIZE), dtype=np.uint8)
    m[:, 8:] = 255
    out = tiny_pipe("a cat", image=image, mask=Image.fromarray(m, mode="L"), differential=True, **RUN)
    known = tiny_pipe.encode_images([image], (SIZE, SIZE))
    assert torch.allclose(out.latents[..., :4], known[..., :4], atol=1e-5)
    assert (out.latents[..., 4:] - known[..., 4:]).abs().max() > 1e-2
    assert out.parameters["inpaint"]["differential"] is True


def test_outpaint_by_padding(tiny_pipe) -> None:  # noqa: ANN001
    small = _image().resize((8, 8))
    padded, mask = pad_image_for_outpaint(small, left=4, top=4, right=4, bottom=4)
    assert padded.size == (SIZE, SIZE) and mask.size == (SIZE, SIZE)
    m = np.asarray(mask)
    assert (m[4:12, 4:12] == 0).all() and (m[:4] == 255).all() and (m[:, 12:] == 255).all()
    out = tiny_pipe("a cat", image=padded, mask=mask, composite=True, **RUN).images[0]
    assert (np.asarray(out)[4:12, 4:12] == np.asarray(small)).all()  # the original stays, exactly


def test_mask_of_another_size_is_resized_with_a_warning() -> None:
    with pytest.warns(MaskSizeWarning, match="8x8 but the image is 16x16"):
        m = mask_to_tensor(Image.new("L", (8, 8), 255), (SIZE, SIZE))
    assert m.shape == (1, 1, SIZE, SIZE) and bool((m == 1).all())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mask_to_tensor(Image.new("L", (SIZE, SIZE), 0), (SIZE, SIZE))  # same size: no warning
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        mask_to_tensor(torch.full((4, 4), 2.0), (4, 4))


def test_grow_and_blur() -> None:
    m = torch.zeros(1, 1, 9, 9)
    m[..., 4, 4] = 1
    grown = grow_mask(m, 2)
    assert grown.sum() == 25 and grown[..., 2:7, 2:7].min() == 1  # a 5x5 square
    assert torch.equal(grow_mask(grown, -2), m)  # erosion undoes it
    blurred = blur_mask(m, 1.0)
    assert abs(float(blurred.sum()) - 1.0) < 1e-5  # mass kept away from the borders
    ratio = float(blurred[..., 4, 5] / blurred[..., 4, 4])
    assert abs(ratio - float(np.exp(-0.5))) < 1e-5  # Gaussian with sigma 1 pixel
    assert torch.equal(blur_mask(m, 0), m)


def test_composite_formula() -> None:
    gen, orig = torch.full((1, 3, 2, 2), 1.0), torch.full((1, 3, 2, 2), -1.0)
    mask = torch.tensor([[0.0, 0.25], [0.5, 1.0]]).view(1, 1, 2, 2)
    out = composite(gen, orig, mask)
    assert torch.allclose(out[0, 0], torch.tensor([[-1.0, -0.5], [0.0, 1.0]]))


def test_bad_inpaint_arguments(tiny_pipe) -> None:  # noqa: ANN001
    with pytest.raises(ValueError, match="needs the image"):
        tiny_pipe("a cat", mask=_square_mask(), **RUN)
    with pytest.raises(ValueError, match="need a mask"):
        tiny_pipe("a cat", image=_image(), composite=True, **RUN)
    with pytest.raises(ValueError, match="once"):
        tiny_pipe("a cat", image=_image(), init_image=_image(), **RUN)


def test_fill_concat_folds_each_latent_cells_pixels_in_row_major_order() -> None:
    from latentworks.pipelines.inpaint import fill_concat

    mask = torch.zeros(1, 1, 4, 6)
    mask[0, 0, 1, 0] = 1  # row 1, column 0 of latent cell (0, 0) with f = 2 -> channel 1 * 2 + 0 = 2
    mask[0, 0, 3, 5] = 1  # row 1, column 1 of cell (1, 2) -> channel 3
    latent = torch.full((1, 16, 2, 3), 7.0)
    out = fill_concat(mask, latent)
    assert out.shape == (1, 20, 2, 3) and bool((out[:, :16] == 7).all())
    folded = out[0, 16:]
    assert folded.sum() == 2 and folded[2, 0, 0] == 1 and folded[3, 1, 2] == 1


def test_differential_strength_blends_the_step_mask_with_the_soft_one() -> None:
    ms = DiscreteModelSampling()

    def denoiser(x: torch.Tensor, sigma: torch.Tensor, cond: object = None) -> torch.Tensor:
        return x

    denoiser.model_sampling = ms  # type: ignore[attr-defined]
    mask = torch.tensor([0.0, 0.25, 0.5, 1.0]).view(1, 1, 1, 4)
    x0 = torch.zeros(1, 1, 1, 4)
    full = InpaintDenoiser(denoiser, x0, mask, x0, differential=(10.0, 0.1))
    half = InpaintDenoiser(denoiser, x0, mask, x0, differential=(10.0, 0.1), differential_strength=0.25)
    binary = full.step_mask(2.0)
    assert torch.allclose(half.step_mask(2.0), 0.25 * binary + 0.75 * mask)
    with pytest.raises(ValueError, match="differential_strength"):
        InpaintDenoiser(denoiser, x0, mask, x0, differential=(10.0, 0.1), differential_strength=2.0)
