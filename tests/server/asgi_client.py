"""Requests straight into the ASGI app on one private event loop (no sockets, no thread hops), for tests that
send thousands of requests. The app's worker thread runs accepted jobs meanwhile."""

from __future__ import annotations

import asyncio
import time

import httpx

# The Host a browser sends for http://127.0.0.1:8188/ (the server refuses unknown Host names).
BASE_URL = "http://127.0.0.1:8188"
SAME_ORIGIN = BASE_URL


class AsgiClient:
    def __init__(self, app, base_url: str = BASE_URL, start_worker: bool = True) -> None:
        self.loop = asyncio.new_event_loop()
        self.state = app.state.latentworks
        self.state.hub.attach(self.loop)
        if start_worker:
            self.state.worker.start()
        self.http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base_url)

    def request(self, method, url, **kw) -> httpx.Response:
        return self.loop.run_until_complete(self.http.request(method, url, **kw))

    def post(self, url, **kw) -> httpx.Response:
        return self.request("POST", url, **kw)

    def get(self, url, **kw) -> httpx.Response:
        return self.request("GET", url, **kw)

    def close(self) -> None:
        self.state.worker.interrupt()
        self.state.worker.stop()
        self.loop.run_until_complete(self.http.aclose())
        self.loop.close()
        self.state.store.close()


def wait_history(c: AsgiClient, pid: str, timeout: float = 20) -> dict:
    """The ``/history`` entry of job ``pid`` once it has finished (polls; fails after ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        entry = c.get(f"/history/{pid}").json()
        if entry:
            return entry[pid]
        time.sleep(0.02)
    raise AssertionError(f"job {pid} did not finish")
