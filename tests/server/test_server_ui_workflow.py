"""Editor-format workflows at the server (POST /prompt and POST /workflow/convert) and ComfyUI's error shapes
for unknown node types, object_info of an unknown type and an empty model kind."""

from __future__ import annotations

import pytest
from asgi_client import AsgiClient, wait_history
from graph_toy_nodes import make_registry

from latentworks.server import create_app


def ui_workflow(value: int = 7, prefix: str = "ui") -> dict:
    """Constant -> (PrimitiveNode-free) ToString -> SaveText, plus a Note, as the editor saves it."""
    return {
        "nodes": [
            {"id": 1, "type": "Constant", "mode": 0, "inputs": [], "outputs": [{"type": "INT", "links": [1]}],
             "widgets_values": [value]},
            {"id": 2, "type": "ToString", "mode": 0, "inputs": [
                {"name": "x", "type": "INT", "link": 1, "widget": {"name": "x"}}],
             "outputs": [{"type": "STRING", "links": [2]}], "widgets_values": [0]},
            {"id": 3, "type": "SaveText", "mode": 0, "title": "Write it",
             "inputs": [{"name": "text", "type": "*", "link": 2}], "outputs": [], "widgets_values": [prefix]},
            {"id": 4, "type": "Note", "mode": 0, "widgets_values": ["hello"]},
        ],
        "links": [[1, 1, 0, 2, 0, "INT"], [2, 2, 0, 3, 0, "STRING"]],
        "groups": [],
        "version": 0.4,
    }  # fmt: skip


@pytest.fixture
def client(tmp_path):
    registry, _ = make_registry()
    models = tmp_path / "models"
    (models / "checkpoints").mkdir(parents=True)
    c = AsgiClient(create_app(registry, data_dir=tmp_path / "data", models_dir=models))
    c.data = tmp_path / "data"
    yield c
    c.close()


def test_convert_endpoint_returns_the_api_prompt(client) -> None:
    r = client.post("/workflow/convert", json=ui_workflow(value=9))
    assert r.status_code == 200, r.text
    assert r.json() == {
        "1": {"class_type": "Constant", "inputs": {"value": 9}, "_meta": {"title": "Constant"}},
        "2": {"class_type": "ToString", "inputs": {"x": ["1", 0]}, "_meta": {"title": "ToString"}},
        "3": {"class_type": "SaveText", "inputs": {"text": ["2", 0], "filename_prefix": "ui"},
              "_meta": {"title": "Write it"}},
    }  # fmt: skip
    assert client.post("/api/workflow/convert", json={"workflow": ui_workflow()}).status_code == 200
    r = client.post("/workflow/convert", json={"1": {"class_type": "Constant", "inputs": {}}})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_workflow"


def test_prompt_accepts_an_editor_workflow_and_runs_it(client) -> None:
    r = client.post("/prompt", json={"prompt": ui_workflow(value=42, prefix="fromui")})
    assert r.status_code == 200, r.text
    entry = wait_history(client, r.json()["prompt_id"])
    assert entry["status"]["status_str"] == "success"
    assert entry["outputs"]["3"]["text"] == ["42"]
    assert (client.data / "output" / f"fromui_{r.json()['prompt_id']}_3.txt").read_text() == "42"


def test_unknown_node_type_is_comfyuis_missing_node_type(client) -> None:
    api = {"1": {"class_type": "Constant", "inputs": {"value": 1}},
           "5": {"class_type": "NotANode", "inputs": {}, "_meta": {"title": "My node"}}}  # fmt: skip
    r = client.post("/prompt", json={"prompt": api})
    assert r.status_code == 400
    assert r.json() == {
        "error": {
            "type": "missing_node_type",
            "message": "Node 'My node' not found. The custom node may not be installed.",
            "details": "Node ID '#5'",
            "extra_info": {"node_id": "5", "class_type": "NotANode", "node_title": "My node"},
        },
        "node_errors": {},
    }
    workflow = ui_workflow()
    workflow["nodes"].append({"id": 9, "type": "FancyCustom", "mode": 0, "widgets_values": []})
    for path, body in (("/prompt", {"prompt": workflow}), ("/workflow/convert", workflow)):
        r = client.post(path, json=body)
        assert r.status_code == 400
        assert r.json()["error"]["type"] == "missing_node_type"
        assert r.json()["error"]["extra_info"] == {"node_id": "9", "class_type": "FancyCustom",
                                                   "node_title": "FancyCustom"}  # fmt: skip


def test_malformed_editor_workflow_is_a_400_naming_the_node(client) -> None:
    workflow = ui_workflow()
    workflow["nodes"][1]["inputs"] = ["oops"]
    r = client.post("/prompt", json={"prompt": workflow})
    assert r.status_code == 400
    assert (
        r.json()["error"]["type"] == "invalid_workflow"
        and "node 2 ('ToString')" in r.json()["error"]["message"]
    )


def test_object_info_of_unknown_type_and_empty_model_kind(client) -> None:
    r = client.get("/object_info/NoSuchNode")
    assert (r.status_code, r.json()) == (200, {})
    assert client.get("/object_info/Constant").json()["Constant"]["name"] == "Constant"
    assert (client.get("/models/loras").status_code, client.get("/models/loras").json()) == (200, [])
    assert client.get("/api/models/vae").json() == []
    assert client.get("/models/not_a_kind").status_code == 404


def test_odd_editor_workflows_get_4xx_never_500(client) -> None:
    import copy
    import random

    rng = random.Random(23)
    odd_values = [None, 0, -1, 2**70, 1.5, "", "x", [], {}, [1], {"a": 1}, True, "4", [[1]]]
    base = ui_workflow()
    base["definitions"] = {"subgraphs": [{"id": "s", "nodes": [], "links": []}]}
    paths = [("nodes",), ("links",), ("definitions",), ("definitions", "subgraphs")]
    for i in range(len(base["nodes"])):
        paths += [
            ("nodes", i, k) for k in ("id", "type", "mode", "inputs", "outputs", "widgets_values", "title")
        ]
    for i in range(len(base["links"])):
        paths += [("links", i)] + [("links", i, k) for k in range(6)]
    paths += [("nodes", 1, "inputs", 0, k) for k in ("name", "type", "link", "widget")]
    statuses = set()
    for _ in range(300):
        body = copy.deepcopy(base)
        for _ in range(rng.randint(1, 3)):
            *parent, key = rng.choice(paths)
            target = body
            try:
                for step in parent:
                    target = target[step]
                target[key] = rng.choice(odd_values)
            except (KeyError, IndexError, TypeError):
                continue
        extra = {"extra_pnginfo": rng.choice(odd_values)}
        r = client.post("/prompt", json={"prompt": body, "extra_data": extra})
        statuses.add(r.status_code)
        assert r.status_code in (200, 400), (r.status_code, r.text[:300], body)
        r = client.post("/workflow/convert", json=body)
        assert r.status_code in (200, 400), (r.status_code, r.text[:300], body)
    assert statuses == {200, 400}


def test_latentworks_defaults_gives_the_default_models_native_size(client, tmp_path) -> None:
    import json
    from pathlib import Path

    import latentworks
    from latentworks.server.app import _default_model_info

    # The oracle: the embedded default model's model.json ("resolution" is [height, width]).
    model_json = Path(latentworks.__file__).parent / "assets" / "default" / "model.json"
    height, width = json.loads(model_json.read_text())["resolution"]
    for path in ("/latentworks/defaults", "/api/latentworks/defaults"):
        r = client.get(path)
        assert r.status_code == 200 and r.json() == {"width": width, "height": height}, r.text
    # A missing or odd model.json gives {} (the editor then keeps the node's own defaults).
    assert _default_model_info(tmp_path / "nope.json") == {}
    odd = tmp_path / "model.json"
    for resolution in ([32], [32, "32"], [0, 32], [True, 32], None):
        odd.write_text(json.dumps({"resolution": resolution}))
        assert _default_model_info(odd) == {}, resolution
    odd.write_text(json.dumps({"resolution": [24, 40]}))
    assert _default_model_info(odd) == {"width": 40, "height": 24}
