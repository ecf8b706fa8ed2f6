"""``latentworks generate`` with --mask / --outpaint / hires-fix options on the tiny model: the same images as
the API, clear errors for bad combinations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from latentworks.cli import main
from latentworks.pipelines import Pipeline
from latentworks.pipelines.metadata import read_parameters

SIZE = 16


def _files(tmp_path: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(tmp_path / "in.png")
    m = np.zeros((SIZE, SIZE), dtype=np.uint8)
    m[2:10, 6:14] = 255
    Image.fromarray(m, mode="L").save(tmp_path / "mask.png")
    return tmp_path / "in.png", tmp_path / "mask.png"


def test_generate_with_mask_equals_the_api_and_keeps_unmasked_pixels(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image, mask = _files(tmp_path)
    out = tmp_path / "o.png"
    args = ["generate", "a cat", "--model", str(tiny_model), "--seed", "5", "--quiet", "-o", str(out)]
    code = main([*args, "--init", str(image), "--mask", str(mask), "--mask-grow", "1", "--composite"])
    assert code == 0, capsys.readouterr().err
    api = Pipeline.from_pretrained(tiny_model)(
        "a cat", image=Image.open(image), mask=Image.open(mask), mask_grow=1, composite=True, seed=5
    )
    got = np.asarray(Image.open(out).convert("RGB"))
    assert (got == np.asarray(api.images[0])).all()
    grown = np.zeros((SIZE, SIZE), dtype=bool)
    grown[1:11, 5:15] = True
    assert (got[~grown] == np.asarray(Image.open(image))[~grown]).all()
    params = read_parameters(out)
    assert params["inpaint"]["composite"] is True and params["strength"] == 1.0


def test_generate_outpaint_extends_the_image(tiny_model: Path, tmp_path: Path) -> None:
    image, _ = _files(tmp_path)
    small = tmp_path / "small.png"
    Image.open(image).resize((8, 16)).save(small)
    out = tmp_path / "wide.png"
    args = ["generate", "a cat", "--model", str(tiny_model), "--seed", "1", "--quiet", "-o", str(out)]
    assert main([*args, "--init", str(small), "--outpaint", "4,0,4,0", "--composite"]) == 0
    got = np.asarray(Image.open(out).convert("RGB"))
    assert got.shape == (16, 16, 3)
    assert (got[:, 4:12] == np.asarray(Image.open(small).convert("RGB"))).all()


def test_generate_hires_fix_doubles_the_size(tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "h.png"
    args = ["generate", "a cat", "--model", str(tiny_model), "--seed", "2", "--steps", "2", "--quiet"]
    assert (
        main(
            [
                *args,
                "-o",
                str(out),
                "--hires-scale",
                "2",
                "--hires-denoise",
                "0.5",
                "--hires-upscale",
                "pixel",
            ]
        )
        == 0
    )
    assert Image.open(out).size == (32, 32)
    assert read_parameters(out)["hires"] == {"scale": 2.0, "denoise": 0.5, "upscale": "pixel", "steps": 2}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--mask", "m.png"], "--mask and --outpaint need the image they apply to: give --init IMAGE"),
        (["--composite"], "--composite only applies with --mask or --outpaint"),
        (["--outpaint", "1,2,3"], "expected four pixel counts >= 0 as LEFT,TOP,RIGHT,BOTTOM"),
        (["--hires-scale", "0"], "--hires-scale must be in (0, 8]"),
        (
            ["--hires-upscale", "nope.safetensors"],
            "--hires-upscale: not 'latent', 'pixel' or an upscale model",
        ),
    ],
)
def test_bad_edit_options_are_clear_errors(
    extra: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:  # noqa: ANN001
    monkeypatch.chdir(tmp_path)
    try:
        code = main(["generate", "an apple", *extra])
    except SystemExit as e:  # argparse's own errors (a malformed value) exit with 2
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
