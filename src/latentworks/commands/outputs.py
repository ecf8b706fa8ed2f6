"""Folders that commands write: refuse to overwrite unless asked, tidy up after a run that saved nothing,
and say how to continue a run that stopped early."""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TextIO

from latentworks.cli import UserError


def refuse_non_empty(out: Path, overwrite: bool, *, keep: Iterable[Path] = (), advice: str = "") -> None:
    """UserError when ``out`` is a file or a folder holding anything but the ``keep`` paths (inputs such
    as a latent cache), unless ``overwrite``. ``advice`` is added to the message (e.g. "use --resume")."""
    if overwrite or not out.exists():
        return
    keep_names = {p.resolve() for p in keep}
    if out.is_dir() and all(p.resolve() in keep_names for p in out.iterdir()):
        return
    what = "exists (a file)" if out.is_file() else "exists and is not empty"
    raise UserError(
        f"--out {out} {what}; nothing is overwritten: choose a new or empty folder{advice}, or pass "
        "--overwrite to write into it anyway (files of the same name are replaced, others are kept)"
    )


def _is_main_rank() -> bool:
    return int(os.environ.get("RANK", "0")) == 0  # torchrun: only rank 0 owns the run folder


@contextlib.contextmanager
def tidy_run_folder(out: Path, checkpoint: Path) -> Iterator[None]:
    """On an error or Ctrl-C before ``checkpoint`` exists, remove what this command created in ``out``
    (the folder itself if it did not exist), so an aborted start leaves no half run (a lone config.json,
    a latent cache built for a rejected preset). Once a checkpoint exists everything is kept."""
    existed = out.exists()
    before = {p.name for p in out.iterdir()} if out.is_dir() else set()
    try:
        yield
    except BaseException:
        if _is_main_rank() and not checkpoint.is_file() and out.is_dir():
            if not existed:
                shutil.rmtree(out, ignore_errors=True)
                print(f"removed {out}: the run stopped before its first checkpoint", file=sys.stderr)
            else:
                created = [p for p in out.iterdir() if p.name not in before]
                for p in created:
                    if p.is_dir():
                        shutil.rmtree(p, ignore_errors=True)
                    else:
                        p.unlink(missing_ok=True)
                if created:
                    names = ", ".join(sorted(p.name for p in created))
                    print(
                        f"removed {names} from {out}: the run stopped before its first checkpoint",
                        file=sys.stderr,
                    )
        raise


def print_continue_hints(
    command: str, out: Path, next_steps: list[str], *, file: TextIO | None = None
) -> None:
    """After an early stop: the exact command that resumes the run, then what to do with what it has."""
    if not _is_main_rank():
        return
    file = file or sys.stdout
    resume = f"latentworks {command} --out {shlex.quote(str(out))} --resume"
    print(f"to continue from the last checkpoint:  {resume}", file=file)
    for line in next_steps:
        print(line, file=file)
