"""Training options that remember whether they were given, for ``--resume``.

A resumed run takes its settings from the run's saved ``config.json``; only options given on the command
line may override it. argparse cannot tell ``--lr 1e-4`` from an omitted ``--lr`` whose default is
``1e-4``, so these options parse to ``None`` unless given, ``--help`` still shows the real default, and
``option_values`` fills the defaults in for a fresh run.

``--config FILE.toml`` gives the same options from a file: a flat TOML table whose keys are the option
names (``lr = 1e-4``, ``batch-size = 64`` or ``batch_size = 64``). Precedence: the command line, then the
file, then the defaults. Values from the file count as given (a resume checks them like flags).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

_DEFAULTS = "_option_defaults"
_TYPES = "_option_types"  # dest -> (type, choices) of each add_option option, to check config-file values


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
    types = dict(p.get_default(_TYPES) or {})
    types[action.dest] = (kw.get("type"), kw.get("choices"))
    p.set_defaults(**{_DEFAULTS: defaults, _TYPES: types})


def given_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options of ``add_option`` given on the command line or in ``--config`` (dest -> value)."""
    cli = {d: getattr(args, d) for d in getattr(args, _DEFAULTS, {}) if getattr(args, d) is not None}
    path = getattr(args, "config", None)
    return (config_options(path, args) if path is not None else {}) | cli


class ConfigFileError(ValueError):
    """A ``--config`` file that cannot be read, or names an unknown option or a bad value."""


def config_options(path: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The options a TOML ``--config`` file sets (dest -> value), checked against the command's options."""
    import tomllib

    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigFileError(f"--config: {path} does not exist") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigFileError(f"--config: {path} is not a readable TOML file ({e})") from None
    known: dict[str, tuple[Any, Any]] = getattr(args, _TYPES, {})
    out: dict[str, Any] = {}
    for key, value in data.items():
        dest = key.replace("-", "_")
        if dest not in known:
            names = ", ".join(sorted(d.replace("_", "-") for d in known))
            raise ConfigFileError(f"--config: {path}: unknown option {key!r}; the options are: {names}")
        if isinstance(value, dict | list):
            raise ConfigFileError(
                f"--config: {path}: {key} must be a single value, got {type(value).__name__}"
            )
        kind, choices = known[dest]
        if kind is not None and not isinstance(value, bool):
            try:
                value = kind(value)
            except (TypeError, ValueError) as e:
                raise ConfigFileError(f"--config: {path}: {key} = {value!r} is not valid ({e})") from None
        if choices is not None and value not in choices:
            raise ConfigFileError(
                f"--config: {path}: {key} = {value!r}; choose from {', '.join(map(str, choices))}"
            )
        out[dest] = value
    return out


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
        "--config",
        type=Path,
        default=None,
        metavar="FILE.toml",
        help="read the options above from a TOML file (keys are option names, e.g. lr = 1e-4); flags given "
        "on the command line win (default: none)",
    )
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
