"""The options that ``latentworks train`` and ``latentworks train-controlnet`` share.

Both commands run the same loop (``training.diffusion.train_diffusion``) with a ``DiffusionTrainConfig``, so
they take the same loop options (steps, batch size, learning rate, EMA, captions, precision, and the run
options of ``resume_options.add_run_options``); only some defaults and help texts differ, and those are
arguments here. The options are ``add_option`` options: ``--resume`` and ``--config`` see them as before.
"""

from __future__ import annotations

import argparse
from typing import Any

from latentworks.commands.resume_options import add_option, add_run_options

CAPTION_AUGMENT_HELP = (
    "train on the forms people type (label alone, shuffled tags, with or without the style, any "
    "case) besides the fixed caption; auto: on when the data stores the captions' parts, as "
    "'latentworks data emoji' does"
)

# the DiffusionTrainConfig fields that add_diffusion_loop_options' options set, under the same names
LOOP_FIELDS = (
    "steps",
    "batch_size",
    "lr",
    "ema_decay",
    "caption_dropout",
    "caption_augment",
    "mixed_precision",
    "seed",
    "checkpoint_every",
    "sample_every",
    "max_seconds",
    "device",
)


def add_diffusion_loop_options(
    p: argparse.ArgumentParser,
    *,
    steps: int,
    lr: float,
    ema_decay: float,
    caption_dropout: float,
    sample_every: int,
    caption_dropout_help: str = "",
    caption_augment_help: str = CAPTION_AUGMENT_HELP,
) -> None:
    """Add the diffusion training loop's options to ``p``: ``--steps`` ... ``--mixed-precision``, then the
    run options (``--seed``, intervals, ``--max-seconds``, ``--device``, ``--config``, ``--resume``,
    ``--overwrite``). The keyword arguments are the command's own defaults and help texts."""
    add_option(p, "--steps", type=int, default=steps)
    add_option(p, "--batch-size", type=int, default=32)
    add_option(p, "--lr", type=float, default=lr)
    add_option(p, "--ema-decay", type=float, default=ema_decay)
    add_option(p, "--caption-dropout", type=float, default=caption_dropout, help=caption_dropout_help)
    add_option(
        p, "--caption-augment", choices=("auto", "on", "off"), default="auto", help=caption_augment_help
    )
    add_option(p, "--mixed-precision", choices=("no", "bf16", "fp16"), default="no")
    add_run_options(p, sample_every=sample_every)


def loop_fields(values: dict[str, Any]) -> dict[str, Any]:
    """The ``DiffusionTrainConfig`` keyword arguments of the loop options, from ``option_values(args)``."""
    return {name: values[name] for name in LOOP_FIELDS}
