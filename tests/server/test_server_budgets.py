"""Resource budgets through the real server: decompression bombs are refused before decoding (peak RSS
measured in a subprocess), the output cache gives memory back at its byte limit, and /interrupt frees the
worker within 2 s even in the middle of one long U-Net call."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import httpx
import pytest
import torch
from websockets.sync.client import connect

from latentworks.diffusion.conditioning import Conditioning
from latentworks.graph import NodeSpec, OutputSpec
from latentworks.nodes import default_registry
from latentworks.nodes.guards import payload_nbytes
from latentworks.nodes.payloads import ConditioningPayload
from latentworks.server import create_app

MB = 2**20
CACHE_BYTES = 48 * MB

# Runs in a fresh interpreter so its peak RSS (VmHWM) is the server's alone. Prints one JSON line.
PROBE = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path

    import numpy as np
    from fastapi.testclient import TestClient
    from PIL import Image

    from bombs import png_bomb
    from latentworks.nodes import default_registry
    from latentworks.nodes.guards import payload_nbytes
    from latentworks.server import create_app

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024

    data = Path(sys.argv[1])
    cache_bytes = int(sys.argv[2])
    app = create_app(default_registry(None, data / "input"), data_dir=data, models_dir=data / "models",
                     sizer=payload_nbytes, cache_bytes=cache_bytes)
    out = {}

    def run(client, prompt):
        pid = client.post("/prompt", json={"prompt": prompt}).json()["prompt_id"]
        for _ in range(600):
            h = client.get(f"/history/{pid}").json()
            if pid in h and h[pid]["status"]["completed"] is not None:
                return h[pid]
            time.sleep(0.05)
        raise TimeoutError(pid)

    def load(name):
        return {"1": {"class_type": "LoadImage", "inputs": {"image": name}},
                "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}

    with TestClient(app, base_url="http://127.0.0.1") as client:
        # Warm up every code path (imports, the default checkpoint, PIL decoders) at a harmless size.
        Image.fromarray(np.full((64, 64, 3), 7, np.uint8)).save(data / "input" / "warm.png")
        warm = load("warm.png")
        warm["4"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "default"}}
        warm["5"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["1", 0], "vae": ["4", 2]}}
        warm["6"] = {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["4", 2]}}
        warm["2"]["inputs"]["images"] = ["6", 0]
        assert run(client, warm)["status"]["status_str"] == "success"
        client.post("/upload/image", files={"image": ("w.png", (data / "input" / "warm.png").read_bytes())})
        base = status("VmHWM")

        uploads = {}
        for side in (9000, 12000, 20000):
            r = client.post("/upload/image", files={"image": (f"bomb{side}.png", png_bomb(side, side))})
            uploads[side] = [r.status_code, r.json()["error"]["message"] if r.status_code != 200 else ""]
        out["uploads"] = uploads
        (data / "input" / "bomb.png").write_bytes(png_bomb(12000, 12000))  # copied in, not uploaded
        over_latent = dict(warm)
        over_latent["7"] = {"class_type": "EmptyLatentImage",
                            "inputs": {"width": 4096, "height": 4096, "batch_size": 64}}
        over_latent["6"] = {"class_type": "VAEDecode", "inputs": {"samples": ["7", 0], "vae": ["4", 2]}}
        jobs = [run(client, load("bomb.png")), run(client, over_latent)]
        out["jobs"] = [[j["status"]["status_str"], j["status"]["messages"][-1][1]] for j in jobs]
        out["bomb_peak_over_baseline"] = status("VmHWM") - base

        # Distinct images, each 1024 x 1024 (16 MiB of IMAGE + MASK in the cache): the cache keeps at most
        # cache_bytes of them and the rest is given back.
        idle = status("VmRSS")
        for i in range(16):
            Image.fromarray(np.full((1024, 1024, 3), i, np.uint8)).save(data / "input" / f"d{i}.png")
            assert run(client, load(f"d{i}.png"))["status"]["status_str"] == "success"
        out["cache_bytes"] = app.state.latentworks.executor.cache.nbytes
        out["idle_rss_growth"] = status("VmRSS") - idle
    print(json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> dict:
    data = tmp_path_factory.mktemp("probe")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path]),
        "OMP_NUM_THREADS": "1",
    }
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(data), str(CACHE_BYTES)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_bombs_are_refused_before_decoding(probe: dict) -> None:
    for side, (code, message) in probe["uploads"].items():
        assert code == 413, (side, message)
        assert "too large once decoded" in message and "16,777,216 pixels per image" in message
    assert "81,000,000 pixels" in probe["uploads"]["9000"][1]
    (load_status, load_error), (latent_status, latent_error) = probe["jobs"]
    assert load_status == "error" and load_error["node_type"] == "LoadImage"
    assert "144,000,000 pixels" in load_error["exception_message"]
    assert latent_status == "error" and latent_error["node_type"] == "EmptyLatentImage"
    assert "--max-image-pixels" in load_error["exception_message"]
    assert "--max-batch-pixels" in latent_error["exception_message"]
    # Decoding the 12000 x 12000 bomb alone would take 2.3 GB as RGBA and 9 GB as float32.
    assert probe["bomb_peak_over_baseline"] < 300 * MB, probe["bomb_peak_over_baseline"] / MB


def test_output_cache_gives_memory_back_at_its_byte_limit(probe: dict) -> None:
    # 16 distinct images of 16 MiB each would keep 256 MiB with a count-bounded cache.
    assert 32 * MB <= probe["cache_bytes"] <= CACHE_BYTES
    assert probe["idle_rss_growth"] < CACHE_BYTES + 100 * MB, probe["idle_rss_growth"] / MB


def _zero_conditioning(ctx: object) -> tuple:
    return (ConditioningPayload(Conditioning(tokens=torch.zeros(1, 3, 384))),)


def test_interrupt_frees_the_worker_inside_a_long_network_call(
    tiny_model: Path, tmp_path, live_server
) -> None:
    models = tmp_path / "models"
    shutil.copytree(tiny_model, models / "checkpoints" / "tiny")
    registry = default_registry(models)
    # A conditioning without the text encoder (loading it costs seconds and is not what is tested).
    registry.register(
        NodeSpec(
            name="ZeroConditioning", execute=_zero_conditioning, outputs=(OutputSpec(type="CONDITIONING"),)
        )
    )
    app = create_app(registry, data_dir=tmp_path / "data", models_dir=models, sizer=payload_nbytes)
    srv = live_server(app)
    prompt = {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny"}},
        "6": {"class_type": "ZeroConditioning", "inputs": {}},
        # 512 x 512 pixels on the tiny f2 model: one U-Net call runs ~30 s on a core, one attention ~8 s.
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 512, "batch_size": 1}},
        "3": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["4", 0],
                "seed": 1,
                "steps": 1,
                "cfg": 3.0,
                "sampler_name": "euler",
                "scheduler": "normal",
                "positive": ["6", 0],
                "negative": ["6", 0],
                "latent_image": ["5", 0],
                "denoise": 1.0,
            },
        },
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}},
    }
    client_id = uuid.uuid4().hex
    with (
        httpx.Client(base_url=srv.url, timeout=20) as http,
        connect(f"{srv.ws_url}?clientId={client_id}") as ws,
    ):
        pid = http.post("/prompt", json={"prompt": prompt, "client_id": client_id}).json()["prompt_id"]

        def until(node: str | None) -> None:
            while True:
                msg = ws.recv(timeout=60)
                if isinstance(msg, str):
                    m = json.loads(msg)
                    if (
                        m["type"] == "executing"
                        and m["data"]["node"] == node
                        and m["data"]["prompt_id"] == pid
                    ):
                        return

        until("3")
        time.sleep(1.0)  # well inside the first U-Net call
        start = time.monotonic()
        assert http.post("/interrupt", json={}).json() == {"interrupted": True}
        until(None)  # the worker is free
        latency = time.monotonic() - start
        history = http.get(f"/history/{pid}").json()[pid]
    assert history["status"]["status_str"] == "interrupted"
    assert latency < 2.0, latency
