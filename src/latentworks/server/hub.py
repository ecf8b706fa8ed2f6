"""WebSocket fan-out: thread-safe sends from the worker thread to each connected client's socket."""

from __future__ import annotations

import asyncio
import json
import struct
import threading
import uuid
from typing import Any

# ComfyUI's binary frame types and image formats.
PREVIEW_IMAGE = 1
PREVIEW_IMAGE_WITH_METADATA = 4
IMAGE_FORMATS = {"JPEG": 1, "PNG": 2}
_MIME_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png"}
_MAX_FEATURE_FLAGS = 64  # keys kept from one client's feature_flags message

_MAX_BACKLOG = 2048  # messages kept for a slow client before new ones are dropped
_MAX_ID_LENGTH = 128


def preview_frame(image_format: str, data: bytes) -> bytes:
    """ComfyUI's preview framing: 4-byte big-endian event type, 4-byte image format, then the image bytes."""
    return struct.pack(">II", PREVIEW_IMAGE, IMAGE_FORMATS[image_format]) + data


def preview_frame_with_metadata(image_format: str, data: bytes, metadata: dict[str, Any]) -> bytes:
    """ComfyUI's frame for clients that declare ``supports_preview_metadata``: 4-byte big-endian event type 4,
    4-byte length of the JSON metadata (``node_id``, ``display_node_id``, ``parent_node_id``, ``real_node_id``,
    ``prompt_id``, ``image_type`` as a MIME type), the metadata, then the image bytes."""
    meta = json.dumps({**metadata, "image_type": _MIME_TYPES[image_format]}).encode()
    return struct.pack(">II", PREVIEW_IMAGE_WITH_METADATA, len(meta)) + meta + data


class Hub:
    """Connected clients by client id; ``send`` may be called from any thread."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self._clients: dict[str, asyncio.Queue] = {}
        self._features: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def connect(self, requested_id: str | None = None) -> tuple[str, asyncio.Queue]:
        """Register a socket; returns (its client id, its message queue).

        The requested id is used when no open socket holds it (a client reconnecting after its socket closed
        gets its id back, as in ComfyUI). While another socket still holds it, the newcomer gets a fresh id
        instead of taking the first socket's messages over; an id that is empty or over 128 characters is
        also replaced. The id in use is the ``sid`` of the first status message.
        """
        queue: asyncio.Queue = asyncio.Queue(maxsize=_MAX_BACKLOG)
        with self._lock:
            client_id = requested_id or ""
            if not 0 < len(client_id) <= _MAX_ID_LENGTH or client_id in self._clients:
                client_id = uuid.uuid4().hex
            self._clients[client_id] = queue
        return client_id, queue

    def disconnect(self, client_id: str, queue: asyncio.Queue) -> None:
        with self._lock:
            if self._clients.get(client_id) is queue:
                del self._clients[client_id]
                self._features.pop(client_id, None)

    def receive(self, client_id: str, text: str) -> dict[str, Any] | None:
        """Handle a text message a client sent on its socket; returns it parsed (None if it is not a JSON
        object with a "type"). A ``feature_flags`` message records what the client supports (ComfyUI's
        frontend sends ``{"supports_preview_metadata": true, ...}`` first thing)."""
        try:
            message = json.loads(text)
        except ValueError:
            return None
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            return None
        data = message.get("data")
        if message["type"] == "feature_flags" and isinstance(data, dict):
            flags = {str(k)[:128]: v for k, v in list(data.items())[:_MAX_FEATURE_FLAGS]}
            with self._lock:
                if client_id in self._clients:
                    self._features[client_id] = flags
        return message

    def supports(self, client_id: str | None, feature: str) -> bool:
        """Whether the client declared ``feature`` true in its feature_flags message."""
        if client_id is None:
            return False
        with self._lock:
            return self._features.get(client_id, {}).get(feature) is True

    def client_ids(self) -> list[str]:
        """The ids of the sockets connected now."""
        with self._lock:
            return list(self._clients)

    def send(self, event: str, data: dict[str, Any], client_id: str | None = None) -> None:
        """Send a JSON message ``{"type": event, "data": data}`` to one client, or to all when None."""
        self._post(json.dumps({"type": event, "data": data}, default=str), client_id)

    def send_bytes(self, frame: bytes, client_id: str | None = None) -> None:
        self._post(frame, client_id)

    def _post(self, message: str | bytes, client_id: str | None) -> None:
        loop = self.loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(self._deliver, message, client_id)
        except RuntimeError:  # loop closed between the check and the call
            pass

    def _deliver(self, message: str | bytes, client_id: str | None) -> None:
        with self._lock:
            if client_id is None:
                targets = list(self._clients.values())
            else:
                queue = self._clients.get(client_id)
                targets = [queue] if queue is not None else []
        for queue in targets:
            try:
                queue.put_nowait(message)
            except asyncio.QueueFull:
                pass
