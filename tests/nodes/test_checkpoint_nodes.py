"""Workflows on checkpoints from elsewhere: CheckpointLoaderSimple lists and loads single files and diffusers
folders from models/checkpoints, the result equals the pipeline's, and FLUX's guidance travels on conditioning."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from latentworks.diffusion.conditioning import Conditioning
from latentworks.families.load import read_checkpoint, write_diffusers, write_single_file
from latentworks.graph.executor import Executor
from latentworks.nodes import default_registry
from latentworks.nodes.models import _resolve, list_checkpoints
from latentworks.nodes.payloads import ConditioningPayload
from latentworks.pipelines import Pipeline
from support.checkpoints import tiny_sd1_parts


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    ck = root / "checkpoints"
    ck.mkdir()
    file = write_single_file(tiny_sd1_parts(ck / "tiny-sd1.safetensors"), ck / "tiny-sd1.safetensors")
    write_diffusers(read_checkpoint(file), ck / "sub" / "tiny-sd1-diffusers")
    return root


def _workflow(ckpt: str) -> dict:
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red apple", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 16, "height": 16, "batch_size": 1}},
        "3": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["4", 0],
                "seed": 5,
                "steps": 3,
                "cfg": 7.0,
                "sampler_name": "euler",
                "scheduler": "normal",
                "positive": ["6", 0],
                "negative": ["7", 0],
                "latent_image": ["5", 0],
                "denoise": 1.0,
            },
        },  # fmt: skip
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "ck"}},
    }


def test_checkpoint_files_and_diffusers_folders_are_listed(models_dir: Path) -> None:
    names = list_checkpoints(models_dir)
    assert names[0] == "default"
    assert "tiny-sd1.safetensors" in names and "sub/tiny-sd1-diffusers" in names
    # weight files inside a diffusers folder are not checkpoints of their own
    assert not any(n.startswith("sub/tiny-sd1-diffusers/") for n in names)


@pytest.mark.parametrize("ckpt", ["tiny-sd1.safetensors", "sub/tiny-sd1-diffusers"])
def test_workflow_on_a_checkpoint_equals_the_pipeline(models_dir: Path, tmp_path: Path, ckpt: str) -> None:
    executor = Executor(default_registry(models_dir))
    ctx = executor.new_context("job", output_dir=tmp_path, temp_dir=tmp_path, on_event=lambda e, d: None)
    res = executor.execute(_workflow(ckpt), ctx)
    assert res.status == "success", res.error
    got = np.asarray(Image.open(tmp_path / res.outputs["9"]["images"][0]["filename"]).convert("RGB"))
    pipe = Pipeline.from_pretrained(models_dir / "checkpoints" / ckpt)
    want = pipe(
        "a red apple",
        "",
        steps=3,
        guidance=7.0,
        sampler="euler",
        scheduler="normal",
        seed=5,
        width=16,
        height=16,
    )
    assert np.abs(got.astype(int) - np.asarray(want.images[0]).astype(int)).max() <= 1


def test_checkpoint_names_cannot_escape_the_models_folder(models_dir: Path, tmp_path: Path) -> None:
    executor = Executor(default_registry(models_dir))
    ctx = executor.new_context("job", output_dir=tmp_path, temp_dir=tmp_path, on_event=lambda e, d: None)
    res = executor.execute(_workflow("../../etc/passwd"), ctx)
    assert res.status == "error" and res.error["exception_type"] == "ValidationError"  # not among the choices
    with pytest.raises(FileNotFoundError, match="is not inside"):  # and the loader itself refuses it too
        _resolve(models_dir, "../../etc/passwd")


def test_flux_guidance_node_sets_the_guidance_on_conditioning() -> None:
    spec = default_registry(None).get("FluxGuidance")
    cond = ConditioningPayload(Conditioning(tokens=torch.zeros(2, 3, 4)))
    (out,) = spec.execute(None, conditioning=cond, guidance=2.5)
    torch.testing.assert_close(out.cond.extra["guidance"], torch.full((2,), 2.5))
    assert "guidance" not in cond.cond.extra  # the input is not mutated
