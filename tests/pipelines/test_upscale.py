"""Upscale models through spandrel: tiled output equals spandrel's own whole-image forward, sizes scale, and
pickles are refused without the opt-in."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from support.upscale import spandrel_or_skip, tiny_esrgan

spandrel = spandrel_or_skip()

from latentworks.pipelines.upscale import load_upscale_model, tiles_for, upscale_images  # noqa: E402


@pytest.mark.parametrize("scale", [2, 4])
def test_tiled_upscale_equals_spandrels_untiled_forward(tmp_path: Path, scale: int) -> None:
    path, net = tiny_esrgan(tmp_path / f"esrgan-x{scale}.safetensors", scale=scale)
    model = load_upscale_model(path)
    assert model.scale == scale and model.architecture == "ESRGAN"
    image = torch.rand(1, 3, 40, 56, generator=torch.Generator().manual_seed(1))
    reference = spandrel.ModelLoader().load_from_state_dict(net.state_dict()).eval()(image.clone())
    with torch.no_grad():  # and spandrel's descriptor is the network itself, clamped to [0, 1]
        assert torch.allclose(reference, net(image).clamp(0, 1), atol=1e-6)
    whole = upscale_images(model, image, tile=None)
    assert whole.shape == (1, 3, 40 * scale, 56 * scale)
    assert torch.allclose(whole, reference, atol=1e-6)
    seen = []
    tiled = upscale_images(model, image, tile=16, overlap=24, callback=lambda d, t: seen.append((d, t)))
    assert seen[-1] == (12, 12) == (tiles_for(40, 56, 16),) * 2  # 3 x 4 tiles
    assert (tiled - reference).abs().max() < 1e-5  # no seams: every tile saw enough context
    # too little context shows at the seams: the comparison can fail
    narrow = upscale_images(model, image, tile=16, overlap=0)
    assert (narrow - reference).abs().max() > 1e-3


def test_batches_are_upscaled_image_by_image(tmp_path: Path) -> None:
    path, _ = tiny_esrgan(tmp_path / "e.safetensors")
    model = load_upscale_model(path)
    images = torch.rand(2, 3, 12, 10, generator=torch.Generator().manual_seed(2))
    both = upscale_images(model, images, tile=8, overlap=16)
    assert both.shape == (2, 3, 24, 20)
    assert torch.allclose(both[1:], upscale_images(model, images[1:], tile=None), atol=1e-5)


def test_pickles_need_the_opt_in(tmp_path: Path) -> None:
    _, net = tiny_esrgan(tmp_path / "e.safetensors")
    pickled = tmp_path / "e.pth"
    torch.save(net.state_dict(), pickled)
    with pytest.raises(ValueError, match="refusing to load a pickled checkpoint"):
        load_upscale_model(pickled)
    assert load_upscale_model(pickled, allow_pickle=True).scale == 2


def test_not_an_upscaler_is_a_clear_error(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    bad = tmp_path / "bad.safetensors"
    save_file({"some.weight": torch.zeros(3, 3)}, str(bad))
    with pytest.raises(ValueError, match="not an upscale model architecture spandrel knows"):
        load_upscale_model(bad)
    with pytest.raises(FileNotFoundError, match="no such upscale model file"):
        load_upscale_model(tmp_path / "missing.safetensors")


@pytest.mark.parametrize(("arch", "name"), [("Compact", "RealESRGAN Compact"), ("SwinIR", "SwinIR")])
def test_other_architectures_equal_spandrel(tmp_path: Path, arch: str, name: str) -> None:
    from support.upscale import tiny_upscaler

    path, net = tiny_upscaler(arch, tmp_path / f"{arch}.safetensors", scale=2)
    model = load_upscale_model(path)
    assert model.architecture == name and model.scale == 2
    image = torch.rand(1, 3, 24, 20, generator=torch.Generator().manual_seed(3))
    reference = spandrel.ModelLoader().load_from_file(str(path)).eval()(image.clone())
    whole = upscale_images(model, image, tile=None)
    assert whole.shape == (1, 3, 48, 40) and torch.allclose(whole, reference, atol=1e-6)
    if arch == "Compact":  # convolutions only: tiles with enough context equal the whole pass
        assert torch.allclose(upscale_images(model, image, tile=8, overlap=8), reference, atol=1e-5)
