"""One bad string or one damaged database must not break the server for everyone.

Lone UTF-16 surrogates are refused at the door (400); a surrogate already stored by an older version is
served as a JSON escape; huge or negative max_items are handled; an undecodable row is skipped and
counted; a damaged database file is moved aside at start-up (nothing deleted) and a new one started.
"""

from __future__ import annotations

import json
import logging
import random
import sqlite3
from pathlib import Path

import pytest
from asgi_client import AsgiClient, wait_history
from graph_toy_nodes import make_registry

from latentworks.server import create_app
from latentworks.server.queue import JobStore, JobStoreUnavailable

QUICK = {
    "1": {"class_type": "Constant", "inputs": {"value": 3}},
    "2": {"class_type": "SaveText", "inputs": {"text": ["1", 0], "filename_prefix": "x"}},
}


def start(data: Path, start_worker: bool = True) -> AsgiClient:
    registry, _ = make_registry()
    return AsgiClient(create_app(registry, data_dir=data, models_dir=data.parent), start_worker=start_worker)


@pytest.fixture
def client(tmp_path):
    c = start(tmp_path / "data")
    yield c
    c.close()


SURROGATE_BODIES = [
    b'{"prompt": {"1": {"class_type": "Concat", "inputs": {"a": "\\ud800", "b": "x"}}}}',
    b'{"prompt": {"1": {"class_type": "Constant", "inputs": {"value": 1}}}, "client_id": "\\udfff"}',
    b'{"prompt": {"\\ud83d": {"class_type": "Constant", "inputs": {"value": 1}}}}',
    b'{"prompt": {}, "extra_data": {"k": ["ok", "\\udc00\\ud800"]}}',
    b'{"prompt": {}, "prompt_id": "a\\ud800"}',
    b'{"prompt": {"1": {"class_type": "\xed\xa0\x80", "inputs": {}}}}',  # a surrogate encoded as UTF-8 bytes
    b'{"delete": ["\\ud800"]}',
]


@pytest.mark.parametrize("raw", SURROGATE_BODIES)
def test_lone_surrogates_are_refused_with_a_clear_400(client, raw):
    path = "/history" if raw.startswith(b'{"delete"') else "/prompt"
    r = client.post(path, content=raw, headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_string" and "surrogate" in err["message"]
    assert client.get("/queue").json() == {"queue_running": [], "queue_pending": []}
    assert client.get("/history").status_code == 200


def test_surrogate_pairs_and_other_unicode_are_fine(client):
    text = "\U0001f600 e\u0301 \u202e \ufeff \uffff \x00 \u4e2d"
    r = client.post(
        "/prompt",
        json={"prompt": {"1": {"class_type": "Concat", "inputs": {"a": text, "b": "!"}},
                         "2": {"class_type": "SaveText", "inputs": {"text": ["1", 0], "filename_prefix": "u"}}},
              "client_id": text},
    )  # fmt: skip
    assert r.status_code == 200, r.text
    entry = wait_history(client, r.json()["prompt_id"])
    assert entry["outputs"]["2"]["text"] == [text + "!"]  # the text survives the queue, the job and history


def test_nan_and_infinity_are_refused(client):
    for raw in (b'{"prompt": {}, "number": NaN}', b'{"prompt": {"1": {"inputs": {"v": -Infinity}}}}'):
        r = client.post("/prompt", content=raw)
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_json"


def test_surrogate_stored_by_an_older_version_does_not_break_queue_or_history(tmp_path):
    data = tmp_path / "data"
    store = JobStore(data / "queue.sqlite3")  # what the unfixed server let through, written the same way
    store.add("bad-pending", {"1": {"class_type": "Constant", "inputs": {"value": "\ud800"}}}, {}, ["1"])
    store.add("bad-done", {"1": {"class_type": "X", "inputs": {}}}, {"client_id": "\udfff"}, ["1"])
    store.finish("bad-done", "error", {"1": {"text": ["\ud800"]}}, [])
    store.add("nan-done", {"1": {"class_type": "X", "inputs": {}}}, {"v": float("nan")}, ["1"])
    store.finish("nan-done", "success", {"1": {"x": [float("inf")]}}, [])
    store.close()
    for _ in range(2):  # and again after a restart
        c = start(data, start_worker=False)  # keep the pending job pending
        try:
            for path in ("/queue", "/history", "/history/bad-done", "/api/history?max_items=5"):
                r = c.get(path)
                assert r.status_code == 200, (path, r.text)
            assert json.loads(c.get("/history").content)["bad-done"]["outputs"]["1"]["text"] == ["\ud800"]
            assert c.get("/queue").json()["queue_pending"][0][1] == "bad-pending"
            nan_entry = json.loads(c.get("/history/nan-done").content)["nan-done"]  # strict JSON: no NaN
            assert nan_entry["prompt"][3] == {"v": None} and nan_entry["outputs"]["1"]["x"] == [None]
        finally:
            c.close()


def test_deeply_nested_body_is_refused_and_cannot_break_queue(client):
    for depth in (101, 500, 900):
        deep = "[" * depth + "]" * depth
        raw = '{"prompt": ' + json.dumps(QUICK) + ', "extra_data": {"v": ' + deep + "}}"
        r = client.post("/prompt", content=raw)
        assert r.status_code == 400 and "nested deeper than 100 levels" in r.json()["error"]["message"]
    ok = client.post("/prompt", json={"prompt": QUICK, "extra_data": {"v": json.loads("[" * 90 + "]" * 90)}})
    assert ok.status_code == 200
    assert client.get("/queue").status_code == 200 and client.get("/history").status_code == 200


def test_deep_row_stored_by_an_older_version_is_skipped(tmp_path):
    data = tmp_path / "data"
    store = JobStore(data / "queue.sqlite3")
    store.add("deep", QUICK, {"v": json.loads("[" * 700 + "]" * 700)}, ["2"])
    store.add("fine", QUICK, {}, ["2"])
    store.close()
    c = start(data, start_worker=False)
    try:
        assert [e[1] for e in c.get("/queue").json()["queue_pending"]] == ["fine"]
        assert c.get("/system_stats").json()["latentworks"]["store"]["damaged_row_ids"] == ["deep"]
    finally:
        c.close()


@pytest.mark.parametrize("value", [str(2**63), str(10**400), "0", "1", "999999999999"])
def test_huge_max_items_is_clamped(client, value):
    pid = client.post("/prompt", json={"prompt": QUICK}).json()["prompt_id"]
    wait_history(client, pid)
    r = client.get(f"/history?max_items={value}")
    assert r.status_code == 200
    assert list(r.json()) == ([] if value == "0" else [pid])


@pytest.mark.parametrize("value", ["-1", "abc", "1.5", "1e3", "-" + str(2**63)])
def test_bad_max_items_is_a_400(client, value):
    r = client.get(f"/history?max_items={value}")
    assert r.status_code == 400 and "max_items" in r.json()["error"]["message"]


def test_undecodable_rows_are_skipped_and_reported(tmp_path, caplog):
    data = tmp_path / "data"
    store = JobStore(data / "queue.sqlite3")
    for pid in ("good-1", "bad-json", "bad-type", "bad-messages", "good-2"):
        store.add(pid, QUICK, {}, ["2"])
        store.finish(pid, "success", {}, [])
    store.add("bad-pending", QUICK, {}, ["2"])
    db = store._conn
    db.execute("UPDATE jobs SET prompt='{not json' WHERE prompt_id='bad-json'")
    db.execute("UPDATE jobs SET extra_data='[1, 2]' WHERE prompt_id='bad-type'")
    db.execute("UPDATE jobs SET messages='{\"x\": 1}' WHERE prompt_id='bad-messages'")
    db.execute("UPDATE jobs SET outputs_to_execute='oops' WHERE prompt_id='bad-pending'")
    store.close()
    c = start(data, start_worker=False)
    try:
        with caplog.at_level(logging.WARNING, logger="latentworks.server"):
            assert c.get("/queue").json() == {"queue_running": [], "queue_pending": []}
            assert list(c.get("/history").json()) == ["good-1", "good-2"]
            assert c.get("/history/bad-json").json() == {}
        assert "bad-json" in caplog.text and "cannot be read and is skipped" in caplog.text
        report = c.get("/system_stats").json()["latentworks"]["store"]
        assert report["damaged_rows"] == 4
        assert report["damaged_row_ids"] == ["bad-json", "bad-messages", "bad-pending", "bad-type"]
        # the worker marks an undecodable pending job failed and goes on with the next one
        c.state.worker.start()
        pid = c.post("/prompt", json={"prompt": QUICK}).json()["prompt_id"]
        assert wait_history(c, pid)["status"]["status_str"] == "success"
        assert c.state.store.state_of("bad-pending") == "done"
    finally:
        c.close()


def test_database_error_at_run_time_is_a_503_that_says_what_to_do(client, monkeypatch):
    def broken(**kw):
        raise sqlite3.DatabaseError("database disk image is malformed")

    monkeypatch.setattr(client.state.store, "history", broken)
    r = client.get("/history")
    assert r.status_code == 503
    assert "Restart the server" in r.json()["error"]["message"]


# -- damaged database files at start-up ---------------------------------------------------------------


def _fill(path: Path) -> None:
    store = JobStore(path)
    for i in range(60):
        pid = f"job-{i}"
        store.add(pid, {"1": {"class_type": "Constant", "inputs": {"value": "x" * 1500}}}, {}, ["1"])
        store.finish(pid, "success", {"1": {"text": [str(i)]}}, [])
    store._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()


def _corrupt(path: Path, how: str) -> None:
    raw = bytearray(path.read_bytes())
    rng = random.Random(0)
    if how == "zero_bytes":
        raw = bytearray()
    elif how == "not_a_database":
        raw = bytearray(rng.randbytes(len(raw)))
    elif how == "garbage_after_header":
        raw[100:] = rng.randbytes(len(raw) - 100)
    elif how == "truncated":
        raw = raw[: len(raw) // 3]
    elif how == "damaged_page":
        page = 4096
        raw[page * 5 : page * 6] = rng.randbytes(page)
    elif how == "damaged_schema":
        raw[100:4096] = b"\x00" * (4096 - 100)
    path.write_bytes(bytes(raw))


def _unreadable(path: Path) -> bool:
    """True if SQLite itself cannot read every job from the file (so the test corrupts something real)."""
    if path.stat().st_size == 0:
        return True  # an empty file is a valid, empty database: the history it held is gone
    try:
        db = sqlite3.connect(str(path))
        ok = db.execute("PRAGMA quick_check").fetchall() == [("ok",)]
        return not ok or len(db.execute("SELECT * FROM jobs").fetchall()) != 60
    except sqlite3.DatabaseError:
        return True


@pytest.mark.parametrize(
    "how",
    ["zero_bytes", "not_a_database", "garbage_after_header", "truncated", "damaged_page", "damaged_schema"],
)
def test_damaged_database_is_moved_aside_and_a_new_one_started(tmp_path, how, caplog):
    data = tmp_path / "data"
    db = data / "queue.sqlite3"
    _fill(db)
    _corrupt(db, how)
    damaged = db.read_bytes()
    copy = tmp_path / "copy.sqlite3"
    copy.write_bytes(damaged)
    assert _unreadable(copy)
    with caplog.at_level(logging.ERROR, logger="latentworks.server"):
        c = start(data)
    try:
        aside = sorted(data.glob("queue.sqlite3.damaged-*"))
        assert [p.name for p in aside if not p.name.endswith(("-wal", "-shm"))] == [aside[0].name]
        assert aside[0].read_bytes() == damaged  # moved, not deleted or modified
        assert "moved aside" in caplog.text and str(aside[0]) in caplog.text
        report = c.get("/system_stats").json()["latentworks"]["store"]
        assert report["moved_aside"][0]["path"] == str(aside[0]) and report["moved_aside"][0]["reason"]
        assert c.get("/history").json() == {} and c.get("/queue").status_code == 200
        pid = c.post("/prompt", json={"prompt": QUICK}).json()["prompt_id"]
        assert wait_history(c, pid)["status"]["status_str"] == "success"
    finally:
        c.close()
    c = start(data)  # the new database is healthy: nothing more is moved aside on the next start
    try:
        assert list(c.get("/history").json()) == [pid]
        assert (
            len([p for p in data.glob("queue.sqlite3.damaged-*") if not p.name.endswith(("-wal", "-shm"))])
            == 1
        )
    finally:
        c.close()


def test_healthy_database_is_left_alone(tmp_path):
    data = tmp_path / "data"
    _fill(data / "queue.sqlite3")
    c = start(data)
    try:
        assert len(c.get("/history").json()) == 60
        assert c.get("/system_stats").json()["latentworks"]["store"]["moved_aside"] == []
        assert not list(data.glob("*.damaged-*"))
    finally:
        c.close()


def test_locked_or_unopenable_database_is_not_moved_aside(tmp_path, monkeypatch):
    data = tmp_path / "data"
    _fill(data / "queue.sqlite3")
    before = (data / "queue.sqlite3").read_bytes()

    def busy(self, *, check):
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(JobStore, "_connect", busy)
    with pytest.raises(JobStoreUnavailable, match="Is another server using this data folder"):
        JobStore(data / "queue.sqlite3")
    monkeypatch.undo()
    assert not list(data.glob("*.damaged-*")) and (data / "queue.sqlite3").read_bytes() == before
    assert len(JobStore(data / "queue.sqlite3").history()) == 60
