"""comfy-api-simplified (PyPI 1.6.0), unchanged, against the real server: queue, progress, the saved PNG.

It used to return the intermediate JPEG previews instead of the saved PNG, because the server sent binary
preview frames that ComfyUI only sends with a preview method switched on (issue 24).
"""

from __future__ import annotations

import logging

import pytest
from comfy_clients import client_server, txt2img  # noqa: F401 - the fixture

comfy_api_wrapper = pytest.importorskip(
    "comfy_api_simplified.comfy_api_wrapper",
    reason="comfy-api-simplified is a test dependency (latentworks[test])",
)
from comfy_api_simplified import ComfyApiWrapper, ComfyWorkflowWrapper  # noqa: E402


def test_queue_and_wait_images_returns_the_saved_png(client_server, caplog):  # noqa: F811
    api = ComfyApiWrapper(client_server.url)
    workflow = ComfyWorkflowWrapper(txt2img("simplified"))
    caplog.set_level(logging.DEBUG, logger="comfy_api_simplified.comfy_api_wrapper")
    with client_server.hold_queue():
        images = api.queue_and_wait_images(workflow, "Save Image")

    # The library logs every WebSocket message it reads at DEBUG: the sampler's progress reached it.
    progress = [r for r in caplog.records if "'type': 'progress'" in r.getMessage()]
    assert len(progress) == 3, [r.getMessage()[:120] for r in caplog.records]
    assert not any("websocket recv image" in r.getMessage() for r in caplog.records)

    assert len(images) == 1
    ((name, data),) = images.items()
    saved = sorted((client_server.data / "output").glob("simplified_*.png"))
    assert [p.name for p in saved] == [name]
    assert data == saved[0].read_bytes() and data.startswith(b"\x89PNG")
