"""ComfyUI's official frontend (the optional comfyui-frontend-package) on the real latentworks server, driven in
Debian's Chromium through npm playwright-core (tests/web/comfy_frontend_e2e.mjs).

It loads without page errors; a setting changed in the UI survives a reload and a server restart; a txt2img
graph built with the frontend's graph API for the embedded default model runs and its image shows in the
SaveImage node; a workflow saved through the save dialog is listed after the restart and loads again; the
media assets (queue) panel shows the finished job's thumbnail. Skips when the frontend package, node or
Chromium is absent (CI installs them: latentworks[test] and scripts/bootstrap_web.sh).
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("comfy_frontend_e2e.mjs")
CHROMIUM = Path("/usr/bin/chromium")


def _frontend() -> Path:
    from latentworks.server.frontends import comfyui_frontend_dir

    try:
        return comfyui_frontend_dir()
    except ValueError as e:
        pytest.skip(f"ComfyUI's frontend is not installed ({e})")


def _browser(url: str, out_dir: Path, phase: str) -> dict:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: install Node.js 20+ and run `bash scripts/bootstrap_web.sh`")
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: run `bash scripts/bootstrap_web.sh` (apt-get install chromium)")
    if not (REPO / "web" / "node_modules" / "playwright-core").is_dir():
        pytest.fail("npm playwright-core is not installed in web/: run `bash scripts/bootstrap_web.sh`")
    try:
        proc = subprocess.run(
            [node, str(SCRIPT), url, str(out_dir), phase], capture_output=True, text=True, timeout=240
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(
            f"browser script ({phase}) timed out; its progress:\n{(e.stderr or b'').decode()[-3000:]}"
        )
    assert proc.returncode == 0, (
        f"browser script ({phase}) failed:\n{proc.stderr[-4000:]}\n{proc.stdout[-3000:]}"
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


class _Server:
    """The real server (default node registry: the embedded default model) in a uvicorn thread."""

    def __init__(self, data: Path, models: Path, static: Path, port: int) -> None:
        import uvicorn

        from latentworks.nodes import default_registry
        from latentworks.nodes.guards import payload_nbytes
        from latentworks.server import create_app

        app = create_app(
            default_registry(models, data / "input"),
            data_dir=data,
            models_dir=models,
            static_dir=static,
            sizer=payload_nbytes,
        )
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        assert not self.thread.is_alive(), "the server did not stop"


# Console errors the frontend logs against ComfyUI itself too: user files that do not exist yet (the user's
# own user.css, templates and workflow index) and the internet services it calls, which the test aborts:
# ComfyUI's release notes (api.comfy.org) and the size of the models its default graph names (huggingface.co).
EXPECTED_CONSOLE = re.compile(r"Failed to load resource|ERR_FAILED|ERR_NAME_NOT_RESOLVED|api\.comfy\.org")
EXPECTED_404 = re.compile(r"/api/userdata/(user\.css|comfy\.templates\.json|workflows%2F\.index\.json)$")


def _check_clean(report: dict) -> None:
    assert report["pageErrors"] == []
    unexpected = [e for e in report["consoleErrors"] if not EXPECTED_CONSOLE.search(e)]
    assert unexpected == [], unexpected
    bad_http = [e for e in report["httpErrors"] if not EXPECTED_404.search(e)]
    assert bad_http == [], bad_http  # every route the frontend called was answered
    hosts = {urlparse(u).hostname for u in report["foreignRequests"]}
    assert hosts <= {"api.comfy.org", "huggingface.co"}, hosts


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_official_frontend_on_the_real_server(tmp_path):
    static = _frontend()
    data, models = tmp_path / "data", tmp_path / "models"
    port = _free_port()
    url = f"http://127.0.0.1:{port}/"

    server = _Server(data, models, static, port)
    try:
        first = _browser(url, tmp_path, "first")
    finally:
        server.stop()
    _check_clean(first)
    # The setting changed in the UI is stored by the server and read back after a reload.
    assert first["settingBefore"] != 1.35 and first["settingAfterReload"] == 1.35
    stored = json.loads((data / "user" / "default" / "comfy.settings.json").read_text())
    assert stored["Comfy.Graph.ZoomSpeed"] == 1.35
    # The txt2img graph ran on the real executor; the SaveImage node shows the PNG the server wrote.
    assert first["graph"]["nodes"] == 7 and first["graph"]["links"] == 9
    assert set(first["graph"]["python_module"]) == {"nodes"}  # filed as core nodes, not extensions
    saved = sorted(p.name for p in (data / "output").glob("*.png"))
    assert len(saved) == 1, saved
    shown = [(parse_qs(urlparse(i["src"]).query)["filename"][0], i["width"]) for i in first["nodeImages"]]
    assert shown == [(saved[0], 64)], shown
    # The save dialog wrote the workflow into the user folder.
    assert first["activeWorkflow"] == "workflows/lw apple.json"
    workflow = json.loads((data / "user" / "default" / "workflows" / "lw apple.json").read_text())
    assert len(workflow["nodes"]) == 7
    # The assets panel shows the finished job's thumbnail (no /view image was in the page before it opened).
    assert first["viewImagesBeforePanel"] == 0
    panel = {
        parse_qs(urlparse(i["src"]).query)["filename"][0] for i in first["panelImages"] if i["width"] > 0
    }
    assert panel == {saved[0]}, first["panelImages"]

    server = _Server(data, models, static, port)  # a restart: same data folder, new process state
    try:
        again = _browser(url, tmp_path, "after-restart")
    finally:
        server.stop()
    _check_clean(again)
    assert again["settingAfterRestart"] == 1.35  # a fresh browser profile: only the server kept it
    assert again["workflowListed"] is True
    assert again["loadedWorkflow"]["nodes"] == sorted(
        ["CheckpointLoaderSimple", "CLIPTextEncode", "CLIPTextEncode", "EmptyLatentImage", "KSampler",
         "VAEDecode", "SaveImage"]
    )  # fmt: skip
    assert again["loadedWorkflow"]["links"] == 9 and "a red apple" in again["loadedWorkflow"]["text"]
    panel = {
        parse_qs(urlparse(i["src"]).query)["filename"][0] for i in again["panelImages"] if i["width"] > 0
    }
    assert panel == {saved[0]}
