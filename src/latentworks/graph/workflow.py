"""ComfyUI API-format workflows: ``{node_id: {"class_type": str, "inputs": {name: literal | [src_id, i]}}}``.

Helpers to recognise links and walk the graph without recursion (workflows come from the network and
may be arbitrarily deep).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

Prompt = Mapping[str, Mapping[str, Any]]


def is_link(value: Any) -> bool:
    """A link is a 2-element list ``[source_node_id, output_index]`` (id as str or int)."""
    return (
        isinstance(value, list | tuple)
        and len(value) == 2
        and isinstance(value[0], str | int)
        and not isinstance(value[0], bool)
        and isinstance(value[1], int)
        and not isinstance(value[1], bool)
    )


def link_source(value: Any) -> tuple[str, int]:
    """(source node id as str, output index) of a link."""
    return str(value[0]), int(value[1])


def node_inputs(node: Any) -> Mapping[str, Any]:
    inputs = node.get("inputs") if isinstance(node, Mapping) else None
    return inputs if isinstance(inputs, Mapping) else {}


def node_links(node: Any) -> list[tuple[str, str, int]]:
    """(input name, source id, output index) for every linked input of a node."""
    out = []
    for name, value in node_inputs(node).items():
        if is_link(value):
            src, index = link_source(value)
            out.append((str(name), src, index))
    return out


def ancestors(
    prompt: Prompt, roots: Iterable[str], *, skip_inputs: Mapping[str, set[str]] | None = None
) -> set[str]:
    """All node ids reachable upstream from ``roots`` (roots included), following only existing nodes."""
    seen: set[str] = set()
    stack = [r for r in roots if r in prompt]
    while stack:
        node_id = stack.pop()
        if node_id in seen:
            continue
        seen.add(node_id)
        skipped = skip_inputs.get(node_id, set()) if skip_inputs else set()
        for name, src, _ in node_links(prompt[node_id]):
            if name not in skipped and src in prompt and src not in seen:
                stack.append(src)
    return seen


def topological_order(prompt: Prompt, nodes: Iterable[str]) -> tuple[list[str], set[str]]:
    """Kahn's algorithm over ``nodes``: (order, nodes left over because they are on or after a cycle)."""
    members = set(nodes)
    indegree = {n: 0 for n in members}
    children: dict[str, list[str]] = {n: [] for n in members}
    for n in members:
        for _, src, _ in node_links(prompt[n]):
            if src in members:
                indegree[n] += 1
                children[src].append(n)
    ready = sorted((n for n, d in indegree.items() if d == 0), key=_id_sort_key)
    order: list[str] = []
    while ready:
        n = ready.pop()
        order.append(n)
        for c in children[n]:
            indegree[c] -= 1
            if indegree[c] == 0:
                ready.append(c)
    return order, members - set(order)


def _id_sort_key(node_id: str) -> tuple[int, int | str]:
    return (0, int(node_id)) if node_id.isdigit() else (1, node_id)
