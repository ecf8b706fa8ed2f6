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
    if params.get("loras"):  # "Lora: style.safetensors:0.8 detail.safetensors:-0.3" (no ", " inside)
        parts.append(
            "Lora: " + " ".join(f"{Path(lo['file']).name}:{lo['strength']:g}" for lo in params["loras"])
        )
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


def _is_link(value: Any) -> bool:
    """An API-format input that comes from another node: ``[source_node_id, output_index]``."""
    return (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str | int)
        and isinstance(value[1], int)
        and not isinstance(value[1], bool)
    )


def _node_order(node_id: str) -> tuple[int, int | str]:
    return (0, int(node_id)) if node_id.isdigit() else (1, node_id)


def describe_workflow_chunks(chunks: dict[str, str]) -> str | None:
    """A readable summary of the ComfyUI ``prompt`` and ``workflow`` chunks, or None if there are neither.

    ``prompt`` is an API-format workflow (``{node_id: {"class_type": ..., "inputs": {...}}}``): each node
    is listed with its class and its widget inputs (seed, steps, cfg, sampler_name, text, ...); inputs
    linked to another node's output (``[node_id, index]``) are shown as ``<-node_id``. ``workflow`` is
    the editor's graph (``{"nodes": [...], "links": [...]}``); only its size and node types are shown.
    Raises ValueError when a chunk is present but not the JSON it should be.
    """
    if "prompt" not in chunks and "workflow" not in chunks:
        return None
    lines: list[str] = []
    if "prompt" in chunks:
        try:
            prompt = json.loads(chunks["prompt"])
        except json.JSONDecodeError as e:
            raise ValueError(f"its 'prompt' text chunk is not valid JSON ({e})") from None
        if not isinstance(prompt, dict):
            raise ValueError("its 'prompt' text chunk is not an API-format workflow (a JSON object)")
        lines.append(f"workflow (ComfyUI 'prompt' chunk): {len(prompt)} nodes")
        for node_id in sorted(prompt, key=_node_order):
            node = prompt[node_id] if isinstance(prompt[node_id], dict) else {}
            raw = node.get("inputs")
            inputs: dict[str, Any] = raw if isinstance(raw, dict) else {}
            widgets = [f"{k}={json.dumps(v)}" for k, v in inputs.items() if not _is_link(v)]
            linked = [f"{k}<-{v[0]}" for k, v in inputs.items() if _is_link(v)]
            lines.append(f"  {node_id:>4}  {node.get('class_type', '?')}")
            for item in widgets + linked:
                lines.append(f"          {item}")
    if "workflow" in chunks:
        try:
            graph = json.loads(chunks["workflow"])
        except json.JSONDecodeError as e:
            raise ValueError(f"its 'workflow' text chunk is not valid JSON ({e})") from None
        nodes = graph.get("nodes") if isinstance(graph, dict) else None
        links = graph.get("links") if isinstance(graph, dict) else None
        if isinstance(nodes, list):
            types = sorted({str(n.get("type", "?")) for n in nodes if isinstance(n, dict)})
            n_links = len(links) if isinstance(links, list) else 0
            lines.append(f"editor graph ('workflow' chunk): {len(nodes)} nodes, {n_links} links")
            lines.append(f"  node types: {', '.join(types)}")
        else:
            lines.append("editor graph ('workflow' chunk): present, but without a node list")
    return "\n".join(lines)
