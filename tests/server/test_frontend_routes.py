"""The routes ComfyUI's official frontend calls (server/comfy_routes.py, server/userdata.py): shapes the
frontend parses, persistence across a server restart, the token, and confinement of the user folder."""

from __future__ import annotations

import io
import json
import struct
import sys
import time
import types
import uuid
from pathlib import Path

import pytest
from asgi_client import AsgiClient
from PIL import Image

from latentworks.graph.registry import NodeRegistry
from latentworks.graph.types import InputSpec, NodeResult, NodeSpec, OutputSpec
from latentworks.server import create_app

BROWSER = {"origin": "http://127.0.0.1:8188", "sec-fetch-site": "same-origin"}


def _png(size=(4, 3), color=(200, 10, 10, 255)) -> bytes:
    out = io.BytesIO()
    Image.new("RGBA", size, color).save(out, format="PNG")
    return out.getvalue()


def _registry() -> NodeRegistry:
    def save(ctx, value):
        name = f"img_{ctx.prompt_id[:8]}.png"
        (Path(ctx.output_dir) / name).write_bytes(_png())
        return NodeResult(ui={"images": [{"filename": name, "subfolder": "", "type": "output"}]})

    def fail(ctx, value):
        raise ValueError("boom")

    return NodeRegistry(
        [
            NodeSpec(
                name="Constant",
                execute=lambda ctx, value: (value,),
                inputs=(InputSpec(name="value", type="INT", default=0),),
                outputs=(OutputSpec(type="INT"),),
            ),
            NodeSpec(
                name="SaveImg",
                execute=save,
                inputs=(InputSpec(name="value", type="INT"),),
                output_node=True,
            ),
            NodeSpec(
                name="Fail",
                execute=fail,
                inputs=(InputSpec(name="value", type="INT"),),
                output_node=True,
            ),
        ]
    )


def _client(data: Path, models: Path | None = None, **kw) -> AsgiClient:
    app = create_app(_registry(), data_dir=data, models_dir=models or data.parent / "models", **kw)
    return AsgiClient(app)


@pytest.fixture
def client(tmp_path):
    c = _client(tmp_path / "data")
    yield c
    c.close()


def _user(tmp_path: Path) -> Path:
    return tmp_path / "data" / "user" / "default"


# -- start-up probes --------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["", "/api"])
def test_startup_probes_have_comfyui_shapes(client, prefix):
    assert client.get(f"{prefix}/extensions").json() == []
    assert client.get(f"{prefix}/i18n").json() == {}
    assert client.get(f"{prefix}/users").json() == {"storage": "server", "migrated": True}
    assert client.get(f"{prefix}/workflow_templates").json() == {}
    assert client.get(f"{prefix}/global_subgraphs").json() == {}
    features = client.get(f"{prefix}/features").json()
    assert features["supports_preview_metadata"] is True  # server/worker.py sends type-4 preview frames
    assert features["max_upload_size"] == 32 * 2**20  # create_app's default max_upload_bytes
    models = client.get(f"{prefix}/experiment/models").json()
    assert {"name": "checkpoints", "folders": [str(client.state.models_dir / "checkpoints")]} in models
    assert client.get(f"{prefix}/experiment/models/nope").status_code == 404


def test_core_nodes_are_reported_as_comfyui_core(client):
    info = client.get("/object_info").json()
    # The frontend files a node as "Comfy Core" when python_module's first part is nodes/comfy_extras.
    assert {v["python_module"].split(".")[0] for v in info.values()} == {"nodes"}


TEMPLATE_MODULES = (
    "comfyui_workflow_templates",
    "comfyui_workflow_templates_json",
    "comfyui_workflow_templates_core",
)


def test_templates_index_is_empty_without_the_package(client, monkeypatch):
    for name in TEMPLATE_MODULES:
        monkeypatch.setitem(sys.modules, name, None)  # import raises ImportError
    for path in ("/templates/index.json", "/templates/index.fr.json"):
        r = client.get(path)
        assert r.status_code == 200 and r.headers["content-type"] == "application/json" and r.json() == []
    r = client.get("/templates/some_template.json")
    assert r.status_code == 404 and "pip install comfyui-workflow-templates" in r.text


def test_templates_served_from_the_package(client, monkeypatch, tmp_path):
    folder = tmp_path / "pkg" / "templates"
    folder.mkdir(parents=True)
    (folder / "index.json").write_text('[{"moduleName": "default", "templates": []}]')
    (tmp_path / "secret.json").write_text('{"key": "TOPVALUE"}')
    media = tmp_path / "t1-1.webp"
    media.write_bytes(b"RIFF0000WEBP")
    meta = types.ModuleType("comfyui_workflow_templates")
    meta.__file__ = str(tmp_path / "pkg" / "__init__.py")
    core = types.ModuleType("comfyui_workflow_templates_core")
    entry = types.SimpleNamespace(
        template_id="t1",
        assets=[types.SimpleNamespace(filename="t1-1.webp"), types.SimpleNamespace(filename="t1-2.webp")],
    )
    core.iter_templates = lambda: [entry]  # type: ignore[attr-defined]

    def get_asset_path(template_id, filename):
        if filename == "t1-2.webp":
            raise FileNotFoundError("bundle not installed")
        return str(media)

    core.get_asset_path = get_asset_path  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "comfyui_workflow_templates", meta)
    monkeypatch.setitem(sys.modules, "comfyui_workflow_templates_json", None)
    monkeypatch.setitem(sys.modules, "comfyui_workflow_templates_core", core)
    assert client.get("/templates/index.json").json() == [{"moduleName": "default", "templates": []}]
    assert client.get("/templates/t1-1.webp").content == b"RIFF0000WEBP"
    assert client.get("/templates/t1-2.webp").status_code == 404  # its bundle is missing: no 500
    for escape in ("..%2Fsecret.json", "%2E%2E/secret.json", "..%5Csecret.json"):
        r = client.get(f"/templates/{escape}")
        assert r.status_code == 404 and "TOPVALUE" not in r.text, escape


def test_feature_flags_reply_on_the_websocket(tmp_path, live_server):
    from websockets.sync.client import connect

    app = create_app(
        _registry(), data_dir=tmp_path / "data", models_dir=tmp_path / "m", max_upload_bytes=1234
    )
    srv = live_server(app)
    with connect(srv.ws_url) as ws:
        assert json.loads(ws.recv(timeout=5))["type"] == "status"
        ws.send(json.dumps({"type": "feature_flags", "data": {"supports_preview_metadata": True}}))
        reply = json.loads(ws.recv(timeout=5))
    assert reply["type"] == "feature_flags"
    assert reply["data"]["max_upload_size"] == 1234 and reply["data"]["supports_preview_metadata"] is True


# -- settings ---------------------------------------------------------------------------------------


def test_settings_persist_across_a_restart(tmp_path):
    c = _client(tmp_path / "data")
    try:
        assert c.get("/settings").json() == {}
        assert c.get("/settings/Comfy.Locale").json() is None
        # The frontend posts settings without a Content-Type header (text/plain) from its own page.
        r = c.post(
            "/api/settings", content=json.dumps({"Comfy.Locale": "fr", "A.B": [1, 2]}), headers=BROWSER
        )
        assert r.status_code == 200, r.text
        r = c.post("/api/settings/Comfy.ColorPalette", content='"light"', headers=BROWSER)
        assert r.status_code == 200, r.text
        c.post("/settings/A.B", content="null")
    finally:
        c.close()
    c = _client(tmp_path / "data")
    try:
        assert c.get("/api/settings").json() == {
            "Comfy.Locale": "fr",
            "A.B": None,
            "Comfy.ColorPalette": "light",
        }
        assert c.get("/api/settings/Comfy.ColorPalette").json() == "light"
    finally:
        c.close()
    on_disk = json.loads((_user(tmp_path) / "comfy.settings.json").read_text())
    assert on_disk["Comfy.Locale"] == "fr"


def test_settings_refuse_bad_bodies(client, tmp_path):
    for body in (b"[1, 2]", b"{", b'{"a": NaN}', b'"\\ud800"', b"[" * 5000, b"\xff\xfe"):
        r = client.post("/settings", content=body)
        assert r.status_code == 400, (body[:20], r.status_code)
    r = client.post("/settings/x", content=b'"\\ud800"')
    assert r.status_code == 400
    cross = {"origin": "http://127.0.0.1:8188", "sec-fetch-site": "cross-site", "content-type": "text/plain"}
    # (the Origin guard already refuses a foreign Origin; a same-host page marked cross-site is refused here)
    assert client.post("/settings", content=b'{"a": 1}', headers=cross).status_code == 415
    assert client.get("/settings").json() == {}


def test_damaged_settings_file_is_kept_aside(client, tmp_path):
    user = _user(tmp_path)
    user.mkdir(parents=True, exist_ok=True)
    (user / "comfy.settings.json").write_text("{not json")
    assert client.get("/settings").json() == {}
    assert any(p.name.startswith("comfy.settings.json.damaged-") for p in user.iterdir())


# -- user data --------------------------------------------------------------------------------------


def _q(path: str) -> str:
    from urllib.parse import quote

    return quote(path, safe="")


def test_userdata_save_list_load_move_delete(client, tmp_path):
    wf = json.dumps({"nodes": [], "links": [], "version": 0.4})
    r = client.post(
        f"/api/userdata/{_q('workflows/a b.json')}?overwrite=false&full_info=true",
        content=wf,
        headers=BROWSER,
    )
    assert r.status_code == 200, r.text
    info = r.json()
    assert info["path"] == "workflows/a b.json" and info["size"] == len(wf)
    assert abs(info["modified"] / 1000 - time.time()) < 60
    assert (_user(tmp_path) / "workflows" / "a b.json").read_text() == wf

    # Without overwrite a second save is a conflict; with it, replaced. Plain answer: the path string.
    assert (
        client.post(f"/userdata/{_q('workflows/a b.json')}?overwrite=false", content="{}").status_code == 409
    )
    r = client.post(f"/userdata/{_q('workflows/a b.json')}?overwrite=true", content=wf)
    assert r.json() == "workflows/a b.json"

    client.post(f"/userdata/{_q('workflows/sub/c.json')}", content="{}")
    listing = client.get("/api/userdata?dir=workflows&recurse=true&split=false&full_info=true").json()
    assert sorted(f["path"] for f in listing) == ["a b.json", "sub/c.json"]
    assert client.get("/userdata?dir=workflows").json() == ["a b.json"]  # not recursive
    assert client.get("/userdata?dir=workflows&recurse=true&split=true").json() == [
        ["a b.json", "a b.json"],
        ["sub/c.json", "sub", "c.json"],
    ]
    assert client.get("/userdata?dir=nothing").status_code == 404
    assert client.get("/userdata").status_code == 400

    v2 = client.get("/api/v2/userdata?path=workflows").json()
    assert [(e["name"], e["type"], e["path"]) for e in v2] == [
        ("sub", "directory", "workflows/sub"),
        ("a b.json", "file", "workflows/a b.json"),
    ]

    assert client.get(f"/userdata/{_q('workflows/a b.json')}").text == wf
    r = client.post(
        f"/userdata/{_q('workflows/a b.json')}/move/{_q('workflows/renamed.json')}?full_info=true"
    )
    assert r.status_code == 200 and r.json()["path"] == "workflows/renamed.json"
    assert client.get(f"/userdata/{_q('workflows/a b.json')}").status_code == 404
    r = client.post(
        f"/userdata/{_q('workflows/renamed.json')}/move/{_q('workflows/sub/c.json')}?overwrite=false"
    )
    assert r.status_code == 409
    assert client.request("DELETE", f"/userdata/{_q('workflows/renamed.json')}").status_code == 204
    assert client.request("DELETE", f"/userdata/{_q('workflows/renamed.json')}").status_code == 404
    assert client.get("/userdata?dir=workflows&recurse=true").json() == ["sub/c.json"]


def test_userdata_size_limits(tmp_path):
    c = _client(tmp_path / "data", max_body_bytes=1000)
    try:
        assert c.post(f"/userdata/{_q('w/big.json')}", content=b"x" * 1001).status_code == 413
        assert c.post(f"/userdata/{_q('w/ok.json')}", content=b"x" * 1000).status_code == 200
        huge = json.dumps({"a": "y" * 2000}).encode()
        assert c.post("/settings", content=huge).status_code == 413
        assert c.post("/settings/a", content=huge).status_code == 413
        assert c.get("/settings").json() == {}
    finally:
        c.close()
    assert not (_user(tmp_path) / "w" / "big.json").exists()


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


ESCAPES = [
    "../escape.json",
    "..%2Fescape.json",
    "workflows/../../escape.json",
    "/tmp/escape.json",
    "//etc/passwd",
    "C:/escape.json",
    "..\\escape.json",
    "a\x00b.json",
    "outside/escape.json",  # a symlink to a folder outside
    "link.json",  # a symlink to a file outside
    "%2e%2e/escape.json",
    "./../escape.json",
    "",
    "a/" * 40 + "deep.json",
    "x" * 2000,
    "workflows/ok.json/below-a-file.json",  # a file where a folder is needed
    "n" * 300 + ".json",  # longer than a file name may be
]


def test_userdata_confinement_fuzz(client, tmp_path):
    """No path escapes the user folder, nothing outside is read or written, and nothing answers 5xx."""
    user = _user(tmp_path)
    user.mkdir(parents=True, exist_ok=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.json").write_text('{"key": "TOPVALUE"}')
    (user / "outside").symlink_to(outside)
    (user / "link.json").symlink_to(outside / "secret.json")
    (user / "workflows").mkdir()
    (user / "workflows" / "ok.json").write_text("{}")
    before_outside = _tree(outside)
    before_data = {k: v for k, v in _tree(tmp_path / "data").items() if not k.startswith("user")}
    for path in ESCAPES:
        for encoded in (_q(path), path.replace("\x00", "%00")):
            urls = [
                ("GET", f"/api/userdata/{encoded}"),
                ("POST", f"/api/userdata/{encoded}?overwrite=true"),
                ("DELETE", f"/api/userdata/{encoded}"),
                ("POST", f"/api/userdata/{_q('workflows/ok.json')}/move/{encoded}?overwrite=true"),
                ("POST", f"/api/userdata/{encoded}/move/{_q('workflows/x.json')}?overwrite=true"),
                ("GET", f"/api/userdata?dir={encoded}&recurse=true"),
                ("GET", f"/api/v2/userdata?path={encoded}"),
            ]
            for method, url in urls:
                r = client.request(method, url, content=b'{"pwned": 1}')
                assert r.status_code < 500, (method, url, r.status_code, r.text[:200])
                assert "TOPVALUE" not in r.text, (method, url)
                if method == "POST" and "/move/" not in url and r.status_code == 200:
                    written = user / r.json()
                    assert written.resolve().is_relative_to(user.resolve()), (url, r.json())
        assert _tree(outside) == before_outside, path
    for path in (
        "../escape.json",
        "workflows/../../escape.json",
        "/tmp/escape.json",
        "outside/escape.json",
        "link.json",
    ):
        r = client.post(f"/api/userdata/{_q(path)}", content=b"{}")
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_path", (path, r.text)
    # The move attempts may have moved ok.json inside the folder, never out of it.
    assert _tree(outside) == before_outside
    assert {k: v for k, v in _tree(tmp_path / "data").items() if not k.startswith("user")} == before_data
    assert not (tmp_path / "escape.json").exists() and not Path("/tmp/escape.json").exists()
    listing = client.get("/userdata?dir=&recurse=true").json()
    assert "link.json" not in listing and not any(p.startswith("outside") for p in listing)
    # A symbolic link that stays inside the folder is followed.
    (user / "alias").symlink_to(user / "workflows")
    assert client.get("/userdata?dir=alias&recurse=true").status_code == 200
    (user / "workflows" / "loop").symlink_to(user)  # a link back up is not walked into (no endless walk)
    assert client.get("/userdata?dir=&recurse=true").status_code == 200


def test_userdata_bodies_fuzz(client, tmp_path):
    """Random bytes, huge and malformed query flags, odd methods: no 5xx."""
    import random

    rng = random.Random(0)
    for _ in range(60):
        body = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 2000)))
        name = "".join(
            rng.choice("ab/._-%~é\u202e")
            for _ in range(rng.choice([rng.randint(1, 30), rng.randint(250, 400)]))
        )
        for method in ("POST", "GET", "DELETE"):
            r = client.request(
                method, f"/api/userdata/{_q(name)}?overwrite={rng.choice(['1', 'x', ''])}", content=body
            )
            assert r.status_code < 500, (method, name, r.status_code)
        r = client.post(f"/api/settings/{_q(name)}", content=body)
        assert r.status_code < 500
    user = _user(tmp_path).resolve()
    for p in user.rglob("*"):
        assert p.resolve().is_relative_to(user)
    assert not any(p.name.startswith(".lw-tmp-") for p in user.rglob("*")), "temporary files left behind"


# -- jobs -------------------------------------------------------------------------------------------


def _run(client, prompt: dict) -> str:
    r = client.post("/prompt", json={"prompt": prompt, "extra_data": {"api_key_comfy_org": "SECRET"}})
    assert r.status_code == 200, r.text
    pid = r.json()["prompt_id"]
    deadline = time.monotonic() + 20
    while pid not in client.get(f"/history/{pid}").json():
        assert time.monotonic() < deadline, "job did not finish"
        time.sleep(0.02)
    return pid


def test_jobs_api_lists_finished_and_failed_jobs(client):
    ok = _run(
        client,
        {
            "1": {"class_type": "Constant", "inputs": {"value": 3}},
            "2": {"class_type": "SaveImg", "inputs": {"value": ["1", 0]}},
        },
    )
    bad = _run(
        client,
        {
            "1": {"class_type": "Constant", "inputs": {"value": 3}},
            "2": {"class_type": "Fail", "inputs": {"value": ["1", 0]}},
        },
    )
    history = client.get("/history").json()
    r = client.get("/api/jobs?status=completed,failed,cancelled&limit=200&offset=0").json()
    assert r["pagination"] == {"offset": 0, "limit": 200, "total": 2, "has_more": False}
    jobs = {j["id"]: j for j in r["jobs"]}
    assert [j["id"] for j in r["jobs"]] == [bad, ok]  # newest first
    image = history[ok]["outputs"]["2"]["images"][0]
    assert jobs[ok]["status"] == "completed" and jobs[ok]["outputs_count"] == 1
    assert jobs[ok]["preview_output"] == {**image, "nodeId": "2", "mediaType": "images"}
    assert jobs[ok]["create_time"] <= jobs[ok]["execution_start_time"] <= jobs[ok]["execution_end_time"]
    assert jobs[bad]["status"] == "failed" and "boom" in jobs[bad]["execution_error"]["exception_message"]
    assert client.get("/jobs?status=in_progress,pending").json()["jobs"] == []

    detail = client.get(f"/jobs/{ok}").json()
    assert detail["outputs"] == history[ok]["outputs"]
    assert detail["workflow"]["prompt"] == history[ok]["prompt"][2]
    assert "api_key_comfy_org" not in detail["workflow"]["extra_data"]  # secrets are not sent back
    assert client.get("/jobs/nope").status_code == 404
    page = client.get("/jobs?limit=1&offset=1").json()
    assert [j["id"] for j in page["jobs"]] == [ok] and page["pagination"]["has_more"] is False
    assert client.get("/jobs?status=bogus").status_code == 400
    assert client.get("/jobs?limit=-1").status_code == 400


def test_interrupted_and_restart_failed_jobs(tmp_path):
    app = create_app(_registry(), data_dir=tmp_path / "data", models_dir=tmp_path / "m")
    c = AsgiClient(app, start_worker=False)
    store = c.state.store
    try:
        for pid in ("stopped", "crashed"):
            store.add(pid, {"1": {"class_type": "Constant", "inputs": {"value": 1}}}, {}, ["1"])
            store.claim_next()
        store.finish("stopped", "interrupted", {}, [["execution_interrupted", {"prompt_id": "stopped"}]])
        store.close()
        store.open()  # a restart marks the job left running as failed
        jobs = {j["id"]: j for j in c.get("/jobs").json()["jobs"]}
        assert jobs["stopped"]["status"] == "cancelled"
        assert jobs["crashed"]["status"] == "failed"
        assert "restart" in jobs["crashed"]["execution_error"]["exception_message"]
    finally:
        c.close()


def test_cancel_a_pending_job(tmp_path):
    app = create_app(_registry(), data_dir=tmp_path / "data", models_dir=tmp_path / "m")
    c = AsgiClient(app, start_worker=False)  # nothing runs: the job stays pending
    try:
        r = c.post(
            "/prompt",
            json={
                "prompt": {
                    "1": {"class_type": "Constant", "inputs": {"value": 1}},
                    "2": {"class_type": "SaveImg", "inputs": {"value": ["1", 0]}},
                }
            },
        )
        pid = r.json()["prompt_id"]
        assert [j["status"] for j in c.get("/jobs").json()["jobs"]] == ["pending"]
        assert c.get(f"/jobs/{pid}").json()["workflow"]["prompt"]["1"]["class_type"] == "Constant"
        assert c.post("/jobs/cancel", json={"job_ids": [pid, "unknown"]}).json() == {"cancelled": [pid]}
        assert c.get("/jobs").json()["jobs"] == []
    finally:
        c.close()


# -- models, masks, token ---------------------------------------------------------------------------


def _safetensors(path: Path, metadata: dict | None) -> None:
    header: dict = {"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}
    if metadata is not None:
        header["__metadata__"] = metadata
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0\0\0\0")


def test_view_metadata_is_confined_to_the_models_folder(tmp_path):
    models = tmp_path / "models"
    (models / "loras" / "sub").mkdir(parents=True)
    _safetensors(models / "loras" / "sub" / "a.safetensors", {"ss_network_dim": "16"})
    _safetensors(models / "loras" / "plain.safetensors", None)
    (models / "loras" / "bad.safetensors").write_bytes(b"\xff" * 8 + b"junk")
    _safetensors(tmp_path / "secret.safetensors", {"key": "TOPVALUE"})
    (models / "loras" / "link.safetensors").symlink_to(tmp_path / "secret.safetensors")
    c = _client(tmp_path / "data", models)
    try:
        assert c.get("/api/view_metadata/loras?filename=sub/a.safetensors").json() == {"ss_network_dim": "16"}
        assert c.get("/view_metadata/loras?filename=plain.safetensors").json() == {}
        assert c.get("/view_metadata/loras?filename=bad.safetensors").status_code == 400
        for name in (
            "../../secret.safetensors",
            "link.safetensors",
            "/etc/x.safetensors",
            "missing.safetensors",
            "a.txt",
        ):
            r = c.get(f"/view_metadata/loras?filename={_q(name)}")
            assert r.status_code == 404 and "TOPVALUE" not in r.text, name
        r = c.get("/view_metadata/%2E%2E?filename=secret.safetensors")
        assert r.status_code == 404 and "TOPVALUE" not in r.text
        listed = c.get("/experiment/models/loras").json()
        assert {"name": "sub/a.safetensors", "pathIndex": 0} in listed
        assert all(item["name"] != "link.safetensors" for item in listed)
    finally:
        c.close()


def test_upload_mask_puts_the_mask_alpha_on_the_original(client, tmp_path):
    (tmp_path / "data" / "input" / "orig.png").write_bytes(_png((4, 3), (10, 20, 30, 255)))
    mask = Image.new("RGBA", (4, 3), (0, 0, 0, 255))
    mask.putpixel((1, 1), (0, 0, 0, 0))
    buf = io.BytesIO()
    mask.save(buf, format="PNG")
    r = client.post(
        "/upload/mask",
        files={"image": ("clipspace-mask.png", buf.getvalue(), "image/png")},
        data={"original_ref": json.dumps({"filename": "orig.png", "type": "input"}), "type": "input"},
    )
    assert r.status_code == 200, r.text
    saved = Image.open(tmp_path / "data" / "input" / r.json()["name"])
    assert saved.getpixel((1, 1)) == (10, 20, 30, 0) and saved.getpixel((0, 0)) == (10, 20, 30, 255)
    r = client.post(
        "/upload/mask",
        files={"image": ("m.png", buf.getvalue(), "image/png")},
        data={"original_ref": json.dumps({"filename": "../../../etc/passwd", "type": "input"})},
    )
    assert r.status_code == 404
    assert (
        client.post(
            "/upload/mask", files={"image": ("m.png", b"x", "image/png")}, data={"original_ref": "{"}
        ).status_code
        == 400
    )


def test_every_new_route_needs_the_token(tmp_path, live_server):
    import httpx
    from websockets.sync.client import connect

    app = create_app(_registry(), data_dir=tmp_path / "data", models_dir=tmp_path / "m", token="s3cret")
    srv = live_server(app)
    routes = [
        ("GET", "/api/extensions"), ("GET", "/api/features"), ("GET", "/api/users"), ("GET", "/api/i18n"),
        ("GET", "/api/settings"), ("POST", "/api/settings"), ("GET", "/api/settings/x"), ("POST", "/api/settings/x"),
        ("GET", "/api/userdata?dir=workflows"), ("GET", "/api/v2/userdata"), ("GET", "/api/userdata/a.json"),
        ("POST", "/api/userdata/a.json"), ("DELETE", "/api/userdata/a.json"), ("POST", "/api/userdata/a.json/move/b.json"),
        ("GET", "/api/workflow_templates"), ("GET", "/templates/index.json"), ("GET", "/api/global_subgraphs"),
        ("GET", "/api/experiment/models"), ("GET", "/api/jobs"), ("GET", "/api/jobs/x"), ("POST", "/api/jobs/cancel"),
        ("POST", "/api/upload/mask"), ("GET", "/api/view_metadata/loras?filename=a.safetensors"),
    ]  # fmt: skip
    with httpx.Client(base_url=srv.url) as http:
        for method, url in routes:
            assert http.request(method, url, content=b"{}").status_code == 401, url
        ok = http.post("/api/settings", content=b'{"a": 1}', headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        assert http.get("/api/settings?token=s3cret").json() == {"a": 1}
    with pytest.raises(Exception):  # noqa: B017 - the handshake is refused (closed before accept)
        with connect(srv.ws_url) as ws:
            ws.recv(timeout=5)
    with connect(f"{srv.ws_url}?token=s3cret") as ws:
        assert json.loads(ws.recv(timeout=5))["type"] == "status"
        ws.send(json.dumps({"type": "feature_flags", "data": {}}))
        assert json.loads(ws.recv(timeout=5))["type"] == "feature_flags"


def test_unique_ids_for_userdata_temp_files(client, tmp_path):
    # Two saves of one name never leave a temporary file or a mixed result.
    for i in range(5):
        client.post(f"/userdata/{_q('w/x.json')}", content=json.dumps({"i": i, "pad": uuid.uuid4().hex * 10}))
    assert json.loads((_user(tmp_path) / "w" / "x.json").read_text())["i"] == 4
    assert [p.name for p in (_user(tmp_path) / "w").iterdir()] == ["x.json"]
