"""Stable Diffusion's x4 upscaler from the command line: standalone (``upscale IMG --model X4 --prompt``), as
DeepFloyd IF's stage III (``generate --model IF-I --upscaler IF-II --latent-upscaler X4``), ``info --model``,
and the errors for folders of other families or with missing parts."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from latentworks.cli import main
from latentworks.diffusion.noise import derive_seed, seeded_noise
from latentworks.pipelines.cascade import CascadePipeline
from latentworks.pipelines.metadata import read_parameters
from latentworks.pipelines.x4_upscale import X4Upscaler
from support.if_fixtures import SIZE_II, write_if_folders
from support.x4_fixtures import write_x4_folder

pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def x4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_x4_folder(tmp_path_factory.mktemp("x4"))


@pytest.fixture(scope="module")
def if_folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_if_folders(tmp_path_factory.mktemp("if"))


def _error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    return capsys.readouterr().err


def _image(path: Path, size: int = 16) -> Path:
    g = torch.Generator().manual_seed(0)
    Image.fromarray((torch.rand(size, size, 3, generator=g) * 255).to(torch.uint8).numpy()).save(path)
    return path


def test_upscale_command_runs_the_x4_folder(x4: Path, tmp_path: Path) -> None:
    src = _image(tmp_path / "small.png")
    out = tmp_path / "big.png"
    argv = ["upscale", str(src), "--model", str(x4), "--prompt", "a red apple", "--steps", "2", "--cfg", "5",
            "--noise-level", "40", "--seed", "3", "-o", str(out), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    assert Image.open(out).size == (64, 64)
    params = read_parameters(out)
    assert (params["steps"], params["guidance"], params["noise_level"], params["seed"]) == (2, 5, 40, 3)
    assert params["family"] == "sd-x4-upscaler" and params["prompt"] == "a red apple"
    # the same as the Python API with the same seed
    api = X4Upscaler.from_pretrained(x4)(
        Image.open(src), "a red apple", seed=3, steps=2, guidance=5, noise_level=40
    )
    diff = torch.from_numpy(
        np.asarray(Image.open(out), dtype=np.int16) - np.asarray(api.images[0], dtype=np.int16)
    )
    assert diff.abs().max() <= 1


def test_stage_three_after_if_stages(if_folders: tuple[Path, Path], x4: Path, tmp_path: Path) -> None:
    stage1, stage2 = if_folders
    out = tmp_path / "apple.png"
    argv = ["generate", "a red apple", "--model", str(stage1), "--upscaler", str(stage2), "--latent-upscaler",
            str(x4), "--steps", "1", "--upscaler-steps", "1", "--latent-upscaler-steps", "2",
            "--latent-upscaler-cfg", "6", "--latent-upscaler-noise-level", "50", "--seed", "2", "-o", str(out),
            "--quiet"]  # fmt: skip
    assert main(argv) == 0
    assert Image.open(out).size == (4 * SIZE_II, 4 * SIZE_II)
    params = read_parameters(out)
    assert params["latent_upscaler"] == x4.name and params["latent_upscaler_steps"] == 2
    assert params["latent_upscaler_guidance"] == 6 and params["latent_upscaler_noise_level"] == 50
    # stage III is the x4 upscaler run on stage II's image with the prompt and the seed's streams 5 and 6
    pipe = CascadePipeline.from_pretrained(stage1, upscaler=stage2, latent_upscaler=x4)
    result = pipe("a red apple", seed=2, steps=1, upscaler_steps=1, latent_upscaler_steps=2)
    assert [s.shape[-1] for s in result.stages] == [16, SIZE_II, 4 * SIZE_II]
    assert result.parameters["latent_upscaler_noise_level"] == 100  # DeepFloyd's stage III default
    up = pipe.latent_upscaler
    assert up is not None
    cond, uncond = up.conditionings(["a red apple"], [""])
    start = seeded_noise((4, SIZE_II, SIZE_II), [derive_seed(2, 5)])
    augment = seeded_noise((3, SIZE_II, SIZE_II), [derive_seed(2, 6)])
    again = up.run(result.stages[1], cond, uncond, start, augment, steps=2, guidance=9.0, noise_level=100)
    torch.testing.assert_close(result.stages[2], again, atol=1e-5, rtol=0)
    other = up.run(torch.zeros_like(result.stages[1]), cond, uncond, start, augment, steps=2, guidance=9.0,
                   noise_level=100)  # fmt: skip
    assert (other - again).abs().max() > 0.05  # the image stage III gets matters


def test_info_reports_the_x4_upscaler(x4: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "--model", str(x4)]) == 0
    out = capsys.readouterr().out
    assert "sd-x4-upscaler" in out and "StableDiffusionUpscalePipeline" in out
    assert "in 7 (latent 4 + low-res RGB 3)" in out and "scaling 0.08333" in out and "v-prediction" in out


def test_a_folder_without_model_index_is_known_by_its_unet(
    x4: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bare = tmp_path / "x4-bare"
    shutil.copytree(x4, bare)
    (bare / "model_index.json").unlink()
    assert main(["info", "--model", str(bare)]) == 0
    assert "sd-x4-upscaler" in capsys.readouterr().out
    # an SD U-Net (4 input channels, no class labels) is not taken for it
    config = bare / "unet" / "config.json"
    config.write_text(config.read_text().replace('"in_channels": 7', '"in_channels": 4'))
    err = _error(capsys, ["upscale", str(_image(tmp_path / "a.png")), "--model", str(bare)])
    assert "not a Stable Diffusion x4 upscaler" in err


def test_help_defaults_are_the_families(capsys: pytest.CaptureFixture[str]) -> None:
    from latentworks.commands.generate_cascade import STAGE_III_NOISE_LEVEL, X4_DEFAULTS
    from latentworks.families import deepfloyd_if, sd_upscaler

    defaults = sd_upscaler.SD_X4_UPSCALER.generation.defaults
    assert X4_DEFAULTS == {"steps": defaults["steps"], "guidance": defaults["guidance"]}
    assert STAGE_III_NOISE_LEVEL == deepfloyd_if.STAGE_III_NOISE_LEVEL
    with pytest.raises(SystemExit):
        main(["upscale", "--help"])
    text = capsys.readouterr().out
    assert "--prompt" in text and "--noise-level" in text and "default: 20" in text


def test_other_families_and_misplaced_stages_are_refused(
    if_folders: tuple[Path, Path], x4: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stage1, stage2 = if_folders
    err = _error(capsys, ["generate", "x", "--model", str(stage1), "--upscaler", str(stage2),
                          "--latent-upscaler", str(stage2)])  # fmt: skip
    assert "--latent-upscaler" in err and "it goes to --upscaler" in err
    err = _error(capsys, ["generate", "x", "--model", str(stage1), "--upscaler", str(stage2),
                          "--latent-upscaler", str(tmp_path)])  # fmt: skip
    assert "--latent-upscaler" in err and "not a diffusers folder" in err
    err = _error(capsys, ["generate", "x", "--model", str(stage1), "--upscaler", str(x4)])
    assert "pass it as --latent-upscaler" in err
    err = _error(capsys, ["generate", "x", "--model", str(x4)])
    assert "--latent-upscaler" in err and "latentworks upscale" in err
    err = _error(capsys, ["generate", "x", "--model", str(stage1), "--latent-upscaler", str(x4)])
    assert "--latent-upscaler" in err and "--upscaler" in err and "stage II" in err
    src = _image(tmp_path / "a.png")
    err = _error(capsys, ["upscale", str(src), "--model", str(stage2)])
    assert "not a Stable Diffusion x4 upscaler" in err
    err = _error(capsys, ["upscale", str(src), "--model", str(x4), "--noise-level", "351"])
    assert "noise_level must be a step in [0, 350]" in err


@pytest.mark.parametrize(
    ("remove", "named"),
    [
        ("low_res_scheduler", "low_res_scheduler/scheduler_config.json"),
        ("unet/config.json", "unet/config.json"),
    ],
)
def test_missing_parts_name_the_file(
    if_folders: tuple[Path, Path], x4: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], remove: str,
    named: str,
) -> None:  # fmt: skip
    broken = tmp_path / "x4-broken"
    shutil.copytree(x4, broken)
    target = broken / remove
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    stage1, stage2 = if_folders
    err = _error(capsys, ["generate", "x", "--model", str(stage1), "--upscaler", str(stage2),
                          "--latent-upscaler", str(broken)])  # fmt: skip
    assert "--latent-upscaler" in err and str(broken / named) in err
    err = _error(capsys, ["upscale", str(_image(tmp_path / "a.png")), "--model", str(broken)])
    assert str(broken / named) in err


def test_batch_sample_equals_its_single_run(x4: Path) -> None:
    up = X4Upscaler.from_pretrained(x4)
    g = torch.Generator().manual_seed(1)
    images = [
        Image.fromarray((torch.rand(16, 16, 3, generator=g) * 255).to(torch.uint8).numpy()) for _ in range(2)
    ]
    both = up(images, ["a red apple", "a cat"], seed=5, steps=2)
    single = up(images[1], "a cat", seed=6, steps=2)
    assert both.seeds == [5, 6] and both.pixels.shape == (2, 3, 64, 64)
    torch.testing.assert_close(both.pixels[1:], single.pixels, atol=1e-4, rtol=0)
    assert (both.pixels[0] - both.pixels[1]).abs().max() > 0.05
    with pytest.raises(ValueError, match="2 images but 3 prompts"):
        up(images, ["a", "b", "c"], steps=1)
