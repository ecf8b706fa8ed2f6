"""Bad editor workflows (a cycle, a missing model file, an out-of-range widget, a subgraph whose definition is
missing) get a clear error naming the node, through the server (POST /prompt: 400, never 500) and through
``latentworks run`` (exit status 2, one line, no traceback); the server keeps working afterwards."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from latentworks.cli import main
from latentworks.nodes import default_registry
from latentworks.server import create_app

sys.path.insert(0, str(Path(__file__).resolve().parent / "graph"))
sys.path.insert(0, str(Path(__file__).resolve().parent / "server"))
from asgi_client import AsgiClient, wait_history  # noqa: E402
from ui_workflow_samples import txt2img  # noqa: E402

MISSING_SUBGRAPH = "0d8c3f0e-1b7a-4c55-9f0e-5f1f2a3b4c5d"


def _good() -> dict[str, Any]:
    return txt2img(seed=1, size=32, steps=2).to_json()


def _node(wf: dict[str, Any], node_id: int) -> dict[str, Any]:
    return next(n for n in wf["nodes"] if n["id"] == node_id)


def _cycle(wf: dict[str, Any]) -> None:
    """VAEEncode(VAEDecode(KSampler)) feeds the KSampler's latent: 3 -> 8 -> 12 -> 3."""
    wf["nodes"].append(
        {"id": 12, "type": "VAEEncode", "mode": 0,
         "inputs": [{"name": "pixels", "type": "IMAGE", "link": 90}, {"name": "vae", "type": "VAE", "link": 91}],
         "outputs": [{"name": "LATENT", "type": "LATENT", "links": [92]}], "widgets_values": []}
    )  # fmt: skip
    wf["links"] += [[90, 8, 0, 12, 0, "IMAGE"], [91, 4, 2, 12, 1, "VAE"], [92, 12, 0, 3, 3, "LATENT"]]
    for inp in _node(wf, 3)["inputs"]:
        if inp["name"] == "latent_image":
            inp["link"] = 92


def _missing_file(wf: dict[str, Any]) -> None:
    _node(wf, 4)["widgets_values"] = ["not_downloaded.safetensors"]


def _out_of_range(wf: dict[str, Any]) -> None:
    _node(wf, 3)["widgets_values"][2] = 0  # steps: at least 1


def _missing_subgraph(wf: dict[str, Any]) -> None:
    wf["nodes"].append(
        {"id": 13, "type": MISSING_SUBGRAPH, "mode": 0, "inputs": [], "outputs": [], "widgets_values": []}
    )


# (mutation, nodes any of which the error may name, words the error must contain)
CASES = [
    (_cycle, ("3", "8", "12", "9"), "cycle"),  # the nodes on the cycle, and SaveImage 9 that needs them
    (_missing_file, ("4",), "not_downloaded.safetensors"),
    (_out_of_range, ("3",), "steps"),
    (_missing_subgraph, ("13",), "definitions.subgraphs"),
]


def _bad(mutate: Any) -> dict[str, Any]:
    wf = copy.deepcopy(_good())
    mutate(wf)
    return wf


def _all_text(body: Any) -> str:
    return json.dumps(body)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("server")
    models = tmp / "models"
    (models / "checkpoints").mkdir(parents=True)
    c = AsgiClient(
        create_app(default_registry(models, tmp / "input"), data_dir=tmp / "data", models_dir=models)
    )
    yield c
    c.close()


def test_server_answers_each_bad_workflow_with_a_400_naming_the_node(client: Any) -> None:
    for mutate, node_ids, words in CASES:
        r = client.post("/prompt", json={"prompt": _bad(mutate)})
        assert r.status_code == 400, (mutate.__name__, r.status_code, r.text)
        body = r.json()
        text = _all_text(body)
        assert words in text and any(n in text for n in node_ids), (mutate.__name__, body)
        node_errors = body.get("node_errors") or {}
        if node_errors:  # validation problems are per node, ComfyUI's shape
            assert set(node_errors) <= set(node_ids), (mutate.__name__, node_errors)
            assert all(e["message"] for entry in node_errors.values() for e in entry["errors"])
    # nothing was queued by the bad requests, and a good workflow still runs to the end
    assert client.get("/queue").json() == {"queue_running": [], "queue_pending": []}
    r = client.post("/prompt", json={"prompt": _good()})
    assert r.status_code == 200, r.text
    assert wait_history(client, r.json()["prompt_id"])["status"]["status_str"] == "success"


@pytest.mark.parametrize(("mutate", "node_ids", "words"), CASES, ids=[c[0].__name__ for c in CASES])
def test_run_prints_one_line_naming_the_node(
    mutate: Any, node_ids: tuple[str, ...], words: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(_bad(mutate)))
    (tmp_path / "models" / "checkpoints").mkdir(parents=True)
    code = main(
        ["run", str(path), "--models-dir", str(tmp_path / "models"), "--output-dir", str(tmp_path / "o")]
    )
    out, err = capsys.readouterr()
    assert code == 2, (code, err)
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert words in err and any(f"node {n} " in err for n in node_ids), err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())  # nothing half-written
