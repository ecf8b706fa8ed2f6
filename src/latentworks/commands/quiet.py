"""``--quiet`` for the libraries we call: their progress bars and info logs, off only inside a ``with``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def quiet_libraries(enabled: bool = True) -> Iterator[None]:
    """Silence transformers' progress bars ("Loading weights: 100%|...") and info/warning logs inside the
    block, and restore the previous settings afterwards (nothing changes at import time or for other code)."""
    if not enabled:
        yield
        return
    from transformers.utils import logging as hf_logging

    bars_were_on = hf_logging.is_progress_bar_enabled()
    verbosity = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars_were_on:
            hf_logging.enable_progress_bar()
