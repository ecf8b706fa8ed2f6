"""``latentworks run``: an editor-format txt2img workflow with the embedded default model, end to end."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from PIL import Image

from latentworks.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parent / "graph"))
from ui_workflow_samples import txt2img  # noqa: E402


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def workflow_file(tmp_path: Path) -> Path:
    path = tmp_path / "txt2img.json"
    path.write_text(json.dumps(txt2img(seed=1, size=32, steps=2).to_json()))
    return path


def test_run_editor_workflow_writes_a_png_then_reruns_it(
    workflow_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_dir = tmp_path / "outs"
    code, out, err = run_cli(
        ["run", str(workflow_file), "--output-dir", str(out_dir), "--set", "3.seed=77",
         "--set", "Positive.text=a blue cat", "--input-dir", str(tmp_path), "--models-dir", str(tmp_path)],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    png = out_dir / "ComfyUI_00001_.png"
    assert out.split() == [str(png)]
    assert "KSampler" in err and "2/2" in err  # the progress bar
    with Image.open(png) as im:
        assert im.size == (32, 32)
        prompt = json.loads(im.text["prompt"])
        assert "workflow" in im.text  # the editor workflow is kept for the editor to reopen
    assert prompt["3"]["inputs"]["seed"] == 77 and prompt["6"]["inputs"]["text"] == "a blue cat"
    assert prompt["3"]["inputs"]["steps"] == 2 and prompt["3"]["inputs"]["sampler_name"] == "euler"

    # The PNG runs again (its API 'prompt' chunk); a --set by class name changes the seed.
    code, out, err = run_cli(
        ["run", str(png), "--output-dir", str(out_dir), "--set", "KSampler.seed=78"], capsys
    )
    assert code == 0, err
    with Image.open(out_dir / "ComfyUI_00002_.png") as im:
        rerun = json.loads(im.text["prompt"])
    assert rerun["3"]["inputs"]["seed"] == 78

    # An API-format file runs too (here a saved POST /prompt body); --quiet prints only the files.
    api_file = tmp_path / "api.json"
    api_file.write_text(json.dumps({"prompt": rerun}))
    code, out, err = run_cli(["run", str(api_file), "--output-dir", str(out_dir), "--quiet"], capsys)
    assert code == 0, err
    assert out.split() == [str(out_dir / "ComfyUI_00003_.png")] and "KSampler" not in err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--set", "nope.seed=1"], "no node with id, title or class 'nope'"),
        (["--set", "CLIPTextEncode.text=x"], "2 nodes have the class 'CLIPTextEncode'"),
        (["--set", "3.sead=1"], "node 3 (KSampler) has no input 'sead'"),
        (["--set", "3seed"], "write NODE.INPUT=VALUE"),
        (["--set", "3.steps=0"], "node 3 (KSampler): Value 0 smaller than min of 1: steps"),
    ],
)
def test_bad_overrides_are_one_line_errors(
    extra: list[str], message: str, workflow_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(["run", str(workflow_file), "--output-dir", str(tmp_path / "o"), *extra], capsys)
    assert code == 2 and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_bad_workflow_files_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    unknown = txt2img().to_json()
    unknown["nodes"].append({"id": 50, "type": "FancyUpscaler", "mode": 0, "widgets_values": []})
    cases = {
        "missing.json": (None, "no such workflow file"),
        "broken.json": ("{not json", "is not valid JSON"),
        "list.json": ("[1, 2]", "not a workflow"),
        "unknown.json": (json.dumps(unknown), "FancyUpscaler"),
    }
    for name, (text, message) in cases.items():
        path = tmp_path / name
        if text is not None:
            path.write_text(text)
        code, _, err = run_cli(["run", str(path)], capsys)
        assert code == 2 and message in err and "Traceback" not in err, (name, err)
    png = tmp_path / "plain.png"
    Image.new("RGB", (2, 2)).save(png)
    code, _, err = run_cli(["run", str(png)], capsys)
    assert code == 2 and "no 'prompt' or 'workflow' text chunk" in err


def test_help_teaches_with_examples_and_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = capsys.readouterr().out
    assert "--set 3.seed=42" in out and "(default: outputs)" in out and "(default: models)" in out
