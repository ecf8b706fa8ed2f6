"""``latentworks generate/info --model KARLO_FOLDER``: PNGs equal to the pipeline's images (batch seeding
included), the stages in ``info``, and clear errors for a missing stage folder, stages from different models
and options the cascade does not take."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from latentworks.cli import main
from latentworks.pipelines.karlo import KarloPipeline
from support.karlo import DECODER_SIZE, SUPER_RES_SIZE, tiny_karlo_pipe

pytest.importorskip("diffusers")

STEPS = ["--prior-steps", "2", "--steps", "3", "--super-res-steps", "2"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_karlo_pipe(tmp_path_factory.mktemp("karlo"))[0]


def test_generate_writes_the_pipelines_images(
    folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "apple.png"
    argv = ["generate", "a red apple", "--model", str(folder), "--seed", "3", "--batch", "2", "--quiet"]
    assert main([*argv, *STEPS, "--cfg", "6", "--prior-cfg", "3", "-o", str(out)]) == 0
    written = [tmp_path / "apple-1.png", tmp_path / "apple-2.png"]
    assert all(p.is_file() for p in written)
    assert str(written[1]) in capsys.readouterr().out
    pipe = KarloPipeline.from_pretrained(folder)
    # image 2 of the batch is a single run with seed 4 (the one seeding rule)
    single = pipe(
        "a red apple",
        seed=4,
        prior_steps=2,
        decoder_steps=3,
        super_res_steps=2,
        prior_guidance=3,
        decoder_guidance=6,
    )
    got = np.asarray(Image.open(written[1]), dtype=np.int16)
    assert got.shape == (SUPER_RES_SIZE, SUPER_RES_SIZE, 3)
    assert np.abs(got - np.asarray(single.images[0], dtype=np.int16)).max() <= 1
    assert np.abs(got - np.asarray(Image.open(written[0]), dtype=np.int16)).max() > 10  # seeds 3 and 4 differ
    params = json.loads(Image.open(written[1]).text["latentworks"])
    assert (params["seed"], params["decoder_steps"], params["prior_guidance"]) == (4, 3, 3.0)


def test_info_reports_the_stages(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "--model", str(folder)]) == 0
    text = capsys.readouterr().out
    for part in ("family      karlo", "prior (prior/)", "decoder (decoder/)", "learned variance",
                 f"{DECODER_SIZE} -> {SUPER_RES_SIZE} px", "x0-prediction"):  # fmt: skip
        assert part in text, text


def _copy(folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(folder, tmp_path / "copy"))


def test_missing_stage_names_the_folder(
    folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = _copy(folder, tmp_path)
    shutil.rmtree(broken / "super_res_last")
    assert main(["generate", "a cat", "--model", str(broken), "-o", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "super_res_last/" in err and "Traceback" not in err
    (broken / "super_res_first" / "diffusion_pytorch_model.safetensors").unlink()
    shutil.copytree(folder / "super_res_last", broken / "super_res_last")
    assert main(["generate", "a cat", "--model", str(broken), "-o", str(tmp_path / "x.png")]) == 2
    assert "super_res_first/diffusion_pytorch_model.safetensors" in capsys.readouterr().err


def test_stages_from_different_models(
    folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = _copy(folder, tmp_path)
    cfg = json.loads((broken / "text_proj" / "config.json").read_text())
    cfg["cross_attention_dim"] = 2 * cfg["cross_attention_dim"]  # a text projection made for another decoder
    (broken / "text_proj" / "config.json").write_text(json.dumps(cfg))
    assert main(["info", "--model", str(broken)]) == 2
    err = capsys.readouterr().err
    assert "cross_attention_dim" in err and "different models" in err
    # an SD U-Net where Karlo's decoder belongs
    shutil.copytree(folder / "text_proj", broken / "text_proj", dirs_exist_ok=True)
    cfg = json.loads((broken / "decoder" / "config.json").read_text())
    cfg["down_block_types"] = ["CrossAttnDownBlock2D", "DownBlock2D"]
    (broken / "decoder" / "config.json").write_text(json.dumps(cfg))
    assert main(["info", "--model", str(broken)]) == 2
    assert "CrossAttnDownBlock2D" in capsys.readouterr().err


def test_options_the_cascade_does_not_take(
    folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["generate", "a cat", "--model", str(folder), "-o", str(tmp_path / "x.png")]
    assert main([*argv, "--sampler", "euler"]) == 2
    assert "--sampler" in capsys.readouterr().err
    assert main([*argv, "--width", "512"]) == 2
    assert f"{SUPER_RES_SIZE}x{SUPER_RES_SIZE}" in capsys.readouterr().err


def test_single_denoiser_loaders_point_to_generate(folder: Path) -> None:
    from latentworks.families.load import read_checkpoint

    with pytest.raises(ValueError, match="latentworks generate PROMPT --model"):
        read_checkpoint(folder)
