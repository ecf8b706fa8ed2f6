"""ControlNet nodes and API on tiny files: ControlNetLoader reads both layouts to the same network,
ControlNetApplyAdvanced in a ComfyUI workflow equals ``pipe(control=...)`` on the same files, strength 0 equals
no ControlNet, a ControlNet of another family is refused with a clear error, and Canny finds a square's edges."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from latentworks import families
from latentworks.families.controlnet import ORIGINAL, detect_controlnet, load_controlnet
from latentworks.families.load import write_single_file
from latentworks.graph.executor import Executor
from latentworks.nodes import default_registry
from latentworks.nodes.controlnet import canny
from latentworks.pipelines import Pipeline
from latentworks.pipelines.control import Control
from support.checkpoints import tiny_sd1_parts
from support.controlnet import tiny_controlnet, tiny_t2i_adapter, write_controlnet, write_t2i_adapter

SIZE = 16


def _square(size: int = SIZE) -> np.ndarray:
    img = np.zeros((size, size, 3), dtype=np.uint8)
    img[4:12, 4:12] = 255
    return img


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("models")
    (root / "checkpoints").mkdir()
    (root / "controlnet").mkdir()
    parts = tiny_sd1_parts(root / "checkpoints" / "tiny-sd1.safetensors")
    write_single_file(parts, root / "checkpoints" / "tiny-sd1.safetensors")
    net = tiny_controlnet(parts.denoiser_config, hint_channels=(16, 32))  # the tiny VAE downsamples 2x
    write_controlnet(root / "controlnet" / "cn-original.safetensors", net, layout="original")
    write_controlnet(root / "controlnet" / "cn-diffusers.safetensors", net, layout="diffusers")
    sd2_like = replace(
        parts.denoiser_config, channels=(64, 64), context_dim=1024, num_heads=None, head_dim=64
    )
    other = tiny_controlnet(sd2_like, hint_channels=(16, 32))
    write_controlnet(root / "controlnet" / "cn-other.safetensors", other, layout="diffusers")
    (root / "t2i_adapter").mkdir()
    write_t2i_adapter(
        root / "t2i_adapter" / "adapter.safetensors", tiny_t2i_adapter(parts.denoiser_config.channels)
    )
    inputs = tmp_path_factory.mktemp("input")
    Image.fromarray(_square()).save(inputs / "square.png")
    return root, inputs


def _workflow(strength: float, cn: str = "cn-original.safetensors") -> dict:
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny-sd1.safetensors"}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red apple", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
        "10": {"class_type": "LoadImage", "inputs": {"image": "square.png"}},
        "11": {
            "class_type": "Canny",
            "inputs": {"image": ["10", 0], "low_threshold": 0.4, "high_threshold": 0.8},
        },
        "12": {"class_type": "ControlNetLoader", "inputs": {"control_net_name": cn}},
        "13": {
            "class_type": "ControlNetApplyAdvanced",
            "inputs": {
                "positive": ["6", 0],
                "negative": ["7", 0],
                "control_net": ["12", 0],
                "image": ["11", 0],
                "strength": strength,
                "start_percent": 0.0,
                "end_percent": 1.0,
            },
        },  # fmt: skip
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": 1}},
        "3": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["4", 0],
                "seed": 5,
                "steps": 3,
                "cfg": 7.0,
                "sampler_name": "euler",
                "scheduler": "normal",
                "positive": ["13", 0],
                "negative": ["13", 1],
                "latent_image": ["5", 0],
                "denoise": 1.0,
            },
        },  # fmt: skip
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "cn"}},
    }


def _run(dirs: tuple[Path, Path], tmp_path: Path, workflow: dict) -> tuple[str, object, np.ndarray | None]:
    executor = Executor(default_registry(*dirs))
    ctx = executor.new_context("job", output_dir=tmp_path, temp_dir=tmp_path, on_event=lambda e, d: None)
    res = executor.execute(workflow, ctx)
    if res.status != "success":
        return res.status, res.error, None
    img = np.asarray(Image.open(tmp_path / res.outputs["9"]["images"][0]["filename"]).convert("RGB"))
    return res.status, None, img.astype(int)


def test_both_layouts_load_to_the_same_network(dirs: tuple[Path, Path]) -> None:
    a = load_controlnet(dirs[0] / "controlnet" / "cn-original.safetensors")
    b = load_controlnet(dirs[0] / "controlnet" / "cn-diffusers.safetensors")
    assert a.config == b.config and a.config.hint_factor == 2
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    found = detect_controlnet(
        {f"control_model.{k}": v.shape for k, v in ORIGINAL.from_ours(sa, a.config).items()}
    )
    assert (
        found.layout.name == "original"
        and found.prefix == "control_model."
        and found.family is families.get("sd1")
    )


@pytest.mark.parametrize(
    ("node_file", "api_file"),
    [
        ("cn-original.safetensors", "controlnet/cn-diffusers.safetensors"),
        ("adapter.safetensors", "t2i_adapter/adapter.safetensors"),
    ],
)
def test_workflow_equals_pipeline_and_strength_zero_equals_no_control(
    dirs: tuple[Path, Path], tmp_path: Path, node_file: str, api_file: str
) -> None:
    status, err, got = _run(dirs, tmp_path / "a", _workflow(0.8, node_file))
    assert status == "success", err
    status, err, off = _run(dirs, tmp_path / "b", _workflow(0.0))
    assert status == "success", err

    pipe = Pipeline.from_pretrained(dirs[0] / "checkpoints" / "tiny-sd1.safetensors")
    edges = canny(torch.from_numpy(_square()).float().unsqueeze(0) / 255.0, 0.4, 0.8)[0].permute(2, 0, 1)
    kw = dict(steps=3, guidance=7.0, sampler="euler", scheduler="normal", seed=5, width=SIZE, height=SIZE)
    cn = dirs[0] / api_file
    want = pipe("a red apple", "", control=[Control(edges, cn, 0.8)], **kw)  # type: ignore[arg-type]
    plain = pipe("a red apple", "", **kw)  # type: ignore[arg-type]
    assert want.parameters["control"][0]["strength"] == 0.8
    want_img, plain_img = np.asarray(want.images[0]).astype(int), np.asarray(plain.images[0]).astype(int)
    assert got is not None and off is not None
    assert np.abs(got - want_img).max() <= 1
    assert np.array_equal(off, plain_img) or np.abs(off - plain_img).max() <= 1
    assert np.abs(want_img - plain_img).max() > 8  # the ControlNet does change the image


def test_controlnet_of_another_family_is_a_clear_error(dirs: tuple[Path, Path], tmp_path: Path) -> None:
    status, err, _ = _run(dirs, tmp_path, _workflow(1.0, "cn-other.safetensors"))
    assert status == "error"
    assert "another model family" in str(err)


def test_canny_finds_the_edges_of_a_square() -> None:
    img = torch.from_numpy(_square()).float().unsqueeze(0) / 255.0
    edges = canny(img, 0.4, 0.8)
    assert edges.shape == (1, SIZE, SIZE, 3) and set(edges.unique().tolist()) <= {0.0, 1.0}
    e = edges[0, :, :, 0]
    ring = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    ring[3:13, 3:13] = True
    ring[6:10, 6:10] = False  # edges lie within a pixel of the square's border
    assert e[~ring].sum() == 0
    assert e[4:12, 3:5].sum() + e[4:12, 11:13].sum() >= 8  # left and right borders are found
    with pytest.raises(ValueError, match="low_threshold"):
        canny(img, 0.9, 0.5)
