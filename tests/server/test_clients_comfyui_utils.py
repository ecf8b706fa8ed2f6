"""comfyui-utils (PyPI 0.0.1), unchanged, against the real server: queue, progress callbacks, the saved PNG.

It used to crash with ``assert msg.type == aiohttp.WSMsgType.TEXT`` on the first binary preview frame,
which ComfyUI only sends with a preview method switched on (issue 24).
"""

from __future__ import annotations

import asyncio
import io
from typing import Any

import pytest
from comfy_clients import client_server, txt2img  # noqa: F401 - the fixture

comfy = pytest.importorskip(
    "comfyui_utils.comfy", reason="comfyui-utils is a test dependency (latentworks[test])"
)


class Recorder(comfy.Callbacks):
    def __init__(self) -> None:
        self.positions: list[Any] = []
        self.progress: list[tuple[int, int, int]] = []
        self.done: list[tuple[dict, bool]] = []

    async def queue_position(self, position):
        self.positions.append(position)

    async def in_progress(self, node_id, progress, total):
        self.progress.append((node_id, progress, total))

    async def completed(self, outputs, cached):
        self.done.append((outputs, cached))


def test_submit_reports_progress_and_fetches_the_saved_png(client_server):  # noqa: F811
    api = comfy.ComfyAPI(client_server.address)
    calls = Recorder()
    with client_server.hold_queue():
        asyncio.run(asyncio.wait_for(api.submit(txt2img("utils"), calls), 60))

    assert calls.positions and set(calls.positions) <= {0, 1}  # behind the gate job, or running
    assert [p for p in calls.progress if p[2]] == [(3, i, 3) for i in (1, 2, 3)]  # KSampler is node 3
    executing = [p[0] for p in calls.progress if not p[2]]  # one call per "executing" message
    assert sorted(executing) == [3, 4, 5, 6, 7, 8, 9] and executing[-3:] == [3, 8, 9]
    ((outputs, cached),) = calls.done
    assert cached is False
    (image,) = outputs["images"]

    fetched: list[bytes] = []

    async def keep(data: io.BytesIO) -> None:
        fetched.append(data.read())

    asyncio.run(api.fetch(image, keep))
    assert fetched == [client_server.saved_png(image)] and fetched[0].startswith(b"\x89PNG")
