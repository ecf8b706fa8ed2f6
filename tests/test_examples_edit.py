"""The editing example workflows in examples/ run with ``latentworks run`` on the embedded default model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from latentworks.cli import main

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_hires_fix_example_runs_and_doubles_the_size(tmp_path: Path) -> None:
    args = ["run", str(EXAMPLES / "hires_fix.json"), "--output-dir", str(tmp_path), "--quiet"]
    assert main([*args, "--set", "5.steps=2", "--set", "7.steps=2"]) == 0
    (out,) = tmp_path.glob("hires_*.png")
    assert Image.open(out).size == (64, 64)  # the default model's 32 px, upscaled 2x in latent space


def test_inpaint_example_runs_and_keeps_the_unmasked_area(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(photo).save(tmp_path / "photo.png")
    m = np.zeros((32, 32, 3), dtype=np.uint8)
    m[8:24, 8:24] = 255
    Image.fromarray(m).save(tmp_path / "mask.png")
    args = [
        "run",
        str(EXAMPLES / "inpaint.json"),
        "--input-dir",
        str(tmp_path),
        "--output-dir",
        str(tmp_path),
    ]
    assert main([*args, "--quiet", "--set", "8.steps=2"]) == 0
    (out,) = tmp_path.glob("inpaint_*.png")
    got = np.asarray(Image.open(out).convert("RGB"), dtype=np.int16)
    # far from the (grown) mask the latent is kept, so only the VAE round trip changes pixels; inside, new content
    outside = np.abs(got[:4] - photo[:4]).mean()
    inside = np.abs(got[12:20, 12:20] - photo[12:20, 12:20]).mean()
    assert inside > outside
