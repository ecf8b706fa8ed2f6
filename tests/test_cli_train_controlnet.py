"""``latentworks train-controlnet``: help shows the defaults; bad starts are clear errors that write nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from latentworks.cli import main


def test_help_shows_the_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["train-controlnet", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for part in (
        "(default: default)",
        "(default: 0.4)",
        "(default: 0.8)",
        "default: 0.0002",
        "(default: 0.5)",
    ):
        assert part in text, part
    assert "--max-seconds" in text and "--resume" in text and "--overwrite" in text


def test_bad_starts_are_clear_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main(["train-controlnet", "--out", str(out)]) == 2  # no cache and no --data
    err = capsys.readouterr().err
    assert "latent cache" in err and "pass --data DATASET" in err
    assert not out.exists()
    data = ["--data", str(tmp_path / "emoji.npz")]  # read only once the base has loaded
    assert main(["train-controlnet", "--out", str(out), "--base", str(tmp_path / "nowhere"), *data]) == 2
    assert "neither a model folder" in capsys.readouterr().err
    out.mkdir()
    (out / "something.txt").write_text("x")
    assert main(["train-controlnet", "--out", str(out)]) == 2
    assert "--resume" in capsys.readouterr().err
    bad = ["--low-threshold", "0.9", "--high-threshold", "0.5", "--overwrite", *data]
    assert main(["train-controlnet", "--out", str(out), *bad]) == 2
    assert "0 < low <= high" in capsys.readouterr().err
