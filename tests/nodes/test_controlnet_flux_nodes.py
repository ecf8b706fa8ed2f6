"""FLUX ControlNets through the nodes and the API on tiny files: a ComfyUI workflow (ControlNetLoader on a
diffusers folder, SetUnionControlNetType, ControlNetApplyAdvanced with the VAE) equals ``pipe(control=...)``;
SetUnionControlNetType picks ComfyUI's mode indices (that a mode changes the result is shown against diffusers in
``tests/oracle/test_controlnet_flux_oracle.py``); and each misuse is a clear error (no VAE, ControlNets of another family in
both directions, a type on a ControlNet without modes)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from latentworks.families.controlnet import FLUX_DIFFUSERS, load_controlnet
from latentworks.families.load import write_single_file
from latentworks.graph.executor import Executor
from latentworks.models.controlnet_flux import (
    FluxControlNet,
    FluxControlNetConfig,
    UnionMode,
    randomize_zero_layers,
)
from latentworks.nodes import default_registry
from latentworks.nodes.controlnet import ControlNetPayload
from latentworks.pipelines import Pipeline
from latentworks.pipelines.control import Control
from support.checkpoints import tiny_sd1_parts
from support.controlnet import tiny_controlnet, write_controlnet
from support.workflow_fixtures import _flux_config, build

SIZE = 32  # the tiny FLUX VAE downsamples 2x: 16x16 latents, 8x8 tokens
CN = "flux-union/diffusion_pytorch_model.safetensors"
AXES = [4, 14, 14]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("models")
    build("checkpoint:flux-dev", root / "checkpoints" / "tiny-flux.safetensors")
    parts = tiny_sd1_parts(root / "checkpoints" / "tiny-sd1.safetensors")
    write_single_file(parts, root / "checkpoints" / "tiny-sd1.safetensors")
    torch.manual_seed(3)
    config = FluxControlNetConfig(flux=_flux_config("flux-dev"), num_modes=10)
    net = FluxControlNet(config).eval()
    randomize_zero_layers(net, torch.Generator().manual_seed(4), std=0.3)
    folder = root / "controlnet" / "flux-union"
    folder.mkdir(parents=True)
    state = FLUX_DIFFUSERS.from_ours({k: v.contiguous() for k, v in net.state_dict().items()}, config)
    save_file(state, str(folder / "diffusion_pytorch_model.safetensors"))
    # the RoPE split a single file's shapes imply for 32-wide heads: the tiny FLUX checkpoint is read with it too
    (folder / "config.json").write_text(
        json.dumps({"_class_name": "FluxControlNetModel", "axes_dims_rope": AXES})
    )
    sd_net = tiny_controlnet(parts.denoiser_config, hint_channels=(16, 32))
    write_controlnet(root / "controlnet" / "cn-sd1.safetensors", sd_net, layout="diffusers")
    inputs = tmp_path_factory.mktemp("input")
    img = np.zeros((SIZE, SIZE, 3), dtype=np.uint8)
    img[8:24, 6:20] = 255
    Image.fromarray(img).save(inputs / "hint.png")
    return root, inputs


def _workflow(
    *, ckpt: str = "tiny-flux.safetensors", cn: str = CN, union: str | None = "depth", vae: bool = True
) -> dict:
    control = ["12", 0]
    wf: dict = {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red apple", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
        "10": {"class_type": "LoadImage", "inputs": {"image": "hint.png"}},
        "12": {"class_type": "ControlNetLoader", "inputs": {"control_net_name": cn}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": 1}},
        "3": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["4", 0], "seed": 5, "steps": 3, "cfg": 1.0, "sampler_name": "euler",
                "scheduler": "simple", "positive": ["13", 0], "negative": ["13", 1], "latent_image": ["5", 0],
                "denoise": 1.0,
            },
        },
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "cn"}},
    }  # fmt: skip
    if union is not None:
        wf["14"] = {
            "class_type": "SetUnionControlNetType",
            "inputs": {"control_net": ["12", 0], "type": union},
        }
        control = ["14", 0]
    apply = {
        "positive": ["6", 0], "negative": ["7", 0], "control_net": control, "image": ["10", 0], "strength": 0.8,
        "start_percent": 0.0, "end_percent": 1.0,
    }  # fmt: skip
    if vae:
        apply["vae"] = ["4", 2]
    wf["13"] = {"class_type": "ControlNetApplyAdvanced", "inputs": apply}
    return wf


def _run(dirs: tuple[Path, Path], tmp_path: Path, workflow: dict) -> tuple[str, object, np.ndarray | None]:
    executor = Executor(default_registry(*dirs))
    ctx = executor.new_context("job", output_dir=tmp_path, temp_dir=tmp_path, on_event=lambda e, d: None)
    res = executor.execute(workflow, ctx)
    if res.status != "success":
        return res.status, res.error, None
    img = np.asarray(Image.open(tmp_path / res.outputs["9"]["images"][0]["filename"]).convert("RGB"))
    return res.status, None, img.astype(int)


def test_folder_loads_with_its_config_and_modes(dirs: tuple[Path, Path], tmp_path: Path) -> None:
    net = load_controlnet(dirs[0] / "controlnet" / "flux-union")
    assert isinstance(net, FluxControlNet)
    assert net.config.num_modes == 10 and net.config.flux.axes_dim == tuple(AXES)
    assert net.source_name == "flux-union"
    folder = tmp_path / "other-axes"  # RoPE axes are not in the shapes: the folder's config.json names them
    shutil.copytree(dirs[0] / "controlnet" / "flux-union", folder)
    (folder / "config.json").write_text(
        json.dumps({"_class_name": "FluxControlNetModel", "axes_dims_rope": [8, 12, 12]})
    )
    assert load_controlnet(folder).config.flux.axes_dim == (8, 12, 12)
    assert load_controlnet(folder / "diffusion_pytorch_model.safetensors").config.flux.axes_dim == (8, 12, 12)
    with pytest.raises(ValueError, match="0..9"):
        net.with_mode(10)


def test_workflow_equals_pipeline_and_union_type_matters(dirs: tuple[Path, Path], tmp_path: Path) -> None:
    status, err, got = _run(dirs, tmp_path / "a", _workflow(union="depth"))  # ComfyUI's "depth" = mode 1
    assert status == "success", err

    ckpt = dirs[0] / "checkpoints" / "tiny-flux.safetensors"
    pipe = Pipeline.from_pretrained(ckpt, tokenizer=ckpt.with_name("tiny-flux.tokenizer.json"))
    hint = Image.open(dirs[1] / "hint.png")
    kw = dict(steps=3, guidance=3.5, sampler="euler", scheduler="simple", seed=5, width=SIZE, height=SIZE)
    cn = dirs[0] / "controlnet" / CN
    want = pipe("a red apple", control=[Control(hint, cn, 0.8, mode=1)], **kw)  # type: ignore[arg-type]
    plain = pipe("a red apple", **kw)  # type: ignore[arg-type]
    assert want.parameters["control"][0]["mode"] == 1
    want_img, plain_img = np.asarray(want.images[0]).astype(int), np.asarray(plain.images[0]).astype(int)
    assert got is not None
    assert np.abs(got - want_img).max() <= 1
    assert np.abs(want_img - plain_img).max() > 8  # the ControlNet does change the image


def test_set_union_type_picks_comfyui_indices(dirs: tuple[Path, Path]) -> None:
    node = default_registry(*dirs).get("SetUnionControlNetType")
    net = load_controlnet(dirs[0] / "controlnet" / CN)
    payload = ControlNetPayload(net, CN)
    (depth,) = node.execute(None, payload, "depth")
    (tile,) = node.execute(None, depth, "tile")  # a second node re-picks on the same weights
    (auto,) = node.execute(None, payload, "auto")
    assert isinstance(depth.network, UnionMode) and depth.network.mode == 1 and depth.network.net is net
    assert isinstance(tile.network, UnionMode) and tile.network.mode == 6 and tile.network.net is net
    assert isinstance(auto.network, UnionMode) and auto.network.mode is None


@pytest.mark.parametrize(
    ("workflow", "message"),
    [
        (_workflow(vae=False), "connect the model's VAE to the 'vae' input"),
        (_workflow(ckpt="tiny-sd1.safetensors", union=None), "FLUX ControlNet but the model is a UNet"),
        (_workflow(cn="cn-sd1.safetensors", union=None), "for SD-style U-Nets but the model is a Flux"),
        (_workflow(cn="cn-sd1.safetensors", union="depth"), "not a Union ControlNet"),
    ],
)
def test_misuse_is_a_clear_error(
    dirs: tuple[Path, Path], tmp_path: Path, workflow: dict, message: str
) -> None:
    status, err, _ = _run(dirs, tmp_path, workflow)
    assert status == "error"
    assert message in str(err)
