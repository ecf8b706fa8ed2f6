"""Primitive and utility nodes with ComfyUI's schemas: PrimitiveInt/Float/String/StringMultiline/Boolean,
StringConcatenate, ComfySwitchNode and PreviewAny.

Schemas follow ComfyUI's ``comfy_extras/nodes_primitive.py``, ``nodes_string.py``, ``nodes_logic.py`` and
``nodes_preview_any.py``. Two type differences: ComfyUI's switch uses a "MatchType" template so the editor
narrows the output to the input's type; here its inputs and output are "*" (any). The graph engine has
lazy inputs, so the switch evaluates only the branch it returns, as ComfyUI's does.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from latentworks.graph.types import NodeResult, NodeSpec, OutputSpec, input_spec

# ComfyUI bounds its primitive INT/FLOAT widgets by Python's sys.maxsize (2**63 - 1).
PRIMITIVE_LIMIT = sys.maxsize

_UNCONNECTED: Any = ...  # ComfyUI's marker for an optional input with no link (None means "not evaluated")


def _identity(ctx: Any, value: Any) -> tuple[Any, ...]:
    return (value,)


def _concatenate(ctx: Any, string_a: str, string_b: str, delimiter: str = "") -> tuple[Any, ...]:
    return (delimiter.join((string_a, string_b)),)


def _switch_needs(switch: bool, on_false: Any = _UNCONNECTED, on_true: Any = _UNCONNECTED) -> list[str]:
    """The lazy input still needed: the connected one if only one is, else the chosen branch."""
    if on_false is _UNCONNECTED:
        return ["on_true"] if on_true is None else []
    if on_true is _UNCONNECTED:
        return ["on_false"] if on_false is None else []
    if switch and on_true is None:
        return ["on_true"]
    if not switch and on_false is None:
        return ["on_false"]
    return []


def _switch(
    ctx: Any, switch: bool, on_false: Any = _UNCONNECTED, on_true: Any = _UNCONNECTED
) -> tuple[Any, ...]:
    if on_true is _UNCONNECTED and on_false is _UNCONNECTED:
        raise ValueError("Switch: connect on_false or on_true (or both)")
    if on_true is _UNCONNECTED:
        return (on_false,)
    if on_false is _UNCONNECTED:
        return (on_true,)
    return (on_true if switch else on_false,)


def preview_text(source: Any) -> str:
    """How PreviewAny shows a value: strings as they are, numbers and booleans with str(), anything JSON
    can encode as indented JSON, anything else with str()."""
    if source is None:
        return "None"
    if isinstance(source, str):
        return source
    if isinstance(source, (bool, int, float)):
        return str(source)
    try:
        return json.dumps(source, indent=4)
    except (TypeError, ValueError):
        try:
            return str(source)
        except Exception:  # noqa: BLE001 - a value whose __str__ fails still gets a sentence
            return "source exists, but could not be serialized."


def _preview_any(ctx: Any, source: Any = None) -> NodeResult:
    text = preview_text(source)
    # ComfyUI answers {"ui": {"text": (value,)}}: a one-element list once serialised as JSON.
    return NodeResult(outputs=(text,), ui={"text": [text]})


def primitive_nodes() -> list[NodeSpec]:
    I = input_spec  # noqa: E741, N806

    lim = PRIMITIVE_LIMIT
    prim = "utils/primitive"
    return [
        NodeSpec(
            name="PrimitiveString",
            display_name="String",
            category=prim,
            execute=_identity,
            inputs=(I("value", "STRING"),),
            outputs=(OutputSpec(type="STRING"),),
        ),
        NodeSpec(
            name="PrimitiveStringMultiline",
            display_name="String (Multiline)",
            category=prim,
            execute=_identity,
            inputs=(I("value", "STRING", multiline=True),),
            outputs=(OutputSpec(type="STRING"),),
        ),
        NodeSpec(
            name="PrimitiveInt",
            display_name="Int",
            category=prim,
            execute=_identity,
            inputs=(I("value", "INT", min=-lim, max=lim, extra={"control_after_generate": True}),),
            outputs=(OutputSpec(type="INT"),),
        ),
        NodeSpec(
            name="PrimitiveFloat",
            display_name="Float",
            category=prim,
            execute=_identity,
            inputs=(I("value", "FLOAT", min=-lim, max=lim, step=0.1),),
            outputs=(OutputSpec(type="FLOAT"),),
        ),
        NodeSpec(
            name="PrimitiveBoolean",
            display_name="Boolean",
            category=prim,
            execute=_identity,
            inputs=(I("value", "BOOLEAN"),),
            outputs=(OutputSpec(type="BOOLEAN"),),
        ),
        NodeSpec(
            name="StringConcatenate",
            display_name="Concatenate",
            category="utils/string",
            execute=_concatenate,
            description="string_a + delimiter + string_b.",
            inputs=(
                I("string_a", "STRING", multiline=True),
                I("string_b", "STRING", multiline=True),
                I("delimiter", "STRING", default=""),
            ),
            outputs=(OutputSpec(type="STRING"),),
        ),
        NodeSpec(
            name="ComfySwitchNode",
            display_name="Switch",
            category="logic",
            execute=_switch,
            check_lazy_status=_switch_needs,
            description="Pass on_true when switch is true, else on_false; only the chosen branch runs.",
            inputs=(
                I("switch", "BOOLEAN"),
                I("on_false", "*", lazy=True, optional=True),
                I("on_true", "*", lazy=True, optional=True),
            ),
            outputs=(OutputSpec(type="*", name="output"),),
        ),
        NodeSpec(
            name="PreviewAny",
            display_name="Preview as Text",
            category="utilities",
            execute=_preview_any,
            output_node=True,
            description="Show any value as text in the editor.",
            inputs=(I("source", "*"),),
            outputs=(OutputSpec(type="STRING"),),
        ),
    ]
