"""The input/output/temp folders: confined lookups for /view and checked uploads."""

from __future__ import annotations

import re
from pathlib import Path

FOLDER_TYPES = ("output", "input", "temp")

_IMAGE_EXT = {"png": ".png", "jpeg": ".jpg", "webp": ".webp"}


def sniff_image(data: bytes) -> str | None:
    """ "png", "jpeg" or "webp" from the magic bytes, else None (the file name and MIME type are not trusted)."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def _clean_parts(subfolder: str) -> list[str] | None:
    """Path parts of a relative subfolder, or None if it is absolute or climbs out ('..')."""
    if "\x00" in subfolder:
        return None
    text = subfolder.replace("\\", "/")
    if text.startswith("/") or re.match(r"^[A-Za-z]:", text):
        return None
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        return None
    return parts


def resolve_file(roots: dict[str, Path], folder_type: str, subfolder: str, filename: str) -> Path | None:
    """The file ``roots[folder_type]/subfolder/filename`` if it exists and lies inside that root, else None.

    Rejects unknown folder types, absolute paths, '..', separators in the file name, and symlinks that
    point outside the root (the resolved path must stay under the resolved root).
    """
    root = roots.get(folder_type)
    if root is None or not filename or filename in (".", "..") or "\x00" in filename:
        return None
    if "/" in filename or "\\" in filename:
        return None
    parts = _clean_parts(subfolder or "")
    if parts is None:
        return None
    base = root.resolve()
    candidate = base.joinpath(*parts, filename).resolve()
    if not candidate.is_relative_to(base) or not candidate.is_file():
        return None
    return candidate


def upload_target(
    roots: dict[str, Path], folder_type: str, subfolder: str, filename: str, kind: str, overwrite: bool
) -> tuple[Path, str, str] | None:
    """(path to write, stored file name, normalised subfolder) for an upload, or None if not allowed."""
    if folder_type not in ("input", "temp"):
        return None
    parts = _clean_parts(subfolder or "")
    if parts is None:
        return None
    stem = Path(filename.replace("\\", "/").split("/")[-1]).stem
    stem = re.sub(r"[^A-Za-z0-9._ -]", "_", stem).lstrip(". ") or "upload"
    stem = stem[:100]
    ext = _IMAGE_EXT[kind]
    base = roots[folder_type].resolve()
    folder = base.joinpath(*parts)
    if not folder.resolve().is_relative_to(base):
        return None
    name = stem + ext
    i = 1
    while not overwrite and (folder / name).exists():
        name = f"{stem} ({i}){ext}"
        i += 1
    return folder / name, name, "/".join(parts)
