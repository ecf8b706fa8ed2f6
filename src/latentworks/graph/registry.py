"""NodeRegistry: an explicit, instance-owned table of node types and their ComfyUI ``object_info``."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Any

from latentworks.graph.types import InputSpec, NodeSpec


class NodeRegistry:
    """Node types by class_type name. Create one per server/app; there is no global registry."""

    def __init__(self, specs: Iterable[NodeSpec] = ()) -> None:
        self._specs: dict[str, NodeSpec] = {}
        for spec in specs:
            self.register(spec)

    def register(self, spec: NodeSpec, *, replace: bool = False) -> NodeSpec:
        """Add a node type. Registering a name twice is an error unless ``replace=True``."""
        if not isinstance(spec, NodeSpec):
            raise TypeError(f"register() takes a NodeSpec, got {type(spec).__name__}")
        if spec.name in self._specs and not replace:
            raise ValueError(
                f"node type {spec.name!r} is already registered; pass replace=True to override it"
            )
        self._specs[spec.name] = spec
        return spec

    def get(self, name: str) -> NodeSpec | None:
        return self._specs.get(name) if isinstance(name, str) else None

    def __getitem__(self, name: str) -> NodeSpec:
        spec = self.get(name)
        if spec is None:
            raise KeyError(f"unknown node type {name!r}; registered types: {', '.join(sorted(self._specs))}")
        return spec

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._specs

    def __iter__(self) -> Iterator[NodeSpec]:
        return iter(self._specs.values())

    def __len__(self) -> int:
        return len(self._specs)

    def names(self) -> list[str]:
        return sorted(self._specs)

    def object_info(self) -> dict[str, dict[str, Any]]:
        """All node types in ComfyUI's ``GET /object_info`` shape (choices callables evaluated now)."""
        return {name: node_info(spec) for name, spec in self._specs.items()}


def _json_number(x: float) -> float | int | None:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _input_entry(spec: InputSpec) -> list[Any]:
    opts: dict[str, Any] = {}
    if spec.default is not None:
        opts["default"] = spec.default
    for key in ("min", "max", "step"):
        value = getattr(spec, key)
        if value is not None and _json_number(value) is not None:
            opts[key] = value
    if spec.lazy:
        opts["lazy"] = True
    if spec.multiline:
        opts["multiline"] = True
    if spec.tooltip:
        opts["tooltip"] = spec.tooltip
    opts.update(spec.extra)
    if spec.type == "COMBO":
        return [spec.resolved_choices(), opts]
    return [spec.type, opts] if opts else [spec.type]


def node_info(spec: NodeSpec) -> dict[str, Any]:
    """One node type in ComfyUI's object_info shape."""
    required: dict[str, Any] = {}
    optional: dict[str, Any] = {}
    hidden: dict[str, str] = {}
    for inp in spec.inputs:
        if inp.hidden:
            hidden[inp.name] = inp.type
        elif inp.optional:
            optional[inp.name] = _input_entry(inp)
        else:
            required[inp.name] = _input_entry(inp)
    inputs: dict[str, Any] = {"required": required}
    order: dict[str, list[str]] = {"required": list(required)}
    if optional:
        inputs["optional"] = optional
        order["optional"] = list(optional)
    if hidden:
        inputs["hidden"] = hidden
        order["hidden"] = list(hidden)
    return {
        "input": inputs,
        "input_order": order,
        "output": [o.type for o in spec.outputs],
        "output_is_list": [o.is_list for o in spec.outputs],
        "output_name": [o.display_name for o in spec.outputs],
        "output_tooltips": [o.tooltip or "" for o in spec.outputs],
        "name": spec.name,
        "display_name": spec.display_name or spec.name,
        "description": spec.description,
        # "nodes" is how ComfyUI names its core node module; its frontend files such nodes as core ("Comfy
        # Core"), not as a third-party extension.
        "python_module": "nodes",
        "category": spec.category,
        "output_node": spec.output_node,
    }
