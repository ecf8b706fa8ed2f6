"""``latentworks serve``: the ComfyUI-compatible workflow server and the browser node editor."""

from __future__ import annotations

import argparse
import os
from pathlib import Path


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
    return p


def run(args: argparse.Namespace) -> int:
    from latentworks.nodes import default_registry
    from latentworks.server import serve
    from latentworks.server.auth import check_bind

    check_bind(args.host, args.token)  # before any heavy import or file creation
    if not 1 <= args.port <= 65535:
        raise ValueError(f"--port must be between 1 and 65535, got {args.port}")
    registry = default_registry(args.models_dir, args.data_dir / "input")
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
        device=args.device,
        allowed_hosts=args.allow_host,
        allowed_origins=args.allow_origin,
    )
    return 0
