"""``latentworks serve``: the ComfyUI-compatible workflow server and the browser node editor."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from latentworks.graph.budgets import (
    DEFAULT_MAX_BATCH_PIXELS,
    DEFAULT_MAX_IMAGE_PIXELS,
    DEFAULT_MAX_JOB_SECONDS,
    DEFAULT_MAX_LATENT_ELEMENTS,
    JobBudgets,
    parse_bytes,
)
from latentworks.graph.cache import DEFAULT_CACHE_BYTES


def byte_size(text: str) -> int:
    """'8G', '512MiB', '1.5GB' or a plain number of bytes -> bytes (binary units; ``graph.parse_bytes``)."""
    try:
        return parse_bytes(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _limit(text: str) -> int:
    """A positive count, or 0 for no limit."""
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a whole number (0 switches the limit off)"
        ) from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be 0 (no limit) or positive")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds (0 switches it off)") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be 0 (no limit) or positive")
    return value


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "serve",
        help="run the workflow server and browser editor",
        description="Run the workflow server: ComfyUI-compatible HTTP + WebSocket API, a persistent queue and "
        "history (SQLite in --data-dir), and the browser node editor at http://HOST:PORT/. Model folders in "
        "MODELS_DIR/checkpoints appear in CheckpointLoaderSimple beside the embedded 'default'.",
        epilog="examples:\n"
        "  latentworks serve                                  # http://127.0.0.1:8188\n"
        "  latentworks serve --port 8190 --data-dir ~/lw-data\n"
        "  latentworks serve --host 0.0.0.0 --token SECRET    # reachable from the network: a token is required\n"
        "  latentworks serve --allow-host lw.example --allow-origin https://lw.example   # behind a proxy\n"
        "  latentworks serve --frontend comfyui               # ComfyUI's official frontend (optional extra)\n"
        "API and messages: docs/server.md; the editor: docs/editor.md.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default: %(default)s, this machine only)"
    )
    p.add_argument("--port", type=int, default=8188, help="port (default: %(default)s)")
    p.add_argument(
        "--data-dir",
        type=Path,
        default=Path("latentworks-data"),
        help="queue database, input, output and temp folders (default: %(default)s)",
    )
    p.add_argument(
        "--models-dir",
        type=Path,
        default=Path("models"),
        help="model folders: MODELS_DIR/checkpoints/NAME/model.json (default: %(default)s)",
    )
    p.add_argument(
        "--token",
        default=os.environ.get("LATENTWORKS_TOKEN"),
        help="require this token on every request (default: $LATENTWORKS_TOKEN); needed off loopback",
    )
    p.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="also accept browser requests from this web origin, e.g. https://editor.example (repeatable; "
        "'*' for any). By default only pages served by this server may call it (docs/security.md)",
    )
    p.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="also accept this Host name, e.g. a reverse proxy's or a LAN name (repeatable; '*' for any). "
        "By default: localhost, IP addresses, the --host name (and this machine's name off loopback)",
    )
    p.add_argument("--device", default="cpu", help="torch device for models (default: %(default)s)")
    p.add_argument(
        "--preview-method",
        choices=("none", "auto", "latent2rgb", "taesd"),
        default="none",
        help="live previews while sampling, sent as binary WebSocket frames (ComfyUI's flag). 'none' "
        "(default): none unless a client asks in extra_data.preview_method; 'auto', 'latent2rgb': cheap "
        "RGB previews from the latents; 'taesd': not available, latent2rgb is used",
    )
    p.add_argument(
        "--frontend",
        default="builtin",
        metavar="builtin|comfyui|PATH",
        help="the browser front end served at /: 'builtin' (latentworks' editor, the default), 'comfyui' "
        "(ComfyUI's official frontend: pip install 'latentworks[comfyui-frontend]'), or a folder holding "
        "a built front end's index.html (docs/server.md)",
    )
    p.add_argument(
        "--memory-budget",
        type=byte_size,
        default=None,
        metavar="SIZE",
        help="most bytes of model weights on --device at once, e.g. 20GB or 512MiB: idle models leave the "
        "device least recently used first, and a model that does not fit runs block by block. "
        "Default: no limit (models stay on the device while the output cache holds them)",
    )
    b = p.add_argument_group(
        "resource budgets",
        "per-job limits, checked before allocating (0 switches a limit off); docs/server.md",
    )
    b.add_argument(
        "--max-image-pixels",
        type=_limit,
        default=DEFAULT_MAX_IMAGE_PIXELS,
        help="width x height of any image a job creates, loads or decodes, and of uploads (read from the "
        "file header before decoding) (default: %(default)s = 4096 x 4096)",
    )
    b.add_argument(
        "--max-batch-pixels",
        type=_limit,
        default=DEFAULT_MAX_BATCH_PIXELS,
        help="width x height x batch size of a batch of images (default: %(default)s = 4 x 4096 x 4096)",
    )
    b.add_argument(
        "--max-latent-elements",
        type=_limit,
        default=DEFAULT_MAX_LATENT_ELEMENTS,
        help="batch x channels x height x width of a latent a sampler works on (default: %(default)s)",
    )
    b.add_argument(
        "--max-job-seconds",
        type=_seconds,
        default=DEFAULT_MAX_JOB_SECONDS,
        help="wall time per job; checked between nodes, sampler steps and network blocks (default: %(default)s)",
    )
    b.add_argument(
        "--cache-bytes",
        type=byte_size,
        default=DEFAULT_CACHE_BYTES,
        help="memory the output cache (loaded models, images, latents) may keep between jobs, e.g. 8G or "
        "512M; least recently used outputs are dropped first (default: %(default)s = 8 GiB)",
    )
    return p


def budgets_from_args(args: argparse.Namespace) -> JobBudgets:
    """The JobBudgets of the serve flags (0 = no limit)."""
    return JobBudgets(
        max_image_pixels=args.max_image_pixels or None,
        max_batch_pixels=args.max_batch_pixels or None,
        max_latent_elements=args.max_latent_elements or None,
        max_job_seconds=args.max_job_seconds or None,
    )


def run(args: argparse.Namespace) -> int:
    from functools import partial

    from latentworks.nodes import default_registry
    from latentworks.nodes.devices import release_networks
    from latentworks.nodes.guards import payload_nbytes
    from latentworks.pipelines.memory import MemoryManager
    from latentworks.server import serve
    from latentworks.server.app import STATIC_DIR
    from latentworks.server.auth import check_bind
    from latentworks.server.frontends import frontend_dir

    check_bind(args.host, args.token)  # before any heavy import or file creation
    static_dir = frontend_dir(args.frontend, STATIC_DIR)  # ValueError naming the pip command if absent
    if not 1 <= args.port <= 65535:
        raise ValueError(f"--port must be between 1 and 65535, got {args.port}")
    registry = default_registry(args.models_dir, args.data_dir / "input")
    if args.memory_budget is not None and args.memory_budget <= 0:
        raise ValueError(f"--memory-budget must be more than 0 bytes, got {args.memory_budget}")
    # One manager for the server's life: models stay on the device between jobs within the budget.
    manager = MemoryManager(device=args.device, mode="none", budget=args.memory_budget)
    print(
        f"latentworks server on http://{args.host}:{args.port}/  (data: {args.data_dir}, models: {args.models_dir})"
    )
    serve(
        registry,
        args.host,
        args.port,
        data_dir=args.data_dir,
        models_dir=args.models_dir,
        token=args.token,
        device=manager,
        on_evict=partial(release_networks, manager),
        budgets=budgets_from_args(args),
        cache_bytes=args.cache_bytes or None,
        sizer=payload_nbytes,
        allowed_hosts=args.allow_host,
        allowed_origins=args.allow_origin,
        preview_method=args.preview_method,
        static_dir=static_dir,
    )
    return 0
