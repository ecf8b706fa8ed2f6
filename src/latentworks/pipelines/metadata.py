"""Generation parameters in PNG text chunks, readable by latentworks, A1111-style tools and ComfyUI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin


def parameters_text(params: dict[str, Any]) -> str:
    """The A1111-style one-paragraph summary ("prompt\\nNegative prompt: ...\\nSteps: 20, ...")."""
    lines = [str(params.get("prompt", ""))]
    if params.get("negative_prompt"):
        lines.append(f"Negative prompt: {params['negative_prompt']}")
    keys = [
        ("Steps", "steps"),
        ("Sampler", "sampler"),
        ("Schedule type", "scheduler"),
        ("CFG scale", "guidance"),
        ("Guidance interval", "guidance_interval"),
        ("Seed", "seed"),
        ("Size", None),
        ("Model", "model"),
        ("Denoising strength", "strength"),
    ]
    parts = []
    for label, key in keys:
        if key is None:
            parts.append(f"Size: {params.get('width')}x{params.get('height')}")
        elif isinstance(params.get(key), list | tuple):  # no comma inside a value: readers split on ", "
            parts.append(f"{label}: " + "-".join(f"{v:g}" for v in params[key]))
        elif params.get(key) is not None:
            parts.append(f"{label}: {params[key]}")
    lines.append(", ".join(parts))
    return "\n".join(lines)


def save_png(
    image: Image.Image, path: str | Path, params: dict[str, Any], extra_text: dict[str, str] | None = None
) -> Path:
    """Save ``image`` with ``params`` as text chunks: ``parameters`` (A1111 style) and ``latentworks`` (JSON)."""
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", parameters_text(params))
    info.add_text("latentworks", json.dumps(params, sort_keys=True))
    for k, v in (extra_text or {}).items():
        info.add_text(k, v)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    image.save(tmp, format="PNG", pnginfo=info)
    tmp.replace(path)
    return path


def read_text_chunks(path: str | Path) -> dict[str, str]:
    """An image's text chunks (empty for one without any, or a format without them)."""
    with Image.open(path) as im:
        return dict(getattr(im, "text", {}))


def read_parameters(path: str | Path) -> dict[str, Any]:
    """The generation parameters that ``save_png`` wrote into ``path`` (ValueError if there are none)."""
    text = read_text_chunks(path).get("latentworks")
    if text is None:
        raise ValueError(f"{path} has no latentworks parameters chunk")
    return json.loads(text)
