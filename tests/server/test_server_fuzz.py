"""Fuzzing POST /prompt through the ASGI app: any body gets a 4xx with a structured error (or is queued
when it happens to be valid), never a 500, and the worker still runs a valid job afterwards."""

from __future__ import annotations

import json
import time

import pytest
from asgi_client import AsgiClient
from graph_toy_nodes import make_registry
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from latentworks.server import create_app

CLASSES = [
    "Constant",
    "Add",
    "Concat",
    "ToString",
    "Choose",
    "Slow",
    "Fail",
    "LoadModel",
    "UseModel",
    "SaveText",
]
INPUTS = ["value", "a", "b", "sep", "x", "flag", "on_true", "on_false", "steps", "delay", "ckpt_name", "model",
          "seed", "text", "filename_prefix", "prompt"]  # fmt: skip
IDS = ["1", "2", "3", "4", "5"]

scalars = (
    st.none() | st.booleans() | st.integers() | st.integers(min_value=2**63, max_value=2**200)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12)
    | st.sampled_from(["a.safetensors", "", "1e400", "NaN", "-0"])
)  # fmt: skip
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=6,
)
links = st.tuples(st.sampled_from(IDS + ["99"]) | st.integers(0, 6), st.integers(-1, 3)).map(list)
nodes = st.fixed_dictionaries(
    {
        "class_type": st.sampled_from(CLASSES + ["Unknown"]) | json_values,
        "inputs": st.dictionaries(st.sampled_from(INPUTS), links | scalars | json_values, max_size=5)
        | json_values,
    }
)
prompts = st.dictionaries(st.sampled_from(IDS), nodes | json_values, max_size=5) | json_values
bodies = st.fixed_dictionaries(
    {"prompt": prompts},
    optional={
        "client_id": st.text(max_size=5) | json_values,
        "extra_data": st.dictionaries(st.text(max_size=5), json_values, max_size=3) | json_values,
        "front": st.booleans() | json_values,
        "number": scalars,
        "prompt_id": st.text(max_size=5) | json_values,
    },
)


def check(response):
    assert response.status_code < 500, response.text
    assert response.status_code not in (401, 403, 415), (
        response.text
    )  # judged on content, not refused at the door
    body = response.json()
    if response.status_code == 200:
        assert isinstance(body["prompt_id"], str) and body["node_errors"] == {}
    else:
        assert 400 <= response.status_code < 500
        assert isinstance(body["error"]["type"], str) and isinstance(body["error"]["message"], str)
        assert isinstance(body.get("node_errors", {}), dict)


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    registry, _ = make_registry()
    c = AsgiClient(create_app(registry, data_dir=tmp / "data", models_dir=tmp))
    yield c
    c.close()


FUZZ = settings(max_examples=2400, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


@FUZZ
@given(bodies)
def test_fuzz_structured_bodies(client, body):
    check(client.post("/prompt", content=json.dumps(body)))


@settings(max_examples=800, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(json_values | st.binary(max_size=64).map(lambda b: b.decode("latin-1")))
def test_fuzz_any_json_or_bytes(client, value):
    check(client.post("/api/prompt", content=json.dumps(value)))
    if isinstance(value, str):
        check(client.post("/prompt", content=value.encode("utf-8", "surrogatepass")))


@pytest.mark.parametrize(
    "raw",
    [
        b"[" * 100_000 + b"]" * 100_000,
        b'{"prompt": ' + b'{"a":' * 50_000 + b"1" + b"}" * 50_001,
        b'{"prompt": {"1": {"class_type": "Constant", "inputs": {"value": 1' + b"0" * 5000 + b"}}}}",
        b'{"prompt": {"1": {"class_type": "Constant", "inputs": {"value": 1e999}}}}',
        b"\xff\xfe\x00garbage",
        b'{"prompt": {"1": {"class_type": "Add", "inputs": {"a": ["2", 0], "b": ["1", 0]}}, '
        b'"2": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": 1}}, '
        b'"3": {"class_type": "SaveText", "inputs": {"text": ["1", 0], "filename_prefix": "c"}}}}',
    ],
)
def test_pathological_bodies(client, raw):
    check(client.post("/prompt", content=raw))


def test_worker_still_runs_a_valid_job_after_fuzzing(client):
    client.post("/queue", json={"clear": True})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # cut short any slow fuzzed job that is still running
        if not client.get("/queue").json()["queue_running"]:
            break
        client.post("/interrupt")
        time.sleep(0.05)
    valid = {
        "1": {"class_type": "Constant", "inputs": {"value": 41}},
        "2": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": 1}},
        "3": {"class_type": "SaveText", "inputs": {"text": ["2", 0], "filename_prefix": "after"}},
    }
    pid = client.post("/prompt", json={"prompt": valid, "front": True}).json()["prompt_id"]
    entry = {}
    while time.monotonic() < deadline + 30:  # no interrupts now: they could hit this job (the race it had)
        entry = client.get(f"/history/{pid}").json()
        if entry:
            break
        time.sleep(0.05)
    assert entry[pid]["status"]["status_str"] == "success"
    assert entry[pid]["outputs"]["3"]["text"] == ["42"]
