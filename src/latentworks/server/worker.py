"""The one worker thread: takes jobs from the persistent queue, runs them, records history, reports events."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from latentworks.graph import Executor
from latentworks.server.hub import Hub, preview_frame, preview_frame_with_metadata
from latentworks.server.queue import Job, JobStore

log = logging.getLogger("latentworks.server")

# ComfyUI's --preview-method choices. latentworks makes latent2rgb previews (the latent format's RGB
# factors); "auto" is latent2rgb, as in ComfyUI without a TAESD decoder, and "taesd" falls back to it.
PREVIEW_METHODS = ("none", "auto", "latent2rgb", "taesd")


def check_preview_method(method: str) -> str:
    """``method`` if it is one of :data:`PREVIEW_METHODS`, else ValueError saying which are."""
    if method not in PREVIEW_METHODS:
        raise ValueError(f"preview method must be one of {', '.join(PREVIEW_METHODS)}, got {method!r}")
    return method


def preview_method_problem(extra_data: dict[str, Any]) -> str | None:
    """Why ``extra_data["preview_method"]`` of a POST /prompt body is not usable, or None.

    ComfyUI's frontend sends its "Live preview method" setting there (``none``, ``auto``, ``latent2rgb``,
    ``taesd``; it leaves the key out for ``default``, the server's setting).
    """
    method = extra_data.get("preview_method")
    if method is None or method == "default" or method in PREVIEW_METHODS:
        return None
    return (
        f"extra_data.preview_method must be one of default, {', '.join(PREVIEW_METHODS)}; "
        f"got {str(method)[:40]!r}"
    )


def job_previews(server_method: str, extra_data: Any) -> bool:
    """Whether a job sends preview frames: its own ``extra_data.preview_method`` when it names a method,
    else the server's (``serve --preview-method``, ComfyUI's default ``none``)."""
    asked = extra_data.get("preview_method") if isinstance(extra_data, dict) else None
    method = asked if asked in PREVIEW_METHODS else server_method
    return method != "none"


def holds_network(value: Any, depth: int = 0) -> bool:
    """Whether a cached output holds a torch network (a loaded model, text encoder or VAE).

    Looks through tuples, lists, dicts, dataclasses and plain objects' attributes (8 levels deep) for an
    ``nn.Module``; without torch imported nothing can hold one.
    """
    torch = sys.modules.get("torch")
    if torch is None or depth > 8 or value is None or isinstance(value, str | bytes | int | float):
        return False
    if isinstance(value, torch.nn.Module):
        return True
    if isinstance(value, torch.Tensor):
        return False
    if isinstance(value, dict):
        return any(holds_network(v, depth + 1) for v in value.values())
    if isinstance(value, tuple | list):
        return any(holds_network(v, depth + 1) for v in value)
    attrs = getattr(value, "__dict__", None)
    if isinstance(attrs, dict) and not isinstance(value, type):
        return any(holds_network(v, depth + 1) for v in attrs.values())
    slots = getattr(type(value), "__slots__", ())
    return any(holds_network(getattr(value, name, None), depth + 1) for name in slots)


def _load_malloc_trim() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


_MALLOC_TRIM = _load_malloc_trim()


def release_free_memory() -> None:
    """Hand memory that freed tensors left in glibc's heaps back to the OS (``malloc_trim(0)``).

    Without it, images and latents evicted from the output cache stay in the process's RSS: glibc keeps
    freed blocks of a few MiB for reuse (its mmap threshold grows with the sizes it sees). A no-op
    elsewhere.
    """
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


class NodeProgress:
    """The state of every node of one job that has started, for ComfyUI's ``progress_state`` message.

    ``{"prompt_id", "nodes": {node_id: {value, max, state, node_id, prompt_id, display_node_id,
    parent_node_id, real_node_id}}}`` with ``state`` "running", "finished" or "error"; nodes that have not
    started are left out. ComfyUI's frontend draws per-node progress from it.
    """

    def __init__(self, prompt_id: str) -> None:
        self.prompt_id = prompt_id
        self.nodes: dict[str, dict[str, Any]] = {}
        self.running: str | None = None

    def message(self) -> dict[str, Any]:
        return {"prompt_id": self.prompt_id, "nodes": {k: dict(v) for k, v in self.nodes.items()}}

    def start(self, node_id: str) -> None:
        self.nodes[node_id] = {
            "value": 0, "max": 1, "state": "running", "node_id": node_id, "prompt_id": self.prompt_id,
            "display_node_id": node_id, "parent_node_id": None, "real_node_id": node_id,
        }  # fmt: skip
        self.running = node_id

    def update(self, node_id: str | None, value: float, max_value: float) -> None:
        if node_id is not None:
            if node_id not in self.nodes:
                self.start(node_id)
            self.nodes[node_id].update(value=value, max=max_value)

    def end(self, state: str = "finished") -> bool:
        """Mark the running node ``state`` (finished: its value becomes its max); False if none ran."""
        node = self.nodes.get(self.running) if self.running is not None else None
        self.running = None
        if node is None:
            return False
        node["state"] = state
        if state == "finished":
            node["value"] = node["max"]
        return True


class Worker:
    """Runs queued jobs one at a time on a background thread."""

    def __init__(
        self,
        store: JobStore,
        executor: Executor,
        hub: Hub,
        dirs: dict[str, Path],
        device: Any = None,
        preview_method: str = "none",
    ):
        self.store = store
        self.executor = executor
        self.hub = hub
        self.dirs = dirs
        self.device = device
        self.preview_method = check_preview_method(preview_method)
        if preview_method == "taesd":
            log.warning(
                "TAESD previews are not available in latentworks; jobs get latent2rgb previews instead"
            )
        self._free_flags: dict[str, bool] = {}
        self.frees_done = 0
        self._wake = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._current: tuple[str, threading.Event] | None = None
        self.jobs_done = 0

    # -- control ---------------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="latentworks-worker", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread. A running job is cancelled and left 'running' in the store, so the next
        start marks it failed ('interrupted by server restart') exactly as after a crash."""
        with self._wake:
            self._stopping = True
            current = self._current
            self._wake.notify_all()
        if current is not None:
            current[1].set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def notify(self) -> None:
        with self._wake:
            self._wake.notify_all()

    def interrupt(self, prompt_id: str | None = None) -> bool:
        """Cancel the running job (only if it is ``prompt_id`` when given). True if one was cancelled."""
        current = self._current
        if current is None or (prompt_id is not None and current[0] != prompt_id):
            return False
        current[1].set()
        return True

    @property
    def running_id(self) -> str | None:
        current = self._current
        return current[0] if current else None

    def request_free(self, *, unload_models: bool = False, free_memory: bool = False) -> None:
        """Ask the worker to drop cached models (``unload_models``) or every cached output (``free_memory``)
        once it is idle: at once when no job runs, else after the running job (as ComfyUI's POST /free)."""
        with self._wake:
            if unload_models:
                self._free_flags["unload_models"] = True
            if free_memory:
                self._free_flags["free_memory"] = True
            self._wake.notify_all()

    def _free(self) -> None:
        with self._wake:
            flags, self._free_flags = self._free_flags, {}
        if not flags:
            return
        cache = self.executor.cache
        if flags.get("free_memory"):
            dropped = len(cache)
            cache.clear()
        else:
            dropped = cache.discard(lambda entry: holds_network(entry.outputs))
        gc.collect()
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()
        release_free_memory()
        self.frees_done += 1
        log.info("freed %d cached outputs (%s)", dropped, ", ".join(sorted(flags)))

    def status(self) -> dict[str, Any]:
        return {"status": {"exec_info": {"queue_remaining": self.queue_remaining()}}}

    def queue_remaining(self) -> int:
        return self.store.pending_count() + (1 if self._current is not None else 0)

    # -- loop ------------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._wake:
                if self._stopping:
                    return
            try:
                self._free()
            except Exception:  # a failed clean-up must not stop the worker
                log.exception("could not free cached outputs (POST /free)")
            try:
                job = self.store.claim_next()
            except Exception:
                log.exception("could not read the job queue")
                job = None
            if job is None:
                with self._wake:
                    if not self._stopping:
                        self._wake.wait(timeout=1.0)
                continue
            self._run_job(job)

    def _run_job(self, job: Job) -> None:
        cancel = threading.Event()
        with self._wake:
            self._current = (job.prompt_id, cancel)
            if self._stopping:
                cancel.set()
        client = job.client_id
        self.hub.send("status", self.status())
        previews = job_previews(self.preview_method, job.extra_data)

        nodes = NodeProgress(job.prompt_id)
        metadata_previews = self.hub.supports(client, "supports_preview_metadata")

        def send_state() -> None:
            self.hub.send("progress_state", nodes.message(), client)

        def on_event(event: str, data: dict[str, Any]) -> None:
            # As ComfyUI: progress_state when a node ends or starts and before each progress message; the
            # preview frame after its progress message, with the node in its metadata (type 4) for clients
            # that declared supports_preview_metadata, else type 1.
            if event == "preview":
                if not previews:
                    return
                if metadata_previews:
                    node = data.get("node")
                    meta = {"node_id": node, "display_node_id": node, "parent_node_id": None,
                            "real_node_id": node, "prompt_id": job.prompt_id}  # fmt: skip
                    frame = preview_frame_with_metadata(data["image_format"], data["data"], meta)
                else:
                    frame = preview_frame(data["image_format"], data["data"])
                self.hub.send_bytes(frame, client)
                return
            if event == "executing":
                if nodes.end():
                    send_state()
                self.hub.send(event, data, client)
                nodes.start(str(data["node"]))
                send_state()
                return
            if event == "progress":
                nodes.update(data.get("node"), data["value"], data["max"])
                send_state()
            elif event in ("execution_success", "execution_error", "execution_interrupted"):
                if nodes.end("finished" if event == "execution_success" else "error"):
                    send_state()
            self.hub.send(event, data, client)

        started = time.perf_counter()
        try:
            ctx = self.executor.new_context(
                job.prompt_id,
                on_event=on_event,
                cancel=cancel,
                device=self.device,
                output_dir=self.dirs["output"],
                temp_dir=self.dirs["temp"],
                input_dir=self.dirs["input"],
                extra_data=job.extra_data,
                previews=previews,
            )
            result = self.executor.execute(job.prompt, ctx, output_ids=job.outputs_to_execute or None)
            status, outputs, messages = result.status, result.outputs, result.messages
        except Exception as e:  # a bug in the engine must not kill the worker
            log.exception("job %s crashed the executor", job.prompt_id)
            error: dict[str, Any] = {
                "prompt_id": job.prompt_id,
                "node_id": None,
                "node_type": None,
                "executed": [],
                "exception_message": str(e),
                "exception_type": type(e).__qualname__,
                "traceback": traceback.format_exception(e),
                "current_inputs": {},
                "current_outputs": {},
            }
            self.hub.send("execution_error", error, client)
            status, outputs, messages = "error", {}, [["execution_error", error]]
        with self._wake:
            stopping = self._stopping
        if stopping and status == "interrupted":
            # Shutting down: leave the job 'running' so the next start reports it as interrupted by restart.
            self._current = None
            return
        try:
            self.store.finish(job.prompt_id, status, outputs, messages)
        except Exception:
            log.exception("could not record the result of job %s", job.prompt_id)
        self._current = None
        self.jobs_done += 1
        release_free_memory()  # what the job and cache evictions freed goes back to the OS while idle
        log.debug(
            "job %s finished (%s) in %.1f ms", job.prompt_id, status, 1000 * (time.perf_counter() - started)
        )
        # ComfyUI's order: the queue's new length, then "executing" with node None, which clients wait for
        # before they read /history (already written above).
        self.hub.send("status", self.status())
        self.hub.send("executing", {"node": None, "prompt_id": job.prompt_id}, client)
