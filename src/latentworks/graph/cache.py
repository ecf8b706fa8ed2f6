"""Output cache for the executor: LRU-bounded, keyed by a node's class, literals and its ancestors' keys."""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class CacheEntry:
    outputs: tuple[Any, ...]
    ui: Mapping[str, Any] | None = None


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=repr, separators=(",", ":"))


def node_cache_key(
    class_type: str,
    literals: Mapping[str, Any],
    links: Sequence[tuple[str, str, int]],
    *,
    fingerprint: Any = None,
    node_id: str | None = None,
) -> str:
    """Key of one node's outputs.

    Args:
        class_type: the node type name.
        literals: the node's literal inputs (after validation).
        links: (input name, ancestor's cache key, output index) per linked input; ancestors' keys make
            the key change whenever anything upstream changes, and stay equal when nothing did.
        fingerprint: extra value from the node's ``fingerprint`` function (outside state).
        node_id: included only for nodes whose output depends on their id (UNIQUE_ID hidden input).
    """
    payload = [class_type, _canonical(dict(literals)), sorted(links), repr(fingerprint), node_id]
    return hashlib.sha256(_canonical(payload).encode()).hexdigest()


class OutputCache:
    """A thread-safe LRU map from cache key to :class:`CacheEntry`, at most ``max_entries`` long."""

    def __init__(self, max_entries: int = 256) -> None:
        if max_entries < 0:
            raise ValueError(f"max_entries must be >= 0, got {max_entries}")
        self.max_entries = max_entries
        self._entries: OrderedDict[str, CacheEntry] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> CacheEntry | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
            return entry

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return key in self._entries

    def put(self, key: str, entry: CacheEntry) -> None:
        with self._lock:
            self._entries[key] = entry
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)
