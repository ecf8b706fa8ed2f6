"""Queue persistence across a restart, and the safe-by-default binding and token checks."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest
from fastapi.testclient import TestClient
from graph_toy_nodes import make_registry
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from latentworks.server import check_bind, create_app, is_loopback, serve


def job(value, steps=1, delay=0.001):
    return {
        "1": {"class_type": "Slow", "inputs": {"x": value, "steps": steps, "delay": delay}},
        "2": {"class_type": "SaveText", "inputs": {"text": ["1", 0], "filename_prefix": f"v{value}"}},
    }


def test_restart_mid_queue_keeps_every_job(tmp_path, live_server):
    started = threading.Event()
    registry, _ = make_registry(slow_started=started)
    data = tmp_path / "data"
    srv = live_server(create_app(registry, data_dir=data, models_dir=tmp_path))
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        quick = http.post("/prompt", json={"prompt": job(1)}).json()["prompt_id"]
        for _ in range(200):
            if http.get(f"/history/{quick}").json():
                break
            time.sleep(0.02)
        started.clear()
        running = http.post("/prompt", json={"prompt": job(2, steps=10_000, delay=0.01)}).json()["prompt_id"]
        pending = [http.post("/prompt", json={"prompt": job(v)}).json()["prompt_id"] for v in (3, 4, 5)]
        assert started.wait(10)
        assert [e[1] for e in http.get("/queue").json()["queue_running"]] == [running]
    srv.stop()  # server goes away with one job running and three pending

    registry2, runs2 = make_registry()
    srv2 = live_server(create_app(registry2, data_dir=data, models_dir=tmp_path))
    with httpx.Client(base_url=srv2.url, timeout=10) as http:
        for _ in range(500):
            hist = http.get("/history").json()
            if set(pending) <= set(hist):
                break
            time.sleep(0.02)
        assert set(hist) == {quick, running, *pending}
        assert hist[quick]["status"]["status_str"] == "success"
        assert all(hist[p]["status"]["status_str"] == "success" for p in pending)
        assert [hist[p]["outputs"]["2"]["text"] for p in pending] == [["3"], ["4"], ["5"]]
        failed = hist[running]["status"]
        assert failed["status_str"] == "error" and "interrupted by server restart" in failed["message"]
        assert failed["messages"][0][1]["exception_type"] == "ServerRestart"
        # the failed job can be put back in the queue and then runs
        assert http.post("/queue", json={"requeue": [running]}).json() == {"requeued": [running]}
        with connect(f"{srv2.ws_url}?clientId=x") as ws:
            ws.recv(timeout=5)
            http.post("/interrupt")  # cancel the long requeued job once it runs
            for _ in range(500):
                entry = http.get(f"/history/{running}").json()
                if entry:
                    break
                http.post("/interrupt")
                time.sleep(0.02)
        assert entry[running]["status"]["status_str"] == "interrupted"
        assert runs2["Slow"] == 4  # three pending jobs plus the requeued one


def test_non_loopback_needs_a_token(tmp_path):
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.2")
    check_bind("127.0.0.1", None)
    check_bind("0.0.0.0", "secret")
    with pytest.raises(ValueError, match="refusing to listen on '0.0.0.0' without a token"):
        check_bind("0.0.0.0", None)
    registry, _ = make_registry()
    with pytest.raises(ValueError, match="without a token"):
        serve(registry, "0.0.0.0", 0, data_dir=tmp_path / "d", models_dir=tmp_path)
    assert not (tmp_path / "d").exists()  # refused before anything was created


def test_token_required_on_every_route(tmp_path, live_server):
    registry, _ = make_registry()
    app = create_app(registry, data_dir=tmp_path / "data", models_dir=tmp_path, token="s3cret")
    with TestClient(app, base_url="http://127.0.0.1") as client:
        for method, path in [("GET", "/"), ("GET", "/object_info"), ("GET", "/api/queue"), ("POST", "/prompt"),
                             ("GET", "/view?filename=x"), ("POST", "/upload/image"), ("GET", "/history"),
                             ("POST", "/interrupt"), ("GET", "/system_stats")]:  # fmt: skip
            r = client.request(method, path)
            assert r.status_code == 401, path
            assert r.json()["error"]["type"] == "unauthorized"
            assert client.request(method, path, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.get("/object_info", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert client.get("/object_info?token=s3cret").status_code == 200
    srv = live_server(app)
    with pytest.raises(InvalidStatus):
        connect(f"{srv.ws_url}?clientId=a").recv(timeout=5)
    with connect(f"{srv.ws_url}?clientId=a&token=s3cret") as ws:
        assert json.loads(ws.recv(timeout=5))["type"] == "status"
    with connect(f"{srv.ws_url}?clientId=b", additional_headers={"Authorization": "Bearer s3cret"}) as ws:
        assert json.loads(ws.recv(timeout=5))["type"] == "status"
