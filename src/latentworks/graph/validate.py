"""Validate an API-format workflow against a registry, returning ComfyUI-shaped structured errors.

``validate_prompt`` accepts any JSON value and never raises: every problem becomes an error entry
``{"type", "message", "details", "extra_info"}`` either at the top level or per node and input.
On success it also returns the workflow normalised for the executor (literal values coerced to their
declared types, links as ``(source_id, output_index)`` tuples, only the nodes outputs need).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from latentworks.graph.registry import NodeRegistry
from latentworks.graph.types import INT_LIMIT, PRIMITIVE_TYPES, InputSpec, NodeSpec, types_compatible
from latentworks.graph.workflow import ancestors, is_link, link_source, node_links, topological_order

DEFAULT_MAX_NODES = 5000


def error_item(
    type_: str, message: str, details: str = "", extra_info: Mapping[str, Any] | None = None
) -> dict:
    """One error in ComfyUI's shape."""
    return {"type": type_, "message": message, "details": details, "extra_info": dict(extra_info or {})}


@dataclass
class ValidationResult:
    """Outcome of :func:`validate_prompt`.

    Attributes:
        ok: no errors; the workflow can run.
        error: top-level error item (None when ok).
        node_errors: ``{node_id: {"errors": [...], "dependent_outputs": [...], "class_type": str}}``.
        outputs: ids of the output nodes that will run.
        prompt: normalised workflow for the executor (only when ok).
    """

    ok: bool
    error: dict | None = None
    node_errors: dict[str, dict] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)
    prompt: dict[str, dict] = field(default_factory=dict)

    def response(self) -> dict[str, Any]:
        """The JSON body ComfyUI sends with a 400: ``{"error": ..., "node_errors": ...}``."""
        return {"error": self.error, "node_errors": self.node_errors}


def _summary(value: Any) -> Any:
    """A JSON-safe, short stand-in for a received value (never recurses into containers)."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if abs(value) <= 2**64 else f"<int of {value.bit_length()} bits>"
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, str):
        return value if len(value) <= 200 else value[:200] + "..."
    return f"<{type(value).__name__}>"


def _invalid(message: str, details: str = "") -> ValidationResult:
    return ValidationResult(ok=False, error=error_item("invalid_prompt", message, details))


def _coerce_literal(spec: InputSpec, value: Any) -> tuple[Any, dict | None]:
    """(coerced value, None) or (None, error item) for a literal given to input ``spec``."""
    name = spec.name
    info = {"input_name": name, "received_value": _summary(value)}

    def bad(kind: str, msg: str) -> tuple[None, dict]:
        return None, error_item(kind, msg, name, info)

    t = spec.type
    if t == "*":
        return value, None
    if t not in PRIMITIVE_TYPES:
        return bad(
            "invalid_input_type", f"Input '{name}' of type {t} must be linked to a node output, not a literal"
        )
    if t == "INT":
        if isinstance(value, bool):
            return bad("invalid_input_type", f"Input '{name}' expects an integer, got a boolean")
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            value = int(value)
        elif isinstance(value, str) and len(value) <= 40:
            try:
                value = int(value.strip())
            except ValueError:
                return bad(
                    "invalid_input_type",
                    f"Input '{name}' expects an integer, got the string {_summary(value)!r}",
                )
        if not isinstance(value, int):
            return bad("invalid_input_type", f"Input '{name}' expects an integer, got {type(value).__name__}")
        lo = spec.min if spec.min is not None else -INT_LIMIT
        hi = spec.max if spec.max is not None else INT_LIMIT
    elif t == "FLOAT":
        if isinstance(value, bool):
            return bad("invalid_input_type", f"Input '{name}' expects a number, got a boolean")
        if isinstance(value, str) and len(value) <= 40:
            try:
                value = float(value.strip())
            except ValueError:
                return bad(
                    "invalid_input_type",
                    f"Input '{name}' expects a number, got the string {_summary(value)!r}",
                )
        if isinstance(value, int):
            if abs(value) > 2**1000:
                return bad("invalid_input_type", f"Input '{name}' expects a finite number")
            value = float(value)
        if not isinstance(value, float):
            return bad("invalid_input_type", f"Input '{name}' expects a number, got {type(value).__name__}")
        if not math.isfinite(value):
            return bad("invalid_input_type", f"Input '{name}' expects a finite number, got {value}")
        lo = spec.min if spec.min is not None else -math.inf
        hi = spec.max if spec.max is not None else math.inf
    elif t == "BOOLEAN":
        if not isinstance(value, bool):
            return bad(
                "invalid_input_type", f"Input '{name}' expects true or false, got {type(value).__name__}"
            )
        return value, None
    elif t == "STRING":
        if not isinstance(value, str):
            return bad("invalid_input_type", f"Input '{name}' expects a string, got {type(value).__name__}")
        return value, None
    else:  # COMBO
        try:
            choices = spec.resolved_choices()
        except Exception as e:  # a choices callable failed (e.g. a missing folder)
            return bad(
                "exception_during_validation",
                f"Listing the choices of '{name}' failed: {type(e).__name__}: {e}",
            )
        if isinstance(value, list | dict) or value not in choices:
            info["input_config"] = [_summary(c) for c in choices[:50]]
            return bad(
                "value_not_in_list",
                f"Value not in list: {name}: {_summary(value)!r} not in {len(choices)} choices",
            )
        return value, None
    if value < lo:
        return bad("value_smaller_than_min", f"Value {value} smaller than min of {lo}: {name}")
    if value > hi:
        return bad("value_bigger_than_max", f"Value {value} bigger than max of {hi}: {name}")
    return value, None


def _validate_node(
    registry: NodeRegistry, prompt: Mapping[str, Any], node_id: str, spec: NodeSpec
) -> tuple[list[dict], dict[str, Any]]:
    """(errors, normalised inputs) for one node whose class is known."""
    errors: list[dict] = []
    raw = prompt[node_id].get("inputs", {})
    if not isinstance(raw, Mapping):
        return [error_item("invalid_input_type", "Node 'inputs' must be an object", "inputs")], {}
    normalised: dict[str, Any] = {}
    literals: dict[str, Any] = {}
    for inp in spec.visible_inputs:
        if inp.name not in raw:
            if not inp.optional:
                errors.append(
                    error_item(
                        "required_input_missing",
                        f"Required input is missing: {inp.name}",
                        inp.name,
                        {"input_name": inp.name},
                    )
                )
            elif inp.default is not None:
                normalised[inp.name] = inp.default
            continue
        value = raw[inp.name]
        if is_link(value):
            src, index = link_source(value)
            info = {"input_name": inp.name, "received_value": [src, index]}
            src_node = prompt.get(src)
            src_class = src_node.get("class_type") if isinstance(src_node, Mapping) else None
            src_spec = registry.get(src_class) if isinstance(src_class, str) else None
            if src_node is None:
                errors.append(
                    error_item(
                        "bad_linked_input",
                        f"Input '{inp.name}' links to node {src!r}, which does not exist",
                        inp.name,
                        info,
                    )
                )
            elif src_spec is None:
                errors.append(
                    error_item(
                        "bad_linked_input",
                        f"Input '{inp.name}' links to node {src!r}, whose type is unknown",
                        inp.name,
                        info,
                    )
                )
            elif not 0 <= index < len(src_spec.outputs):
                errors.append(
                    error_item(
                        "bad_linked_input",
                        f"Input '{inp.name}' links to output {index} of node {src!r} ({src_spec.name}), "
                        f"which has {len(src_spec.outputs)} outputs",
                        inp.name,
                        info,
                    )
                )
            elif not types_compatible(src_spec.outputs[index].type, inp.type):
                received = src_spec.outputs[index].type
                errors.append(
                    error_item(
                        "return_type_mismatch",
                        f"Return type mismatch between linked nodes: {inp.name}, received_type({received}) "
                        f"mismatch input_type({inp.type})",
                        inp.name,
                        {**info, "received_type": received, "input_type": inp.type},
                    )
                )
            else:
                normalised[inp.name] = (src, index)
            continue
        coerced, err = _coerce_literal(inp, value)
        if err is not None:
            errors.append(err)
        else:
            normalised[inp.name] = coerced
            literals[inp.name] = coerced
    if not errors and spec.validate_inputs is not None:
        try:
            verdict = spec.validate_inputs(**literals)
        except Exception as e:
            errors.append(error_item("exception_during_validation", f"{type(e).__name__}: {e}", ""))
        else:
            if verdict is not True:
                errors.append(
                    error_item("custom_validation_failed", f"Failed to validate inputs: {verdict}", "")
                )
    return errors, normalised


def validate_prompt(
    registry: NodeRegistry, prompt: Any, *, max_nodes: int = DEFAULT_MAX_NODES
) -> ValidationResult:
    """Check a workflow; never raises. See :class:`ValidationResult`."""
    try:
        return _validate(registry, prompt, max_nodes)
    except RecursionError:
        return _invalid("Workflow is nested too deeply")
    except Exception as e:  # a bug here must not become a 500; report it instead
        return _invalid(f"Workflow could not be validated: {type(e).__name__}: {e}")


def _validate(registry: NodeRegistry, prompt: Any, max_nodes: int) -> ValidationResult:
    if not isinstance(prompt, Mapping):
        return _invalid("The workflow must be an object mapping node ids to nodes", type(prompt).__name__)
    if len(prompt) > max_nodes:
        return _invalid(f"The workflow has {len(prompt)} nodes; the limit is {max_nodes}")
    node_errors: dict[str, dict] = {}

    def add(node_id: str, err: dict, class_type: Any = None) -> None:
        entry = node_errors.setdefault(
            node_id,
            {
                "errors": [],
                "dependent_outputs": [],
                "class_type": class_type if isinstance(class_type, str) else None,
            },
        )
        entry["errors"].append(err)

    outputs: list[str] = []
    for node_id, node in prompt.items():
        if not isinstance(node_id, str):
            return _invalid("Node ids must be strings", _summary(node_id))
        if not isinstance(node, Mapping):
            add(
                node_id,
                error_item("invalid_prompt", "A node must be an object with class_type and inputs", node_id),
            )
            continue
        class_type = node.get("class_type")
        if not isinstance(class_type, str):
            add(node_id, error_item("invalid_prompt", "Node is missing the class_type property", node_id))
            continue
        spec = registry.get(class_type)
        if spec is None:
            add(
                node_id,
                error_item("missing_node_type", f"Node type {class_type!r} is not registered", class_type),
                class_type,
            )
            continue
        if spec.output_node:
            outputs.append(node_id)
    good_nodes = {k: v for k, v in prompt.items() if k not in node_errors}
    if not outputs:
        err = error_item("prompt_no_outputs", "Prompt has no outputs", "Add an output node such as SaveImage")
        if node_errors:
            err = error_item("prompt_outputs_failed_validation", "Prompt outputs failed validation")
        return ValidationResult(ok=False, error=err, node_errors=node_errors)

    needed = ancestors(good_nodes, outputs)
    order, cyclic = topological_order(good_nodes, needed)
    for node_id in sorted(cyclic):
        add(
            node_id,
            error_item("dependency_cycle", "Node is part of, or depends on, a dependency cycle", node_id),
            good_nodes[node_id].get("class_type"),
        )
    normalised: dict[str, dict] = {}
    for node_id in order:
        node = good_nodes[node_id]
        spec = registry[node["class_type"]]
        errors, inputs = _validate_node(registry, prompt, node_id, spec)
        for err in errors:
            add(node_id, err, spec.name)
        normalised[node_id] = {"class_type": spec.name, "inputs": inputs}

    if node_errors:
        # Which outputs each failing node blocks.
        for out in outputs:
            upstream = ancestors(prompt, [out]) if isinstance(prompt.get(out), Mapping) else {out}
            for node_id in upstream & node_errors.keys():
                node_errors[node_id]["dependent_outputs"].append(out)
        return ValidationResult(
            ok=False,
            error=error_item("prompt_outputs_failed_validation", "Prompt outputs failed validation"),
            node_errors=node_errors,
            outputs=outputs,
        )
    return ValidationResult(ok=True, outputs=outputs, prompt=normalised)


__all__ = ["ValidationResult", "error_item", "validate_prompt", "node_links"]
