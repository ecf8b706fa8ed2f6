"""Seeded fuzzing of every JSON route with unicode edge cases and odd encodings: no 5xx, ever.

Each body is built from a valid toy workflow with one to three leaves or keys replaced by an edge case (lone
and swapped surrogates, NUL, BOM, noncharacters, RTL overrides, combining marks, huge numbers, deep nesting,
...), then encoded one of several ways (escaped ASCII, raw UTF-8 with encoded surrogates, UTF-16/32, invalid
bytes, truncation) and sent to a random route with a random content type, as a script or as the editor.
Every 250 requests, GET /history and GET /queue must still answer 200: one client's bad string must not
break them for everyone.

CI runs ``LATENTWORKS_FUZZ_N`` bodies (default 3000, ~15 s); the full run is
``LATENTWORKS_FUZZ_N=10000 pytest tests/server/test_server_fuzz_unicode.py`` (figures in docs/security.md).
"""

from __future__ import annotations

import json
import os
import random
import time
from collections import Counter
from urllib.parse import quote

import pytest
from asgi_client import SAME_ORIGIN, AsgiClient
from graph_toy_nodes import make_registry

from latentworks.server import create_app

N = int(os.environ.get("LATENTWORKS_FUZZ_N", "3000"))
SEED = int(os.environ.get("LATENTWORKS_FUZZ_SEED", "20261204"))

EDGE_STRINGS = [
    "\ud800", "\udfff", "a\ud83d", "\ude00b", "\udc00\ud800", "\ud83d\ude00", "\U0001f600", "\x00", "a\x00b",
    "\ufeff", "\ufffe", "\uffff", "\U0010ffff", "\u202e\u202d", "e\u0301\u0301\u0301", "\u200d\u200b", "\u2028\u2029",
    "\x1b[31m", "\x7f", "\u00ad", "\u4e2d\u6587", "\u0627\u0644", "%00", "%ED%A0%80", "../../etc/passwd", "C:\\x",
    "NaN", "-0", "1e400", "", " ", "\t\r\n", "[g]*?", "a" * 5000, "\U0001f600" * 500, "\ufffd",
]  # fmt: skip
EDGE_NUMBERS = [0, -1, 2**31, 2**53 + 1, 2**63, -(2**63) - 1, 10**30, 1e308, -1e-308, 0.1, 5e-324]
IDS = ["1", "2", "3", "4"]
ROUTES = ["/prompt"] * 6 + ["/api/prompt", "/queue", "/history", "/interrupt"]


def workflow(rng: random.Random) -> dict:
    value = rng.randint(-5, 5)
    return {
        "1": {"class_type": "Constant", "inputs": {"value": value}},
        "2": {"class_type": "Concat", "inputs": {"a": "x", "b": "y", "sep": "-"}},
        "3": {"class_type": "ToString", "inputs": {"x": ["1", 0]}},
        "4": {"class_type": "SaveText", "inputs": {"text": ["3", 0], "filename_prefix": "fz"}},
    }


def edge(rng: random.Random):
    roll = rng.random()
    if roll < 0.55:
        s = rng.choice(EDGE_STRINGS)
        return s if rng.random() < 0.6 else rng.choice(EDGE_STRINGS[:20]) + s + rng.choice(EDGE_STRINGS[:20])
    if roll < 0.75:
        return rng.choice(EDGE_NUMBERS)
    if roll < 0.85:
        return rng.choice([None, True, False, [], {}, [rng.choice(IDS), 0], ["1", 2**64], ["1", -1]])
    depth = rng.randint(1, 60) if rng.random() < 0.8 else rng.randint(90, 400)
    nested: object = rng.choice(EDGE_STRINGS)
    for _ in range(depth):
        nested = [nested] if rng.random() < 0.5 else {rng.choice(EDGE_STRINGS[:20]): nested}
    return nested


def mutate(rng: random.Random, value, budget: int):
    """Replace a random leaf (or key) of ``value`` by an edge case."""
    if budget <= 0 or not isinstance(value, dict | list) or not value:
        return edge(rng)
    if isinstance(value, list):
        i = rng.randrange(len(value))
        value[i] = mutate(rng, value[i], budget - 1)
        return value
    key = rng.choice(list(value))
    if rng.random() < 0.15:
        value[rng.choice(EDGE_STRINGS)] = value.pop(key)  # an edge-case key
    else:
        value[key] = mutate(rng, value[key], budget - 1)
    return value


def body_for(rng: random.Random, route: str):
    if route.endswith("/prompt"):
        body: dict = {"prompt": workflow(rng)}
        for field in ("client_id", "extra_data", "front", "number", "prompt_id"):
            if rng.random() < 0.2:
                body[field] = edge(rng) if field != "extra_data" else {"k": edge(rng)}
    elif route == "/queue":
        body = rng.choice([{"clear": False}, {"delete": ["x"]}, {"requeue": ["x"]}])
    elif route == "/history":
        body = rng.choice([{"delete": ["x"]}, {"clear": False}])
    else:
        body = {"prompt_id": "x"}
    for _ in range(rng.randint(1, 3)):
        body = mutate(rng, body, rng.randint(1, 5))
    return body


def encode(rng: random.Random, body) -> bytes:
    roll = rng.random()
    if roll < 0.4:
        return json.dumps(body).encode()  # escapes: "\ud800" arrives as the six characters \ud800
    text = json.dumps(body, ensure_ascii=False)
    if roll < 0.7:
        return text.encode("utf-8", "surrogatepass")  # raw UTF-8, encoded surrogates included
    if roll < 0.8:
        return text.encode(rng.choice(["utf-16", "utf-16-le", "utf-32"]), "surrogatepass")
    raw = bytearray(text.encode("utf-8", "surrogatepass"))
    if roll < 0.9 and raw:  # invalid bytes: overlong, lone continuation, 0xFF
        raw[rng.randrange(len(raw)) :] = (
            rng.choice([b"\xc0\xaf", b"\x80", b"\xff\xfe", b"\xf4\x90\x80\x80"])
            + raw[rng.randrange(len(raw)) :]
        )
        return bytes(raw)
    return bytes(raw[: rng.randrange(len(raw) + 1)])  # truncated


def get_request(rng: random.Random) -> str:
    s = quote(str(edge(rng)).encode("utf-8", "surrogatepass")[:200], safe="")
    return rng.choice(
        [f"/history?max_items={s}", f"/history/{s}", f"/view?filename={s}&subfolder={s}&type={s}",
         f"/object_info/{s}", f"/models/{s}", f"/api/history?max_items={rng.choice(EDGE_NUMBERS)}"]
    )  # fmt: skip


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz-unicode")
    registry, _ = make_registry()
    c = AsgiClient(create_app(registry, data_dir=tmp / "data", models_dir=tmp))
    yield c
    c.close()


def test_fuzz_unicode_bodies_never_5xx(client):
    rng = random.Random(SEED)
    statuses: Counter[int] = Counter()
    failures: list[str] = []
    started = time.perf_counter()
    for i in range(N):
        if rng.random() < 0.1:
            path = get_request(rng)
            r = client.get(path)
        else:
            path = rng.choice(ROUTES)
            raw = encode(rng, body_for(rng, path))
            headers = {}
            if rng.random() < 0.5:
                headers["Content-Type"] = rng.choice(
                    ["application/json", "text/plain", "application/json; charset=utf-16"]
                )
            if rng.random() < 0.3:
                headers["Origin"] = SAME_ORIGIN
            r = client.post(path, content=raw, headers=headers)
        statuses[r.status_code] += 1
        if r.status_code >= 500 and len(failures) < 5:
            failures.append(f"{path} -> {r.status_code}: {r.text[:300]}")
        if r.status_code >= 400:
            err = r.json()["error"]  # every refusal is structured JSON with a message
            assert isinstance(err["type"], str) and err["message"], r.text
        if i % 250 == 249:
            client.post("/interrupt")  # do not let one slow fuzzed job hold the worker
            for shared in ("/history", "/queue", "/history?max_items=3"):
                assert client.get(shared).status_code == 200, shared
    elapsed = time.perf_counter() - started
    five = sum(n for s, n in statuses.items() if s >= 500)
    print(
        f"\nfuzzed {N} requests in {elapsed:.1f} s: {five} responses 5xx; statuses {dict(sorted(statuses.items()))}"
    )
    assert five == 0, failures
    assert (
        statuses[200] > N // 20 and statuses[400] > N // 4
    )  # the fuzzer reaches both accepted and refused paths
    for shared in ("/history", "/queue"):
        assert client.get(shared).status_code == 200
