"""The super-resolution stage on the command line: train --task superres, generate and eval with
--upscale-stage; bad input gives one clear line, no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from latentworks.cli import main


def test_superres_training_needs_a_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--task", "superres", "--out", str(tmp_path / "sr")]) == 2
    err = capsys.readouterr().err
    assert "--data" in err and "Traceback" not in err


def test_superres_training_names_a_missing_dataset(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [
        "train",
        "--task",
        "superres",
        "--data",
        str(tmp_path / "none.npz"),
        "--out",
        str(tmp_path / "sr"),
    ]
    assert main(args) == 2
    assert "none.npz" in capsys.readouterr().err


def test_generate_names_a_missing_stage(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["generate", "red apple", "--model", str(tiny_model), "--upscale-stage", str(tmp_path / "nothing")]
    assert main([*args, "-o", str(tmp_path / "a.png"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "config.json" in err and "--task superres" in err and "Traceback" not in err


def test_generate_with_the_bicubic_stage_doubles_the_size(tiny_model: Path, tmp_path: Path) -> None:
    from PIL import Image

    out = tmp_path / "a.png"
    args = ["generate", "red apple", "--model", str(tiny_model), "--upscale-stage", "bicubic", "--steps", "2"]
    assert main([*args, "-o", str(out), "--quiet"]) == 0
    assert Image.open(out).size == (32, 32)
