"""comfy-script (PyPI 0.6.1, remote runtime), unchanged, against the real server: it reads /object_info to
build its node functions, queues a txt2img script, reports progress and returns the saved image.

It runs in a child process: importing it applies ``nest_asyncio2`` to the whole interpreter and starts a
watcher thread that lives as long as the process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading

import pytest
from comfy_clients import client_server  # noqa: F401 - the fixture
from PIL import Image

pytest.importorskip(
    "comfy_script.runtime", reason="comfy-script[runtime] is a test dependency (latentworks[test])"
)

SCRIPT = textwrap.dedent(
    """
    import json, sys
    from comfy_script.runtime import load, queue
    load(sys.argv[1])
    from comfy_script.runtime.nodes import (
        CheckpointLoaderSimple, CLIPTextEncode, EmptyLatentImage, KSampler, SaveImage, VAEDecode)

    model, clip, vae = CheckpointLoaderSimple("default")
    positive = CLIPTextEncode("a red apple", clip)
    negative = CLIPTextEncode("", clip)
    latent = EmptyLatentImage(32, 32, 1)
    latent = KSampler(model, 1, 3, 2.0, "euler", "normal", positive, negative, latent, 1.0)
    saved = SaveImage(VAEDecode(latent, vae), "comfyscript")
    task = queue.put(saved)
    progress = []
    task.add_progress_callback(lambda p: progress.append([p.node_id, p.value, p.max]))
    print("READY", flush=True)
    result = task.wait_result(saved)
    (image,) = result.wait()
    received = image.fp.getvalue()  # the bytes the runtime fetched from /view and opened lazily
    out = {"received": received.hex(), "prompt_id": task.prompt_id, "progress": progress, "images": result._output["images"],
           "format": image.format, "size": list(image.size), "mode": image.mode,
           "pixels": image.tobytes().hex(), "text": {k: v for k, v in image.info.items() if isinstance(v, str)}}
    print("RESULT " + json.dumps(out), flush=True)
    """
)


def test_remote_runtime_runs_a_script(client_server, tmp_path):  # noqa: F811
    ready = threading.Event()
    lines: list[str] = []
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    script = tmp_path / "txt2img.py"  # a file: the runtime reads the calling script's source
    script.write_text(SCRIPT)
    with client_server.hold_queue(until=ready.is_set):
        child = subprocess.Popen(
            [sys.executable, str(script), client_server.url + "/"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=tmp_path,
        )

        def read() -> None:
            assert child.stdout is not None
            for line in child.stdout:
                lines.append(line)
                if line.startswith("READY"):
                    ready.set()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            reader.join(90)
        finally:
            child.kill()
    result = next((json.loads(x[7:]) for x in lines if x.startswith("RESULT ")), None)
    assert result is not None, "".join(lines)[-3000:]

    history = client_server.history(result["prompt_id"])
    progress = result["progress"]  # [node id, value, max] per progress callback
    assert [p[1:] for p in progress] == [[1, 3], [2, 3], [3, 3]], progress
    assert {history["prompt"][2][p[0]]["class_type"] for p in progress} == {"KSampler"}
    (entry,) = result["images"]
    assert history["outputs"] and history["status"]["status_str"] == "success"
    path = client_server.data / "output" / entry["subfolder"] / entry["filename"]
    assert bytes.fromhex(result["received"]) == path.read_bytes()
    with Image.open(path) as on_disk:
        assert (
            result["format"] == "PNG"
            and result["size"] == list(on_disk.size)
            and result["mode"] == on_disk.mode
        )
        assert bytes.fromhex(result["pixels"]) == on_disk.tobytes()
        assert result["text"] == {k: v for k, v in on_disk.info.items() if isinstance(v, str)}
