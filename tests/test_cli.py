"""The command line: clear errors for bad arguments, PNG parameters, and a real end-to-end run."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image, PngImagePlugin

from latentworks.cli import COMMANDS, build_parser, main
from latentworks.pipelines.metadata import read_parameters


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--sampler", "eulr"], "unknown sampler 'eulr'; choose one of: euler"),
        (["--scheduler", "karas"], "unknown scheduler 'karas'; choose one of: normal"),
        (["--steps", "0"], "--steps must be between 1 and 1000"),
        (["--batch", "0"], "--batch must be between 1 and 64"),
        (["--width", "4"], "--width must be between 8 and 4096"),
        (["--strength", "0.5"], "--strength only applies with --init"),
        (["--init", "missing.png"], "--init: no such image file: missing.png"),
        (["-o", "out.jpg"], "--output must end in .png"),
        (
            ["--cfg-interval", "0.8", "0.2"],
            "--cfg-interval LO HI: interval must be (sigma_lo, sigma_hi) with 0 <= lo <= hi, got (0.8, 0.2)",
        ),
    ],
)
def test_generate_rejects_bad_arguments_without_traceback(
    extra: list[str], message: str, capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch
) -> None:  # noqa: ANN001
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(["generate", "an apple", *extra], capsys)
    assert code == 2
    assert message in err and "Traceback" not in err


def test_generate_records_the_guidance_interval(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "g.png"
    args = ["generate", "a red apple", "--model", str(tiny_model), "--steps", "2", "--quiet", "-o", str(out)]
    code, _, _ = run_cli([*args, "--cfg-interval", "0", "0.5"], capsys)
    assert code == 0
    assert read_parameters(out)["guidance_interval"] == [0.0, 0.5]
    assert "Guidance interval: 0-0.5" in Image.open(out).text["parameters"]
    # ... and `info --image` reads them back.
    code, stdout, _ = run_cli(["info", "--image", str(out)], capsys)
    assert code == 0
    lines = dict(p for p in (line.split(None, 1) for line in stdout.splitlines()) if len(p) == 2)
    assert lines["guidance_interval"] == "[0.0, 0.5]" and lines["prompt"] == "a red apple"
    assert lines["steps"] == "2" and lines["seed"] == str(read_parameters(out)["seed"])


def test_info_image_errors_are_clear(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plain = tmp_path / "plain.png"
    Image.new("RGB", (4, 4)).save(plain)
    code, _, err = run_cli(["info", "--image", str(plain)], capsys)
    assert code == 2 and "holds no generation parameters (text chunks: none)" in err
    a1111 = tmp_path / "a1111.png"
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a cat\nSteps: 20, Sampler: Euler a, CFG scale: 7")
    Image.new("RGB", (4, 4)).save(a1111, pnginfo=info)
    code, out, _ = run_cli(["info", "--image", str(a1111)], capsys)
    assert code == 0 and out == "a cat\nSteps: 20, Sampler: Euler a, CFG scale: 7\n"
    code, _, err = run_cli(["info", "--image", str(tmp_path / "nope.png")], capsys)
    assert code == 2 and "no such file" in err and "Traceback" not in err


def test_unknown_model_is_a_clear_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run_cli(
        ["generate", "x", "--model", str(tmp_path / "nope"), "-o", str(tmp_path / "a.png")], capsys
    )
    assert code == 2 and "no latentworks model folder" in err


def test_generate_writes_pngs_with_parameters(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "img.png"
    code, stdout, _ = run_cli(
        [
            "generate",
            "a red apple",
            "--model",
            str(tiny_model),
            "--seed",
            "7",
            "--batch",
            "2",
            "--steps",
            "3",
            "--sampler",
            "dpmpp_2m",
            "--quiet",
            "-o",
            str(out),
        ],
        capsys,
    )
    assert code == 0
    files = [tmp_path / "img-1.png", tmp_path / "img-2.png"]
    assert all(f.is_file() for f in files) and "seed=7" in stdout and "seed=8" in stdout
    p1, p2 = (read_parameters(f) for f in files)
    assert (p1["seed"], p2["seed"]) == (7, 8)
    assert p1["prompt"] == "a red apple" and p1["sampler"] == "dpmpp_2m" and p1["steps"] == 3
    assert "Steps: 3, Sampler: dpmpp_2m" in Image.open(files[0]).text["parameters"]
    # The parameters reproduce the image.
    again = tmp_path / "again.png"
    run_cli(
        [
            "generate",
            p2["prompt"],
            "--model",
            str(tiny_model),
            "--seed",
            str(p2["seed"]),
            "--steps",
            "3",
            "--sampler",
            "dpmpp_2m",
            "--quiet",
            "-o",
            str(again),
        ],
        capsys,
    )
    assert Image.open(again).tobytes() == Image.open(files[1]).tobytes()


def test_info_lists_samplers_and_describes_a_model(
    tiny_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_cli(["info"], capsys)
    assert code == 0 and "dpmpp_2m_sde" in out and "kl_optimal" in out
    assert "families    sd1, sd2, sd2-v, sdxl" in out and "z-image" in out  # from the registry
    code, out, _ = run_cli(["info", "--model", str(tiny_model)], capsys)
    assert code == 0 and "family      latentworks  architecture=unet" in out and "tiny-test" in out


def test_real_console_script_end_to_end(tiny_model: Path, tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("latentworks")
    out = tmp_path / "e2e.png"
    r = subprocess.run(
        [
            str(exe),
            "generate",
            "a blue heart",
            "--model",
            str(tiny_model),
            "--seed",
            "3",
            "--steps",
            "2",
            "-o",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr
    assert "sampling" in r.stderr  # the progress bar
    assert json.loads(Image.open(out).text["latentworks"])["seed"] == 3
    r = subprocess.run(
        [str(exe), "generate", "x", "--sampler", "nope"], capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 2 and "unknown sampler 'nope'" in r.stderr and "Traceback" not in r.stderr


def test_info_image_summarises_a_server_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from latentworks.graph.metadata import png_metadata

    prompt = {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "default"}},
        "6": {
            "class_type": "CLIPTextEncode",
            "inputs": {"text": "a red apple, google style", "clip": ["4", 1]},
        },
        "3": {
            "class_type": "KSampler",
            "inputs": {"seed": 5, "steps": 20, "cfg": 5.0, "sampler_name": "euler", "model": ["4", 0]},
        },
    }
    workflow = {
        "nodes": [{"id": 3, "type": "KSampler"}, {"id": 4, "type": "CheckpointLoaderSimple"}],
        "links": [[1]],
    }
    info = PngImagePlugin.PngInfo()
    for key, text in png_metadata(prompt, {"workflow": workflow}).items():  # as the server's SaveImage does
        info.add_text(key, text)
    png = tmp_path / "ComfyUI_00001_.png"
    Image.new("RGB", (4, 4)).save(png, pnginfo=info)
    code, out, err = run_cli(["info", "--image", str(png)], capsys)
    assert code == 0, err
    lines = [line.strip() for line in out.splitlines()]
    assert "workflow (ComfyUI 'prompt' chunk): 3 nodes" in lines
    assert (
        lines.index("3  KSampler")
        < lines.index("4  CheckpointLoaderSimple")
        < lines.index("6  CLIPTextEncode")
    )
    for item in ["seed=5", "steps=20", "cfg=5.0", 'sampler_name="euler"', "model<-4", 'ckpt_name="default"']:
        assert item in lines
    assert 'text="a red apple, google style"' in lines
    assert "editor graph ('workflow' chunk): 2 nodes, 1 links" in lines
    # A broken chunk is named, without a traceback.
    info = PngImagePlugin.PngInfo()
    info.add_text("prompt", "{not json")
    Image.new("RGB", (4, 4)).save(png, pnginfo=info)
    code, _, err = run_cli(["info", "--image", str(png)], capsys)
    assert code == 2 and "'prompt' text chunk is not valid JSON" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("kind", "advice"), [("diffusion", "convert --from-run"), ("autoencoder", "train --vae")]
)
def test_a_training_run_given_as_model_says_what_to_do(
    kind: str, advice: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "runs" / "ldm"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"kind": kind, "model": {}}))
    out = tmp_path / "x.png"
    code, _, err = run_cli(["generate", "an apple", "--model", str(run), "--quiet", "-o", str(out)], capsys)
    assert code == 2 and "Traceback" not in err
    assert "is a training run" in err or "is an autoencoder training run" in err
    assert f"{advice} {run}" in err
    if kind == "diffusion":
        assert f"latentworks convert --from-run {run} --out models/checkpoints/ldm" in err


@pytest.mark.parametrize(
    ("spec", "file", "strength"),
    [
        ("style.safetensors", "style.safetensors", 1.0),
        ("style.safetensors:0.8", "style.safetensors", 0.8),
        ("loras/detail.safetensors:-0.3", "loras/detail.safetensors", -0.3),
        ("a:b/c.safetensors", "a:b/c.safetensors", 1.0),  # ':' inside the path, no strength
        ("a:b/c.safetensors:2", "a:b/c.safetensors", 2.0),  # only the last ':' splits
        ("C:\\loras\\x.safetensors", "C:\\loras\\x.safetensors", 1.0),
        (":0.5", ":0.5", 1.0),  # nothing before the ':' is no file: the whole text is the name
    ],
)
def test_lora_option_parses_file_and_strength(spec: str, file: str, strength: float) -> None:
    from latentworks.commands.generate import parse_lora

    assert parse_lora(spec) == (Path(file), strength)


def _tiny_unet_lora(tiny_model: Path, path: Path) -> Path:
    """A kohya LoRA on one cross-attention projection of the tiny test U-Net."""
    from latentworks.checkpoints.io import save_file_atomic
    from latentworks.pipelines.loading import load_model_folder

    weight = dict(load_model_folder(tiny_model).denoiser_net.named_modules())[
        "down.1.transformers.0.blocks.0.cross_attn.k"
    ].weight
    g = torch.Generator().manual_seed(0)
    m = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k"
    save_file_atomic(
        {
            f"{m}.lora_down.weight": torch.randn(2, weight.shape[1], generator=g),
            f"{m}.lora_up.weight": torch.randn(weight.shape[0], 2, generator=g),
        },
        path,
    )
    return path


def test_generate_with_lora_equals_the_api_and_records_it(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import numpy as np

    from latentworks.pipelines import Pipeline

    lora = _tiny_unet_lora(tiny_model, tmp_path / "style.safetensors")
    base = ["generate", "a red apple", "--model", str(tiny_model), "--steps", "2", "--seed", "3", "--quiet"]
    code, _, err = run_cli([*base, "--lora", f"{lora}:0.7", "-o", str(tmp_path / "l.png")], capsys)
    assert code == 0, err
    code, _, _ = run_cli([*base, "-o", str(tmp_path / "p.png")], capsys)
    assert code == 0
    pipe = Pipeline.from_pretrained(tiny_model)
    pipe.load_lora(lora, 0.7)
    api = np.asarray(pipe("a red apple", steps=2, seed=3).images[0], dtype=np.int16)
    cli = np.asarray(Image.open(tmp_path / "l.png").convert("RGB"), dtype=np.int16)
    plain = np.asarray(Image.open(tmp_path / "p.png").convert("RGB"), dtype=np.int16)
    assert np.array_equal(cli, api) and np.abs(cli - plain).max() > 0
    assert read_parameters(tmp_path / "l.png")["loras"] == [{"file": str(lora), "strength": 0.7}]
    assert "Lora: style.safetensors:0.7" in Image.open(tmp_path / "l.png").text["parameters"]
    assert "loras" not in read_parameters(tmp_path / "p.png")
    code, _, err = run_cli(
        [*base, "--lora", str(tmp_path / "missing.safetensors"), "-o", str(tmp_path / "m.png")], capsys
    )
    assert code == 2 and "--lora: no such file" in err and "Traceback" not in err


def test_a_size_far_from_the_native_one_warns_once_in_cli_words(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["generate", "a red apple", "--model", str(tiny_model), "--steps", "1", "--quiet"]
    code, _, err = run_cli([*base, "--width", "32", "--height", "32", "-o", str(tmp_path / "a.png")], capsys)
    assert code == 0
    line = (
        "warning: the tiny-test model draws 16x16 images; 32x32 gives tiled results. "
        "Use --width 16 --height 16 (its native size)"
    )
    assert err.count("warning:") == 1 and line in err, err
    code, _, err = run_cli([*base, "-o", str(tmp_path / "b.png")], capsys)  # native size: nothing
    assert code == 0 and "warning" not in err
    code, _, err = run_cli([*base, "--width", "8", "--height", "8", "-o", str(tmp_path / "c.png")], capsys)
    assert "draws 16x16 images; 8x8 gives degraded results" in err


def test_the_api_warns_about_a_size_far_from_the_native_one(tiny_model: Path) -> None:
    from latentworks.pipelines import Pipeline
    from latentworks.pipelines.text_to_image import ResolutionWarning

    pipe = Pipeline.from_pretrained(tiny_model)
    with pytest.warns(ResolutionWarning, match=r"draws 16x16 images; 32x16 gives tiled results"):
        pipe("a red apple", steps=1, width=32, height=16)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", ResolutionWarning)
        pipe("a red apple", steps=1, width=16, height=16)  # native


def test_quiet_silences_the_libraries_progress_bars_only_while_it_runs(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.enable_progress_bar()
    args = [
        "generate",
        "a red apple",
        "--model",
        str(tiny_model),
        "--steps",
        "1",
        "-o",
        str(tmp_path / "q.png"),
    ]
    code, _, err = run_cli([*args, "--quiet"], capsys)
    assert code == 0
    assert "Loading weights" not in err and "sampling" not in err, err
    assert hf_logging.is_progress_bar_enabled()  # scoped: restored afterwards
    code, _, err = run_cli(args, capsys)  # without --quiet, our bar shows
    assert code == 0 and "sampling" in err


def test_what_the_commands_create_by_default_is_git_ignored() -> None:
    from latentworks.cli import build_parser

    root = Path(__file__).resolve().parents[1]
    probe = subprocess.run(
        ["git", "-C", str(root), "rev-parse", "--is-inside-work-tree"], capture_output=True
    )
    if probe.returncode != 0:
        pytest.skip("not a git checkout")
    serve = build_parser("serve").parse_args(["serve"])
    generate = build_parser("generate").parse_args(["generate", "x"])
    created = [
        serve.data_dir / "history.sqlite3",
        serve.models_dir / "checkpoints" / "mine" / "model.json",
        generate.output,
        Path("apple.png"),  # the README's quick start
        Path("runs/ldm/config.json"),  # docs/training.md
        Path("data/emoji-64.npz"),
    ]
    for path in created:
        ignored = subprocess.run(["git", "-C", str(root), "check-ignore", "-q", "--no-index", str(path)])
        assert ignored.returncode == 0, f"{path} is not in .gitignore"


def _option_blocks(help_text: str) -> dict[str, str]:
    """'--flag' -> its whole help entry (the flag line and its indented continuation), from rendered --help."""
    blocks: dict[str, str] = {}
    flags: list[str] = []
    for line in help_text.splitlines():
        if line.startswith("  -"):
            flags = [f.rstrip(",") for f in line.split() if f.startswith("-")]
            for f in flags:
                blocks[f] = line
        elif line.startswith("   ") and flags:
            for f in flags:
                blocks[f] += " " + line.strip()
        else:
            flags = []
    return blocks


def _parsers(p: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """``p`` and every nested subcommand parser (``eval autoencoder``, ``data emoji``)."""
    nested = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
    return [p] + [q for a in nested for child in a.choices.values() for q in _parsers(child)]


@pytest.mark.parametrize("command", [c[0] for c in COMMANDS])
def test_help_shows_every_default(command: str) -> None:
    top = build_parser(only=command)
    sub = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
    checked, missing = 0, []
    for p in _parsers(sub.choices[command]):
        blocks = _option_blocks(p.format_help())
        for a in p._actions:
            if not a.option_strings or a.required or a.nargs == 0:  # flags (store_true, --help) have none
                continue
            checked += 1
            if "default" not in blocks.get(a.option_strings[-1], "").lower():
                missing.append(f"{p.prog} {a.option_strings[-1]}")
    assert checked and not missing, f"--help shows no default for: {missing}"
