"""DeepFloyd IF from the command line and the pipeline's seeding: ``generate --model IF-I --upscaler IF-II``,
``info --model``, per-stage options, and the errors for missing or mismatched stages."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from latentworks.cli import main
from latentworks.pipelines.cascade import CascadePipeline
from latentworks.pipelines.metadata import read_parameters
from support.if_fixtures import SIZE_I, SIZE_II, write_if_folders

pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_if_folders(tmp_path_factory.mktemp("if"))


def _error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    return capsys.readouterr().err


def test_generate_runs_both_stages(
    folders: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stage1, stage2 = folders
    out = tmp_path / "apple.png"
    argv = ["generate", "a red apple", "--model", str(stage1), "--upscaler", str(stage2), "--steps", "2",
            "--upscaler-steps", "2", "--cfg", "5", "--upscaler-cfg", "3", "--noise-level", "100", "--seed", "4",
            "-o", str(out), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    assert Image.open(out).size == (SIZE_II, SIZE_II)
    params = read_parameters(out)
    assert (params["steps"], params["guidance"], params["upscaler_steps"], params["upscaler_guidance"]) == (
        2,
        5,
        2,
        3,
    )
    assert params["noise_level"] == 100 and params["seed"] == 4 and params["family"] == "deepfloyd-if-i"
    # stage I alone: the 64 px-class output of the base model
    assert (
        main(["generate", "a red apple", "--model", str(stage1), "--steps", "2", "-o", str(out), "--quiet"])
        == 0
    )
    assert Image.open(out).size == (SIZE_I, SIZE_I)


def test_info_reports_the_stages(folders: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    stage1, stage2 = folders
    assert main(["info", "--model", str(stage1)]) == 0
    first = capsys.readouterr().out
    assert (
        "stage       I: base of DeepFloyd IF's cascade" in first
        and "dynamic thresholding p=0.95 max=1.5" in first
    )
    assert main(["info", "--model", str(stage2)]) == 0
    second = capsys.readouterr().out
    assert "stage       II: super-resolution" in second and "'noise_level': 250" in second


def test_batch_sample_equals_its_single_run(folders: tuple[Path, Path]) -> None:
    pipe = CascadePipeline.from_pretrained(*folders)
    run = dict(steps=2, upscaler_steps=2)
    both = pipe("a red apple", seed=10, batch=2, **run)
    single = pipe("a red apple", seed=11, **run)
    assert both.seeds == [10, 11] and [s.shape[-1] for s in both.stages] == [SIZE_I, SIZE_II]
    torch.testing.assert_close(both.stages[1][1:], single.stages[1], atol=1e-3, rtol=0)  # float32 batching
    assert (both.stages[1][0] - both.stages[1][1]).abs().max() > 0.05  # seeds matter


def test_mismatched_stages_are_refused(
    folders: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stage1, stage2 = folders
    sd = tmp_path / "sd15"
    sd.mkdir()
    (sd / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    err = _error(capsys, ["generate", "x", "--model", str(stage1), "--upscaler", str(sd)])
    assert "--upscaler" in err and "Stable Diffusion 1.x" in err and "stages of different families" in err
    err = _error(capsys, ["generate", "x", "--model", str(sd), "--upscaler", str(stage2)])
    assert "--model" in err and "IFPipeline" in err and "stages of different families" in err
    err = _error(capsys, ["generate", "x", "--model", str(stage2)])
    assert "pass it as --upscaler" in err
    err = _error(capsys, ["generate", "x", "--model", str(stage1), "--upscaler", str(stage1)])
    assert "--upscaler takes the stage II folder" in err
    x4 = tmp_path / "x4"
    x4.mkdir()
    (x4 / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionUpscalePipeline"}))
    err = _error(capsys, ["generate", "x", "--model", str(stage1), "--upscaler", str(x4)])
    assert "stage III" in err and "IFSuperResolutionPipeline" in err
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    err = _error(capsys, ["generate", "x", "--model", str(stage1), "--init", str(tmp_path / "a.png")])
    assert "--init is not available with a DeepFloyd IF cascade" in err


def test_missing_parts_name_what_to_pass(
    folders: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stage1, stage2 = folders
    err = _error(capsys, ["generate", "x", "--upscaler", str(stage2)])  # --model left at the default
    assert "--model: no such folder: default" in err and "stage I folder (IFPipeline" in err
    broken = tmp_path / "IF-I-no-unet"
    shutil.copytree(stage1, broken)
    shutil.rmtree(broken / "unet")
    err = _error(capsys, ["generate", "x", "--model", str(broken)])
    assert str(broken / "unet" / "config.json") in err
    no_tok = tmp_path / "IF-I-no-tokenizer"
    shutil.copytree(stage1, no_tok)
    shutil.rmtree(no_tok / "tokenizer")
    err = _error(capsys, ["generate", "x", "--model", str(no_tok)])
    assert "--tokenizer" in err and "spiece.model" in err
    # the tokenizer passed explicitly (a tokenizer folder) makes it work again
    assert main(["generate", "a red apple", "--model", str(no_tok), "--tokenizer", str(stage1 / "tokenizer"),
                 "--steps", "1", "-o", str(tmp_path / "t.png"), "--quiet"]) == 0  # fmt: skip
    no_t5 = tmp_path / "IF-I-no-t5"
    shutil.copytree(stage1, no_t5)
    shutil.rmtree(no_t5 / "text_encoder")
    err = _error(capsys, ["generate", "x", "--model", str(no_t5)])
    assert "--text-encoder" in err and "text_encoder" in err


def test_the_latent_pipeline_points_to_the_cascade(folders: tuple[Path, Path]) -> None:
    from latentworks.families.diffusers import read_diffusers_folder

    with pytest.raises(ValueError, match="a stage of a pixel cascade: run it with"):
        read_diffusers_folder(folders[0])
