"""The server over real HTTP and WebSocket (uvicorn on 127.0.0.1, a free port)."""

from __future__ import annotations

import json
import struct
import time
import uuid

import httpx
import pytest
from graph_toy_nodes import PNG_1X1, make_registry
from websockets.sync.client import connect

from latentworks.server import create_app


def workflow(value=4, steps=3, prefix="t"):
    return {
        "1": {"class_type": "Constant", "inputs": {"value": value}},
        "2": {"class_type": "Slow", "inputs": {"x": ["1", 0], "steps": steps, "delay": 0.001}},
        "3": {"class_type": "ToString", "inputs": {"x": ["2", 0]}},
        "4": {"class_type": "SaveText", "inputs": {"text": ["3", 0], "filename_prefix": prefix}},
    }


def wait_done(ws, prompt_id, timeout=20):
    """Messages up to and including ``executing`` with node None for ``prompt_id``; binary frames as bytes."""
    out = []
    while True:
        raw = ws.recv(timeout=timeout)
        msg = raw if isinstance(raw, bytes) else json.loads(raw)
        out.append(msg)
        if isinstance(msg, dict) and msg["type"] == "executing" and msg["data"]["node"] is None:
            if msg["data"]["prompt_id"] == prompt_id:
                return out


@pytest.fixture
def server(tmp_path, live_server):
    registry, runs = make_registry()
    models = tmp_path / "models"
    (models / "checkpoints").mkdir(parents=True)
    (models / "checkpoints" / "tiny.safetensors").write_bytes(b"x")
    (models / "embeddings").mkdir()
    (models / "embeddings" / "easyneg.pt").write_bytes(b"x")
    app = create_app(registry, data_dir=tmp_path / "data", models_dir=models, max_upload_bytes=4096)
    srv = live_server(app)
    srv.runs = runs
    srv.data = tmp_path / "data"
    with httpx.Client(base_url=srv.url, timeout=20) as client:
        srv.http = client
        yield srv


@pytest.mark.parametrize("prefix", ["", "/api"])
def test_queue_run_messages_in_order_and_view(server, prefix):
    client_id = uuid.uuid4().hex
    with connect(f"{server.ws_url}?clientId={client_id}") as ws:
        hello = json.loads(ws.recv(timeout=5))
        assert hello["type"] == "status" and hello["data"]["sid"] == client_id
        assert hello["data"]["status"]["exec_info"]["queue_remaining"] == 0
        body = {"prompt": workflow(), "client_id": client_id, "extra_data": {"preview_method": "auto"}}
        r = server.http.post(f"{prefix}/prompt", json=body)  # previews are off unless asked for
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["node_errors"] == {} and isinstance(body["number"], int)
        pid = body["prompt_id"]
        msgs = wait_done(ws, pid)
    events = [m["type"] if isinstance(m, dict) else "binary" for m in msgs]
    core = [e for e in events if e not in ("status", "progress", "progress_state", "binary")]
    assert core == [
        "execution_start", "execution_cached",
        "executing", "executing", "executing", "executing",
        "executed", "execution_success", "executing",
    ]  # fmt: skip
    executing = [m["data"]["node"] for m in msgs if isinstance(m, dict) and m["type"] == "executing"]
    assert executing == ["1", "2", "3", "4", None]
    progress = [m["data"] for m in msgs if isinstance(m, dict) and m["type"] == "progress"]
    assert [(p["value"], p["max"], p["node"], p["prompt_id"]) for p in progress] == [
        (i, 3, "2", pid) for i in (1, 2, 3)
    ]
    frames = [m for m in msgs if isinstance(m, bytes)]
    assert len(frames) == 3
    assert struct.unpack(">II", frames[0][:8]) == (1, 2) and frames[0][8:] == PNG_1X1
    assert events.index("binary") > events.index("progress")
    executed = next(m["data"] for m in msgs if isinstance(m, dict) and m["type"] == "executed")
    assert executed["node"] == "4" and executed["prompt_id"] == pid and executed["output"]["text"] == ["4"]

    hist = server.http.get(f"{prefix}/history/{pid}").json()[pid]
    assert hist["status"]["status_str"] == "success" and hist["status"]["completed"] is True
    assert hist["prompt"][1] == pid and hist["prompt"][2] == workflow() and hist["prompt"][4] == ["4"]
    assert [m[0] for m in hist["status"]["messages"]] == [
        "execution_start",
        "execution_cached",
        "execution_success",
    ]
    f = hist["outputs"]["4"]["files"][0]
    view = server.http.get(
        f"{prefix}/view", params={"filename": f["filename"], "subfolder": "", "type": "output"}
    )
    assert view.status_code == 200 and view.text == "4"


def test_cached_rerun_and_failures_do_not_stop_the_worker(server):
    with connect(f"{server.ws_url}?clientId=c1") as ws:
        ws.recv(timeout=5)
        pid = server.http.post("/prompt", json={"prompt": workflow(), "client_id": "c1"}).json()["prompt_id"]
        wait_done(ws, pid)
        # Same workflow with a different save prefix: only SaveText re-runs.
        before = server.runs.copy()
        pid = server.http.post("/prompt", json={"prompt": workflow(prefix="u"), "client_id": "c1"}).json()[
            "prompt_id"
        ]
        msgs = wait_done(ws, pid)
        assert server.runs - before == {"SaveText": 1}
        cached = next(
            m["data"]["nodes"] for m in msgs if isinstance(m, dict) and m["type"] == "execution_cached"
        )
        assert cached == ["3"]
        bad = {
            "1": {"class_type": "Fail", "inputs": {"x": 3}},
            "2": {"class_type": "SaveText", "inputs": {"text": ["1", 0], "filename_prefix": "f"}},
        }
        pid_bad = server.http.post("/prompt", json={"prompt": bad, "client_id": "c1"}).json()["prompt_id"]
        msgs = wait_done(ws, pid_bad)
        err = next(m["data"] for m in msgs if isinstance(m, dict) and m["type"] == "execution_error")
        assert (
            err["node_id"] == "1" and err["node_type"] == "Fail" and err["exception_message"] == "boom on 3"
        )
        assert server.http.get(f"/history/{pid_bad}").json()[pid_bad]["status"]["status_str"] == "error"
        pid = server.http.post("/prompt", json={"prompt": workflow(value=9), "client_id": "c1"}).json()[
            "prompt_id"
        ]
        wait_done(ws, pid)
        assert server.http.get(f"/history/{pid}").json()[pid]["outputs"]["4"]["text"] == ["9"]


def test_interrupt_queue_and_history_operations(server):
    with connect(f"{server.ws_url}?clientId=c2") as ws:
        ws.recv(timeout=5)
        slow = workflow(steps=10_000)
        pid_slow = server.http.post("/prompt", json={"prompt": slow, "client_id": "c2"}).json()["prompt_id"]
        pending = [
            server.http.post("/prompt", json={"prompt": workflow(value=v), "client_id": "c2"}).json()[
                "prompt_id"
            ]
            for v in (1, 2, 3)
        ]
        front = server.http.post(
            "/prompt", json={"prompt": workflow(value=7), "client_id": "c2", "front": True}
        ).json()
        while True:  # wait for the slow job to be running
            msg = ws.recv(timeout=10)
            if isinstance(msg, str) and json.loads(msg)["type"] == "progress":
                break
        q = server.http.get("/queue").json()
        assert [e[1] for e in q["queue_running"]] == [pid_slow]
        assert [e[1] for e in q["queue_pending"]] == [front["prompt_id"], *pending]
        assert server.http.get("/prompt").json() == {"exec_info": {"queue_remaining": 5}}
        assert server.http.post("/queue", json={"delete": [pending[0]]}).json()["deleted"] == 1
        assert server.http.post("/queue", json={"clear": True}).json()["deleted"] == 3
        assert server.http.post("/interrupt", json={"prompt_id": "someone-else"}).json() == {
            "interrupted": False
        }
        assert server.http.post("/interrupt").json() == {"interrupted": True}
        msgs = wait_done(ws, pid_slow)
        assert any(isinstance(m, dict) and m["type"] == "execution_interrupted" for m in msgs)
    hist = server.http.get("/history").json()
    assert list(hist) == [pid_slow] and hist[pid_slow]["status"]["status_str"] == "interrupted"
    assert server.http.get("/queue").json() == {"queue_running": [], "queue_pending": []}
    # requeue the interrupted job, then history delete / clear / max_items
    assert server.http.post("/queue", json={"requeue": [pid_slow, "nope"]}).json()["requeued"] == [pid_slow]
    server.http.post("/interrupt")
    server.http.post("/queue", json={"clear": True})
    for _ in range(200):
        if server.http.get(f"/history/{pid_slow}").json():
            break
        server.http.post("/interrupt")
        time.sleep(0.05)
    assert server.http.post("/history", json={"delete": [pid_slow]}).json()["deleted"] == 1
    assert server.http.get("/history").json() == {}


def test_invalid_prompt_is_400_with_node_errors(server):
    p = workflow()
    p["1"]["inputs"]["value"] = 5000
    r = server.http.post("/prompt", json={"prompt": p})
    assert r.status_code == 400
    body = r.json()
    assert body["error"]["type"] == "prompt_outputs_failed_validation"
    assert body["node_errors"]["1"]["errors"][0]["type"] == "value_bigger_than_max"
    assert body["node_errors"]["1"]["dependent_outputs"] == ["4"]
    r = server.http.post("/prompt", content=b"{not json")
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_json"
    assert server.http.post("/prompt", json={"client_id": "x"}).json()["error"]["type"] == "no_prompt"


@pytest.mark.parametrize(
    ("filename", "subfolder", "type_"),
    [("../queue.sqlite3", "", "output"), ("queue.sqlite3", "..", "output"), ("queue.sqlite3", "../", "input"),
     ("passwd", "/etc", "output"), ("queue.sqlite3", "", "../"), ("..", "", "output"), ("x.txt", "", "secret"),
     ("queue.sqlite3", "..\\", "temp"), ("link.txt", "", "output"), ("", "", "output"), ("nope.png", "", "output")],
)  # fmt: skip
def test_view_is_confined(server, filename, subfolder, type_):
    secret = server.data / "secret.txt"
    secret.write_text("secret")
    link = server.data / "output" / "link.txt"
    if not link.exists():
        link.symlink_to(secret)
    r = server.http.get("/view", params={"filename": filename, "subfolder": subfolder, "type": type_})
    assert r.status_code == 404 and "secret" not in r.text


def test_upload_checks_type_and_size(server):
    r = server.http.post("/upload/image", files={"image": ("cat.png", PNG_1X1, "image/png")})
    assert r.status_code == 200, r.text
    assert r.json() == {"name": "cat.png", "subfolder": "", "type": "input"}
    r2 = server.http.post(
        "/upload/image", files={"image": ("cat.png", PNG_1X1, "image/png")}, data={"subfolder": "a/b"}
    )
    assert r2.json() == {"name": "cat.png", "subfolder": "a/b", "type": "input"}
    r3 = server.http.post("/upload/image", files={"image": ("cat.png", PNG_1X1, "image/png")})
    assert r3.json()["name"] == "cat (1).png"  # no silent overwrite
    got = server.http.get("/view", params={"filename": "cat.png", "subfolder": "a/b", "type": "input"})
    assert got.content == PNG_1X1 and got.headers["content-type"] == "image/png"
    # a script with an image name and MIME type is rejected by its content
    r = server.http.post(
        "/upload/image", files={"image": ("x.png", b"<script>alert(1)</script>", "image/png")}
    )
    assert r.status_code == 415
    jpeg = b"\xff\xd8\xff\xe0" + b"0" * 10
    assert (
        server.http.post("/upload/image", files={"image": ("../../evil.sh", jpeg)}).json()["name"]
        == "evil.jpg"
    )
    r = server.http.post("/upload/image", files={"image": ("big.png", PNG_1X1 + b"0" * 100_000, "image/png")})
    assert r.status_code == 413
    r = server.http.post("/upload/image", files={"image": ("a.png", PNG_1X1)}, data={"subfolder": "../../x"})
    assert r.status_code == 400
    r = server.http.post("/upload/image", files={"image": ("a.png", PNG_1X1)}, data={"type": "output"})
    assert r.status_code == 400
    assert not list(server.data.parent.glob("x*")) and not (server.data / "output" / "a.png").exists()


def test_info_routes(server):
    info = server.http.get("/object_info").json()
    assert set(info) >= {"Constant", "SaveText", "Slow"} and info["SaveText"]["output_node"] is True
    assert server.http.get("/api/object_info/Add").json()["Add"]["input_order"]["required"] == ["a", "b"]
    r = server.http.get("/object_info/Nope")
    assert (r.status_code, r.json()) == (200, {})  # as ComfyUI
    stats = server.http.get("/system_stats").json()
    assert stats["system"]["ram_total"] > 0 and stats["devices"] == []
    assert server.http.get("/models").json() == ["checkpoints", "embeddings"]
    assert server.http.get("/models/checkpoints").json() == ["tiny.safetensors"]
    assert server.http.get("/models/%2e%2e").status_code == 404
    assert server.http.get("/models/nope").status_code == 404
    assert server.http.get("/embeddings").json() == ["easyneg"]
    assert "latentworks" in server.http.get("/").text
