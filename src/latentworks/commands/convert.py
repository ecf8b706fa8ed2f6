"""``latentworks convert``: write a model folder from training runs (more formats come with checkpoint import)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from latentworks.cli import UserError


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "convert",
        help="convert checkpoints between formats",
        description="Write a latentworks model folder (model.json + safetensors) that 'generate', the pipeline "
        "API and the server load. Today's input: the run folder of 'latentworks train' (its EMA weights), "
        "which names its 'train-vae' run.",
        epilog="example:\n  latentworks convert --from-run runs/unet --out models/checkpoints/mine "
        "--data data/emoji-32.npz --name mine",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--from-run", type=Path, required=True, metavar="RUN", help="a 'latentworks train' run folder"
    )
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="model folder to write")
    p.add_argument("--name", default=None, help="model name (default: the folder name)")
    p.add_argument(
        "--data",
        type=Path,
        default=None,
        help="dataset file used to fit the latent preview colours (optional)",
    )
    p.add_argument("--half", action="store_true", help="store weights in float16 (half the size)")
    p.add_argument(
        "--defaults",
        default=None,
        metavar="JSON",
        help='generation defaults, e.g. \'{"steps": 20, "guidance": 5, "sampler": "euler"}\'',
    )
    p.add_argument(
        "--card", type=Path, default=None, metavar="JSON_FILE", help="model-card fields (JSON file)"
    )
    return p


def run(args: argparse.Namespace) -> int:
    from latentworks.pipelines.export import export_run

    if not args.from_run.is_dir():
        raise UserError(f"--from-run: no such folder {args.from_run}")
    try:
        defaults = json.loads(args.defaults) if args.defaults else None
        card = json.loads(args.card.read_text()) if args.card else None
    except (json.JSONDecodeError, OSError) as e:
        raise UserError(f"--defaults/--card: {e}") from None
    path = export_run(
        args.from_run,
        args.out,
        name=args.name or args.out.name,
        data=args.data,
        half=args.half,
        defaults=defaults,
        card=card,
    )
    print(f"wrote {path}")
    return 0
