"""``latentworks upscale``: the image comes out scale x larger and equal to the library call; pickles need
--allow-pickle; the hires fix takes an upscale model too."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from latentworks.cli import main
from latentworks.pipelines.metadata import read_parameters
from support.upscale import spandrel_or_skip, tiny_esrgan


@pytest.fixture(autouse=True)
def _spandrel() -> None:
    spandrel_or_skip()


def test_upscale_command_writes_the_scaled_image(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from latentworks.pipelines.upscale import load_upscale_model, upscale_images

    model, _ = tiny_esrgan(tmp_path / "x2.safetensors", scale=2)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(tmp_path / "p.png")
    assert main(["upscale", str(tmp_path / "p.png"), "--model", str(model), "--tile", "16", "--quiet"]) == 0
    assert "30x20 -> 60x40 (ESRGAN x2)" in capsys.readouterr().out
    got = np.asarray(Image.open(tmp_path / "p-x2.png"))
    x = torch.from_numpy(np.asarray(Image.open(tmp_path / "p.png"), dtype=np.float32) / 255).permute(2, 0, 1)[
        None
    ]
    ref = upscale_images(load_upscale_model(model), x, tile=None)
    ref8 = (ref[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    assert got.shape == (40, 60, 3) and np.abs(got.astype(int) - ref8).max() <= 1


def test_upscale_refuses_pickles_without_the_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, net = tiny_esrgan(tmp_path / "x2.safetensors")
    torch.save(net.state_dict(), tmp_path / "x2.pth")
    Image.new("RGB", (8, 8)).save(tmp_path / "p.png")
    args = ["upscale", str(tmp_path / "p.png"), "--model", str(tmp_path / "x2.pth"), "--quiet"]
    assert main([*args, "-o", str(tmp_path / "a.png")]) == 2
    err = capsys.readouterr().err
    assert (
        "refusing to load a pickled checkpoint" in err and "--allow-pickle" in err and "Traceback" not in err
    )
    assert main([*args, "-o", str(tmp_path / "b.png"), "--allow-pickle"]) == 0
    assert Image.open(tmp_path / "b.png").size == (16, 16)


def test_hires_fix_with_an_upscale_model(tiny_model: Path, tmp_path: Path) -> None:
    model, _ = tiny_esrgan(tmp_path / "x2.safetensors", scale=2)
    out = tmp_path / "h.png"
    args = [
        "generate",
        "a cat",
        "--model",
        str(tiny_model),
        "--seed",
        "2",
        "--steps",
        "2",
        "--quiet",
        "-o",
        str(out),
    ]
    assert main([*args, "--hires-scale", "1.5", "--hires-upscale", str(model), "--hires-steps", "1"]) == 0
    assert Image.open(out).size == (24, 24)
    assert read_parameters(out)["hires"]["upscale"] == str(model)
