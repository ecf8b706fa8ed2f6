"""Convert an editor (UI-format, litegraph) workflow into the API format the executor runs.

The editor saves ``{"nodes": [...], "links": [...], "groups": [...], "definitions": {"subgraphs": [...]}}``:
each node has ``id``, ``type``, ``mode``, ``inputs`` (``{"name", "type", "link", "widget"?}``),
``outputs`` and ``widgets_values`` (the widget values, positionally); each link is
``[id, from_node, from_slot, to_node, to_slot, type]`` (or the same as an object with ``origin_id`` ...).
The API format is ``{node_id: {"class_type", "inputs": {name: literal | [src_id, slot]}, "_meta"}}``.

Widget positions are read from the node schemas in the registry (required inputs, then optional ones, as
``object_info`` lists them), so the converter stays right as node types are added. What ComfyUI's editor does
when it queues a workflow, done here the same way:

* an input declaring ``control_after_generate`` (seeds) is followed by an extra widget value
  ("fixed", "increment", "decrement", "randomize") that is skipped;
* a widget input that has a ``link`` takes the link instead of its widget value;
* ``PrimitiveNode`` (and PrimitiveInt/Float/String/Boolean when the registry lacks them) is an editor-only
  constant: its value replaces every input it feeds;
* ``Reroute`` nodes are followed through; ``Note`` / ``MarkdownNote`` and groups are dropped;
* bypassed nodes (mode 4) pass an input of the output's type straight through (the same slot first);
* muted nodes (mode 2) are dropped, and so is every node that needs one of their outputs for a required
  input (what depends only on muted nodes cannot run);
* a node whose type is the id of a subgraph in ``definitions.subgraphs`` is expanded inline; its inner
  nodes get ids ``"<outer id>:<inner id>"``.

Unknown node types are collected and raised together as :class:`MissingNodeTypes` (the server answers
ComfyUI's ``missing_node_type`` error); every other problem is a :class:`WorkflowConversionError` whose
message names the node id and type. Torch-free.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from latentworks.graph.registry import NodeRegistry
from latentworks.graph.types import PRIMITIVE_TYPES, InputSpec, NodeSpec
from latentworks.graph.validate import error_item
from latentworks.graph.workflow import is_link

MODE_ALWAYS, MODE_MUTED, MODE_BYPASSED = 0, 2, 4
CONTROL_VALUES = frozenset({"fixed", "increment", "decrement", "randomize"})
NOTE_TYPES = frozenset({"Note", "MarkdownNote"})
REROUTE_TYPES = frozenset({"Reroute"})
# Editor constants: their first widget value is what they output. ComfyUI also has backend
# PrimitiveInt/... nodes; when the registry holds them they run as ordinary nodes instead.
PRIMITIVE_NODE_TYPES = frozenset(
    {"PrimitiveNode", "PrimitiveInt", "PrimitiveFloat", "PrimitiveString", "PrimitiveStringMultiline",
     "PrimitiveBoolean"}
)  # fmt: skip
SUBGRAPH_INPUT_ID, SUBGRAPH_OUTPUT_ID = -10, -20
MAX_SUBGRAPH_DEPTH = 16
MAX_LINK_HOPS = 10_000
MAX_SLOT = 1024  # input/output slots per node a link may name
MAX_NODES = 5000  # after expanding subgraphs (the validator's limit too): nested subgraphs multiply
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.IGNORECASE)


class WorkflowConversionError(ValueError):
    """A UI workflow that cannot be converted; the message says which node and what to do."""


@dataclass(frozen=True)
class MissingNode:
    node_id: str
    class_type: str
    title: str


class MissingNodeTypes(WorkflowConversionError):
    """The workflow uses node types the registry does not have (all of them are listed in ``missing``)."""

    def __init__(self, missing: Sequence[MissingNode]) -> None:
        self.missing = list(missing)
        names = sorted({m.class_type for m in self.missing})
        where = ", ".join(f"#{m.node_id} {m.class_type!r}" for m in self.missing[:10])
        super().__init__(
            f"the workflow uses node types this server does not have: {', '.join(names)} (nodes {where}). "
            "Remove or replace those nodes; 'latentworks info' and GET /object_info list the known types"
        )

    def error(self) -> dict[str, Any]:
        """ComfyUI's top-level ``missing_node_type`` error item (about the first missing node)."""
        first = self.missing[0]
        return missing_node_type_error(first.node_id, first.class_type, first.title)


def missing_node_type_error(node_id: str, class_type: str, title: str | None = None) -> dict[str, Any]:
    """The error item ComfyUI's ``POST /prompt`` answers for a node type it does not know."""
    node_title = title or class_type
    return error_item(
        "missing_node_type",
        f"Node '{node_title}' not found. The custom node may not be installed.",
        f"Node ID '#{node_id}'",
        {"node_id": node_id, "class_type": class_type, "node_title": node_title},
    )


def is_ui_workflow(data: Any) -> bool:
    """Whether ``data`` looks like an editor workflow (has a ``nodes`` list) rather than an API prompt."""
    return isinstance(data, Mapping) and isinstance(data.get("nodes"), list) and "class_type" not in data


# -- the flattened graph --------------------------------------------------------------------------------


@dataclass
class _Input:
    name: str
    type: str
    source: tuple[str, int] | None  # (flat node id, output slot) of the link feeding it
    widget: bool


@dataclass
class _Node:
    id: str
    type: str
    title: str
    mode: int
    inputs: list[_Input] = field(default_factory=list)
    output_types: list[str] = field(default_factory=list)
    widgets: Any = field(default_factory=list)  # list (positional) or dict (by name)
    kind: str = "node"  # node | reroute | primitive | note | subgraph_in | subgraph_out
    owner: str | None = None  # for subgraph_in / subgraph_out: the instance node's flat id
    # for subgraph_in: declared input slot -> its position in the instance's widgets_values. The editor
    # promotes every subgraph input that feeds an inner widget, in declaration order, and saves their
    # values (no control_after_generate entries) whether or not the instance lists the input.
    promoted: dict[int, int] = field(default_factory=dict)

    def label(self) -> str:
        return f"node {self.id} ({self.type!r}" + (
            f", titled {self.title!r})" if self.title != self.type else ")"
        )


def _err(node: Any, message: str) -> WorkflowConversionError:
    return WorkflowConversionError(f"{node.label() if isinstance(node, _Node) else node}: {message}")


def _links_table(links: Any, where: str) -> dict[int, tuple[int, int, int, int, str]]:
    """link id -> (from_node, from_slot, to_node, to_slot, type); accepts list and object links."""
    if links is None:
        return {}
    if not isinstance(links, list):
        raise WorkflowConversionError(f"{where}: 'links' must be a list, got {type(links).__name__}")
    table: dict[int, tuple[int, int, int, int, str]] = {}
    for item in links:
        if isinstance(item, Mapping):
            fields = [item.get(k) for k in ("id", "origin_id", "origin_slot", "target_id", "target_slot")]
            ltype = item.get("type", "*")
        elif isinstance(item, list) and len(item) >= 5:
            fields, ltype = list(item[:5]), item[5] if len(item) > 5 else "*"
        else:
            raise WorkflowConversionError(
                f"{where}: a link must be [id, from_node, from_slot, to_node, to_slot, type], got {item!r:.80}"
            )
        if not all(isinstance(f, int) and not isinstance(f, bool) for f in fields):
            raise WorkflowConversionError(f"{where}: link {item!r:.80} has a non-integer id, node or slot")
        link_id, a, b, c, d = (int(f) for f in fields)  # type: ignore[arg-type]
        if not (0 <= b < MAX_SLOT and 0 <= d < MAX_SLOT):
            raise WorkflowConversionError(
                f"{where}: link {item!r:.80} names a slot outside 0..{MAX_SLOT - 1}"
            )
        table[link_id] = (a, b, c, d, str(ltype))
    return table


class _Flattener:
    def __init__(self, registry: NodeRegistry, subgraphs: Mapping[str, Mapping[str, Any]]) -> None:
        self.registry = registry
        self.subgraphs = subgraphs
        self.nodes: dict[str, _Node] = {}

    def add_graph(self, graph: Mapping[str, Any], prefix: str, stack: tuple[str, ...], where: str) -> None:
        """Add ``graph``'s nodes with ids ``prefix + id``; subgraph instances are expanded recursively."""
        nodes = graph.get("nodes")
        if not isinstance(nodes, list):
            raise WorkflowConversionError(f"{where}: 'nodes' must be a list")
        links = _links_table(graph.get("links"), where)

        def flat(node_id: int) -> str:
            if node_id == SUBGRAPH_INPUT_ID and prefix:
                return prefix + "in"
            if node_id == SUBGRAPH_OUTPUT_ID and prefix:
                return prefix + "out"
            return f"{prefix}{node_id}"

        def source_of(link_id: Any) -> tuple[str, int] | None:
            if link_id is None or not isinstance(link_id, int) or link_id not in links:
                return None
            a, b, _, _, _ = links[link_id]
            return flat(a), b

        for raw in nodes:
            if not isinstance(raw, Mapping) or not isinstance(raw.get("id"), int | str):
                raise WorkflowConversionError(f"{where}: every node needs an 'id' (got {str(raw)[:80]})")
            node_id = f"{prefix}{raw['id']}"
            ntype = raw.get("type")
            if not isinstance(ntype, str) or not ntype:
                raise WorkflowConversionError(f"{where}: node {node_id} has no 'type'")
            raw_title = raw.get("title")
            title = raw_title if isinstance(raw_title, str) and raw_title else ntype
            mode = raw.get("mode", MODE_ALWAYS)
            node = _Node(node_id, ntype, title, mode if isinstance(mode, int) else MODE_ALWAYS)
            for key in ("inputs", "outputs"):
                if not isinstance(raw.get(key) or [], list):
                    raise _err(node, f"'{key}' must be a list, got {type(raw.get(key)).__name__}")
            for inp in raw.get("inputs") or []:
                if not isinstance(inp, Mapping):
                    raise _err(node, f"an input must be an object, got {inp!r:.80}")
                node.inputs.append(
                    _Input(
                        name=str(inp.get("name", "")),
                        type=str(inp.get("type", "*")),
                        source=source_of(inp.get("link")),
                        widget=isinstance(inp.get("widget"), Mapping),
                    )
                )
            node.output_types = [
                str(o.get("type", "*")) if isinstance(o, Mapping) else "*" for o in raw.get("outputs") or []
            ]
            widgets = raw.get("widgets_values")
            node.widgets = widgets if isinstance(widgets, list | Mapping) else []
            if node_id in self.nodes:
                raise _err(node, "another node has the same id; ids must be unique")
            if len(self.nodes) >= MAX_NODES:
                raise _err(
                    node, f"the workflow has more than {MAX_NODES} nodes once its subgraphs are expanded"
                )
            self.nodes[node_id] = node
            self._classify(node, stack)
        # The boundary nodes of a subgraph: "in" outputs the instance's inputs, "out" takes inner links.
        if prefix:
            owner = prefix[:-1]
            boundary = _Node(prefix + "in", "subgraph input", "", 0, kind="subgraph_in", owner=owner)
            # the subgraph's input names, by slot: an instance lists only some of them (the linked or
            # promoted ones), so its inputs are matched by name, not by position
            declared = graph.get("inputs")
            boundary.output_types = [
                str(i.get("name", "")) if isinstance(i, Mapping) else "" for i in declared or []
            ] if isinstance(declared, list) else []  # fmt: skip
            feeds_widget = {
                b
                for a, b, c, d, _ in links.values()
                if a == SUBGRAPH_INPUT_ID
                and (inner := self.nodes.get(flat(c))) is not None
                and d < len(inner.inputs)
                and inner.inputs[d].widget
            }
            boundary.promoted = {slot: i for i, slot in enumerate(sorted(feeds_widget))}
            self.nodes[prefix + "in"] = boundary
            out = _Node(prefix + "out", "subgraph output", "", 0, kind="subgraph_out", owner=owner)
            for a, b, c, d, t in links.values():
                if c == SUBGRAPH_OUTPUT_ID:
                    while len(out.inputs) <= d:
                        out.inputs.append(_Input(str(len(out.inputs)), "*", None, False))
                    out.inputs[d] = _Input(str(d), t, (flat(a), b), False)
            self.nodes[prefix + "out"] = out

    def _classify(self, node: _Node, stack: tuple[str, ...]) -> None:
        t = node.type
        if t in NOTE_TYPES:
            node.kind = "note"
        elif t in REROUTE_TYPES and t not in self.registry:
            node.kind = "reroute"
        elif t in PRIMITIVE_NODE_TYPES and t not in self.registry:
            node.kind = "primitive"
        elif t in self.subgraphs:
            if t in stack or len(stack) >= MAX_SUBGRAPH_DEPTH:
                raise _err(node, "subgraphs nest too deeply or contain themselves")
            node.kind = "subgraph"
            if node.mode not in (MODE_MUTED, MODE_BYPASSED):
                sub = self.subgraphs[t]
                name = sub.get("name") or t
                self.add_graph(sub, f"{node.id}:", (*stack, t), f"subgraph {name!r} (node {node.id})")
        elif t not in self.registry and _UUID.match(t):
            raise _err(
                node,
                f"uses subgraph {t}, which is not in the workflow's definitions.subgraphs; "
                "save the workflow again from the editor (it stores its subgraphs) or unpack the subgraph",
            )


# -- resolving link sources -----------------------------------------------------------------------------

# A resolved source: ("link", node_id, slot), ("value", literal, None), ("muted", node_id, None), or None
# (nothing: a dangling link, or a bypassed node with no input of the output's type).
_Source = tuple[str, Any, Any] | None


class _Converter:
    def __init__(self, flat: _Flattener) -> None:
        self.nodes = flat.nodes
        self.registry = flat.registry

    def resolve(self, source: tuple[str, int] | None, want: InputSpec | None) -> _Source:
        hops = 0
        while source is not None:
            hops += 1
            if hops > MAX_LINK_HOPS:
                raise WorkflowConversionError(
                    f"a link loops through reroutes or bypassed nodes at node {source[0]}"
                )
            node_id, slot = source
            node = self.nodes.get(node_id)
            if node is None:
                return None  # a dangling link: like the editor, the input is left out
            if node.kind == "note":
                return None
            if node.mode == MODE_MUTED:
                return ("muted", node_id, None)
            if node.kind == "reroute":
                source = node.inputs[0].source if node.inputs else None
            elif node.kind == "primitive":
                return ("value", self.primitive_value(node), None)
            elif node.kind == "subgraph":
                source = (node.id + ":out", slot) if node.mode != MODE_BYPASSED else self.bypass(node, slot)
            elif node.kind == "subgraph_out":
                source = node.inputs[slot].source if slot < len(node.inputs) else None
            elif node.kind == "subgraph_in":
                source, value = self.instance_input(node, slot)
                if value is not None:
                    return value
            elif node.mode == MODE_BYPASSED:
                source = self.bypass(node, slot)
            else:
                return ("link", node_id, slot)
        return None

    def primitive_value(self, node: _Node) -> Any:
        w = node.widgets
        if isinstance(w, list) and w:
            return w[0]
        if isinstance(w, Mapping) and "value" in w:
            return w["value"]
        raise _err(node, "this constant node has no value (widgets_values is empty)")

    def instance_input(self, boundary: _Node, slot: int) -> tuple[tuple[str, int] | None, _Source]:
        """The source feeding input ``slot`` of a subgraph instance, or its promoted widget's value."""
        owner = self.nodes[boundary.owner or ""]
        name = boundary.output_types[slot] if slot < len(boundary.output_types) else ""
        named = [i for i in owner.inputs if name and i.name == name]
        if named:
            inp: _Input | None = named[0]
        elif not name and slot < len(owner.inputs):
            inp = owner.inputs[slot]  # a definition without input names: match by position
        else:
            inp = None
        if inp is not None and inp.source is not None:
            return inp.source, None
        w = owner.widgets
        if slot in boundary.promoted:
            index = boundary.promoted[slot]
            if isinstance(w, list) and index < len(w):
                return None, ("value", w[index], None)
            if isinstance(w, Mapping) and name in w:
                return None, ("value", w[name], None)
        return None, None  # not linked and no saved value: the inner node keeps its own widget value

    def bypass(self, node: _Node, slot: int) -> tuple[str, int] | None:
        """A bypassed node's output ``slot`` is its input of the same type (the same slot first)."""
        out_type = node.output_types[slot] if slot < len(node.output_types) else "*"
        candidates = node.inputs
        if slot < len(candidates) and _same_type(candidates[slot].type, out_type) and candidates[slot].source:
            return candidates[slot].source
        for inp in candidates:
            if inp.source is not None and _same_type(inp.type, out_type):
                return inp.source
        return None


def _same_type(a: str, b: str) -> bool:
    return a == b or a == "*" or b == "*"


def _widget_inputs(spec: NodeSpec) -> list[InputSpec]:
    """Inputs shown as widgets, in the editor's order: required ones, then optional ones."""
    visible = [i for i in spec.visible_inputs if i.type in PRIMITIVE_TYPES]
    return [i for i in visible if not i.optional] + [i for i in visible if i.optional]


def widget_values_by_name(spec: NodeSpec, widgets: Any) -> dict[str, Any]:
    """Map a node's ``widgets_values`` onto its widget inputs, skipping the control_after_generate values."""
    if isinstance(widgets, Mapping):
        return {i.name: widgets[i.name] for i in _widget_inputs(spec) if i.name in widgets}
    values: dict[str, Any] = {}
    pos = 0
    for inp in _widget_inputs(spec):
        if pos >= len(widgets):
            break
        values[inp.name] = widgets[pos]
        pos += 1
        control = widgets[pos] if pos < len(widgets) else None
        if inp.extra.get("control_after_generate") and (
            (isinstance(control, str) and control in CONTROL_VALUES) or isinstance(control, bool)
        ):
            pos += (
                1  # the "control after generate" combo the editor adds after a seed (a bool in older files)
            )
    return values


def ui_to_api(workflow: Any, registry: NodeRegistry) -> dict[str, dict[str, Any]]:
    """Convert an editor workflow into an API-format prompt for ``registry``'s node types.

    Raises:
        MissingNodeTypes: active nodes use types the registry lacks (all of them are listed).
        WorkflowConversionError: anything else malformed; the message names the node id and type.
    """
    try:
        return _ui_to_api(workflow, registry)
    except WorkflowConversionError:
        raise
    except (TypeError, ValueError, KeyError, AttributeError, IndexError, RecursionError) as e:
        # Malformed JSON this module does not check field by field yet: still an error for people.
        raise WorkflowConversionError(
            f"the workflow could not be converted ({type(e).__name__}: {str(e)[:200]}); check that it is a "
            "workflow the editor saved"
        ) from None


def _ui_to_api(workflow: Any, registry: NodeRegistry) -> dict[str, dict[str, Any]]:
    if not is_ui_workflow(workflow):
        raise WorkflowConversionError(
            "not an editor workflow: expected an object with a 'nodes' list and a 'links' list"
        )
    definitions = workflow.get("definitions")
    subs_raw = definitions.get("subgraphs") if isinstance(definitions, Mapping) else None
    subgraphs: dict[str, Mapping[str, Any]] = {}
    if not isinstance(subs_raw or [], list):
        raise WorkflowConversionError("definitions.subgraphs must be a list of subgraph definitions")
    for sub in subs_raw or []:
        if isinstance(sub, Mapping) and isinstance(sub.get("id"), str):
            subgraphs[sub["id"]] = sub
    flat = _Flattener(registry, subgraphs)
    flat.add_graph(workflow, "", (), "workflow")
    conv = _Converter(flat)

    prompt: dict[str, dict[str, Any]] = {}
    missing: list[MissingNode] = []
    needs: dict[str, list[str]] = {}  # node -> nodes it needs for required link inputs
    for node in flat.nodes.values():
        if node.kind != "node" or node.mode in (MODE_MUTED, MODE_BYPASSED):
            continue
        spec = registry.get(node.type)
        if spec is None:
            missing.append(MissingNode(node.id, node.type, node.title))
            continue
        try:
            widget_values = widget_values_by_name(spec, node.widgets)
        except TypeError as e:
            raise _err(node, f"widgets_values could not be read ({e})") from None
        linked = {i.name: i for i in node.inputs}
        inputs: dict[str, Any] = {}
        for spec_input in spec.visible_inputs:
            ui_input = linked.get(spec_input.name)
            if ui_input is not None and ui_input.source is not None:
                resolved = conv.resolve(ui_input.source, spec_input)
                if resolved is None:
                    # nothing behind the link (a subgraph input the instance leaves unset, a dangling
                    # link): a widget keeps its own value; else left out (the validator names it)
                    if spec_input.name in widget_values:
                        inputs[spec_input.name] = widget_values[spec_input.name]
                    continue
                kind, a, b = resolved
                if kind == "muted":
                    if not spec_input.optional:
                        needs.setdefault(node.id, []).append(a)  # cannot run without the muted node
                    continue
                inputs[spec_input.name] = [a, b] if kind == "link" else a
            elif spec_input.name in widget_values:
                inputs[spec_input.name] = widget_values[spec_input.name]
            elif spec_input.type in PRIMITIVE_TYPES and spec_input.default is not None:
                # a widget the saved node has no value for (saved without widgets_values, or before the
                # input was added to the node type): the editor shows, and queues, its default
                inputs[spec_input.name] = spec_input.default
        prompt[node.id] = {"class_type": spec.name, "inputs": inputs, "_meta": {"title": node.title}}
    if missing:
        raise MissingNodeTypes(missing)
    _drop_dependents(prompt, needs, registry)
    return prompt


def _drop_dependents(
    prompt: dict[str, dict[str, Any]], needs: Mapping[str, list[str]], registry: NodeRegistry
) -> None:
    """Remove the nodes whose required input came from a muted node, then (transitively) the nodes whose
    required input links to a removed node; an optional input that does is left out instead."""
    consumers: dict[str, list[tuple[str, str]]] = {}  # source id -> [(consumer id, input name)]
    for node_id, node in prompt.items():
        for name, value in node["inputs"].items():
            if is_link(value):
                consumers.setdefault(str(value[0]), []).append((node_id, name))
    queue = [node_id for node_id in needs if node_id in prompt]
    while queue:
        node_id = queue.pop()
        if prompt.pop(node_id, None) is None:
            continue
        for consumer, name in consumers.get(node_id, []):
            consumer_node = prompt.get(consumer)
            if consumer_node is None:
                continue
            spec_input = registry[consumer_node["class_type"]].input(name)
            if spec_input is not None and spec_input.optional:
                consumer_node["inputs"].pop(name, None)
            else:
                queue.append(consumer)


__all__ = [
    "MissingNode",
    "MissingNodeTypes",
    "WorkflowConversionError",
    "is_ui_workflow",
    "missing_node_type_error",
    "ui_to_api",
    "widget_values_by_name",
]
