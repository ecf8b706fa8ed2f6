"""Training options that remember whether they were given, for ``--resume``.

A resumed run takes its settings from the run's saved ``config.json``; only options given on the command
line may override it. argparse cannot tell ``--lr 1e-4`` from an omitted ``--lr`` whose default is
``1e-4``, so these options parse to ``None`` unless given, ``--help`` still shows the real default, and
``option_values`` fills the defaults in for a fresh run.
"""

from __future__ import annotations

import argparse
from typing import Any

_DEFAULTS = "_option_defaults"


def add_option(
    p: argparse.ArgumentParser,
    *flags: str,
    default: Any,
    help: str = "",
    show_default: bool = True,
    **kw: Any,
) -> None:
    """``p.add_argument(*flags, ...)`` that parses to None unless given; ``default`` is shown in --help
    (unless ``show_default`` is False: the help text already explains it) and returned by
    ``option_values`` when the flag is absent."""
    text = (f"{help} (default: {default})" if help else f"default: {default}") if show_default else help
    action = p.add_argument(*flags, default=None, help=text, **kw)
    defaults = dict(p.get_default(_DEFAULTS) or {})
    defaults[action.dest] = default
    p.set_defaults(**{_DEFAULTS: defaults})


def given_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options of ``add_option`` given on the command line (dest -> value)."""
    return {d: getattr(args, d) for d in getattr(args, _DEFAULTS, {}) if getattr(args, d) is not None}


def option_values(args: argparse.Namespace) -> dict[str, Any]:
    """Every ``add_option`` option: the given value, else its default."""
    return {d: default for d, default in getattr(args, _DEFAULTS, {}).items()} | given_options(args)


def add_run_options(p: argparse.ArgumentParser, *, sample_every: int) -> None:
    """The options every training command shares: seed, checkpoint/sample intervals, wall-time limit,
    device, ``--resume`` and ``--overwrite``."""
    add_option(p, "--seed", type=int, default=0)
    add_option(p, "--checkpoint-every", type=int, default=500)
    add_option(p, "--sample-every", type=int, default=sample_every)
    add_option(
        p,
        "--max-seconds",
        type=float,
        default=None,
        show_default=False,
        help="stop (after a checkpoint) after this many seconds (default: no limit)",
    )
    add_option(p, "--device", default="cpu")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from OUT/checkpoints/last.safetensors with the settings saved in OUT/config.json",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="start a new run in an --out folder that is not empty (files of the same name are replaced)",
    )
