"""Image budgets that need no torch: read an image's size from its header before decoding it, and
fingerprint an input file by its content.

The server's upload route and the LoadImage node share these checks. Both read only the header
(``Image.open(...).size``, which parses PNG's IHDR or JPEG's SOF marker) and refuse an image over
``max_image_pixels`` *before* ``load()`` decodes it, so a 10 KB PNG that claims 20000 x 20000 pixels
costs nothing. PIL's own ``Image.MAX_IMAGE_PIXELS`` is left alone (it is process-wide state); its
``DecompressionBombError`` is caught and reported the same way.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import IO

from PIL import Image, UnidentifiedImageError

from latentworks.graph.budgets import JobBudgets


def decoder_refused(error: Exception, budgets: JobBudgets) -> str:
    """The sentence for an image PIL refuses as a decompression bomb (its header claims a huge size)."""
    limit = budgets.max_image_pixels
    ours = f"; this server's limit is {limit:,} pixels per image (serve --max-image-pixels)" if limit else ""
    return f"the image header claims more pixels than the image decoder accepts ({error}){ours}"


def image_size(source: bytes | str | Path | IO[bytes]) -> tuple[int, int] | None:
    """(width, height) from an image's header without decoding its pixels; None if PIL cannot read it.

    Raises:
        PIL.Image.DecompressionBombError: PIL itself refuses the header (over twice its ``MAX_IMAGE_PIXELS``).
    """
    fp: str | Path | IO[bytes] = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with Image.open(fp) as im:
            return int(im.width), int(im.height)
    except Image.DecompressionBombError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return None


def image_pixels_error(source: bytes | str | Path | IO[bytes], budgets: JobBudgets) -> str | None:
    """Why an encoded image is over ``budgets.max_image_pixels`` (read from its header), or None if it fits
    or is not an image PIL can read (other checks report that)."""
    try:
        size = image_size(source)
    except Image.DecompressionBombError as e:
        return decoder_refused(e, budgets)
    if size is None:
        return None
    return budgets.pixels_error(*size)


def upload_pixels_error(data: bytes, budgets: JobBudgets) -> str | None:
    """The message for a 413 answer to an upload whose decoded size is over budget, or None to accept it."""
    problem = image_pixels_error(data, budgets)
    if problem is None:
        return None
    return f"the uploaded image is too large once decoded: {problem}"


def file_fingerprint(path: str | Path) -> tuple[int, int, int, str] | None:
    """(size, mtime_ns, inode, sha256 of the content) of a file, or None if it cannot be read.

    Part of LoadImage's cache key, so an input overwritten in place (same name) is loaded again.
    """
    try:
        st = os.stat(path)
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns, st.st_ino, digest.hexdigest()
