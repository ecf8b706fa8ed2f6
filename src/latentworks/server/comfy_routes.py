"""The routes ComfyUI's official frontend calls besides the core API, in ComfyUI's shapes.

``/extensions``, ``/features``, ``/users``, ``/i18n``, ``/settings``, ``/userdata``, ``/v2/userdata``,
``/workflow_templates``, ``/templates/*``, ``/global_subgraphs``, ``/experiment/models``, ``/jobs``,
``/upload/mask`` and ``/view_metadata/{folder}``; plus the reply to the WebSocket ``feature_flags``
message. app.py mounts the router at ``/`` and ``/api`` like every other route; the token, Origin and
body-size middleware apply to all of it. Shapes follow ComfyUI's server (behaviour only) and what the
frontend package parses; docs/server.md has the table.
"""

from __future__ import annotations

import asyncio
import importlib
import io
import json
import logging
import os
import re
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from PIL import Image

from latentworks.graph import error_item
from latentworks.nodes.budgets import upload_pixels_error
from latentworks.server.auth import browser_request
from latentworks.server.files import FOLDER_TYPES, UploadError, resolve_file, save_upload, sniff_image
from latentworks.server.inputs import json_problem
from latentworks.server.userdata import UserData, UserDataError

if TYPE_CHECKING:
    from latentworks.server.app import ServerState

log = logging.getLogger("latentworks.server")

# Extra-data keys ComfyUI keeps out of anything it sends back (the frontend puts API keys there).
SENSITIVE_EXTRA_DATA_KEYS = ("auth_token_comfy_org", "api_key_comfy_org")
JOB_STATUSES = ("pending", "in_progress", "completed", "failed", "cancelled")
MAX_SETTING_ID_CHARS = 256
MAX_SAFETENSORS_HEADER = 64 * 2**20
_USERDATA_PATH = re.compile(r"^(?:/api)?/userdata/(.*)$")


def server_feature_flags(max_upload_bytes: int) -> dict[str, Any]:
    """What GET /features and the WebSocket ``feature_flags`` reply announce: preview frames carry their
    node and job (type 4) for clients that declare ``supports_preview_metadata`` (server/worker.py), as in
    ComfyUI; the upload limit; no ComfyUI-Manager."""
    return {
        "supports_preview_metadata": True,
        "max_upload_size": max_upload_bytes,
        "extension": {"manager": {"supports_v4": False}},
    }


def feature_flags_reply(text: str, max_upload_bytes: int) -> str | None:
    """The server's ``feature_flags`` message when ``text`` is the client's ``feature_flags`` message
    (the frontend sends it on connect and waits for the answer), else None."""
    if len(text) > 65536 or '"feature_flags"' not in text:
        return None
    try:
        message = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if not isinstance(message, dict) or message.get("type") != "feature_flags":
        return None
    return json.dumps({"type": "feature_flags", "data": server_feature_flags(max_upload_bytes)})


def _error(status: int, type_: str, message: str, details: str = "") -> JSONResponse:
    return JSONResponse({"error": error_item(type_, message, details), "node_errors": {}}, status_code=status)


def _flag(value: str | None, default: bool = False) -> bool:
    if value is None or value == "":
        return default
    return value.strip().lower() in ("1", "true", "yes")


async def _body(request: Request) -> tuple[bytes, JSONResponse | None]:
    """The raw body, refusing a cross-site browser request that is not JSON (415).

    ComfyUI's frontend posts settings and user files without a Content-Type (so as text/plain): those come
    from this server's own page (``Sec-Fetch-Site: same-origin``), which the Origin check has already let
    through. A page on another site may send text/plain without a CORS preflight, so it must say JSON."""
    raw = await request.body()
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    json_type = ctype == "application/json" or (ctype.startswith("application/") and ctype.endswith("+json"))
    same_origin = request.headers.get("sec-fetch-site") in ("same-origin", None)
    if raw and not json_type and browser_request(request.headers) and not same_origin:
        return b"", _error(
            415,
            "unsupported_media_type",
            "send the body with 'Content-Type: application/json'",
            f"got {ctype or 'no content type'!r} from a page on another site",
        )
    return raw, None


def _parse_json(raw: bytes) -> tuple[Any, JSONResponse | None]:
    try:
        value = json.loads(raw, parse_constant=lambda name: _no_constant(name))
    except (ValueError, RecursionError) as e:
        return None, _error(400, "invalid_json", "the request body is not valid JSON", str(e)[:200])
    problem = json_problem(value)
    if problem is not None:
        what = "holds a lone UTF-16 surrogate" if problem[0] == "surrogate" else "is nested too deeply"
        return None, _error(400, "invalid_json", f"the JSON body {what} (at {problem[1][:200]})")
    return value, None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON (use null or a finite number)")


def _userdata_error(e: UserDataError) -> JSONResponse:
    return _error(e.status, e.type, e.message)


# -- jobs --------------------------------------------------------------------------------------------


def _public_extra(extra_data: dict) -> dict:
    return {k: v for k, v in extra_data.items() if k not in SENSITIVE_EXTRA_DATA_KEYS}


def _workflow_id(extra_data: dict) -> str | None:
    pnginfo = extra_data.get("extra_pnginfo")
    workflow = pnginfo.get("workflow") if isinstance(pnginfo, dict) else None
    wid = workflow.get("id") if isinstance(workflow, dict) else None
    return wid if isinstance(wid, str) else None


def _output_items(outputs: dict) -> Iterator[tuple[str, str, dict]]:
    """(node id, media key, item) for every file-like item of a history entry's outputs."""
    for node_id, node_outputs in outputs.items():
        if not isinstance(node_outputs, dict):
            continue
        for media, items in node_outputs.items():
            if media == "animated" or not isinstance(items, list):
                continue
            for item in items:
                if isinstance(item, dict):
                    yield str(node_id), str(media), item


def _summary(outputs: dict) -> tuple[int, dict | None]:
    """(number of output items, the item to show as the job's thumbnail): a saved ('output') image first."""
    count = 0
    preview = fallback = None
    for node_id, media, item in _output_items(outputs):
        count += 1
        if media not in ("images", "video", "audio", "3d"):
            continue
        shown = {**item, "nodeId": node_id, "mediaType": item.get("mediaType", media)}
        if item.get("type") == "output" and preview is None:
            preview = shown
        elif fallback is None:
            fallback = shown
    return count, preview or fallback


def _ms(seconds: float | None) -> int | None:
    return None if seconds is None else int(seconds * 1000)


def _queue_job(job: Any, status: str, times: dict, detail: bool) -> dict[str, Any]:
    created = times.get(job.prompt_id, (None, None, None))
    out: dict[str, Any] = {
        "id": job.prompt_id,
        "status": status,
        "priority": job.queue_entry()[0],
        "create_time": _ms(created[0]) or 0,
        "execution_start_time": _ms(created[1]),
        "outputs_count": 0,
        "previewable_outputs_count": 0,
        "workflow_id": _workflow_id(job.extra_data),
    }
    if detail:
        out["workflow"] = {"prompt": job.prompt, "extra_data": _public_extra(job.extra_data)}
    return out


def _history_job(prompt_id: str, entry: dict, times: dict, detail: bool) -> dict[str, Any]:
    number, _, prompt, extra_data, _ = entry["prompt"]
    status_info = entry.get("status") or {}
    messages = status_info.get("messages") or []
    error = None
    interrupted = False
    for message in messages:
        if isinstance(message, list) and len(message) == 2 and isinstance(message[1], dict):
            if message[0] == "execution_error":
                error = message[1]
            elif message[0] == "execution_interrupted":
                interrupted = True
    status_str = status_info.get("status_str")
    interrupted = interrupted or status_str == "interrupted"  # ComfyUI records these as "error"
    if status_str == "error" or error is not None or interrupted:
        status = "cancelled" if interrupted else "failed"
    else:
        status = "completed"
    outputs = entry.get("outputs") or {}
    count, preview = _summary(outputs)
    created, started, finished = times.get(prompt_id, (None, None, None))
    out: dict[str, Any] = {
        "id": prompt_id,
        "status": status,
        "priority": number,
        "create_time": _ms(created) or 0,
        "execution_start_time": _ms(started),
        "execution_end_time": _ms(finished),
        "outputs_count": count,
        "previewable_outputs_count": sum(
            1 for _, m, _ in _output_items(outputs) if m in ("images", "video", "audio", "3d")
        ),
        "preview_output": preview,
        "execution_error": error,
        "workflow_id": _workflow_id(extra_data),
    }
    if detail:
        out["outputs"] = outputs
        out["execution_status"] = status_info
        out["workflow"] = {"prompt": prompt, "extra_data": _public_extra(extra_data)}
    return out


def all_jobs(s: ServerState, statuses: set[str]) -> list[dict[str, Any]]:
    """The jobs whose status is in ``statuses``, in the Jobs API's list shape, in no particular order. The
    history is read only when a finished status is asked for (the frontend polls the queue often)."""
    times = s.store.times()
    jobs = []
    if "in_progress" in statuses:
        jobs += [_queue_job(j, "in_progress", times, False) for j in s.store.jobs("running")]
    if "pending" in statuses:
        jobs += [_queue_job(j, "pending", times, False) for j in s.store.jobs("pending")]
    if statuses & {"completed", "failed", "cancelled"}:
        jobs += [_history_job(pid, e, times, False) for pid, e in s.store.history().items()]
    return [j for j in jobs if j["status"] in statuses]


def job_detail(s: ServerState, prompt_id: str) -> dict[str, Any] | None:
    times = s.store.times()
    history = s.store.history(prompt_id=prompt_id)
    if prompt_id in history:
        return _history_job(prompt_id, history[prompt_id], times, True)
    for state, status in (("running", "in_progress"), ("pending", "pending")):
        for job in s.store.jobs(state):
            if job.prompt_id == prompt_id:
                return _queue_job(job, status, times, True)
    return None


# -- templates -----------------------------------------------------------------------------------


TEMPLATE_PACKAGES = ("comfyui_workflow_templates", "comfyui_workflow_templates_json")


def templates_installed() -> bool:
    """Whether ``comfyui-workflow-templates`` (any of its layouts) is importable."""
    return any(_try_import(name) is not None for name in TEMPLATE_PACKAGES)


def template_file(name: str) -> Path | None:
    """The file of ``comfyui-workflow-templates`` that ``/templates/{name}`` serves, or None.

    Looked for in the ``templates`` folder of the single-folder package (older versions) and of
    ``comfyui_workflow_templates_json`` (newer versions: index.json and the workflows), then through the
    core package's manifest (media in separate bundles; a bundle that is not installed gives None)."""
    parts = name.split("/")
    if not name or "\x00" in name or "\\" in name or any(p in ("", ".", "..") for p in parts):
        return None
    for package in TEMPLATE_PACKAGES:
        module = _try_import(package)
        folder = Path(module.__file__).parent / "templates" if module and module.__file__ else None
        if folder is not None and folder.is_dir():
            candidate = folder.joinpath(*parts)
            if candidate.is_file() and candidate.resolve().is_relative_to(folder.resolve()):
                return candidate
    core = _try_import("comfyui_workflow_templates_core")
    owner = _template_owners(core).get(name) if core is not None else None
    if owner is None:
        return None
    try:
        return Path(core.get_asset_path(owner, name))
    except (ImportError, OSError, KeyError, ValueError):  # the bundle holding it is not installed
        return None


_OWNERS: dict[int, dict[str, str]] = {}


def _template_owners(core: Any) -> dict[str, str]:
    """asset file name -> template id, from the core package's manifest (cached per imported module)."""
    owners = _OWNERS.get(id(core))
    if owners is None:
        owners = {}
        try:
            for entry in core.iter_templates():
                for asset in entry.assets:
                    owners.setdefault(str(asset.filename), str(entry.template_id))
        except (AttributeError, ImportError, OSError, KeyError, ValueError) as e:
            log.warning("could not read the comfyui-workflow-templates manifest: %s", e)
        _OWNERS[id(core)] = owners
    return owners


def _try_import(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


# -- models ----------------------------------------------------------------------------------------


def _model_folder(s: ServerState, folder: str) -> Path | None:
    if not folder or folder.startswith(".") or "/" in folder or "\\" in folder or "\x00" in folder:
        return None
    return s.models_dir / folder


def read_safetensors_metadata(path: Path) -> dict[str, Any] | None:
    """The ``__metadata__`` object of a safetensors header (``{}`` when absent), or None when the file is not
    a readable safetensors file. Reads only the header (8-byte length, then JSON)."""
    try:
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) != 8:
                return None
            (length,) = struct.unpack("<Q", head)
            if not 2 <= length <= MAX_SAFETENSORS_HEADER:
                return None
            header = json.loads(f.read(length))
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(header, dict):
        return None
    meta = header.get("__metadata__", {})
    return meta if isinstance(meta, dict) else {}


# -- the router ----------------------------------------------------------------------------------


def comfy_routes(s: ServerState, userdata: UserData, model_kinds: Iterable[str] = ()) -> APIRouter:
    """The frontend's routes over ``s`` (the app's shared state) and the user's folder; ``model_kinds`` are
    the model folder names /experiment/models lists even before they exist."""
    known_kinds = frozenset(model_kinds)
    r = APIRouter()

    # -- start-up probes -------------------------------------------------------------------------

    @r.get("/extensions")
    def extensions() -> list[str]:
        return []  # JavaScript extension files: latentworks loads none

    @r.get("/features")
    def features() -> dict:
        return server_feature_flags(s.max_upload_bytes)

    @r.get("/i18n")
    def i18n() -> dict:
        return {}  # translations contributed by custom nodes: none

    @r.get("/users")
    def users() -> dict:
        return {"storage": "server", "migrated": True}  # one user, as ComfyUI without --multi-user

    @r.post("/users")
    def create_user() -> JSONResponse:
        return _error(
            400, "single_user", "latentworks has one user ('default'); there are no accounts to create"
        )

    @r.get("/user.css")
    def user_css() -> Response:
        """The frontend's page links /user.css: the user's own style sheet if saved, else an empty one."""
        try:
            css = userdata.existing_file("user.css").read_bytes()
        except (UserDataError, OSError):
            css = b""
        return Response(css, media_type="text/css", headers={"Cache-Control": "no-cache"})

    @r.get("/workflow_templates")
    def workflow_templates() -> dict:
        return {}  # example workflows of custom-node packs: none

    @r.get("/global_subgraphs")
    def global_subgraphs() -> dict:
        return {}

    @r.get("/global_subgraphs/{subgraph_id}")
    def global_subgraph(subgraph_id: str) -> JSONResponse:
        return _error(404, "not_found", f"no global subgraph {subgraph_id[:200]!r}")

    @r.get("/templates/{name:path}")
    def template(name: str):
        path = template_file(name)
        if path is not None:
            return FileResponse(path)
        if re.fullmatch(r"index(\.[A-Za-z_-]+)?\.json", name):
            return JSONResponse([])  # no templates installed: an empty index, as the frontend expects
        if name == "index_logo.json":
            return JSONResponse({})
        hint = "" if templates_installed() else ": install them with `pip install comfyui-workflow-templates`"
        return _error(404, "not_found", f"no workflow template file {name[:200]!r}{hint}")

    # -- settings --------------------------------------------------------------------------------

    @r.get("/settings")
    def get_settings() -> JSONResponse:
        return JSONResponse(userdata.settings())

    @r.post("/settings")
    async def post_settings(request: Request) -> JSONResponse:
        raw, err = await _body(request)
        if err is not None:
            return err
        value, err = _parse_json(raw)
        if err is not None:
            return err
        if not isinstance(value, dict):
            return _error(400, "invalid_settings", "POST /settings takes a JSON object of id: value pairs")
        if any(len(k) > MAX_SETTING_ID_CHARS for k in value):
            return _error(
                400, "invalid_settings", f"setting ids are at most {MAX_SETTING_ID_CHARS} characters"
            )
        try:
            await asyncio.to_thread(userdata.update_settings, value)
        except UserDataError as e:
            return _userdata_error(e)
        return JSONResponse(None)

    @r.get("/settings/{setting_id}")
    def get_setting(setting_id: str) -> JSONResponse:
        return JSONResponse(userdata.settings().get(setting_id))

    @r.post("/settings/{setting_id}")
    async def post_setting(setting_id: str, request: Request) -> JSONResponse:
        if len(setting_id) > MAX_SETTING_ID_CHARS:
            return _error(
                400, "invalid_settings", f"setting ids are at most {MAX_SETTING_ID_CHARS} characters"
            )
        raw, err = await _body(request)
        if err is not None:
            return err
        value, err = _parse_json(raw)
        if err is not None:
            return err
        try:
            await asyncio.to_thread(userdata.update_settings, {setting_id: value})
        except UserDataError as e:
            return _userdata_error(e)
        return JSONResponse(None)

    # -- user data -------------------------------------------------------------------------------

    @r.get("/userdata")
    def list_userdata(
        dir: str | None = None,  # noqa: A002 - ComfyUI's parameter name
        recurse: str | None = None,
        full_info: str | None = None,
        split: str | None = None,
    ) -> JSONResponse:
        if dir is None:
            return _error(
                400, "invalid_request", "add ?dir=FOLDER (relative to the user folder, e.g. workflows)"
            )
        try:
            files = userdata.listing(
                dir, recurse=_flag(recurse), full_info=_flag(full_info), split=_flag(split)
            )
        except UserDataError as e:
            return _userdata_error(e)
        return JSONResponse(files)

    @r.get("/v2/userdata")
    def list_userdata_v2(path: str = "") -> JSONResponse:
        try:
            return JSONResponse(userdata.listing_v2(path))
        except UserDataError as e:
            return _userdata_error(e)

    def _parts(request: Request) -> list[str] | None:
        """The decoded segments after /userdata/, split on the raw (still encoded) path so that a '/'
        sent as %2F stays inside its segment, as ComfyUI's router does."""
        raw = request.scope.get("raw_path")
        text = raw.decode("latin-1") if isinstance(raw, bytes) else request.url.path
        m = _USERDATA_PATH.match(text.split("?", 1)[0])
        if m is None:
            return None
        return [unquote(p, errors="strict") for p in m.group(1).split("/")]

    def _bad_form() -> JSONResponse:
        return _error(
            404,
            "not_found",
            "expected /userdata/FILE or /userdata/FILE/move/DEST with '/' inside names sent as %2F",
        )

    @r.get("/userdata/{rest:path}")
    def get_userdata(rest: str, request: Request):
        try:
            parts = _parts(request)
        except UnicodeDecodeError:
            return _error(400, "invalid_path", "the path is not valid UTF-8 once decoded")
        if not parts or len(parts) != 1:
            return _bad_form()
        try:
            path = userdata.existing_file(parts[0])
        except UserDataError as e:
            return _userdata_error(e)
        return FileResponse(path, headers={"Cache-Control": "no-cache"})

    @r.delete("/userdata/{rest:path}")
    def delete_userdata(rest: str, request: Request):
        try:
            parts = _parts(request)
        except UnicodeDecodeError:
            return _error(400, "invalid_path", "the path is not valid UTF-8 once decoded")
        if not parts or len(parts) != 1:
            return _bad_form()
        try:
            userdata.delete(parts[0])
        except UserDataError as e:
            return _userdata_error(e)
        return Response(status_code=204)

    @r.post("/userdata/{rest:path}")
    async def post_userdata(rest: str, request: Request):
        try:
            parts = _parts(request)
        except UnicodeDecodeError:
            return _error(400, "invalid_path", "the path is not valid UTF-8 once decoded")
        overwrite = _flag(request.query_params.get("overwrite"), default=True)
        full_info = _flag(request.query_params.get("full_info"))
        try:
            if parts and len(parts) == 3 and parts[1] == "move":
                target = await asyncio.to_thread(userdata.move, parts[0], parts[2], overwrite=overwrite)
            elif parts and len(parts) == 1:
                raw, err = await _body(request)
                if err is not None:
                    return err
                target = await asyncio.to_thread(userdata.write, parts[0], raw, overwrite=overwrite)
            else:
                return _bad_form()
            return JSONResponse(userdata.file_info(target) if full_info else userdata.relative(target))
        except UserDataError as e:
            return _userdata_error(e)

    # -- jobs --------------------------------------------------------------------------------------

    @r.get("/jobs")
    def list_jobs(
        status: str | None = None,
        workflow_id: str | None = None,
        sort_by: str = "created_at",
        sort_order: str = "desc",
        limit: int | None = None,
        offset: int = 0,
    ) -> JSONResponse:
        wanted = set(JOB_STATUSES)
        if status:
            wanted = {x.strip() for x in status.split(",") if x.strip()}
            unknown = wanted - set(JOB_STATUSES)
            if unknown:
                return _error(
                    400,
                    "invalid_request",
                    f"unknown status {sorted(unknown)[0][:40]!r}; use {', '.join(JOB_STATUSES)}",
                )
        if sort_order not in ("asc", "desc") or sort_by not in ("created_at", "execution_duration"):
            return _error(
                400,
                "invalid_request",
                "sort_by is created_at or execution_duration; sort_order is asc or desc",
            )
        if offset < 0 or (limit is not None and limit < 0):
            return _error(400, "invalid_request", "limit and offset must be >= 0")
        jobs = all_jobs(s, wanted)
        if workflow_id is not None:
            jobs = [j for j in jobs if j.get("workflow_id") == workflow_id]

        def key(job: dict) -> float:
            if sort_by == "execution_duration":
                start, end = job.get("execution_start_time"), job.get("execution_end_time")
                return float(end - start) if start and end else 0.0
            return float(job["create_time"])

        jobs.sort(key=key, reverse=sort_order == "desc")
        total = len(jobs)
        page = jobs[offset : None if limit is None else offset + limit]
        return JSONResponse(
            {
                "jobs": page,
                "pagination": {
                    "offset": offset,
                    "limit": limit if limit is not None else total,
                    "total": total,
                    "has_more": offset + len(page) < total,
                },
            }
        )

    @r.get("/jobs/{job_id}")
    def get_job(job_id: str) -> JSONResponse:
        job = job_detail(s, job_id)
        if job is None:
            return _error(404, "not_found", f"no job {job_id[:200]!r} in the queue or history")
        return JSONResponse(job)

    def _cancel(job_id: str) -> bool:
        """Interrupt a running job or drop a queued one; False for an unknown id."""
        state = s.store.state_of(job_id)
        if state is None:
            return False
        if state == "running":
            s.worker.interrupt(job_id)
        elif state == "pending":
            s.store.delete_pending([job_id])
            s.hub.send("status", s.worker.status())
        return True

    @r.post("/jobs/{job_id}/cancel")
    def cancel_job(job_id: str) -> JSONResponse:
        if not _cancel(job_id):
            return _error(404, "not_found", f"no job {job_id[:200]!r} in the queue or history")
        return JSONResponse({"id": job_id, "cancelled": True})

    @r.post("/jobs/cancel")
    async def cancel_jobs(request: Request) -> JSONResponse:
        raw, err = await _body(request)
        if err is not None:
            return err
        body, err = _parse_json(raw or b"{}")
        if err is not None:
            return err
        ids = body.get("job_ids") if isinstance(body, dict) else None
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            return _error(400, "invalid_request", 'expected {"job_ids": ["<prompt id>", ...]}')
        return JSONResponse({"cancelled": [i for i in ids if _cancel(i)]})

    # -- models --------------------------------------------------------------------------------

    @r.get("/experiment/models")
    def model_folders() -> list[dict]:
        names = set(known_kinds)
        if s.models_dir.is_dir():
            names |= {p.name for p in s.models_dir.iterdir() if p.is_dir() and not p.name.startswith(".")}
        return [{"name": n, "folders": [str(s.models_dir / n)]} for n in sorted(names)]

    @r.get("/internal/folder_paths")
    def folder_paths() -> dict:
        """Model kind -> its folders (ComfyUI lists several per kind; latentworks has one)."""
        names = set(known_kinds)
        if s.models_dir.is_dir():
            names |= {p.name for p in s.models_dir.iterdir() if p.is_dir() and not p.name.startswith(".")}
        return {n: [str(s.models_dir / n)] for n in sorted(names)}

    @r.get("/experiment/models/{folder}")
    def model_files(folder: str) -> JSONResponse:
        root = _model_folder(s, folder)
        if root is None or not root.is_dir():
            return _error(404, "not_found", f"no model folder {folder[:200]!r}")
        base = root.resolve()
        files = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                p = Path(dirpath) / name
                if not name.startswith(".") and p.resolve().is_relative_to(base):
                    files.append({"name": p.relative_to(root).as_posix(), "pathIndex": 0})
        return JSONResponse(files)

    @r.get("/view_metadata/{folder}")
    def view_metadata(folder: str, filename: str = "") -> JSONResponse:
        root = _model_folder(s, folder)
        if root is None or not filename.endswith(".safetensors"):
            return _error(404, "not_found", "name a .safetensors file in a model folder: ?filename=NAME")
        parts = filename.replace("\\", "/").split("/")
        if "\x00" in filename or filename.startswith("/") or any(p in ("", ".", "..") for p in parts):
            return _error(404, "not_found", f"no model file {filename[:200]!r} in {folder[:100]!r}")
        base = root.resolve() if root.exists() else root
        path = root.joinpath(*parts)
        if not path.is_file() or not path.resolve().is_relative_to(base):
            return _error(404, "not_found", f"no model file {filename[:200]!r} in {folder[:100]!r}")
        meta = read_safetensors_metadata(path)
        if meta is None:
            return _error(400, "invalid_model_file", f"{filename[:200]!r} is not a readable safetensors file")
        return JSONResponse(meta)

    # -- mask upload -------------------------------------------------------------------------------

    @r.post("/upload/mask")
    async def upload_mask(request: Request) -> JSONResponse:
        """A mask drawn in the frontend's mask editor: the uploaded image's alpha channel becomes the
        alpha of ``original_ref``'s image, saved as a new PNG in the input folder."""
        try:
            form = await request.form(max_files=1, max_fields=10)
        except Exception as e:
            return _error(
                400,
                "invalid_upload",
                "expected a multipart form with 'image' and 'original_ref'",
                str(e)[:200],
            )
        image = form.get("image")
        if image is None or isinstance(image, str):
            return _error(400, "invalid_upload", "missing the 'image' file field (the mask)")
        try:
            ref = json.loads(str(form.get("original_ref") or ""))
        except ValueError:
            ref = None
        if not isinstance(ref, dict) or not isinstance(ref.get("filename"), str):
            return _error(
                400,
                "invalid_upload",
                '\'original_ref\' must be JSON like {"filename": "x.png", "type": "input"}',
            )
        ref_type = ref.get("type") or "input"
        ref_sub = ref.get("subfolder") or ""
        if ref_type not in FOLDER_TYPES or not isinstance(ref_sub, str):
            return _error(
                400, "invalid_upload", f"original_ref type must be one of {', '.join(FOLDER_TYPES)}"
            )
        original = resolve_file(s.dirs, ref_type, ref_sub, ref["filename"])
        if original is None:
            return _error(
                404, "not_found", f"original image {ref['filename'][:200]!r} not found in {ref_type}"
            )
        data = await image.read(s.max_upload_bytes + 1)
        if len(data) > s.max_upload_bytes:
            return _error(413, "request_too_large", f"the mask is larger than {s.max_upload_bytes} bytes")
        if sniff_image(data) is None:
            return _error(415, "unsupported_media_type", "the mask must be a PNG, JPEG or WebP image")
        budgets = s.executor.budgets
        for blob in (data, original.read_bytes()):
            too_large = await asyncio.to_thread(upload_pixels_error, blob, budgets)
            if too_large is not None:
                return _error(413, "request_too_large", too_large)
        try:
            png = await asyncio.to_thread(_apply_mask, original, data)
        except Exception as e:  # PIL raises many kinds on broken files
            return _error(
                400, "invalid_upload", "the mask or the original image could not be decoded", str(e)[:200]
            )
        folder_type = str(form.get("type") or "input")
        subfolder = str(form.get("subfolder") or "")
        overwrite = _flag(str(form.get("overwrite") or ""))
        try:
            name, sub = await asyncio.to_thread(
                save_upload,
                s.dirs,
                folder_type,
                subfolder,
                image.filename or "mask.png",
                "png",
                png,
                overwrite,
            )
        except UploadError as e:
            return _error(e.status, e.type, e.message)
        return JSONResponse({"name": name, "subfolder": sub, "type": folder_type})

    return r


def _apply_mask(original: Path, mask_bytes: bytes) -> bytes:
    """PNG bytes of ``original`` with its alpha replaced by the mask's alpha (resized to fit)."""
    with Image.open(original) as img:
        base = img.convert("RGBA")
    with Image.open(io.BytesIO(mask_bytes)) as m:
        mask = m.convert("RGBA").getchannel("A")
    if mask.size != base.size:
        mask = mask.resize(base.size, Image.Resampling.LANCZOS)
    base.putalpha(mask)
    out = io.BytesIO()
    base.save(out, format="PNG")
    return out.getvalue()


__all__ = ["comfy_routes", "feature_flags_reply", "server_feature_flags"]
