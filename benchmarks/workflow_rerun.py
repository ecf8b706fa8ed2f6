"""Workflow re-run costs: the server's per-job overhead, and (once nodes exist) a sampler re-run.

Engine/server part: a trivial graph (Constant -> Sink output node) is run
  (a) in process with Executor.execute (the baseline), and
  (b) through the real server: POST /prompt over HTTP, then wait on the WebSocket for
      ``executing`` with node None (ComfyUI's "done" signal), uvicorn on 127.0.0.1.
The per-job server overhead is (b) - (a); the goal is < 20 ms. The literal changes every job so
nothing is served from the cache.

Run: .venv/bin/python benchmarks/workflow_rerun.py [--jobs 200]
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx
import uvicorn
from websockets.sync.client import connect

from latentworks.graph import Executor, InputSpec, NodeRegistry, NodeResult, NodeSpec, OutputSpec
from latentworks.server import create_app


def trivial_registry() -> NodeRegistry:
    return NodeRegistry(
        [
            NodeSpec(
                name="Constant",
                execute=lambda ctx, value: (value,),
                inputs=(InputSpec(name="value", type="INT", default=0),),
                outputs=(OutputSpec(type="INT"),),
            ),
            NodeSpec(
                name="Sink",
                execute=lambda ctx, x: NodeResult(ui={"value": [x]}),
                inputs=(InputSpec(name="x", type="INT"),),
                output_node=True,
            ),
        ]
    )


def trivial_prompt(i: int) -> dict:
    return {
        "1": {"class_type": "Constant", "inputs": {"value": i}},
        "2": {"class_type": "Sink", "inputs": {"x": ["1", 0]}},
    }


def in_process(jobs: int) -> list[float]:
    executor = Executor(trivial_registry())
    times = []
    for i in range(jobs):
        t = time.perf_counter()
        result = executor.execute(trivial_prompt(i), executor.new_context(f"p{i}"))
        times.append(time.perf_counter() - t)
        assert result.status == "success"
    return times


def over_server(jobs: int, warmup: int = 10) -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        app = create_app(trivial_registry(), data_dir=Path(tmp) / "data", models_dir=tmp)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.01)
        times = []
        try:
            with (
                httpx.Client(base_url=f"http://127.0.0.1:{port}") as http,
                connect(f"ws://127.0.0.1:{port}/ws?clientId=bench") as ws,
            ):
                ws.recv(timeout=5)
                for i in range(warmup + jobs):
                    t = time.perf_counter()
                    r = http.post(
                        "/prompt", json={"prompt": trivial_prompt(10_000 + i), "client_id": "bench"}
                    )
                    pid = r.json()["prompt_id"]
                    while True:
                        msg = ws.recv(timeout=10)
                        if isinstance(msg, str):
                            data = json.loads(msg)
                            if data["type"] == "executing" and data["data"]["node"] is None:
                                if data["data"]["prompt_id"] == pid:
                                    break
                    if i >= warmup:
                        times.append(time.perf_counter() - t)
        finally:
            server.should_exit = True
            thread.join(10)
        return times


def torch_sampler_rerun(runs: int = 5) -> dict[str, float] | None:
    """Torch part: the default text-to-image workflow, re-run with only the seed changed, against the
    sampler alone (the same KSampler body called directly with the already-loaded model and encoded
    prompts). Goal: rerun / sampler-alone <= 1.1 (no reload, no re-encode). Median ms of ``runs``."""
    import tempfile

    from latentworks.nodes import default_registry
    from latentworks.nodes.sampling import run_sampler

    def workflow(seed: int) -> dict:
        return {
            "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "default"}},
            "2": {
                "class_type": "CLIPTextEncode",
                "inputs": {"text": "a red apple, google style", "clip": ["1", 1]},
            },
            "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
            "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 32, "height": 32, "batch_size": 1}},
            "5": {
                "class_type": "KSampler",
                "inputs": {
                    "model": ["1", 0],
                    "seed": seed,
                    "steps": 20,
                    "cfg": 4.0,
                    "sampler_name": "euler",
                    "scheduler": "simple",
                    "positive": ["2", 0],
                    "negative": ["3", 0],
                    "latent_image": ["4", 0],
                    "denoise": 1.0,
                },
            },
            "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
            "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "bench"}},
        }

    registry = default_registry()
    executor = Executor(registry)
    out = Path(tempfile.mkdtemp())
    t = time.perf_counter()
    first = executor.execute(workflow(0), executor.new_context("first", output_dir=out, temp_dir=out))
    first_ms = 1000 * (time.perf_counter() - t)
    if first.status != "success":
        print(f"torch workflow failed: {first.error}")
        return None
    reruns, alone = [], []
    # The baseline: the same nodes' execute functions called directly, model and prompts prepared once.
    ctx = executor.new_context("direct", output_dir=out, temp_dir=out)
    model, clip, _ = registry["CheckpointLoaderSimple"].execute(ctx, ckpt_name="default")
    pos = registry["CLIPTextEncode"].execute(ctx, text="a red apple, google style", clip=clip)[0]
    neg = registry["CLIPTextEncode"].execute(ctx, text="", clip=clip)[0]
    lat = registry["EmptyLatentImage"].execute(ctx, width=32, height=32, batch_size=1)[0]
    for i in range(1, runs + 1):
        t = time.perf_counter()
        r = executor.execute(workflow(i), executor.new_context(f"re{i}", output_dir=out, temp_dir=out))
        reruns.append(time.perf_counter() - t)
        assert r.status == "success" and set(r.cached) >= {"1", "2", "3", "4"}, r
        t = time.perf_counter()
        run_sampler(ctx, model, i, 20, 4.0, "euler", "simple", pos, neg, lat)
        alone.append(time.perf_counter() - t)
    return {
        "first_ms": first_ms,
        "rerun_ms": 1000 * statistics.median(reruns),
        "sampler_alone_ms": 1000 * statistics.median(alone),
    }


def ms(xs: list[float]) -> tuple[float, float]:
    xs = sorted(xs)
    return 1000 * statistics.median(xs), 1000 * xs[int(0.9 * (len(xs) - 1))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    args = parser.parse_args()
    base = in_process(args.jobs)
    served = over_server(args.jobs)
    b_med, b_p90 = ms(base)
    s_med, s_p90 = ms(served)
    print(f"{'trivial graph, ' + str(args.jobs) + ' jobs':<38} {'median ms':>10} {'p90 ms':>10}")
    print(f"{'in-process Executor.execute':<38} {b_med:>10.2f} {b_p90:>10.2f}")
    print(f"{'server: POST /prompt -> WS done':<38} {s_med:>10.2f} {s_p90:>10.2f}")
    overhead = s_med - b_med
    verdict = "ok" if overhead < 20 else "OVER GOAL"
    print(f"{'server overhead per job':<38} {overhead:>10.2f} {'':>10}  goal < 20 ms: {verdict}")
    print(f"{'ratio server / in-process':<38} {s_med / b_med:>10.1f}x")
    r = torch_sampler_rerun()
    if r:
        print(
            f"\ndefault t2i workflow (20 steps, CFG): first run {r['first_ms']:.0f} ms (loads model, "
            f"encodes prompts); seed-only rerun {r['rerun_ms']:.0f} ms; sampler alone {r['sampler_alone_ms']:.0f} ms"
        )
        ratio = r["rerun_ms"] / r["sampler_alone_ms"]
        print(f"rerun / sampler alone: {ratio:.2f}  goal <= 1.1: {'ok' if ratio <= 1.1 else 'OVER GOAL'}")


if __name__ == "__main__":
    main()
