"""``latentworks train --task superres``: a few steps on tiny images, the crop/conditioning pairing, the
stage saved and loaded back, and clear errors."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from helpers import HashTextEncoder, make_latent_cache, make_square_images  # noqa: E402

from latentworks.checkpoints.io import load_state_dict  # noqa: E402
from latentworks.diffusion.conditioning import CONCAT_KEY, Conditioning  # noqa: E402
from latentworks.models.superres import PRESETS  # noqa: E402
from latentworks.models.unet import PRESETS as UNET_PRESETS  # noqa: E402
from latentworks.pipelines.superres import load_superres_stage  # noqa: E402
from latentworks.training.diffusion import DiffusionTrainConfig, train_diffusion  # noqa: E402
from latentworks.training.superres import PixelPairs, load_pixel_pairs  # noqa: E402


def _cfg(root: Path, name: str = "run", **kw) -> DiffusionTrainConfig:  # noqa: ANN003
    base = dict(
        latents=root / "d.npz",
        out=root / name,
        task="superres",
        model=PRESETS["tiny-sr"],
        steps=3,
        batch_size=4,
        log_every=1,
        sample_every=3,
        checkpoint_every=3,
        progress=False,
        sample_steps=2,
        crop=8,
        lr=1e-3,
    )
    base.update(kw)
    return DiffusionTrainConfig(**base)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    make_square_images(tmp_path / "d.npz", n=16, size=16)
    return tmp_path


def test_a_few_steps_train_and_the_stage_loads_back(data: Path) -> None:
    r = train_diffusion(_cfg(data), text_encoder=HashTextEncoder())
    assert r.step == 3 and all(torch.isfinite(torch.tensor(r.losses)))
    run = data / "run"
    assert (run / "samples" / "step_0000003.png").is_file()
    stage = load_superres_stage(run)
    assert (stage.low_size, stage.size) == (8, 16)  # the whole image, not the 8 px training crop
    saved = load_state_dict(run / "model.safetensors")
    for name, p in stage.model.denoiser_net.state_dict().items():
        assert torch.equal(p, saved[name]), name
    enc = HashTextEncoder()
    low = torch.rand(2, 3, 8, 8) * 2 - 1
    a = stage.upscale(low, enc.encode(["red", "blue"]), None, [5, 6], steps=2)
    b = stage.upscale(low, enc.encode(["red", "blue"]), None, [5, 6], steps=2)
    assert a.shape == (2, 3, 16, 16) and torch.equal(a, b)
    c = stage.upscale(low, enc.encode(["red", "blue"]), None, [7, 8], steps=2)
    assert not torch.equal(a, c)


def test_resume_replays_the_straight_run(data: Path) -> None:
    enc = HashTextEncoder()
    straight = train_diffusion(
        _cfg(data, "a", steps=3, checkpoint_every=2, sample_every=100), text_encoder=enc
    )
    train_diffusion(_cfg(data, "b", steps=2, checkpoint_every=2, sample_every=100), text_encoder=enc)
    resumed = train_diffusion(
        _cfg(data, "b", steps=3, checkpoint_every=2, sample_every=100, resume=True), text_encoder=enc
    )
    assert resumed.losses == straight.losses[2:]


def test_crops_of_image_and_low_res_input_come_from_the_same_place() -> None:
    g = torch.Generator().manual_seed(0)
    high = torch.rand(5, 3, 16, 16, generator=g) * 2 - 1
    low = torch.rand(5, 3, 8, 8, generator=g) * 2 - 1
    pairs = PixelPairs(high=high, low=low, captions=["x"] * 5, max_level=0.0, level_dim=8, crop=8)
    idx = torch.tensor([4, 1, 3])
    step = torch.Generator().manual_seed(3)
    x0 = pairs.sample(idx, step)
    cond = pairs.condition(Conditioning(tokens=torch.zeros(3, 1, 4)), idx, step)
    concat = cond.extra[CONCAT_KEY]  # level 0: the upsampled low-res crop, unchanged
    assert x0.shape == concat.shape == (3, 3, 8, 8)
    full = pairs.low_up[idx]
    for k in range(3):
        where = [
            (y, x)
            for y in range(9)
            for x in range(9)
            if torch.equal(high[idx[k]][:, y : y + 8, x : x + 8], x0[k])
        ]
        assert len(where) == 1
        y, x = where[0]
        assert torch.equal(concat[k], full[k][:, y : y + 8, x : x + 8])


def test_low_res_images_are_the_lanczos_halves(data: Path) -> None:
    from PIL import Image

    from latentworks.data.folder import load_dataset

    pairs = load_pixel_pairs(data / "d.npz", max_level=0.5, level_dim=8)
    ds = load_dataset(data / "d.npz", split="train")
    want = Image.fromarray(ds.images[2]).resize((8, 8), Image.Resampling.LANCZOS)
    got = ((pairs.low[2] + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    assert (got == np.asarray(want)).all()


def test_bad_inputs_are_clear_errors(data: Path) -> None:
    with pytest.raises(ValueError, match="in_channels"):
        train_diffusion(_cfg(data, model=UNET_PRESETS["tiny"]), text_encoder=HashTextEncoder())
    with pytest.raises(ValueError, match="multiple"):
        train_diffusion(_cfg(data, crop=7), text_encoder=HashTextEncoder())
    with pytest.raises(ValueError, match="U-Net"):
        _cfg(data, architecture="dit")
    make_latent_cache(data / "lat.safetensors", n=8)
    text2image = dict(
        task="text2image", latents=data / "lat.safetensors", model=None, preset="tiny", crop=None
    )
    train_diffusion(_cfg(data, "t2i", steps=1, **text2image), text_encoder=HashTextEncoder(dim=24))
    with pytest.raises(ValueError, match="--task superres"):
        load_superres_stage(data / "t2i")
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_superres_stage(data / "nothing")


def test_residual_examples_are_the_scaled_detail_bicubic_misses() -> None:
    """--residual: the examples are (high - bicubic(low)) / std, cropped like the conditioning, with unit
    variance over the dataset (the std computed here by hand, not by the code under test)."""
    g = torch.Generator().manual_seed(1)
    high = torch.rand(6, 3, 16, 16, generator=g) * 2 - 1
    low = torch.rand(6, 3, 8, 8, generator=g) * 2 - 1
    pairs = PixelPairs(high=high, low=low, captions=["x"] * 6, level_dim=8, crop=8, residual=True)
    up = torch.nn.functional.interpolate(low, size=(16, 16), mode="bicubic", align_corners=False).clamp(-1, 1)
    detail = high - up
    assert pairs.residual_scale == pytest.approx(1 / float(detail.std()), rel=1e-3)
    idx = torch.tensor([5, 0])
    x0 = pairs.sample(idx, torch.Generator().manual_seed(2))
    cond = pairs.condition(Conditioning(tokens=torch.zeros(2, 1, 4)), idx, torch.Generator().manual_seed(3))
    for k in range(2):
        (y, x) = pairs._offsets[k].tolist()
        want = detail[idx[k]][:, y : y + 8, x : x + 8] * pairs.residual_scale
        assert torch.allclose(x0[k], want)
    assert cond.extra[CONCAT_KEY].shape == x0.shape
    plain = PixelPairs(high=high, low=low, captions=["x"] * 6, level_dim=8)
    assert plain.residual_scale == 0.0 and torch.equal(plain.sample(idx), high[idx])


def test_a_residual_stage_adds_the_bicubic_image_back(data: Path) -> None:
    """A stage trained with residual=True saves its scale; sampling returns bicubic(low) + x / scale. A
    network whose velocity is zero leaves the starting noise (sigma 1) as it is: the image is then the
    bicubic upsample plus that noise divided by the scale."""
    from latentworks.diffusion.noise import seeded_noise
    from latentworks.models.superres import upsample
    from latentworks.pipelines.superres import STAGE_SEED_OFFSET, offset_seeds

    train_diffusion(_cfg(data, residual=True), text_encoder=HashTextEncoder())
    stage = load_superres_stage(data / "run")
    assert stage.residual_scale > 1  # the detail is smaller than the images
    assert stage.describe()["residual_scale"] == stage.residual_scale
    net = stage.model.denoiser_net
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
    low = torch.rand(2, 3, 8, 8) * 2 - 1
    enc = HashTextEncoder()
    got = stage.upscale(low, enc.encode(["a", "b"]), None, [1, 2], steps=2)
    noise = seeded_noise((3, 16, 16), offset_seeds([1, 2], STAGE_SEED_OFFSET))
    want = (upsample(low, 16) + noise / stage.residual_scale).clamp(-1, 1)
    assert torch.allclose(got, want, atol=1e-6)
    assert not torch.allclose(got, upsample(low, 16), atol=1e-3)
    with pytest.raises(ValueError, match="superres only"):
        DiffusionTrainConfig(latents=data / "d.npz", out=data / "x", residual=True)


def test_denoise_starts_from_the_bicubic_image(data: Path) -> None:
    """denoise < 1 starts from the bicubic image (a zero residual, or the upsampled pixels) noised to the first
    sigma of the shortened schedule; with a zero velocity that start is the result."""
    import dataclasses

    from latentworks.diffusion.noise import seeded_noise
    from latentworks.diffusion.schedules import get_sigmas
    from latentworks.models.superres import upsample
    from latentworks.pipelines.superres import STAGE_SEED_OFFSET, offset_seeds

    train_diffusion(_cfg(data, residual=True), text_encoder=HashTextEncoder())
    stage = load_superres_stage(data / "run")
    with torch.no_grad():
        for p in stage.model.denoiser_net.parameters():
            p.zero_()
    low = torch.rand(2, 3, 8, 8) * 2 - 1
    cond = HashTextEncoder().encode(["a", "b"])
    noise = seeded_noise((3, 16, 16), offset_seeds([1, 2], STAGE_SEED_OFFSET))
    s = float(get_sigmas(stage.model.model_sampling, "simple", 4, denoise=0.25)[0])
    assert 0.2 < s < 0.3
    up = upsample(low, 16)
    got = stage.upscale(low, cond, None, [1, 2], steps=4, denoise=0.25)
    assert torch.allclose(got, (up + s * noise / stage.residual_scale).clamp(-1, 1), atol=1e-6)
    plain = dataclasses.replace(stage, residual_scale=0.0)
    got = plain.upscale(low, cond, None, [1, 2], steps=4, denoise=0.25)
    assert torch.allclose(got, ((1 - s) * up + s * noise).clamp(-1, 1), atol=1e-6)
