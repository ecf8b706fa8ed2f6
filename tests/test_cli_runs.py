"""Commands that write folders: nothing is overwritten unless asked, an aborted start leaves nothing behind,
and a run that stopped early says how to resume and convert it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "training"))
from helpers import HashTextEncoder, make_latent_cache, make_square_images  # noqa: E402
from test_diffusion_training import _cfg  # noqa: E402

from latentworks.cli import main  # noqa: E402
from latentworks.training.diffusion import train_diffusion  # noqa: E402


class InterruptingEncoder(HashTextEncoder):
    """Ctrl-C at the first training step (the first caption encoding), after the run folder is written."""

    def encode(self, prompts: list[str]):  # noqa: ANN201
        raise KeyboardInterrupt


def _use_encoder(monkeypatch: pytest.MonkeyPatch, encoder: HashTextEncoder) -> None:
    import latentworks.training.diffusion as D

    real = D.train_diffusion
    monkeypatch.setattr(D, "train_diffusion", lambda cfg: real(cfg, text_encoder=encoder))


@pytest.fixture
def run(tmp_path: Path) -> Path:
    """A finished 3-step run (tiny DiT) with a checkpoint, and its latent cache at tmp/lat.safetensors."""
    make_latent_cache(tmp_path / "lat.safetensors", n=8)
    train_diffusion(_cfg(tmp_path, steps=3, checkpoint_every=1), text_encoder=HashTextEncoder())
    return tmp_path / "run"


def test_train_refuses_a_folder_that_holds_a_run(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = (run / "checkpoints" / "last.safetensors").read_bytes()
    code = main(["train", "--out", str(run), "--latents", str(run.parent / "lat.safetensors")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert f"--out {run} exists and is not empty" in err and "--resume" in err and "--overwrite" in err
    assert (run / "checkpoints" / "last.safetensors").read_bytes() == ckpt  # untouched


def test_train_vae_refuses_a_non_empty_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "vae"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    make_square_images(tmp_path / "sq.npz")
    code = main(["train-vae", "--data", str(tmp_path / "sq.npz"), "--out", str(out), "--steps", "1"])
    assert code == 2 and "--overwrite" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_an_unknown_preset_is_refused_before_the_latent_cache_is_built(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_square_images(tmp_path / "sq.npz")
    out = tmp_path / "ldm"
    code = main(
        [
            "train",
            "--out",
            str(out),
            "--vae",
            "default",
            "--data",
            str(tmp_path / "sq.npz"),
            "--preset",
            "nope",
        ]
    )
    assert code == 2 and "unknown unet preset 'nope'" in capsys.readouterr().err
    assert not out.exists()  # no latents.safetensors, no config.json


def test_ctrl_c_before_the_first_checkpoint_removes_what_the_run_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    make_latent_cache(tmp_path / "lat.safetensors", n=8)
    _use_encoder(monkeypatch, InterruptingEncoder(dim=384))  # emoji-s: context_dim 384
    out = tmp_path / "ldm"
    code = main(
        [
            "train",
            "--out",
            str(out),
            "--latents",
            str(tmp_path / "lat.safetensors"),
            "--steps",
            "2",
            "--batch-size",
            "4",
        ]
    )
    assert code == 130
    assert "stopped before its first checkpoint" in capsys.readouterr().err
    assert not out.exists()
    # In a folder that already held something, only what the run added goes.
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    args = [
        "train",
        "--out",
        str(out),
        "--latents",
        str(tmp_path / "lat.safetensors"),
        "--steps",
        "2",
        "--batch-size",
        "4",
    ]
    assert main([*args, "--overwrite"]) == 130
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_an_early_stop_prints_the_resume_and_convert_commands(
    run: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _use_encoder(monkeypatch, HashTextEncoder())
    code = main(["train", "--out", str(run), "--resume", "--steps", "50", "--max-seconds", "0"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "stopped early (--max-seconds) at step 4 of 50" in out
    assert f"latentworks train --out {run} --resume" in out
    assert f"latentworks convert --from-run {run} --out models/checkpoints/run" in out


def test_ctrl_c_after_a_checkpoint_keeps_the_run_and_prints_the_commands(
    run: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _use_encoder(monkeypatch, InterruptingEncoder())
    (run / "checkpoints" / "last.safetensors").touch()
    before = sorted(p.name for p in run.iterdir())
    code = main(["train", "--out", str(run), "--resume", "--steps", "50"])
    err = capsys.readouterr().err
    assert code == 130 and sorted(p.name for p in run.iterdir()) == before
    assert f"latentworks train --out {run} --resume" in err and "latentworks convert --from-run" in err


def test_convert_from_run_refuses_a_non_empty_out_unless_overwrite(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "models" / "mine"
    out.mkdir(parents=True)
    (out / "model.json").write_text("{}")
    code = main(["convert", "--from-run", str(run), "--out", str(out)])
    assert code == 2 and f"--out {out} exists and is not empty" in capsys.readouterr().err
    assert (out / "model.json").read_text() == "{}"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--shift", "0"], "shift must be a number greater than 0, got 0.0"),
        (["--shift", "nan"], "shift must be a number greater than 0, got nan"),
    ],
)
def test_convert_shift_is_checked_before_anything_is_written(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    out = tmp_path / "models" / "mine"
    code = main(["convert", "--from-run", str(run), "--out", str(out), *extra])
    assert code == 2 and message in capsys.readouterr().err
    assert not out.exists()


def test_convert_shift_needs_from_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["convert", "default", "--to", "diffusers", "--out", str(tmp_path / "o"), "--shift", "3"])
    assert code == 2 and "--shift sets the sampling shift of a model folder written by --from-run" in (
        capsys.readouterr().err
    )
    assert not (tmp_path / "o").exists()


def test_convert_shift_is_refused_for_a_run_that_is_not_flow(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_latent_cache(tmp_path / "lat.safetensors", n=8)
    cfg = _cfg(tmp_path, steps=1, checkpoint_every=1, prediction="eps")
    train_diffusion(cfg, text_encoder=HashTextEncoder())
    out = tmp_path / "models" / "eps"
    code = main(["convert", "--from-run", str(tmp_path / "run"), "--out", str(out), "--shift", "2"])
    err = capsys.readouterr().err
    assert code == 2 and "a sampling shift applies to flow models only" in err and "Traceback" not in err
    assert not out.exists()
