"""The CLI with checkpoints from elsewhere: a tiny SD1-layout single file (U-Net, VAE and CLIP-L inside) through
``generate`` and ``convert``, component files, pickles and broken files."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from latentworks.checkpoints.io import save_file_atomic
from latentworks.cli import main
from latentworks.families.load import CheckpointParts, single_file_state, write_single_file
from latentworks.pipelines import Pipeline
from latentworks.pipelines.metadata import read_parameters
from support.checkpoints import tiny_sd1_parts

RUN = ["--width", "16", "--height", "16", "--steps", "2", "--seed", "5", "--quiet"]


@pytest.fixture(scope="module")
def tiny_sd1(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, CheckpointParts]:
    tmp = tmp_path_factory.mktemp("ckpt")
    parts = tiny_sd1_parts(tmp / "tiny-sd1.safetensors")
    return write_single_file(parts, tmp / "tiny-sd1.safetensors"), parts


def _generate(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["generate", "a red apple", *RUN, *args])
    return code, capsys.readouterr().err


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def test_generate_from_single_file_equals_the_api(
    tiny_sd1: tuple[Path, CheckpointParts], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file, _ = tiny_sd1
    out = tmp_path / "a.png"
    code, err = _generate(["--model", str(file), "-o", str(out)], capsys)
    assert code == 0, err
    params = read_parameters(out)
    assert params["model"] == "tiny-sd1" and params["seed"] == 5 and params["steps"] == 2
    api = Pipeline.from_pretrained(file)
    assert api.model.meta["family"] == "sd1" and api.behaviour.defaults["guidance"] == 7.0
    image = api("a red apple", "", steps=2, seed=5, width=16, height=16).images[0]
    assert np.array_equal(_pixels(out), np.asarray(image, dtype=np.int16))


def test_convert_to_diffusers_and_back_generates_the_same_image(
    tiny_sd1: tuple[Path, CheckpointParts], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file, _ = tiny_sd1
    assert main(["convert", str(file), "--to", "diffusers", "--out", str(tmp_path / "dif")]) == 0
    assert (tmp_path / "dif" / "model_index.json").is_file() and (tmp_path / "dif" / "text_encoder").is_dir()
    assert (
        main(
            [
                "convert",
                str(tmp_path / "dif"),
                "--to",
                "single-file",
                "--out",
                str(tmp_path / "b.safetensors"),
            ]
        )
        == 0
    )
    capsys.readouterr()
    images = []
    for model in (file, tmp_path / "dif", tmp_path / "b.safetensors"):
        out = tmp_path / f"{len(images)}.png"
        code, err = _generate(["--model", str(model), "-o", str(out)], capsys)
        assert code == 0, err
        images.append(_pixels(out))
    assert np.array_equal(images[0], images[1]) and np.array_equal(images[0], images[2])
    # nothing is overwritten
    code = main(["convert", str(file), "--to", "diffusers", "--out", str(tmp_path / "dif")])
    assert code == 2 and "exists" in capsys.readouterr().err


def test_component_files_fill_what_a_bare_unet_file_lacks(
    tiny_sd1: tuple[Path, CheckpointParts], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file, parts = tiny_sd1
    full = single_file_state(parts)
    split = {
        "unet.safetensors": ("model.diffusion_model.", ""),
        "vae.safetensors": ("first_stage_model.", ""),
        "clip_l.safetensors": ("cond_stage_model.transformer.", ""),
    }
    for name, (prefix, _) in split.items():
        save_file_atomic(
            {k[len(prefix) :]: v for k, v in full.items() if k.startswith(prefix)}, tmp_path / name
        )
    unet = tmp_path / "unet.safetensors"
    code, err = _generate(["--model", str(unet), "-o", str(tmp_path / "x.png")], capsys)
    assert code == 2 and "has no VAE" in err and "--vae" in err
    code, err = _generate(
        ["--model", str(unet), "--vae", str(tmp_path / "vae.safetensors"), "-o", str(tmp_path / "x.png")],
        capsys,
    )
    assert code == 2 and "clip_l" in err
    out = tmp_path / "parts.png"
    code, err = _generate(
        [
            "--model", str(unet), "--vae", str(tmp_path / "vae.safetensors"),
            "--text-encoder", str(tmp_path / "clip_l.safetensors"), "-o", str(out),
        ],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    ref = tmp_path / "ref.png"
    assert _generate(["--model", str(file), "-o", str(ref)], capsys)[0] == 0
    assert np.array_equal(_pixels(out), _pixels(ref))


def test_pickles_are_refused_unless_allowed(
    tiny_sd1: tuple[Path, CheckpointParts], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file, parts = tiny_sd1
    ckpt = tmp_path / "tiny.ckpt"
    torch.save({"state_dict": single_file_state(parts)}, ckpt)
    code, err = _generate(["--model", str(ckpt), "-o", str(tmp_path / "p.png")], capsys)
    assert code == 2 and "refusing to load a pickled checkpoint" in err and "--allow-pickle" in err
    out, ref = tmp_path / "p.png", tmp_path / "r.png"
    code, err = _generate(["--model", str(ckpt), "--allow-pickle", "-o", str(out)], capsys)
    assert code == 0, err
    assert _generate(["--model", str(file), "-o", str(ref)], capsys)[0] == 0
    assert np.array_equal(_pixels(out), _pixels(ref))


def test_broken_and_unknown_files_name_the_file(
    tiny_sd1: tuple[Path, CheckpointParts], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file, _ = tiny_sd1
    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    code, err = _generate(["--model", str(truncated), "-o", str(tmp_path / "t.png")], capsys)
    assert code == 2 and "cut.safetensors" in err and "Traceback" not in err
    other = tmp_path / "other.safetensors"
    save_file_atomic({"encoder.layer.0.weight": torch.zeros(3, 3)}, other)
    code, err = _generate(["--model", str(other), "-o", str(tmp_path / "o.png")], capsys)
    assert code == 2 and "other.safetensors" in err and "no denoiser keys found" in err
    shutil.copy(file, tmp_path / "weights.bin.txt")
    code, err = _generate(
        ["--model", str(tmp_path / "weights.bin.txt"), "-o", str(tmp_path / "w.png")], capsys
    )
    assert code == 2 and "weights.bin.txt" in err


def test_info_describes_a_checkpoint_from_its_header(
    tiny_sd1: tuple[Path, CheckpointParts], capsys: pytest.CaptureFixture[str]
) -> None:
    file, parts = tiny_sd1
    assert main(["info", "--model", str(file)]) == 0
    out = capsys.readouterr().out
    n = sum(v.numel() for v in parts.denoiser_state.values())
    assert "family      sd1" in out and f"denoiser {n:,}" in out
    assert "vae         yes" in out and "clip_l" in out and "[512, 512]" in out
