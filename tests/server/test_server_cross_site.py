"""Cross-site requests and DNS rebinding against a loopback server without a token (the default set-up).

Each test replays one request a web page on another origin (or a rebinding DNS name) could make, and checks
that it is refused and had no effect, while the same request from the server's own page, or from a script
that sends no Origin (curl, ComfyUI's urllib example), still works.
"""

from __future__ import annotations

import json
import logging
import time

import httpx
import pytest
from asgi_client import SAME_ORIGIN, AsgiClient, wait_history
from graph_toy_nodes import PNG_1X1, make_registry
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from latentworks.server import create_app

EVIL = "http://evil.example"
QUICK = {
    "1": {"class_type": "Constant", "inputs": {"value": 3}},
    "2": {"class_type": "SaveText", "inputs": {"text": ["1", 0], "filename_prefix": "x"}},
}
SLOW = {
    "1": {"class_type": "Slow", "inputs": {"x": 1, "steps": 10_000, "delay": 0.005}},
    "2": {"class_type": "SaveText", "inputs": {"text": ["1", 0], "filename_prefix": "s"}},
}


@pytest.fixture
def client(tmp_path):
    registry, _ = make_registry()
    c = AsgiClient(create_app(registry, data_dir=tmp_path / "data", models_dir=tmp_path))
    c.data = tmp_path / "data"
    yield c
    c.close()


def queued(c) -> int:
    q = c.get("/queue").json()
    return len(q["queue_running"]) + len(q["queue_pending"]) + len(c.get("/history").json())


def test_cross_site_text_plain_prompt_is_refused_and_not_queued(client):
    body = json.dumps({"prompt": QUICK})
    for origin in (
        EVIL,
        "null",
        "http://localhost:3000",
        "http://127.0.0.1:8189",
        "http://127.0.0.1.evil.example",
    ):
        r = client.post("/prompt", content=body, headers={"Origin": origin, "Content-Type": "text/plain"})
        assert r.status_code == 403, (origin, r.text)
        assert (
            r.json()["error"]["type"] == "forbidden_origin"
            and "--allow-origin" in r.json()["error"]["message"]
        )
        # JSON from a foreign page is refused too (it would need a CORS preflight, but do not rely on it)
        r = client.post("/api/prompt", json={"prompt": QUICK}, headers={"Origin": origin})
        assert r.status_code == 403
    # a browser may omit Origin but still say the request is cross-site
    r = client.post("/prompt", content=body, headers={"Sec-Fetch-Site": "cross-site"})
    assert r.status_code == 403
    assert queued(client) == 0


def test_cross_site_state_changes_are_refused(client):
    pid = client.post("/prompt", json={"prompt": QUICK}).json()["prompt_id"]
    wait_history(client, pid)
    slow = client.post("/prompt", json={"prompt": SLOW}).json()["prompt_id"]
    pending = client.post("/prompt", json={"prompt": QUICK}).json()["prompt_id"]
    while client.get("/queue").json()["queue_running"] == []:
        time.sleep(0.01)
    h = {"Origin": EVIL, "Content-Type": "text/plain"}
    assert client.post("/interrupt", headers={"Origin": EVIL}).status_code == 403
    assert client.post("/history", content='{"clear": true}', headers=h).status_code == 403
    assert client.post("/queue", content='{"clear": true}', headers=h).status_code == 403
    up = client.post("/upload/image", files={"image": ("e.png", PNG_1X1)}, headers={"Origin": EVIL})
    assert up.status_code == 403
    q = client.get("/queue").json()
    assert [e[1] for e in q["queue_running"]] == [slow] and [e[1] for e in q["queue_pending"]] == [pending]
    assert list(client.get("/history").json()) == [pid]
    assert list((client.data / "input").iterdir()) == []
    # the same operations from the server's own page (same origin, JSON) work
    same = {"Origin": SAME_ORIGIN}
    assert client.post("/queue", json={"clear": True}, headers=same).json()["deleted"] == 1
    assert client.post("/interrupt", headers=same).json() == {"interrupted": True}
    up = client.post("/upload/image", files={"image": ("e.png", PNG_1X1)}, headers=same)
    assert up.status_code == 200 and (client.data / "input" / "e.png").read_bytes() == PNG_1X1
    wait_history(client, slow)
    assert client.post("/history", json={"clear": True}, headers=same).json()["deleted"] == 2


def test_same_origin_browser_needs_json_but_scripts_do_not(client):
    body = json.dumps({"prompt": QUICK})
    same = {"Origin": SAME_ORIGIN}
    r = client.post("/prompt", content=body, headers={**same, "Content-Type": "text/plain"})
    assert r.status_code == 415 and "application/json" in r.json()["error"]["message"]
    r = client.post(
        "/prompt", content=body, headers={"Sec-Fetch-Site": "same-origin", "Content-Type": "text/plain"}
    )
    assert r.status_code == 415
    assert queued(client) == 0
    r = client.post(
        "/prompt", content=body, headers={**same, "Content-Type": "application/json; charset=utf-8"}
    )
    assert r.status_code == 200, r.text
    # ComfyUI's websockets_api_example.py posts with urllib: no Origin, form content type; curl -d the same
    r = client.post("/prompt", content=body, headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 200, r.text
    r = client.post("/prompt", content=body)
    assert r.status_code == 200, r.text
    # the editor's interrupt: same origin, no body and no content type
    assert client.post("/interrupt", headers=same).status_code == 200


@pytest.mark.parametrize(
    "host", ["evil.example", "evil.example:8188", "localhost.evil.example", "127.0.0.1.nip.io"]
)
def test_dns_rebinding_host_is_refused(client, host):
    for method, path in [
        ("GET", "/history"),
        ("GET", "/"),
        ("GET", "/view?filename=x"),
        ("POST", "/interrupt"),
    ]:
        r = client.request(method, path, headers={"Host": host})
        assert r.status_code == 403, (host, path)
        assert (
            r.json()["error"]["type"] == "forbidden_host" and "--allow-host" in r.json()["error"]["message"]
        )
    r = client.post("/prompt", json={"prompt": QUICK}, headers={"Host": host})
    assert r.status_code == 403 and queued(client) == 0


@pytest.mark.parametrize(
    "host", ["localhost:8188", "LOCALHOST", "127.0.0.1", "[::1]:8188", "192.168.1.20:8188"]
)
def test_loopback_names_and_ip_literals_are_accepted(client, host):
    assert client.get("/history", headers={"Host": host}).status_code == 200


def test_allow_origin_and_allow_host_flags(tmp_path):
    registry, _ = make_registry()
    app = create_app(
        registry,
        data_dir=tmp_path / "data",
        models_dir=tmp_path,
        allowed_hosts=["lw.example"],
        allowed_origins=["https://editor.example"],
    )
    c = AsgiClient(app)
    try:
        assert c.get("/history", headers={"Host": "lw.example"}).status_code == 200
        assert c.get("/history", headers={"Host": "other.example"}).status_code == 403
        pre = c.request(
            "OPTIONS",
            "/prompt",
            headers={"Origin": "https://editor.example", "Access-Control-Request-Method": "POST",
                     "Access-Control-Request-Headers": "content-type"},
        )  # fmt: skip
        assert pre.status_code == 200
        assert pre.headers["access-control-allow-origin"] == "https://editor.example"
        r = c.post("/prompt", json={"prompt": QUICK}, headers={"Origin": "https://editor.example"})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://editor.example"
        assert c.post("/prompt", json={"prompt": QUICK}, headers={"Origin": EVIL}).status_code == 403
        # a proxy at https://lw.example in front of the server: same origin through the allowed Host
        r = c.post("/interrupt", headers={"Host": "lw.example", "Origin": "https://lw.example"})
        assert r.status_code == 200
    finally:
        c.close()


def test_serve_flags_reach_the_app(monkeypatch, tmp_path):
    from latentworks import cli

    seen = {}
    monkeypatch.setattr("latentworks.server.serve", lambda *a, **kw: seen.update(kw))
    argv = ["serve", "--data-dir", str(tmp_path / "d"), "--models-dir", str(tmp_path), "--allow-origin",
            "https://a.example", "--allow-origin", "https://b.example", "--allow-host", "lw.example"]  # fmt: skip
    assert cli.main(argv) == 0
    assert seen["allowed_origins"] == ["https://a.example", "https://b.example"]
    assert seen["allowed_hosts"] == ["lw.example"]


# -- WebSocket (real server) -----------------------------------------------------------------------


@pytest.fixture
def server(tmp_path, live_server):
    registry, _ = make_registry()
    srv = live_server(create_app(registry, data_dir=tmp_path / "data", models_dir=tmp_path))
    srv.origin = f"http://127.0.0.1:{srv.port}"
    return srv


def raw_handshake(port: int, host: str, origin: str | None = None) -> str:
    """The status line the server answers a WebSocket handshake with (one Host header, as a browser sends)."""
    import socket

    lines = ["GET /ws?clientId=raw HTTP/1.1", f"Host: {host}", "Upgrade: websocket", "Connection: Upgrade",
             "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version: 13"]  # fmt: skip
    if origin:
        lines.append(f"Origin: {origin}")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        return sock.recv(4096).decode("latin-1").split("\r\n")[0]


def test_cross_site_websocket_is_refused_with_http_403(server):
    for origin in (EVIL, "null", "http://localhost:1"):
        with pytest.raises(InvalidStatus) as e, connect(f"{server.ws_url}?clientId=v", origin=origin) as ws:
            ws.recv(timeout=5)
        assert e.value.response.status_code == 403, origin
    assert raw_handshake(server.port, "evil.example").startswith("HTTP/1.1 403")  # DNS rebinding
    assert raw_handshake(server.port, f"evil.example:{server.port}", EVIL).startswith("HTTP/1.1 403")
    assert raw_handshake(
        server.port, f"localhost:{server.port}", f"http://localhost:{server.port}"
    ).startswith("HTTP/1.1 101")
    with pytest.raises(InvalidStatus):  # two Host headers: refused rather than guessing which one counts
        with connect(f"{server.ws_url}?clientId=v", additional_headers={"Host": "evil.example"}) as ws:
            ws.recv(timeout=5)
    for cid, origin in (
        ("v1", server.origin),
        ("v2", None),
    ):  # the editor's own page; a script without Origin
        with connect(f"{server.ws_url}?clientId={cid}", origin=origin) as ws:
            assert json.loads(ws.recv(timeout=5))["data"]["sid"] == cid


def wait_done(ws, prompt_id):
    types = []
    while True:
        raw = ws.recv(timeout=10)
        if isinstance(raw, bytes):
            continue
        msg = json.loads(raw)
        types.append(msg["type"])
        if (
            msg["type"] == "executing"
            and msg["data"]["node"] is None
            and msg["data"]["prompt_id"] == prompt_id
        ):
            return types


def test_second_socket_cannot_take_over_an_open_client_id(server):
    with (
        httpx.Client(base_url=server.url, timeout=10) as http,
        connect(f"{server.ws_url}?clientId=alice") as ws1,
    ):
        assert json.loads(ws1.recv(timeout=5))["data"]["sid"] == "alice"
        with connect(f"{server.ws_url}?clientId=alice") as ws2:
            sid2 = json.loads(ws2.recv(timeout=5))["data"]["sid"]
            assert sid2 != "alice" and len(sid2) == 32
            pid = http.post("/prompt", json={"prompt": QUICK, "client_id": "alice"}).json()["prompt_id"]
            assert "executed" in wait_done(ws1, pid)  # alice still gets her job's messages
            seen = []
            while True:  # the newcomer only sees broadcast status messages
                try:
                    seen.append(json.loads(ws2.recv(timeout=0.5))["type"])
                except TimeoutError:
                    break
            assert set(seen) <= {"status"}
    # once alice's socket is closed, a reconnect with her id gets it back (ComfyUI's reconnect behaviour)
    for _ in range(100):
        with connect(f"{server.ws_url}?clientId=alice") as ws3:
            if json.loads(ws3.recv(timeout=5))["data"]["sid"] == "alice":
                break
        time.sleep(0.02)
    else:
        raise AssertionError("a reconnecting client did not get its id back")


# -- the token never reaches the logs ----------------------------------------------------------------


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_query_token_is_redacted_from_access_and_websocket_logs(tmp_path):
    import threading

    import uvicorn

    from conftest import free_port

    registry, _ = make_registry()
    app = create_app(registry, data_dir=tmp_path / "data", models_dir=tmp_path, token="s3cret-tok")
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="info", access_log=True)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.01)
        records = _Records()
        for name in ("uvicorn.access", "uvicorn.error"):
            logging.getLogger(name).addHandler(records)
        try:
            httpx.get(f"http://127.0.0.1:{port}/history?max_items=1&token=s3cret-tok", timeout=5)
            with connect(f"ws://127.0.0.1:{port}/ws?token=s3cret-tok&clientId=z") as ws:
                ws.recv(timeout=5)
            time.sleep(0.2)
        finally:
            for name in ("uvicorn.access", "uvicorn.error"):
                logging.getLogger(name).removeHandler(records)
    finally:
        server.should_exit = True
        thread.join(10)
    text = "\n".join(records.lines)
    assert "/history?max_items=1&token=REDACTED" in text and "/ws?token=REDACTED&clientId=z" in text, text
    assert "s3cret-tok" not in text


def test_token_rejection_on_websocket_is_http_403_as_documented(tmp_path, live_server):
    registry, _ = make_registry()
    srv = live_server(create_app(registry, data_dir=tmp_path / "d", models_dir=tmp_path, token="t0k"))
    with pytest.raises(InvalidStatus) as e:
        connect(f"{srv.ws_url}?token=wrong").recv(timeout=5)
    assert e.value.response.status_code == 403
