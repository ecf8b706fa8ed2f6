"""Previews, /view's preview= and channel=, ComfyUI's message order and POST /free (issue 24).

ComfyUI sends no binary preview frames unless it was started with ``--preview-method`` or the prompt's
``extra_data.preview_method`` asks for them; /view re-encodes with ``preview=FORMAT;QUALITY`` and splits
channels with ``channel=``. The job runs the embedded default model at 32 x 32 with 3 steps.
"""

from __future__ import annotations

import io
import json
import struct
import time
import uuid

import httpx
import numpy as np
import pytest
from comfy_clients import STEPS, txt2img
from PIL import Image
from websockets.sync.client import connect

from latentworks.nodes import default_registry
from latentworks.nodes.guards import payload_nbytes
from latentworks.server import create_app
from latentworks.server.worker import holds_network


@pytest.fixture
def start(tmp_path, live_server):
    def start(**kwargs):
        data = tmp_path / "data"
        app = create_app(
            default_registry(tmp_path / "models", data / "input"),
            data_dir=data,
            models_dir=tmp_path / "models",
            sizer=payload_nbytes,
            **kwargs,
        )
        srv = live_server(app)
        srv.data = data
        srv.http = httpx.Client(base_url=srv.url, timeout=30)
        return srv

    return start


def run(srv, extra_data=None, seed=1, features=None):
    """Queue txt2img on a fresh socket; every message until ``executing`` null (binary frames as bytes).
    ``features``: a feature_flags message the client sends first, as ComfyUI's frontend does."""
    client_id = uuid.uuid4().hex
    with connect(f"{srv.ws_url}?clientId={client_id}") as ws:
        hello = json.loads(ws.recv(timeout=10))
        if features is not None:
            ws.send(json.dumps({"type": "feature_flags", "data": features}))
            deadline = time.monotonic() + 10  # the server reads it on its own task
            while not srv.app.state.latentworks.hub.supports(client_id, next(iter(features))):
                assert time.monotonic() < deadline, "the feature_flags message was not recorded"
                time.sleep(0.01)
        body = {"prompt": txt2img("pv", seed=seed), "client_id": client_id}
        if extra_data is not None:
            body["extra_data"] = extra_data
        r = srv.http.post("/prompt", json=body)
        assert r.status_code == 200, r.text
        pid = r.json()["prompt_id"]
        msgs = [hello]
        while True:
            raw = ws.recv(timeout=60)
            msg = raw if isinstance(raw, bytes) else json.loads(raw)
            msgs.append(msg)
            if isinstance(msg, dict) and msg["type"] == "executing" and msg["data"]["node"] is None:
                return pid, msgs


def frames(msgs):
    return [m for m in msgs if isinstance(m, bytes)]


def test_no_previews_by_default_and_comfyui_message_order(start):
    srv = start()
    pid, msgs = run(srv)
    assert frames(msgs) == []
    states = [m["data"] for m in msgs if m["type"] == "progress_state"]
    kinds = [m["type"] for m in msgs if m["type"] != "progress_state"]
    # ComfyUI: status (with sid) on connect; status when queued and when the worker takes the job; the
    # job's events; the queue's new length; then executing null.
    assert msgs[0]["data"]["sid"] and kinds[:2] == ["status", "status"]
    start_at = kinds.index("execution_start")
    assert kinds[start_at - 1] == "status" and kinds[start_at + 1] == "execution_cached"
    assert kinds[-4:] == ["executed", "execution_success", "status", "executing"]
    assert msgs[-2]["data"]["status"]["exec_info"]["queue_remaining"] == 0
    assert msgs[-1]["data"] == {"node": None, "prompt_id": pid}
    executing = [m["data"]["node"] for m in msgs if m["type"] == "executing"]
    assert executing[-4:] == ["3", "8", "9", None]
    progress = [m["data"] for m in msgs if m["type"] == "progress"]
    assert [(p["value"], p["max"], p["node"], p["prompt_id"]) for p in progress] == [
        (i, STEPS, "3", pid) for i in range(1, STEPS + 1)
    ]
    assert kinds.index("progress") > kinds.index("executing")

    # progress_state (ComfyUI's per-node progress, read by its frontend): one before each progress
    # message with the sampler's value, and at the end every node that ran is finished.
    for i, m in enumerate(msgs):
        if m["type"] == "progress":
            before = msgs[i - 1]
            assert before["type"] == "progress_state", before
            node = before["data"]["nodes"]["3"]
            assert (node["state"], node["value"], node["max"]) == ("running", m["data"]["value"], STEPS)
    assert all(s["prompt_id"] == pid for s in states)
    last = states[-1]["nodes"]
    assert sorted(last) == ["3", "4", "5", "6", "7", "8", "9"]
    assert {n["state"] for n in last.values()} == {"finished"}
    assert all(n["value"] == n["max"] and n["node_id"] == k for k, n in last.items())
    assert last["3"]["max"] == STEPS
    # The history is written before executing null (clients read it then).
    assert srv.http.get(f"/history/{pid}").json()[pid]["status"]["completed"] is True


def _check_preview_frames(msgs):
    got = frames(msgs)
    assert len(got) == STEPS
    for frame in got:
        assert struct.unpack(">II", frame[:8]) == (1, 1)  # PREVIEW_IMAGE, JPEG
        with Image.open(io.BytesIO(frame[8:])) as im:
            assert im.format == "JPEG" and im.size[0] >= 32 and im.size[0] == im.size[1]
    kinds = ["binary" if isinstance(m, bytes) else m["type"] for m in msgs]
    first = kinds.index("binary")
    assert kinds[first - 1] == "progress"  # each frame follows its progress message


@pytest.mark.parametrize("method", ["auto", "latent2rgb", "taesd"])
def test_a_job_can_ask_for_previews(start, method):
    srv = start()
    _, msgs = run(srv, {"preview_method": method})
    _check_preview_frames(msgs)


def test_server_preview_method_and_a_job_turning_it_off(start):
    srv = start(preview_method="latent2rgb")
    _, msgs = run(srv)
    _check_preview_frames(msgs)
    _, msgs = run(srv, {"preview_method": "none"}, seed=2)
    assert frames(msgs) == []
    _, msgs = run(srv, {"preview_method": "default"}, seed=3)  # the frontend's "default": the server's
    assert len(frames(msgs)) == STEPS


def test_clients_declaring_preview_metadata_get_type_4_frames(start):
    srv = start(preview_method="auto")
    pid, msgs = run(srv, features={"supports_preview_metadata": True})
    got = frames(msgs)
    assert len(got) == STEPS
    for frame in got:
        kind, length = struct.unpack(">II", frame[:8])
        meta = json.loads(frame[8 : 8 + length])
        assert kind == 4 and meta == {
            "node_id": "3", "display_node_id": "3", "parent_node_id": None, "real_node_id": "3",
            "prompt_id": pid, "image_type": "image/jpeg",
        }  # fmt: skip
        with Image.open(io.BytesIO(frame[8 + length :])) as im:
            assert im.format == "JPEG"


def test_unknown_preview_method_is_refused(start):
    srv = start()
    r = srv.http.post("/prompt", json={"prompt": txt2img("x"), "extra_data": {"preview_method": "fancy"}})
    assert r.status_code == 400
    assert (
        "preview_method must be one of default, none, auto, latent2rgb, taesd" in r.json()["error"]["message"]
    )
    with pytest.raises(ValueError, match="preview method must be one of"):
        start(preview_method="fancy")


# -- /view?preview=&channel= -------------------------------------------------------------------------


@pytest.fixture
def viewer(start):
    srv = start()
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (24, 40, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(srv.data / "input" / "rgba.png")
    y, x = np.mgrid[0:24, 0:40]
    rgb = np.stack([x * 6, y * 10, (x + y) * 4], axis=-1).astype(np.uint8)  # smooth: codecs keep it close
    Image.fromarray(rgb, "RGB").save(srv.data / "input" / "rgb.png")
    (srv.data / "input" / "notes.txt").write_text("not an image")
    srv.rgba, srv.rgb = rgba, rgb
    return srv


def view(srv, name, **params):
    return srv.http.get("/view", params={"filename": name, "type": "input", **params})


def decode(r):
    return Image.open(io.BytesIO(r.content))


def test_view_preview_formats_and_quality(viewer):
    r = view(viewer, "rgb.png", preview="webp;90")
    assert r.status_code == 200 and r.headers["content-type"] == "image/webp"
    im = decode(r)
    assert im.format == "WEBP" and im.size == (40, 24)
    err = np.abs(np.asarray(im.convert("RGB"), np.int16) - viewer.rgb).mean()
    assert err < 6  # lossy, but the same picture

    small, large = view(viewer, "rgb.png", preview="jpeg;5"), view(viewer, "rgb.png", preview="jpeg;95")
    assert small.headers["content-type"] == large.headers["content-type"] == "image/jpeg"
    assert decode(small).format == "JPEG" and len(small.content) < len(large.content)
    assert decode(view(viewer, "rgba.png", preview="jpeg;80")).mode == "RGB"  # JPEG has no alpha

    # As ComfyUI: a format other than webp/jpeg, or a channel with "a", gives webp; no number gives 90.
    assert view(viewer, "rgb.png", preview="png").headers["content-type"] == "image/webp"
    assert view(viewer, "rgb.png", preview="jpeg", channel="a").headers["content-type"] == "image/webp"
    assert (
        view(viewer, "rgb.png", preview="jpeg").content == view(viewer, "rgb.png", preview="jpeg;90").content
    )
    kept = decode(view(viewer, "rgba.png", preview="webp;100"))
    assert kept.mode == "RGBA"  # webp keeps the alpha channel


def test_view_channels(viewer):
    original = (viewer.data / "input" / "rgba.png").read_bytes()
    assert view(viewer, "rgba.png").content == original
    assert view(viewer, "rgba.png", channel="rgba").content == original
    rgb = view(viewer, "rgba.png", channel="rgb")
    assert rgb.headers["content-type"] == "image/png"
    assert decode(rgb).mode == "RGB" and np.array_equal(np.asarray(decode(rgb)), viewer.rgba[..., :3])
    alpha = np.asarray(decode(view(viewer, "rgba.png", channel="a")))
    assert alpha.shape == (24, 40, 4)
    assert np.array_equal(alpha[..., 3], viewer.rgba[..., 3]) and not alpha[..., :3].any()
    opaque = np.asarray(decode(view(viewer, "rgb.png", channel="a")))
    assert (opaque[..., 3] == 255).all()


def test_view_refusals(viewer):
    r = view(viewer, "rgb.png", channel="bgr")
    assert r.status_code == 400 and "channel must be one of rgba, rgb, a" in r.json()["error"]["message"]
    r = view(viewer, "notes.txt", preview="webp;90")
    assert r.status_code == 415 and "not an image" in r.json()["error"]["message"]
    assert view(viewer, "notes.txt").text == "not an image"  # served as it is without preview=/channel=
    assert view(viewer, "../rgb.png", preview="webp").status_code == 404
    # Odd preview strings fall back as ComfyUI's do (webp, quality 90) instead of failing.
    for odd in ("", ";", "jpeg;²", "jpeg;-5", "jpeg;" + "9" * 40, "webp;\u0663", "\x00;1"):
        r = view(viewer, "rgb.png", preview=odd)
        assert r.status_code == 200 and r.headers["content-type"] in ("image/webp", "image/jpeg"), odd


def test_view_refuses_an_image_over_the_pixel_budget(start, tmp_path):
    from latentworks.graph import JobBudgets

    srv = start(budgets=JobBudgets(max_image_pixels=100))
    Image.new("RGB", (20, 20)).save(srv.data / "output" / "big.png")
    r = srv.http.get("/view", params={"filename": "big.png", "preview": "webp;90"})
    assert r.status_code == 413 and "20 x 20 pixels" in r.json()["error"]["message"]
    assert srv.http.get("/view", params={"filename": "big.png"}).status_code == 200


# -- POST /free ---------------------------------------------------------------------------------------


def wait_free(srv, before):
    worker = srv.app.state.latentworks.worker
    deadline = time.monotonic() + 10
    while worker.frees_done == before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert worker.frees_done == before + 1


def test_free_drops_models_then_everything(start):
    srv = start()
    state = srv.app.state.latentworks
    cache = state.executor.cache
    run(srv)
    entries = [e for e, _ in cache._entries.values()]
    assert any(holds_network(e.outputs) for e in entries)
    kept = [e for e in entries if not holds_network(e.outputs)]
    assert kept  # latents, images, conditioning

    r = srv.http.post("/free", json={"unload_models": True})
    assert r.status_code == 200 and r.json() == {}
    wait_free(srv, 0)
    left = [e for e, _ in cache._entries.values()]
    assert not any(holds_network(e.outputs) for e in left) and len(left) == len(kept)

    pid, msgs = run(srv, seed=2)  # the model loads again
    assert msgs[-1]["data"]["prompt_id"] == pid
    assert any(holds_network(e.outputs) for e, _ in cache._entries.values())
    r = srv.http.post("/api/free", json={"free_memory": True})
    assert r.status_code == 200
    wait_free(srv, 1)
    assert len(cache) == 0 and cache.nbytes == 0

    assert srv.http.post("/free", content=b"[1]").status_code == 400
    assert srv.http.post("/free", content=b"{oops").status_code == 400


def test_view_fuzz_preview_and_channel_never_500(tmp_path):
    """Any preview= and channel= text gets an image, or a 4xx that says what was wrong."""
    from asgi_client import AsgiClient
    from hypothesis import given, settings
    from hypothesis import strategies as st

    data = tmp_path / "data"
    app = create_app(default_registry(None, data / "input"), data_dir=data, models_dir=tmp_path / "models")
    client = AsgiClient(app, start_worker=False)
    try:
        Image.new("RGBA", (8, 8), (1, 2, 3, 4)).save(data / "input" / "a.png")
        (data / "input" / "b.txt").write_text("text")
        text = st.text(max_size=12) | st.sampled_from(["webp;90", "jpeg;1", "rgb", "a", "rgba", "jpeg;²"])

        @settings(max_examples=40, deadline=None, database=None)
        @given(name=st.sampled_from(["a.png", "b.txt"]), preview=st.none() | text, channel=st.none() | text)
        def check(name, preview, channel):
            params = {"filename": name, "type": "input"}
            params |= {"preview": preview} if preview is not None else {}
            params |= {"channel": channel} if channel is not None else {}
            r = client.get("/view", params=params)
            assert r.status_code in (200, 400, 415), (params, r.status_code, r.text[:200])
            if r.status_code != 200:
                assert r.json()["error"]["message"]

        check()
    finally:
        client.close()


def test_serve_preview_method_flag(monkeypatch, capsys, tmp_path):
    import latentworks.server
    from latentworks.cli import build_parser
    from latentworks.commands import serve as serve_command
    from latentworks.server.worker import PREVIEW_METHODS

    assert build_parser().parse_args(["serve"]).preview_method == "none"
    for method in PREVIEW_METHODS:  # the flag's choices are the server's methods
        assert build_parser().parse_args(["serve", "--preview-method", method]).preview_method == method
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--preview-method", "fancy"])
    assert "choose from " + ", ".join(f"'{m}'" for m in PREVIEW_METHODS) in capsys.readouterr().err
    seen = {}
    monkeypatch.setattr(latentworks.server, "serve", lambda *a, **kw: seen.update(kw))
    args = build_parser().parse_args(
        ["serve", "--preview-method", "auto", "--data-dir", str(tmp_path), "--models-dir", str(tmp_path)]
    )
    assert serve_command.run(args) == 0 and seen["preview_method"] == "auto"


@pytest.mark.parametrize("previews", [True, False])
def test_sampler_makes_previews_only_when_wanted(tmp_path, monkeypatch, previews):
    """With previews off the sampler does not even encode them (ExecutionContext.previews)."""
    import latentworks.nodes.sampling as sampling
    from latentworks.graph import Executor

    made = []
    encode = sampling._preview_jpeg
    monkeypatch.setattr(sampling, "_preview_jpeg", lambda rgb: made.append(1) or encode(rgb))
    executor = Executor(default_registry(None, tmp_path), sizer=payload_nbytes)
    events = []
    ctx = executor.new_context(
        "p", on_event=lambda e, d: events.append(e), output_dir=tmp_path, temp_dir=tmp_path, previews=previews
    )
    assert executor.execute(txt2img("s"), ctx).status == "success"
    assert events.count("progress") == STEPS
    assert events.count("preview") == len(made) == (STEPS if previews else 0)
