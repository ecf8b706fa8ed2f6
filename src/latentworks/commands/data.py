"""``latentworks data emoji``: fetch the emoji npm packages and build the captioned dataset file."""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("data", help="fetch and build datasets (emoji)")
    sub = p.add_subparsers(dest="dataset", metavar="DATASET", required=True)
    e = sub.add_parser("emoji", help="Noto + Twemoji emoji with emojibase captions (npm packages)")
    e.add_argument("--out", type=Path, default=Path("data"), help="output folder (default: ./data)")
    e.add_argument("--size", type=int, default=64, choices=(16, 32, 64), help="resolution (default 64)")
    e.add_argument("--styles", nargs="+", default=["google", "twitter"], help="google and/or twitter")
    e.add_argument(
        "--cache-dir", type=Path, default=None, help="npm cache (default ~/.cache/latentworks/npm)"
    )
    e.add_argument("--tags", type=int, default=2, help="emojibase tags per caption (default 2)")
    return p


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from latentworks.cli import UserError
    from latentworks.data.emoji import build_emoji_dataset
    from latentworks.data.folder import DatasetError

    t0 = time.perf_counter()
    try:
        ds = build_emoji_dataset(
            styles=args.styles,
            size=args.size,
            cache_dir=args.cache_dir,
            num_tags=args.tags,
            progress=lambda it: tqdm(it, desc="emoji", unit="img"),
        )
    except DatasetError as e:
        raise UserError(str(e)) from None
    out = Path(args.out) / f"emoji-{args.size}.npz"
    ds.save_npz(out)
    held = int(ds.extra["heldout"].sum())
    print(
        f"wrote {out}: {len(ds)} images ({len(ds) - held} train, {held} held out) "
        f"at {args.size}px in {time.perf_counter() - t0:.1f}s"
    )
    print("licences: " + "; ".join(ds.metadata["licenses"].values()))
    return 0
