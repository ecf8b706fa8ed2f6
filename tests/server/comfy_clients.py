"""Shared set-up for the third-party ComfyUI client tests (tests/server/test_clients_*.py).

A real server (uvicorn on a free port) with the default node registry, the embedded default model and one
test-only node, ``TestGate``: a job made of it blocks the worker until the test releases it. The client
libraries queue their prompt and only then open their WebSocket (as ComfyUI's examples do), so without a
gate a 32 x 32 job could finish before they listen. ``hold_queue`` queues a gate job under its own client
id (so none of its messages reach the library) and releases it once a new socket has connected.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from conftest import LiveServer
from latentworks.graph import NodeResult, NodeSpec
from latentworks.nodes import default_registry
from latentworks.nodes.guards import payload_nbytes
from latentworks.server import create_app

STEPS = 3


TITLES = {"4": "Load Checkpoint", "6": "Positive", "7": "Negative", "5": "Empty Latent Image",
          "3": "KSampler", "8": "VAE Decode", "9": "Save Image"}  # fmt: skip


def txt2img(prefix: str, seed: int = 1, steps: int = STEPS) -> dict:
    """API-format txt2img with the embedded default model at 32 x 32 (SaveImage is node "9"), with the
    ``_meta.title`` of each node as ComfyUI's "Export (API)" writes it."""
    graph = {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "default"}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red apple", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 32, "height": 32, "batch_size": 1}},
        "3": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["4", 0],
                "seed": seed,
                "steps": steps,
                "cfg": 2.0,
                "sampler_name": "euler",
                "scheduler": "normal",
                "positive": ["6", 0],
                "negative": ["7", 0],
                "latent_image": ["5", 0],
                "denoise": 1.0,
            },
        },  # fmt: skip
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": prefix}},
    }
    for node_id, node in graph.items():
        node["_meta"] = {"title": TITLES[node_id]}
    return graph


class ClientServer:
    """The running server, its data folder, an HTTP client and the gate."""

    def __init__(self, live: LiveServer, data: Path, gate: threading.Event) -> None:
        self.live = live
        self.data = data
        self.url = live.url
        self.address = f"127.0.0.1:{live.port}"
        self.state = live.app.state.latentworks
        self.gate = gate  # TestGate jobs wait for it
        self.http = httpx.Client(base_url=live.url, timeout=30)

    def saved_png(self, image: dict) -> bytes:
        """The bytes on disk of an ``{"filename", "subfolder", "type"}`` entry of a job's outputs."""
        assert image["type"] == "output", image
        return (self.data / "output" / image["subfolder"] / image["filename"]).read_bytes()

    def history(self, prompt_id: str) -> dict:
        return self.http.get(f"/history/{prompt_id}").json()[prompt_id]

    @contextmanager
    def hold_queue(self, until: Callable[[], bool] = lambda: True, timeout: float = 60) -> Iterator[None]:
        """Block the worker with a gate job until a WebSocket connects that was not there on entry (and
        ``until()`` is true)."""
        self.gate.clear()
        before = set(self.state.hub.client_ids())
        gate = {"1": {"class_type": "TestGate", "inputs": {}}}
        r = self.http.post("/prompt", json={"prompt": gate, "client_id": "test-gate"})
        assert r.status_code == 200, r.text

        def release() -> None:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and not self.gate.is_set():
                if set(self.state.hub.client_ids()) - before and until():
                    break
                time.sleep(0.01)
            self.gate.set()

        thread = threading.Thread(target=release, daemon=True)
        thread.start()
        try:
            yield
        finally:
            self.gate.set()
            thread.join(timeout)


@pytest.fixture
def client_server(tmp_path: Path, live_server) -> Iterator[ClientServer]:
    data = tmp_path / "data"
    registry = default_registry(tmp_path / "models", data / "input")
    gate = threading.Event()

    def wait_for_gate(ctx) -> NodeResult:
        while not gate.wait(0.05):
            ctx.check_cancelled()
        return NodeResult(ui={})

    registry.register(
        NodeSpec(
            name="TestGate",
            execute=wait_for_gate,
            output_node=True,
            fingerprint=time.monotonic_ns,  # never from the cache: every gate job waits
        )
    )
    app = create_app(registry, data_dir=data, models_dir=tmp_path / "models", sizer=payload_nbytes)
    server = ClientServer(live_server(app), data, gate)
    try:
        yield server
    finally:
        gate.set()
        server.http.close()
