"""The workflow server: ComfyUI-compatible HTTP + WebSocket API over the graph engine.

``create_app(registry, data_dir=..., models_dir=...)`` builds the FastAPI app; ``serve(registry, host,
port, ...)`` runs it with uvicorn after the safety checks. Every route is also served under ``/api``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import mimetypes
import os
import platform
import socket
import sqlite3
import sys
from collections.abc import Callable, Iterable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import uuid4

from fastapi import APIRouter, FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from latentworks._version import __version__
from latentworks.graph import (
    DEFAULT_CACHE_BYTES,
    Executor,
    JobBudgets,
    NodeRegistry,
    Sizer,
    error_item,
    node_info,
    validate_prompt,
)
from latentworks.graph.ui_workflow import (
    MissingNodeTypes,
    WorkflowConversionError,
    is_ui_workflow,
    missing_node_type_error,
    ui_to_api,
)
from latentworks.nodes.budgets import upload_pixels_error
from latentworks.server.auth import (
    BodyLimit,
    OriginGuard,
    TokenAuth,
    browser_request,
    check_bind,
    install_log_redaction,
    is_loopback,
)
from latentworks.server.comfy_routes import comfy_routes, feature_flags_reply
from latentworks.server.files import (
    FOLDER_TYPES,
    UploadError,
    ViewError,
    resolve_file,
    save_upload,
    sniff_image,
    view_variant,
)
from latentworks.server.hub import Hub
from latentworks.server.inputs import MAX_JSON_DEPTH, json_problem
from latentworks.server.queue import JobStore
from latentworks.server.userdata import UserData
from latentworks.server.worker import Worker, preview_method_problem

log = logging.getLogger("latentworks.server")

STATIC_DIR = Path(__file__).parent / "static"

# Model kinds ComfyUI's GET /models/{folder} knows: a known kind with no folder yet lists [] (not 404).
MODEL_KINDS = frozenset(
    {"checkpoints", "loras", "vae", "text_encoders", "clip", "diffusion_models", "unet", "clip_vision",
     "style_models", "embeddings", "diffusers", "vae_approx", "controlnet", "t2i_adapter", "gligen",
     "upscale_models", "latent_upscale_models", "hypernetworks", "photomaker", "classifiers",
     "model_patches", "audio_encoders", "configs"}
)  # fmt: skip

DEFAULT_MAX_UPLOAD_BYTES = 32 * 2**20
DEFAULT_MAX_BODY_BYTES = 16 * 2**20


@dataclass
class ServerState:
    """What the routes share; available as ``app.state.latentworks``."""

    registry: NodeRegistry
    executor: Executor
    store: JobStore
    worker: Worker
    hub: Hub
    dirs: dict[str, Path]
    models_dir: Path
    max_upload_bytes: int
    devices_info: Callable[[], list[dict]] | None


class SafeJSONResponse(JSONResponse):
    """JSON that always encodes: a lone UTF-16 surrogate (which UTF-8 cannot encode) left in stored data by
    an older version is written as a ``\\udXXX`` escape instead of failing the whole response with a 500."""

    def render(self, content: Any) -> bytes:
        try:
            return super().render(content)
        except UnicodeEncodeError:
            return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode()
        except ValueError:  # NaN/Infinity stored by an older version: not JSON, sent as null
            return json.dumps(
                _finite(content), ensure_ascii=True, allow_nan=False, separators=(",", ":")
            ).encode()


def _finite(value: Any) -> Any:
    """``value`` with NaN and infinities replaced by None (JSON has no such numbers)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _bad_request(type_: str, message: str, details: str = "", status: int = 400) -> JSONResponse:
    return SafeJSONResponse(
        {"error": error_item(type_, message, details), "node_errors": {}}, status_code=status
    )


MAX_HISTORY_ITEMS = 1_000_000


def _convert_ui(registry: NodeRegistry, workflow: Any) -> tuple[dict | None, JSONResponse | None]:
    """(API prompt, None) or (None, ComfyUI-shaped 400) for an editor-format workflow."""
    try:
        return ui_to_api(workflow, registry), None
    except MissingNodeTypes as e:
        error = e.error()
        error["details"] += f"; all missing: {str(e)[:1000]}" if len(e.missing) > 1 else ""
        return None, SafeJSONResponse({"error": error, "node_errors": {}}, status_code=400)
    except WorkflowConversionError as e:
        return None, _bad_request(
            "invalid_workflow", str(e)[:2000], "the editor-format workflow could not be converted"
        )


def _missing_node_type(registry: NodeRegistry, prompt: Any) -> JSONResponse | None:
    """ComfyUI's top-level missing_node_type 400 for the first node of an unknown type, else None."""
    if not isinstance(prompt, dict):
        return None
    for node_id, node in prompt.items():
        class_type = node.get("class_type") if isinstance(node, dict) else None
        if isinstance(class_type, str) and class_type not in registry:
            meta = node.get("_meta")
            title = meta.get("title") if isinstance(meta, dict) else None
            error = missing_node_type_error(
                str(node_id), class_type, title if isinstance(title, str) else None
            )
            return SafeJSONResponse({"error": error, "node_errors": {}}, status_code=400)
    return None


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON (use null or a finite number)")


def _json_content_type(request: Request) -> bool:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    return ctype == "application/json" or (ctype.startswith("application/") and ctype.endswith("+json"))


async def _json_body(request: Request) -> tuple[Any, JSONResponse | None]:
    """(parsed body, None) or (None, 4xx response); never raises on malformed or deeply nested JSON.

    Refused: a non-empty body a browser sent without ``Content-Type: application/json`` (415: a cross-site
    page can send text/plain or a form without a CORS preflight, but not JSON), NaN/Infinity, invalid
    UTF-8 and lone surrogates (400). Scripts that send no Origin/Sec-Fetch headers may use any content type
    (ComfyUI's own urllib example sends application/x-www-form-urlencoded; so does ``curl -d``).
    """
    raw = await request.body()
    if not raw.strip():
        return {}, None
    if not _json_content_type(request) and browser_request(request.headers):
        return None, _bad_request(
            "unsupported_media_type",
            "send the body with 'Content-Type: application/json'",
            f"got {request.headers.get('content-type', 'no content type')!r} from a browser",
            status=415,
        )
    try:
        body = json.loads(raw, parse_constant=_no_constants)
    except (ValueError, RecursionError) as e:
        return None, _bad_request("invalid_json", "The request body is not valid JSON", str(e)[:200])
    problem = json_problem(body)
    if problem is not None and problem[0] == "surrogate":
        return None, _bad_request(
            "invalid_string",
            f"a string at {problem[1]} holds a lone UTF-16 surrogate (such as \\ud800), which is not valid Unicode",
            "send text as valid UTF-8; escape characters outside the BMP as a surrogate pair",
        )
    if problem is not None:
        return None, _bad_request(
            "invalid_json",
            f"the body is nested deeper than {MAX_JSON_DEPTH} levels (at {problem[1][:200]})",
            "workflows need only a few levels; flatten the data",
        )
    return body, None


def create_app(
    registry: NodeRegistry,
    *,
    data_dir: str | Path,
    models_dir: str | Path,
    token: str | None = None,
    device: Any = None,
    cache_size: int | None = None,
    on_evict: Callable[[tuple[Any, ...]], None] | None = None,
    cache_bytes: int | None = DEFAULT_CACHE_BYTES,
    sizer: Sizer | None = None,
    budgets: JobBudgets | None = None,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    static_dir: str | Path | None = None,
    devices_info: Callable[[], list[dict]] | None = None,
    allowed_hosts: Iterable[str] = (),
    allowed_origins: Iterable[str] = (),
    preview_method: str = "none",
) -> FastAPI:
    """Build the server app.

    Args:
        registry: the node types workflows may use.
        data_dir: holds ``queue.sqlite3`` and the ``input/``, ``output/``, ``temp/`` folders (created).
        models_dir: listed by /models and /embeddings (one subfolder per model kind).
        token: if set, every request (HTTP and WebSocket) must carry it as ``Authorization: Bearer``
            or ``?token=``.
        device: the device manager handed to every job's ExecutionContext: a
            :class:`~latentworks.pipelines.memory.MemoryManager` (networks on the accelerator within its
            budget) or a plain device name.
        cache_size: most entries in the executor's output LRU cache (default None: bounded by bytes only,
            so a few large models and many small images are held alike).
        on_evict: called with the outputs of each entry leaving the output cache; ``serve`` passes
            ``nodes.devices.release_networks`` bound to its memory manager.
        cache_bytes: bytes the output cache may hold (None = no limit); sized by ``sizer``
            (``latentworks.nodes.guards.payload_nbytes`` for the torch nodes; default: the graph engine's
            duck-typed :func:`~latentworks.graph.default_sizer`).
        budgets: per-job limits (image/batch pixels, latent size, wall time); also the decoded-size limit
            of uploads. Default: :class:`~latentworks.graph.JobBudgets` defaults.
        max_upload_bytes / max_body_bytes: request size limits (413 beyond them).
        static_dir: the built editor (default ``latentworks/server/static``), served at ``/`` if present.
        devices_info: optional callable returning the "devices" list of /system_stats.
        allowed_hosts: Host names accepted besides loopback names and IP literals (the bound host, a
            reverse proxy's name; "*" for any). Other Host headers get 403 (DNS-rebinding defence).
        allowed_origins: web origins (``https://editor.example``) allowed to call the API from a browser
            besides the server's own pages ("*" for any); they also get CORS headers.
        preview_method: ComfyUI's ``--preview-method``: ``none`` (default: no binary preview frames unless a
            job's ``extra_data.preview_method`` asks for them), ``auto``, ``latent2rgb`` or ``taesd`` (all
            three send latent2rgb previews).
    """
    data_dir = Path(data_dir)
    dirs = {name: data_dir / name for name in FOLDER_TYPES}
    for path in dirs.values():
        path.mkdir(parents=True, exist_ok=True)
    store = JobStore(data_dir / "queue.sqlite3")
    executor = Executor(
        registry,
        cache_size=cache_size,
        cache_bytes=cache_bytes,
        sizer=sizer,
        budgets=budgets,
        on_evict=on_evict,
    )
    hub = Hub()
    worker = Worker(store, executor, hub, dirs, device=device, preview_method=preview_method)
    state = ServerState(
        registry=registry,
        executor=executor,
        store=store,
        worker=worker,
        hub=hub,
        dirs=dirs,
        models_dir=Path(models_dir),
        max_upload_bytes=max_upload_bytes,
        devices_info=devices_info,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        store.open()  # no-op unless a previous lifespan closed it
        hub.attach(asyncio.get_running_loop())
        worker.start()
        try:
            yield
        finally:
            await asyncio.to_thread(worker.stop)
            store.close()

    app = FastAPI(
        title="latentworks",
        version=__version__,
        lifespan=lifespan,
        default_response_class=SafeJSONResponse,
    )
    app.state.latentworks = state
    router = _routes(state)
    app.include_router(router)
    app.include_router(router, prefix="/api")
    # The routes of ComfyUI's official frontend (settings, user data, jobs, ...): server/comfy_routes.py.
    userdata = UserData(data_dir / "user" / "default", max_file_bytes=max_body_bytes)
    frontend_router = comfy_routes(state, userdata, MODEL_KINDS)
    app.include_router(frontend_router)
    app.include_router(frontend_router, prefix="/api")

    static = Path(static_dir) if static_dir is not None else STATIC_DIR
    if (static / "index.html").is_file():
        app.mount("/", StaticFiles(directory=static, html=True), name="editor")
    else:

        @app.get("/", include_in_schema=False)
        async def no_editor() -> HTMLResponse:
            return HTMLResponse(
                "<!doctype html><title>latentworks</title><p>latentworks workflow server is running. "
                "The browser editor is not built (no static/index.html); the API is under /api.</p>"
            )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        type_ = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _bad_request(
            type_, f"{request.method} {request.url.path[:200]}: {exc.detail}", status=exc.status_code
        )

    @app.exception_handler(RequestValidationError)
    async def invalid_params(request: Request, exc: RequestValidationError) -> JSONResponse:
        where = ", ".join(".".join(str(p) for p in e.get("loc", ())) for e in exc.errors()[:5])
        return _bad_request("invalid_request", f"invalid request parameter(s): {where}", str(exc)[:300])

    @app.exception_handler(sqlite3.DatabaseError)
    async def database_error(request: Request, exc: sqlite3.DatabaseError) -> JSONResponse:
        log.error("the job database %s could not be read: %s", store.path, exc)
        return _bad_request(
            "database_error",
            f"the job database could not be read ({exc}). Restart the server: a damaged database is moved "
            "aside at start-up and a new one started (docs/server.md, 'Damaged database').",
            status=503,
        )

    install_log_redaction()
    allowed_origins = tuple(allowed_origins)
    # Added innermost first: OriginGuard runs first, then CORS (answers preflights for allowed origins),
    # then the token check, then the body limit.
    app.add_middleware(BodyLimit, max_body_bytes=max_body_bytes, max_upload_bytes=max_upload_bytes)
    if token:
        app.add_middleware(TokenAuth, token=token)
    if allowed_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=["*"] if "*" in allowed_origins else list(allowed_origins),
            allow_methods=["*"],
            allow_headers=["*"],
        )
    app.add_middleware(OriginGuard, allowed_hosts=tuple(allowed_hosts), allowed_origins=allowed_origins)
    return app


def _routes(s: ServerState) -> APIRouter:
    r = APIRouter(default_response_class=SafeJSONResponse)

    # -- node types ------------------------------------------------------------------------------

    @r.get("/object_info")
    def object_info() -> JSONResponse:
        return SafeJSONResponse(s.registry.object_info())

    @r.get("/object_info/{node_class}")
    def object_info_one(node_class: str) -> JSONResponse:
        spec = s.registry.get(node_class)
        if spec is None:
            return SafeJSONResponse({})  # as ComfyUI: an unknown type has no entry, not an error
        return SafeJSONResponse({node_class: node_info(spec)})

    # -- prompt and queue ------------------------------------------------------------------------

    @r.get("/prompt")
    def get_prompt() -> dict:
        return {"exec_info": {"queue_remaining": s.worker.queue_remaining()}}

    @r.post("/prompt")
    async def post_prompt(request: Request) -> JSONResponse:
        body, err = await _json_body(request)
        if err is not None:
            return err
        if not isinstance(body, dict):
            return _bad_request("invalid_prompt", "The body must be a JSON object with a 'prompt' field")
        if "prompt" not in body:
            return _bad_request(
                "no_prompt", "No prompt provided", "add a 'prompt' field with the API-format workflow"
            )
        client_id = body.get("client_id")
        extra_data = body.get("extra_data", {})
        front = body.get("front", False)
        number = body.get("number")
        prompt_id = body.get("prompt_id")
        if client_id is not None and not isinstance(client_id, str):
            return _bad_request("invalid_prompt", "client_id must be a string")
        if not isinstance(extra_data, dict):
            return _bad_request("invalid_prompt", "extra_data must be an object")
        if (problem := preview_method_problem(extra_data)) is not None:
            return _bad_request("invalid_prompt", problem)
        if not isinstance(front, bool):
            return _bad_request("invalid_prompt", "front must be true or false")
        if number is not None and (
            isinstance(number, bool) or not isinstance(number, int | float) or not abs(number) < 2**53
        ):
            return _bad_request("invalid_prompt", "number must be a finite number below 2**53")
        if prompt_id is not None and (not isinstance(prompt_id, str) or not 0 < len(prompt_id) <= 128):
            return _bad_request("invalid_prompt", "prompt_id must be a string of 1 to 128 characters")
        prompt = body["prompt"]
        if is_ui_workflow(prompt):  # an editor-format workflow: convert it first, keep it for the PNGs
            workflow = prompt
            prompt, err = await asyncio.to_thread(_convert_ui, s.registry, workflow)
            if err is not None:
                return err
            pnginfo = extra_data.get("extra_pnginfo")
            if not isinstance(pnginfo, dict) or "workflow" not in pnginfo:
                extra_data = {
                    **extra_data,
                    "extra_pnginfo": {**(pnginfo if isinstance(pnginfo, dict) else {}), "workflow": workflow},
                }
        missing = _missing_node_type(s.registry, prompt)
        if missing is not None:
            return missing
        result = await asyncio.to_thread(validate_prompt, s.registry, prompt)
        if not result.ok:
            return SafeJSONResponse(result.response(), status_code=400)
        prompt_id = prompt_id or str(uuid4())
        extra_data = {**extra_data, "client_id": client_id} if client_id is not None else dict(extra_data)
        try:
            number = s.store.add(prompt_id, prompt, extra_data, result.outputs, front=front, number=number)
        except KeyError as e:
            return _bad_request("duplicate_prompt_id", str(e.args[0]))
        s.worker.notify()
        s.hub.send("status", s.worker.status())
        number = int(number) if float(number).is_integer() else number
        return SafeJSONResponse({"prompt_id": prompt_id, "number": number, "node_errors": {}})

    @r.post("/workflow/convert")
    async def convert_workflow(request: Request) -> JSONResponse:
        """An editor-format workflow (the body, or its 'workflow' field) -> the API-format prompt."""
        body, err = await _json_body(request)
        if err is not None:
            return err
        workflow = body.get("workflow", body) if isinstance(body, dict) else body
        if not is_ui_workflow(workflow):
            return _bad_request(
                "invalid_workflow",
                "expected an editor-format workflow: an object with 'nodes' and 'links' lists",
                'send the workflow JSON the editor saves, or {"workflow": <that JSON>}',
            )
        prompt, err = await asyncio.to_thread(_convert_ui, s.registry, workflow)
        if err is not None:
            return err
        return SafeJSONResponse(prompt)

    @r.get("/queue")
    def get_queue() -> dict:
        running = s.store.jobs("running")
        pending = s.store.jobs("pending")
        return {
            "queue_running": [j.queue_entry() for j in running],
            "queue_pending": [j.queue_entry() for j in pending],
        }

    @r.post("/queue")
    async def post_queue(request: Request) -> JSONResponse:
        body, err = await _json_body(request)
        if err is not None:
            return err
        if not isinstance(body, dict):
            return _bad_request(
                "invalid_request", 'expected {"clear": true}, {"delete": [ids]} or {"requeue": [ids]}'
            )
        out: dict[str, Any] = {}
        if body.get("clear") is True:
            out["deleted"] = s.store.delete_pending()
        for key in ("delete", "requeue"):
            if key in body:
                ids = body[key]
                if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
                    return _bad_request("invalid_request", f"'{key}' must be a list of prompt ids")
                if key == "delete":
                    out["deleted"] = out.get("deleted", 0) + s.store.delete_pending(ids)
                else:
                    out["requeued"] = s.store.requeue(ids)
                    s.worker.notify()
        s.hub.send("status", s.worker.status())
        return SafeJSONResponse(out)

    @r.post("/interrupt")
    async def interrupt(request: Request) -> JSONResponse:
        body, err = await _json_body(request)
        if err is not None:
            return err
        prompt_id = body.get("prompt_id") if isinstance(body, dict) else None
        if prompt_id is not None and not isinstance(prompt_id, str):
            return _bad_request("invalid_request", "prompt_id must be a string")
        return SafeJSONResponse({"interrupted": s.worker.interrupt(prompt_id)})

    @r.post("/free")
    async def free(request: Request) -> JSONResponse:
        """ComfyUI's POST /free: ``{"unload_models": true}`` drops cached models, ``{"free_memory": true}``
        every cached output; applied when the worker is idle (after a running job). Answers 200 ``{}``."""
        body, err = await _json_body(request)
        if err is not None:
            return err
        if not isinstance(body, dict):
            return _bad_request(
                "invalid_request", 'expected {"unload_models": true} and/or {"free_memory": true}'
            )
        s.worker.request_free(
            unload_models=body.get("unload_models") is True, free_memory=body.get("free_memory") is True
        )
        return SafeJSONResponse({})

    # -- history ---------------------------------------------------------------------------------

    @r.get("/history")
    def get_history(max_items: str | None = None) -> JSONResponse:
        limit = None
        if max_items not in (None, ""):
            try:
                limit = int(max_items)
            except ValueError:
                limit = -1
            if limit < 0:
                return _bad_request(
                    "invalid_request", f"max_items must be a whole number >= 0, got {max_items[:40]!r}"
                )
            limit = min(limit, MAX_HISTORY_ITEMS)
        return SafeJSONResponse(s.store.history(max_items=limit))

    @r.get("/history/{prompt_id}")
    def get_history_one(prompt_id: str) -> dict:
        return s.store.history(prompt_id=prompt_id)

    @r.post("/history")
    async def post_history(request: Request) -> JSONResponse:
        body, err = await _json_body(request)
        if err is not None:
            return err
        if not isinstance(body, dict):
            return _bad_request("invalid_request", 'expected {"clear": true} or {"delete": [ids]}')
        out: dict[str, Any] = {}
        if body.get("clear") is True:
            out["deleted"] = s.store.delete_history()
        if "delete" in body:
            ids = body["delete"]
            if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
                return _bad_request("invalid_request", "'delete' must be a list of prompt ids")
            out["deleted"] = out.get("deleted", 0) + s.store.delete_history(ids)
        return SafeJSONResponse(out)

    # -- files -----------------------------------------------------------------------------------

    @r.get("/view")
    def view(
        filename: str = "",
        subfolder: str = "",
        type: str = "output",  # noqa: A002 - ComfyUI's name
        preview: str | None = None,
        channel: str | None = None,
    ):
        path = resolve_file(s.dirs, type, subfolder, filename)
        if path is None:
            return _bad_request("not_found", "no such file in the output, input or temp folders", status=404)
        try:  # ComfyUI's preview=FORMAT;QUALITY and channel=rgba|rgb|a (files.view_variant)
            variant = view_variant(path, preview, channel, s.executor.budgets.max_image_pixels)
        except ViewError as e:
            return _bad_request(e.type, e.message, status=e.status)
        if variant is not None:
            return Response(variant[0], media_type=variant[1], headers={"Cache-Control": "no-cache"})
        media = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return FileResponse(path, media_type=media, headers={"Cache-Control": "no-cache"})

    @r.post("/upload/image")
    async def upload_image(request: Request) -> JSONResponse:
        try:
            form = await request.form(max_files=1, max_fields=10)
        except Exception as e:
            return _bad_request(
                "invalid_upload", "expected a multipart form with an 'image' file", str(e)[:200]
            )
        image = form.get("image")
        if image is None or isinstance(image, str):
            return _bad_request("invalid_upload", "missing the 'image' file field")
        data = await image.read(s.max_upload_bytes + 1)
        if len(data) > s.max_upload_bytes:
            return _bad_request(
                "request_too_large", f"the image is larger than {s.max_upload_bytes} bytes", status=413
            )
        kind = sniff_image(data)
        if kind is None:
            return _bad_request(
                "unsupported_media_type",
                "only PNG, JPEG and WebP images are accepted (checked by content)",
                status=415,
            )
        too_large = await asyncio.to_thread(upload_pixels_error, data, s.executor.budgets)
        if too_large is not None:  # read from the header: a few KB may claim gigapixels
            return _bad_request("request_too_large", too_large, status=413)
        folder_type = str(form.get("type") or "input")
        subfolder = str(form.get("subfolder") or "")
        overwrite = str(form.get("overwrite") or "").lower() in ("1", "true")
        try:
            name, sub = await asyncio.to_thread(
                save_upload, s.dirs, folder_type, subfolder, image.filename or "upload", kind, data, overwrite
            )
        except UploadError as e:
            return _bad_request(e.type, e.message, status=e.status)
        return SafeJSONResponse({"name": name, "subfolder": sub, "type": folder_type})

    # -- environment -----------------------------------------------------------------------------

    @r.get("/system_stats")
    def system_stats() -> dict:
        ram_total = ram_free = 0
        with suppress(ValueError, OSError, AttributeError):
            page = os.sysconf("SC_PAGE_SIZE")
            ram_total = page * os.sysconf("SC_PHYS_PAGES")
            ram_free = page * os.sysconf("SC_AVPHYS_PAGES")
        torch = sys.modules.get("torch")
        return {
            "system": {
                "os": platform.system().lower() or os.name,
                "python_version": sys.version,
                "embedded_python": False,
                "comfyui_version": f"latentworks-{__version__}",
                "latentworks_version": __version__,
                "pytorch_version": getattr(torch, "__version__", None),
                "ram_total": ram_total,
                "ram_free": ram_free,
                "argv": [],
            },
            "devices": s.devices_info() if s.devices_info else [],
            # Not in ComfyUI (clients ignore it): what the job store skipped or moved aside.
            "latentworks": {"store": s.store.report()},
        }

    def _model_files(folder: str) -> list[str] | None:
        if not folder or folder.startswith(".") or "/" in folder or "\\" in folder:
            return None
        root = s.models_dir / folder
        if not root.is_dir():
            return None
        return sorted(
            str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")
        )

    @r.get("/models")
    def models() -> list[str]:
        if not s.models_dir.is_dir():
            return []
        return sorted(p.name for p in s.models_dir.iterdir() if p.is_dir() and not p.name.startswith("."))

    @r.get("/models/{folder}")
    def models_in(folder: str) -> JSONResponse:
        files = _model_files(folder)
        if files is None and folder in MODEL_KINDS:
            files = []  # a known kind without a folder yet, as ComfyUI lists it
        if files is None:
            return _bad_request("not_found", f"no model folder {folder!r}", status=404)
        return SafeJSONResponse(files)

    @r.get("/embeddings")
    def embeddings() -> list[str]:
        return [Path(f).stem for f in (_model_files("embeddings") or [])]

    # -- websocket -------------------------------------------------------------------------------

    @r.websocket("/ws")
    async def ws(websocket: WebSocket) -> None:
        # A clientId whose socket is still open is not taken over: the newcomer gets a fresh id (its first
        # status message's "sid" says which), so another page or process cannot hijack a client's messages.
        client_id, queue = s.hub.connect(websocket.query_params.get("clientId"))
        await websocket.accept()
        try:
            await websocket.send_text(
                json.dumps({"type": "status", "data": {**s.worker.status(), "sid": client_id}})
            )

            async def pump() -> None:
                while True:
                    message = await queue.get()
                    if isinstance(message, bytes):
                        await websocket.send_bytes(message)
                    else:
                        await websocket.send_text(message)

            async def drain() -> None:
                while True:
                    text = await websocket.receive_text()
                    s.hub.receive(client_id, text)  # records feature_flags
                    reply = feature_flags_reply(text, s.max_upload_bytes)
                    if reply is not None:  # ComfyUI's frontend waits for the server's flags
                        with suppress(asyncio.QueueFull):
                            queue.put_nowait(reply)

            tasks = [asyncio.create_task(pump()), asyncio.create_task(drain())]
            try:
                await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in tasks:
                    task.cancel()
                for task in tasks:
                    with suppress(asyncio.CancelledError, WebSocketDisconnect, RuntimeError, Exception):
                        await task
        except (WebSocketDisconnect, RuntimeError):
            pass
        finally:
            s.hub.disconnect(client_id, queue)

    return r


def serve(
    registry: NodeRegistry,
    host: str = "127.0.0.1",
    port: int = 8188,
    *,
    data_dir: str | Path,
    models_dir: str | Path,
    token: str | None = None,
    log_level: str = "info",
    allowed_hosts: Iterable[str] = (),
    **app_kwargs: Any,
) -> None:
    """Run the server with uvicorn until interrupted. Refuses a non-loopback ``host`` without ``token``.

    The bound ``host`` (and, on a non-loopback bind, this machine's host name) joins ``allowed_hosts``.
    """
    check_bind(host, token)
    import uvicorn

    hosts = [*allowed_hosts, host]
    if not is_loopback(host):
        hosts.append(socket.gethostname())
    app = create_app(
        registry, data_dir=data_dir, models_dir=models_dir, token=token, allowed_hosts=hosts, **app_kwargs
    )
    uvicorn.run(app, host=host, port=port, log_level=log_level)
