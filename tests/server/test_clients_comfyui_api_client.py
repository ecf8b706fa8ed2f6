"""comfyui-api-client (PyPI 0.1.0), unchanged, against the real server: queue, progress, the saved PNG, and
``clear`` (POST /free, which used to answer 405).

Packaging bug in 0.1.0: its modules import their siblings as ``api.websocket_api`` / ``api.api_helpers``
(the package's name in its source repository), so even ``import comfyui_api_client`` fails with
"No module named 'api'". The test loads the installed files under that package name; the library's code
is not changed. It also pins Pillow==10.2.0, so it is installed with ``--no-deps``
(scripts/bootstrap.sh) and its two other dependencies come from latentworks[test].
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
import time
import types

import pytest
from comfy_clients import client_server, txt2img  # noqa: F401 - the fixture
from PIL import Image

from latentworks.server.worker import holds_network

SPEC = importlib.util.find_spec("comfyui_api_client")  # finds the package without running it
if SPEC is None or not SPEC.submodule_search_locations:
    pytest.skip(
        "comfyui-api-client is not installed (scripts/bootstrap.sh --test installs it with --no-deps)",
        allow_module_level=True,
    )


@pytest.fixture
def helpers(monkeypatch):
    """The library's ``api_helpers`` module, loaded from the installed package under the name its own
    imports expect (``api.api_helpers``); see the module docstring."""
    api = types.ModuleType("api")
    api.__path__ = list(SPEC.submodule_search_locations)
    monkeypatch.setitem(sys.modules, "api", api)
    for name in [n for n in sys.modules if n.startswith("api.")]:
        monkeypatch.delitem(sys.modules, name)
    yield importlib.import_module("api.api_helpers")
    for name in [n for n in sys.modules if n.startswith("api.")]:
        del sys.modules[name]


def test_generate_progress_saved_png_and_free(client_server, helpers, caplog):  # noqa: F811
    caplog.set_level(logging.INFO)
    prompt = txt2img("apiclient")
    (image,) = helpers.generate_image_by_prompt(prompt, client_server.address)
    steps = [r.getMessage() for r in caplog.records if r.getMessage().startswith("In K-Sampler -> Step")]
    assert steps == [f"In K-Sampler -> Step: {i} of 3" for i in (1, 2, 3)]
    (saved,) = sorted((client_server.data / "output").glob("apiclient_*.png"))
    with Image.open(saved) as on_disk:
        assert image.format == "PNG" and image.tobytes() == on_disk.tobytes()

    # The same steps one by one, to see the bytes the library fetched.
    ws, _, client_id = helpers.open_websocket_connection(client_server.address)
    try:
        prompt_id = helpers.queue_prompt(txt2img("apiclient", seed=2), client_id, client_server.address)[
            "prompt_id"
        ]
        helpers.track_progress(prompt, ws, prompt_id)
    finally:
        ws.close()
    (fetched,) = helpers.get_images(prompt_id, client_server.address)
    (entry,) = client_server.history(prompt_id)["outputs"]["9"]["images"]
    assert fetched["file_name"] == entry["filename"] and fetched["type"] == "output"
    assert fetched["image_data"] == client_server.saved_png(entry)

    # clear(): POST /free answers 200 and the worker drops the cached models (the outputs stay).
    cache = client_server.state.executor.cache
    assert any(holds_network(e.outputs) for e, _ in cache._entries.values())
    frees = client_server.state.worker.frees_done
    helpers.clear(client_server.address, unload_models=True)
    assert "Successfully cleared ComfyUI cache." in caplog.messages
    deadline = time.monotonic() + 10
    while client_server.state.worker.frees_done == frees and time.monotonic() < deadline:
        time.sleep(0.01)
    entries = [e for e, _ in cache._entries.values()]
    assert entries and not any(holds_network(e.outputs) for e in entries)
