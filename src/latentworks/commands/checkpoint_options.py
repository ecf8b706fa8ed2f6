"""Command-line options shared by every command that reads checkpoints from elsewhere (generate, convert)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_component_arguments(p: argparse.ArgumentParser) -> None:
    """--vae, --text-encoder (repeatable), --tokenizer, --prediction and --allow-pickle."""
    p.add_argument(
        "--vae",
        type=Path,
        default=None,
        metavar="FILE",
        help="a separate VAE file (default: the VAE inside the checkpoint)",
    )
    p.add_argument(
        "--text-encoder",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="a separate CLIP or T5 text-encoder file (repeat for several; default: those inside the checkpoint)",
    )
    p.add_argument(
        "--tokenizer",
        type=Path,
        default=None,
        metavar="PATH",
        help="T5's tokenizer.json (or a folder with one), needed by SD3/FLUX single files (default: none; CLIP's vocabulary is bundled)",
    )
    p.add_argument(
        "--prediction",
        choices=["eps", "v"],
        default=None,
        help="override the objective (default: detected from the weights; SD 2.x 768-v files need "
        "--prediction v when detection misses)",
    )
    p.add_argument(
        "--allow-pickle",
        action="store_true",
        help="load pickled .ckpt/.pt/.bin files (with torch.load(weights_only=True)); only for files you trust",
    )
