"""The torch node adapters: a ComfyUI API-format text-to-image workflow runs end to end, equals the
pipeline's result, reuses cached work when only the seed changes, and posts through the real server."""

from __future__ import annotations

import json
import shutil
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from latentworks.graph.executor import Executor
from latentworks.graph.validate import validate_prompt
from latentworks.nodes import default_registry


def t2i_workflow(seed: int = 5, ckpt: str = "tiny", sampler: str = "euler") -> dict:
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red apple", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 16, "height": 16, "batch_size": 2}},
        "3": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["4", 0],
                "seed": seed,
                "steps": 4,
                "cfg": 3.0,
                "sampler_name": sampler,
                "scheduler": "normal",
                "positive": ["6", 0],
                "negative": ["7", 0],
                "latent_image": ["5", 0],
                "denoise": 1.0,
            },
        },
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "t2i"}},
    }


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Path:
    root = tmp_path_factory.mktemp("models")
    shutil.copytree(tiny_model, root / "checkpoints" / "tiny")
    return root


def run(executor: Executor, prompt: dict, out: Path, events: list | None = None):  # noqa: ANN201
    ctx = executor.new_context(
        "job",
        output_dir=out,
        temp_dir=out,
        on_event=((lambda e, d: events.append(e)) if events is not None else (lambda e, d: None)),
    )
    return executor.execute(prompt, ctx)


def test_registry_validates_the_comfyui_workflow(models_dir: Path) -> None:
    reg = default_registry(models_dir)
    assert validate_prompt(reg, t2i_workflow()).ok
    info = reg.object_info()
    assert "tiny" in info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0]
    assert "dpmpp_2m" in info["KSampler"]["input"]["required"]["sampler_name"][0]
    bad = t2i_workflow(sampler="nope")
    assert not validate_prompt(reg, bad).ok


def test_workflow_matches_the_pipeline_and_caches_upstream(models_dir: Path, tmp_path: Path) -> None:
    from latentworks.pipelines import Pipeline

    executor = Executor(default_registry(models_dir))
    events: list[str] = []
    res = run(executor, t2i_workflow(seed=5), tmp_path, events)
    assert res.status == "success", res.error
    files = res.outputs["9"]["images"]
    assert len(files) == 2 and "progress" in events and "preview" in events
    got = [np.asarray(Image.open(tmp_path / f["filename"]).convert("RGB")) for f in files]
    # The workflow carries itself in the PNG, so the editor can restore it.
    assert (
        json.loads(Image.open(tmp_path / files[0]["filename"]).text["prompt"])["3"]["class_type"]
        == "KSampler"
    )
    pipe = Pipeline.from_pretrained(models_dir / "checkpoints" / "tiny")
    want = pipe(
        "a red apple", "", steps=4, guidance=3.0, sampler="euler", scheduler="normal", seed=5, batch=2
    )
    for g, w in zip(got, want.images, strict=True):
        assert np.abs(g.astype(int) - np.asarray(w).astype(int)).max() <= 1

    again = run(executor, t2i_workflow(seed=6), tmp_path)
    assert again.status == "success"
    assert set(again.cached) >= {"4", "5", "6", "7"} and set(again.executed) == {"3", "8", "9"}


def test_inpaint_nodes_run_and_keep_unmasked_latents(models_dir: Path, tmp_path: Path) -> None:
    inp = tmp_path / "input"
    inp.mkdir()
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 255
    rgba[4:12, 4:12, 3] = 0  # transparent square -> mask 1 (regenerate)
    Image.fromarray(rgba, "RGBA").save(inp / "src.png")
    wf = t2i_workflow()
    wf["10"] = {"class_type": "LoadImage", "inputs": {"image": "src.png"}}
    wf["11"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["10", 0], "vae": ["4", 2]}}
    wf["12"] = {"class_type": "SetLatentNoiseMask", "inputs": {"samples": ["11", 0], "mask": ["10", 1]}}
    wf["3"]["inputs"]["latent_image"] = ["12", 0]
    wf["3"]["inputs"]["denoise"] = 0.8
    executor = Executor(default_registry(models_dir, inp))
    ctx = executor.new_context("job", output_dir=tmp_path, temp_dir=tmp_path, input_dir=inp)
    res = executor.execute(wf, ctx)
    assert res.status == "success", res.error

    # The sampler itself: latents outside the mask come back exactly as encoded, inside they change.
    from latentworks.nodes.payloads import ConditioningPayload, Latent, ModelPayload
    from latentworks.nodes.sampling import run_sampler
    from latentworks.pipelines.loading import load_model_folder

    folder = load_model_folder(models_dir / "checkpoints" / "tiny")
    x0 = torch.randn(1, 4, 8, 8)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 2:6, 2:6] = 1
    cond = ConditioningPayload(
        __import__("latentworks.diffusion.conditioning", fromlist=["Conditioning"]).Conditioning(
            tokens=torch.randn(1, 3, 384)
        )
    )
    out = run_sampler(
        ctx,
        ModelPayload(folder),
        1,
        4,
        2.0,
        "euler",
        "normal",
        cond,
        cond,
        Latent(samples=x0, noise_mask=mask, factor=2),
        denoise=0.8,
    ).samples
    keep = mask.expand_as(x0) == 0
    torch.testing.assert_close(out[keep], x0[keep], rtol=1e-5, atol=1e-5)
    assert (out[~keep] - x0[~keep]).abs().mean() > 1e-2


def test_cancel_inside_the_sampler(models_dir: Path, tmp_path: Path) -> None:
    executor = Executor(default_registry(models_dir))
    ctx = executor.new_context("job", output_dir=tmp_path, temp_dir=tmp_path)

    def on_event(event: str, data: dict) -> None:
        if event == "progress" and data.get("node") == "3":
            ctx.cancel.set()

    ctx.on_event = on_event
    res = executor.execute(t2i_workflow(), ctx)
    assert res.status == "interrupted"


def test_plain_http_client_gets_an_image_from_the_real_server(models_dir: Path, tmp_path: Path) -> None:
    uvicorn = pytest.importorskip("uvicorn")
    from latentworks.server import create_app

    app = create_app(default_registry(models_dir), data_dir=tmp_path / "data", models_dir=models_dir)
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            if server.started:
                break
            time.sleep(0.05)
        body = json.dumps({"prompt": t2i_workflow(seed=9), "client_id": "t"}).encode()
        req = urllib.request.Request(
            f"{base}/prompt", data=body, headers={"Content-Type": "application/json"}
        )
        prompt_id = json.loads(urllib.request.urlopen(req, timeout=30).read())["prompt_id"]
        deadline = time.monotonic() + 300
        hist: dict = {}
        while time.monotonic() < deadline:
            hist = json.loads(urllib.request.urlopen(f"{base}/history/{prompt_id}", timeout=30).read())
            if prompt_id in hist and hist[prompt_id].get("status", {}).get("completed"):
                break
            time.sleep(0.2)
        images = hist[prompt_id]["outputs"]["9"]["images"]
        f = images[0]
        url = f"{base}/view?filename={f['filename']}&subfolder={f['subfolder']}&type={f['type']}"
        data = urllib.request.urlopen(url, timeout=30).read()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        img = Image.open(__import__("io").BytesIO(data))
        assert img.size == (16, 16) and torch.tensor(np.asarray(img)).float().std() > 0
    finally:
        server.should_exit = True
        thread.join(timeout=30)
