"""Writing a generate run's images: one PNG per image, numbered for a batch, each with its own seed.

``latentworks generate`` writes its images here whichever pipeline drew them (ours, or Karlo's cascade in
``commands/karlo.py``), so ``-o PATH`` names files the same way and every PNG carries the same parameters.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # PIL loads with the pipeline, not with the command line's --help
    from PIL import Image


def batch_paths(out: Path, n: int) -> list[Path]:
    """``out`` for one image; ``out`` with ``-1`` ... ``-n`` before its suffix for ``n`` of them."""
    return [out] if n == 1 else [out.with_name(f"{out.stem}-{i + 1}{out.suffix}") for i in range(n)]


def save_images(
    images: Sequence[Image.Image],
    seeds: Sequence[int],
    parameters: Mapping[str, Any],
    out: Path,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Save ``images`` (one seed each) to :func:`batch_paths` ``(out, len(images))`` as PNGs whose text chunks
    hold ``parameters`` with that image's seed and ``batch`` 1 (each file reproduces alone), plus ``extra``;
    print one line per file: its path and seed."""
    from latentworks.pipelines.metadata import save_png

    for img, path, seed in zip(images, batch_paths(out, len(images)), seeds, strict=True):
        save_png(img, path, {**parameters, "seed": seed, "batch": 1} | dict(extra or {}))
        print(f"{path}  seed={seed}")
