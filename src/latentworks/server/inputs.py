"""Checks on parsed JSON at the server's boundary: valid Unicode strings and bounded nesting.

Both are about writing the value back out later: a lone UTF-16 surrogate cannot be encoded as UTF-8, and
a value nested hundreds of levels deep overflows the recursive JSON encoders that serve /queue and
/history. A value that passes here can always be sent back to every client.
"""

from __future__ import annotations

import re
from typing import Any

MAX_JSON_DEPTH = 100  # API workflows nest ~5 levels, the editor's extra_pnginfo workflow ~10
_SURROGATE = re.compile(r"[\ud800-\udfff]")


def json_problem(value: Any, max_depth: int = MAX_JSON_DEPTH) -> tuple[str, str] | None:
    """(kind, where) for the first problem in a parsed JSON value, or None.

    kind is "surrogate" (a string or key holding a lone UTF-16 surrogate such as ``"\\ud800"``) or "depth"
    (lists/objects nested deeper than ``max_depth``); where is a path such as 'prompt.1.inputs.text'.
    Iterative, so it never recurses however deep the value is.
    """
    stack: list[tuple[Any, str, int]] = [(value, "", 0)]
    while stack:
        item, path, depth = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return "surrogate", path or "(the body)"
        elif isinstance(item, dict | list):
            if depth >= max_depth:
                return "depth", path or "(the body)"
            if isinstance(item, dict):
                for key, child in item.items():
                    if isinstance(key, str) and _SURROGATE.search(key):
                        return "surrogate", f"{path}.<key>" if path else "<key>"
                    stack.append((child, f"{path}.{key}" if path else str(key), depth + 1))
            else:
                stack.extend((child, f"{path}[{i}]", depth + 1) for i, child in enumerate(item))
    return None
