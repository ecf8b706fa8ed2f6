"""Output cache for the executor: LRU-bounded by bytes (and optionally by entries), keyed by a node's class,
literals and its ancestors' keys.

Loaded models are cached like every other output and accounted by their bytes, not by count. What sits on
the accelerator is the device manager's business (``latentworks.pipelines.memory.MemoryManager``, injected
by the server): when an entry leaves the cache, ``on_evict(outputs)`` tells it, so the networks' device and
host memory go with the entry.

Entries are sized by a *sizer*, ``f(value) -> bytes``. The graph engine never imports torch, so it only
knows sizes it can read without it (:func:`default_sizer`: ``bytes``, anything with an integer ``nbytes``
such as numpy arrays and torch tensors, objects with a ``cache_nbytes()`` method, and containers and
dataclasses of those); the nodes layer injects a sizer that also knows tensors and networks
(:func:`latentworks.nodes.budgets.payload_nbytes`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

log = logging.getLogger("latentworks.graph")

DEFAULT_CACHE_BYTES = (
    8 * 2**30
)  # the server's default: room for an SD 1.x/2.x checkpoint in float32 and images

Sizer = Callable[[Any], int]
"""``f(value) -> bytes`` a cached value holds."""

Leaf = Callable[[Any], "int | None"]
"""``f(obj) -> bytes`` for objects a sizer knows as a whole (a tensor, a network), else None to look inside."""


@runtime_checkable
class SizedPayload(Protocol):
    """A payload that says how many bytes it holds (the cache's duck-typed sizing protocol)."""

    def cache_nbytes(self) -> int: ...


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


def walk_nbytes(value: Any, leaf: Leaf | None = None, *, max_depth: int = 32) -> int:
    """Bytes held by ``value``, counting every object once (by identity).

    ``leaf(obj)`` is asked first for every object and may return its size; otherwise
    :class:`SizedPayload` objects, ``bytes``-likes and objects with an integer ``nbytes`` are leaves, and
    tuples, lists, dicts, sets, dataclasses and plain objects' attributes are walked (``max_depth`` deep).
    Anything else counts 0.
    """
    seen: set[int] = set()

    def size(obj: Any, depth: int) -> int:
        if obj is None or isinstance(obj, bool | int | float | str) or id(obj) in seen:
            return 0
        seen.add(id(obj))
        if leaf is not None:
            known = leaf(obj)
            if known is not None:
                return int(known)
        if isinstance(obj, SizedPayload):
            return int(obj.cache_nbytes())
        if isinstance(obj, bytes | bytearray | memoryview):
            return len(obj)
        nbytes = getattr(obj, "nbytes", None)
        if isinstance(nbytes, int) and not isinstance(obj, type):
            return nbytes
        if depth >= max_depth:
            return 0
        if isinstance(obj, Mapping):
            return sum(size(k, depth + 1) + size(v, depth + 1) for k, v in obj.items())
        if isinstance(obj, tuple | list | set | frozenset):
            return sum(size(v, depth + 1) for v in obj)
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            return sum(size(getattr(obj, f.name, None), depth + 1) for f in dataclasses.fields(obj))
        attrs = getattr(obj, "__dict__", None)
        if isinstance(attrs, dict) and not isinstance(obj, type):
            return sum(size(v, depth + 1) for v in attrs.values())
        return 0

    return size(value, 0)


def default_sizer(value: Any) -> int:
    """The torch-free sizer: :func:`walk_nbytes` with no extra knowledge."""
    return walk_nbytes(value)


class OutputCache:
    """A thread-safe LRU map from cache key to :class:`CacheEntry`.

    At most ``max_bytes`` bytes as measured by ``sizer`` on each entry's outputs (None: no byte limit) and, if
    ``max_entries`` is not None, at most that many entries; least recently used entries are evicted first, and
    an entry larger than ``max_bytes`` on its own is not kept at all. ``on_evict(outputs)`` is called (outside
    the lock) for every entry that leaves, whether evicted, replaced or cleared.
    """

    def __init__(
        self,
        max_entries: int | None = 256,
        *,
        max_bytes: int | None = None,
        sizer: Sizer | None = None,
        on_evict: Callable[[tuple[Any, ...]], None] | None = None,
    ) -> None:
        if max_entries is not None and max_entries < 0:
            raise ValueError(f"max_entries must be >= 0, got {max_entries}")
        if max_bytes is not None and max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0 or None (no limit), got {max_bytes}")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.sizer: Sizer = sizer or default_sizer
        self.on_evict = on_evict
        self._entries: OrderedDict[str, tuple[CacheEntry, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: str) -> CacheEntry | None:
        with self._lock:
            item = self._entries.get(key)
            if item is None:
                return None
            self._entries.move_to_end(key)
            return item[0]

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return key in self._entries

    def put(self, key: str, entry: CacheEntry) -> None:
        try:
            nbytes = max(0, int(self.sizer(entry.outputs)))
        except Exception:  # a sizer bug must not fail the job; the entry limit still applies
            log.exception("could not size the outputs cached under %s", key[:12])
            nbytes = 0
        gone: list[CacheEntry] = []
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
                if old[0] is not entry:
                    gone.append(old[0])
            if self.max_bytes is not None and nbytes > self.max_bytes:
                log.info(
                    "not caching %d bytes of outputs: over the cache's limit of %d", nbytes, self.max_bytes
                )
            else:
                self._entries[key] = (entry, nbytes)
                self._bytes += nbytes
                while (self.max_entries is not None and len(self._entries) > self.max_entries) or (
                    self.max_bytes is not None and self._bytes > self.max_bytes
                ):
                    _, (evicted, size) = self._entries.popitem(last=False)
                    self._bytes -= size
                    gone.append(evicted)
        self._evicted(gone)

    def _evicted(self, entries: list[CacheEntry]) -> None:
        if self.on_evict is None:
            return
        for e in entries:
            try:
                self.on_evict(e.outputs)
            except Exception:  # a release bug must not fail the job
                log.exception("on_evict failed for an evicted cache entry")

    def clear(self) -> None:
        with self._lock:
            gone = [e for e, _ in self._entries.values()]
            self._entries.clear()
            self._bytes = 0
        self._evicted(gone)

    def discard(self, where: Callable[[CacheEntry], bool]) -> int:
        """Drop every entry for which ``where(entry)`` is true (e.g. those holding a loaded model, for the
        server's POST /free); returns how many were dropped."""
        with self._lock:
            items = list(self._entries.items())
        doomed = [key for key, (entry, _) in items if where(entry)]
        with self._lock:
            for key in doomed:
                item = self._entries.pop(key, None)
                if item is not None:
                    self._bytes -= item[1]
        return len(doomed)

    @property
    def nbytes(self) -> int:
        """Bytes held by the cached entries, as the sizer measured them."""
        with self._lock:
            return self._bytes

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)
