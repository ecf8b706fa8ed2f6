"""latentworks.server: the ComfyUI-compatible workflow server (HTTP + WebSocket, persistent queue).

Needs the ``server`` extra (fastapi, uvicorn, python-multipart). Start it with :func:`serve` or build the
ASGI app with :func:`create_app`. ``png_metadata`` is re-exported for output nodes that save images.
"""

from latentworks.graph.metadata import png_metadata
from latentworks.server.app import create_app, serve
from latentworks.server.auth import check_bind, is_loopback

__all__ = ["check_bind", "create_app", "is_loopback", "png_metadata", "serve"]
