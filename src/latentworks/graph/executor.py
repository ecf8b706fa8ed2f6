"""Run a validated workflow: only what output nodes need, in dependency order, with caching and cancel.

Events are reported through ``ExecutionContext.on_event(event, data)`` with ComfyUI's message names and
payloads: execution_start, execution_cached, executing, progress, executed, execution_success,
execution_error, execution_interrupted, plus "preview" (``{"image_format", "data", "node", "prompt_id"}``)
which the server turns into a binary frame. Node exceptions never escape :meth:`Executor.execute`.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from latentworks.graph.budgets import BudgetExceeded, JobBudgets
from latentworks.graph.cache import CacheEntry, OutputCache, Sizer, node_cache_key
from latentworks.graph.registry import NodeRegistry
from latentworks.graph.types import NodeResult, NodeSpec, Preview
from latentworks.graph.validate import validate_prompt

EventSink = Callable[[str, dict[str, Any]], None]


class Interrupted(Exception):
    """Raised by ``ctx.check_cancelled()`` once the job was cancelled; ends the job as interrupted."""


class JobTimedOut(Interrupted):
    """Raised by ``ctx.check_cancelled()`` once the job ran past its wall-time budget; ends it as an error.

    A subclass of :class:`Interrupted` so that it unwinds nodes (and network forward hooks) the same way.
    """


def _now_ms() -> int:
    return int(time.time() * 1000)


def _ignore(event: str, data: dict[str, Any]) -> None:
    pass


@dataclass
class ExecutionContext:
    """Everything one job's nodes may use; one per job, passed as ``ctx`` to every ``execute``.

    Attributes:
        prompt_id: the job id.
        cache: the executor's output cache (shared across jobs by the executor that owns it).
        device: opaque device/memory manager slot; the graph engine never looks inside it.
        on_event: progress sink ``(event, data) -> None``.
        cancel: set it (``ctx.cancel.set()``) to interrupt the job between or inside nodes.
        budgets: the job's resource limits; nodes check them before allocating (:meth:`check_pixels`,
            :meth:`check_latent`).
        deadline: ``time.monotonic()`` value past which :meth:`check_cancelled` ends the job
            (set by :meth:`Executor.execute` from ``budgets.max_job_seconds`` when left None).
        output_dir, temp_dir, input_dir: where nodes write results / scratch files and read uploads.
        extra_data: the job's extra_data (client_id, extra_pnginfo ...).
        previews: whether anyone wants preview images; when False, :meth:`progress` drops them and nodes
            may skip making them (the server switches them off unless a preview method is asked for).
        node_id, class_type: the node currently executing (set by the executor).
    """

    prompt_id: str
    cache: OutputCache
    device: Any = None
    on_event: EventSink = _ignore
    cancel: threading.Event = field(default_factory=threading.Event)
    budgets: JobBudgets = field(default_factory=JobBudgets)
    deadline: float | None = None
    output_dir: Path | None = None
    temp_dir: Path | None = None
    input_dir: Path | None = None
    extra_data: Mapping[str, Any] = field(default_factory=dict)
    previews: bool = True
    node_id: str | None = None
    class_type: str | None = None

    @property
    def cancelled(self) -> bool:
        return self.cancel.is_set()

    def check_cancelled(self) -> None:
        """Raise :class:`Interrupted` if the job was cancelled, :class:`JobTimedOut` if it ran out of time.

        Call it often inside long nodes; the torch nodes also call it before every network block.
        """
        if self.cancel.is_set():
            raise Interrupted(f"job {self.prompt_id} was interrupted")
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise JobTimedOut(
                f"{self._where()}: the job ran longer than this server's limit of "
                f"{self.budgets.max_job_seconds:g} s per job (serve --max-job-seconds); use fewer steps, "
                "a smaller image or batch, or ask the operator to raise the limit"
            )

    def _where(self) -> str:
        return f"{self.class_type or 'job'} (node {self.node_id})" if self.node_id else "the job"

    def check_pixels(
        self,
        width: int,
        height: int,
        batch: int = 1,
        *,
        inputs: str,
        advice: str = "Use a smaller size or batch.",
    ) -> None:
        """Raise :class:`BudgetExceeded` if a batch of ``batch`` images of ``width`` x ``height`` pixels is
        over the job's budget. ``inputs`` names the node inputs that asked for it, ``advice`` what to do."""
        problem = self.budgets.pixels_error(width, height, batch)
        if problem is not None:
            raise BudgetExceeded(f"{self._where()}, input {inputs}: {problem}. {advice}")

    def check_latent(self, shape: tuple[int, ...], *, inputs: str) -> None:
        """Raise :class:`BudgetExceeded` if a latent of ``shape`` (B, C, h, w) is over the job's budget."""
        problem = self.budgets.latent_error(shape)
        if problem is not None:
            raise BudgetExceeded(f"{self._where()}, input {inputs}: {problem}. Use a smaller size or batch.")

    def progress(self, value: float, max: float, preview: Preview | tuple[str, bytes] | None = None) -> None:
        """Report progress of the current node (``value`` out of ``max``), optionally with a preview image.

        Also checks for cancellation, so a sampler callback that reports progress is cancellable.
        """
        self.emit("progress", {"value": value, "max": max, "prompt_id": self.prompt_id, "node": self.node_id})
        if preview is not None and self.previews:
            if not isinstance(preview, Preview):
                preview = Preview(*preview)
            self.emit(
                "preview",
                {
                    "image_format": preview.image_format,
                    "data": preview.data,
                    "node": self.node_id,
                    "prompt_id": self.prompt_id,
                },
            )
        self.check_cancelled()

    def emit(self, event: str, data: dict[str, Any]) -> None:
        self.on_event(event, data)


@dataclass
class ExecutionResult:
    """How a job ended.

    Attributes:
        status: "success", "error" or "interrupted".
        outputs: ``{node_id: ui}`` for output nodes that produced ui data (history "outputs").
        executed: node ids that ran in this job (not from the cache).
        cached: node ids whose outputs came from the cache.
        error: the execution_error / execution_interrupted payload, or None.
        messages: ``[[event, data], ...]`` of the status events, as ComfyUI stores them in history.
    """

    status: str
    outputs: dict[str, dict] = field(default_factory=dict)
    executed: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)
    error: dict[str, Any] | None = None
    messages: list[list[Any]] = field(default_factory=list)


class _NodeFailed(Exception):
    def __init__(
        self, node_id: str | None, class_type: str | None, exc: BaseException, inputs: Mapping[str, Any]
    ):
        super().__init__(str(exc))
        self.node_id, self.class_type, self.exc, self.inputs = node_id, class_type, exc, inputs


def _short(value: Any) -> str:
    try:
        text = repr(value)
    except Exception:
        text = f"<{type(value).__name__}>"
    return text if len(text) <= 200 else text[:200] + "..."


class Executor:
    """Runs workflows against one registry and owns the output cache that persists across jobs.

    Args:
        registry: the node types.
        cache_size: most entries the output cache keeps (None: no count limit, bytes only).
        cache_bytes: most bytes the output cache keeps (sized by ``sizer``); None = no byte limit.
        sizer: ``f(value) -> bytes`` for node outputs; the nodes layer passes one that knows tensors and
            models (see :func:`latentworks.graph.cache.default_sizer` for what is known without it).
        budgets: the :class:`JobBudgets` every new context gets unless it is given its own.
        on_evict: called with the outputs of every entry that leaves the cache (the server lets its device
            manager forget the networks in them).
    """

    def __init__(
        self,
        registry: NodeRegistry,
        *,
        cache_size: int | None = 256,
        cache_bytes: int | None = None,
        sizer: Sizer | None = None,
        budgets: JobBudgets | None = None,
        on_evict: Callable[[tuple[Any, ...]], None] | None = None,
    ) -> None:
        self.registry = registry
        self.cache = OutputCache(cache_size, max_bytes=cache_bytes, sizer=sizer, on_evict=on_evict)
        self.budgets = budgets if budgets is not None else JobBudgets()

    def new_context(self, prompt_id: str, **kwargs: Any) -> ExecutionContext:
        """An :class:`ExecutionContext` wired to this executor's cache and budgets (kwargs as in the dataclass)."""
        kwargs.setdefault("budgets", self.budgets)
        return ExecutionContext(prompt_id=prompt_id, cache=self.cache, **kwargs)

    def execute(
        self, prompt: Any, ctx: ExecutionContext, *, output_ids: list[str] | None = None
    ) -> ExecutionResult:
        """Validate and run ``prompt``; report events to ``ctx.on_event``; never raises for node errors."""
        result = ExecutionResult(status="success")

        def status_event(event: str, data: dict[str, Any]) -> None:
            result.messages.append([event, data])
            ctx.emit(event, data)

        if ctx.deadline is None and ctx.budgets.max_job_seconds is not None:
            ctx.deadline = time.monotonic() + ctx.budgets.max_job_seconds
        status_event("execution_start", {"prompt_id": ctx.prompt_id, "timestamp": _now_ms()})
        validation = validate_prompt(self.registry, prompt)
        if not validation.ok:
            first = next(iter(validation.node_errors.items()), None)
            err = validation.error or {}
            message = err.get("message", "invalid workflow")
            if first is not None:
                message += ": " + "; ".join(e["message"] for e in first[1]["errors"])
            result.status = "error"
            result.error = {
                "prompt_id": ctx.prompt_id,
                "node_id": first[0] if first else None,
                "node_type": first[1]["class_type"] if first else None,
                "executed": [],
                "exception_message": message,
                "exception_type": "ValidationError",
                "traceback": [],
                "current_inputs": {},
                "current_outputs": {},
                "node_errors": validation.node_errors,
            }
            status_event("execution_error", result.error)
            return result

        graph = validation.prompt
        targets = [o for o in (output_ids or validation.outputs) if o in graph]
        try:
            keys = self._cache_keys(graph)
        except _NodeFailed as failed:
            return self._fail(result, ctx, failed, status_event)
        cached = self._cached_nodes(graph, targets, keys)
        result.cached = sorted(cached)
        status_event(
            "execution_cached", {"nodes": result.cached, "prompt_id": ctx.prompt_id, "timestamp": _now_ms()}
        )

        values: dict[str, tuple[Any, ...]] = {}
        stack = list(reversed(targets))
        try:
            while stack:
                node_id = stack[-1]
                if node_id in values:
                    stack.pop()
                    continue
                ctx.check_cancelled()
                entry = self.cache.get(keys[node_id])
                if entry is not None:
                    values[node_id] = entry.outputs
                    if entry.ui is not None:
                        result.outputs[node_id] = dict(entry.ui)
                        ctx.emit("executed", self._executed_msg(ctx, node_id, entry.ui))
                    stack.pop()
                    continue
                waiting = self._missing_inputs(graph, node_id, values)
                if waiting:
                    stack.extend(waiting)
                    continue
                self._run_node(graph, node_id, keys[node_id], values, ctx, result, prompt)
                stack.pop()
        except JobTimedOut as e:
            return self._fail(result, ctx, _NodeFailed(ctx.node_id, ctx.class_type, e, {}), status_event)
        except Interrupted:
            result.status = "interrupted"
            result.error = {
                "prompt_id": ctx.prompt_id,
                "node_id": ctx.node_id,
                "node_type": ctx.class_type,
                "executed": list(result.executed),
            }
            status_event("execution_interrupted", {**result.error, "timestamp": _now_ms()})
            return result
        except _NodeFailed as failed:
            return self._fail(result, ctx, failed, status_event)
        finally:
            ctx.node_id = ctx.class_type = None
        status_event("execution_success", {"prompt_id": ctx.prompt_id, "timestamp": _now_ms()})
        return result

    # -- internals -------------------------------------------------------------------------------

    def _fail(
        self, result: ExecutionResult, ctx: ExecutionContext, failed: _NodeFailed, status_event: EventSink
    ) -> ExecutionResult:
        exc = failed.exc
        result.status = "error"
        result.error = {
            "prompt_id": ctx.prompt_id,
            "node_id": failed.node_id,
            "node_type": failed.class_type,
            "executed": list(result.executed),
            "exception_message": str(exc),
            "exception_type": f"{type(exc).__module__}.{type(exc).__qualname__}",
            # Budget and time limits are the user's input, not a bug: the message says it all.
            "traceback": []
            if isinstance(exc, BudgetExceeded | JobTimedOut)
            else traceback.format_exception(exc),
            "current_inputs": {k: _short(v) for k, v in failed.inputs.items()},
            "current_outputs": {},
            "timestamp": _now_ms(),
        }
        status_event("execution_error", result.error)
        return result

    def _executed_msg(self, ctx: ExecutionContext, node_id: str, ui: Mapping[str, Any]) -> dict[str, Any]:
        return {"node": node_id, "display_node": node_id, "output": dict(ui), "prompt_id": ctx.prompt_id}

    def _cache_keys(self, graph: Mapping[str, dict]) -> dict[str, str]:
        """Cache key per node; ``graph`` is in topological order (validation guarantees it)."""
        keys: dict[str, str] = {}
        for node_id, node in graph.items():
            spec = self.registry[node["class_type"]]
            literals = {k: v for k, v in node["inputs"].items() if not isinstance(v, tuple)}
            links = [(k, keys[v[0]], v[1]) for k, v in node["inputs"].items() if isinstance(v, tuple)]
            fingerprint = None
            if spec.fingerprint is not None:
                try:
                    fingerprint = spec.fingerprint(**literals)
                except Exception as e:
                    raise _NodeFailed(node_id, spec.name, e, literals) from e
            uses_id = any(i.hidden and i.type == "UNIQUE_ID" for i in spec.inputs)
            keys[node_id] = node_cache_key(
                spec.name, literals, links, fingerprint=fingerprint, node_id=node_id if uses_id else None
            )
        return keys

    def _cached_nodes(self, graph: Mapping[str, dict], targets: list[str], keys: dict[str, str]) -> set[str]:
        """Nodes the run will take from the cache (walking up from targets, stopping at hits)."""
        cached: set[str] = set()
        seen: set[str] = set()
        stack = list(targets)
        while stack:
            node_id = stack.pop()
            if node_id in seen:
                continue
            seen.add(node_id)
            if keys[node_id] in self.cache:
                cached.add(node_id)
                continue
            stack.extend(v[0] for v in graph[node_id]["inputs"].values() if isinstance(v, tuple))
        return cached

    def _missing_inputs(self, graph: Mapping[str, dict], node_id: str, values: dict[str, tuple]) -> list[str]:
        """Sources still to evaluate before ``node_id`` can run (lazy inputs only once requested)."""
        node = graph[node_id]
        spec = self.registry[node["class_type"]]
        lazy = {i.name for i in spec.inputs if i.lazy}
        inputs = node["inputs"]
        missing = [
            v[0] for k, v in inputs.items() if isinstance(v, tuple) and k not in lazy and v[0] not in values
        ]
        if missing or not lazy or spec.check_lazy_status is None:
            return missing
        available = self._gather(inputs, values, allow_missing=True)
        try:
            wanted = list(spec.check_lazy_status(**available))
        except Exception as e:
            raise _NodeFailed(node_id, spec.name, e, available) from e
        return [
            inputs[name][0]
            for name in wanted
            if name in lazy and isinstance(inputs.get(name), tuple) and inputs[name][0] not in values
        ]

    @staticmethod
    def _gather(
        inputs: Mapping[str, Any], values: dict[str, tuple], *, allow_missing: bool = False
    ) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, v in inputs.items():
            if isinstance(v, tuple):
                if v[0] in values:
                    out[name] = values[v[0]][v[1]]
                elif allow_missing:
                    out[name] = None
                else:  # an unrequested lazy input
                    out[name] = None
            else:
                out[name] = v
        return out

    def _hidden_inputs(
        self, spec: NodeSpec, node_id: str, ctx: ExecutionContext, prompt: Mapping[str, Any]
    ) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for inp in spec.inputs:
            if not inp.hidden:
                continue
            if inp.type == "PROMPT":
                out[inp.name] = prompt
            elif inp.type == "EXTRA_PNGINFO":
                out[inp.name] = ctx.extra_data.get("extra_pnginfo")
            elif inp.type == "UNIQUE_ID":
                out[inp.name] = node_id
        return out

    def _run_node(
        self,
        graph: Mapping[str, dict],
        node_id: str,
        key: str,
        values: dict[str, tuple],
        ctx: ExecutionContext,
        result: ExecutionResult,
        raw_prompt: Mapping[str, Any],
    ) -> None:
        node = graph[node_id]
        spec = self.registry[node["class_type"]]
        kwargs = self._gather(node["inputs"], values)
        kwargs.update(self._hidden_inputs(spec, node_id, ctx, raw_prompt))
        ctx.node_id, ctx.class_type = node_id, spec.name
        ctx.emit("executing", {"node": node_id, "display_node": node_id, "prompt_id": ctx.prompt_id})
        try:
            returned = spec.execute(ctx, **kwargs)
            outputs, ui = _unpack(spec, returned)
        except Interrupted:
            raise
        except Exception as e:
            raise _NodeFailed(node_id, spec.name, e, kwargs) from e
        values[node_id] = outputs
        self.cache.put(key, CacheEntry(outputs=outputs, ui=ui))
        result.executed.append(node_id)
        if ui is not None:
            result.outputs[node_id] = dict(ui)
            ctx.emit("executed", self._executed_msg(ctx, node_id, ui))


def _unpack(spec: NodeSpec, returned: Any) -> tuple[tuple[Any, ...], Mapping[str, Any] | None]:
    if isinstance(returned, NodeResult):
        outputs, ui = tuple(returned.outputs), returned.ui
    elif isinstance(returned, tuple | list):
        outputs, ui = tuple(returned), None
    elif returned is None and not spec.outputs:
        outputs, ui = (), None
    else:
        raise TypeError(
            f"node {spec.name} returned {type(returned).__name__}; execute must return a tuple "
            f"(one value per declared output) or a NodeResult"
        )
    if len(outputs) != len(spec.outputs):
        raise TypeError(
            f"node {spec.name} returned {len(outputs)} values but declares {len(spec.outputs)} outputs"
        )
    return outputs, ui
