"""Workflow metadata for saved images: the PNG text chunks ComfyUI writes and reads back."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any


def png_metadata(prompt: Mapping[str, Any] | None, extra_pnginfo: Mapping[str, Any] | None) -> dict[str, str]:
    """Text chunks for a saved PNG: ``"prompt"`` (the API workflow) and one chunk per extra_pnginfo key.

    The editor sends its graph as ``extra_data.extra_pnginfo.workflow``, so a saved image carries both
    ``"prompt"`` and ``"workflow"`` and can be dropped back onto the editor. Use with Pillow::

        info = PngImagePlugin.PngInfo()
        for key, text in png_metadata(prompt, extra_pnginfo).items():
            info.add_text(key, text)
    """
    chunks: dict[str, str] = {}
    if prompt is not None:
        chunks["prompt"] = json.dumps(prompt)
    for key, value in (extra_pnginfo or {}).items():
        chunks[str(key)] = json.dumps(value)
    return chunks
