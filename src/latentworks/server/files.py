"""The input/output/temp folders: confined lookups for /view and atomic, link-safe uploads."""

from __future__ import annotations

import contextlib
import errno
import io
import os
import re
import uuid
from pathlib import Path

from PIL import Image, UnidentifiedImageError

FOLDER_TYPES = ("output", "input", "temp")

_IMAGE_EXT = {"png": ".png", "jpeg": ".jpg", "webp": ".webp"}
MAX_SUBFOLDER_DEPTH = 16


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


class UploadError(Exception):
    """An upload that was refused or could not be stored; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, type_: str, message: str) -> None:
        super().__init__(message)
        self.status, self.type, self.message = status, type_, message


def _write_all(fd: int, data: bytes) -> None:
    """Write every byte of ``data`` to ``fd`` (os.write may write less than asked)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _open_folder(root: Path, parts: list[str]) -> int:
    """A directory fd for ``root/parts...``, creating missing folders; never follows a symbolic link below
    ``root`` (each part is opened with O_NOFOLLOW relative to its parent's fd, so a link swapped in
    between the check and the write cannot redirect it)."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in parts:
            with contextlib.suppress(FileExistsError):
                os.mkdir(part, 0o755, dir_fd=fd)
            try:
                child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise UploadError(
                        400,
                        "invalid_upload",
                        f"subfolder part {part!r} is a symbolic link or a file; uploads "
                        "never follow links out of the input folder",
                    ) from e
                raise
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def save_upload(
    roots: dict[str, Path],
    folder_type: str,
    subfolder: str,
    filename: str,
    kind: str,
    data: bytes,
    overwrite: bool = False,
) -> tuple[str, str]:
    """Store an uploaded image; returns (stored file name, normalised subfolder). Raises UploadError.

    The bytes go to a hidden temporary file created exclusively (O_EXCL | O_NOFOLLOW) in the target folder,
    are flushed to disk, and only then get their name: without ``overwrite`` by ``os.link`` (fails if the
    name exists, so concurrent uploads of one name each get their own "name (i).ext"), with ``overwrite``
    by ``os.replace`` (replaces a symbolic link itself, never the file it points to). A failed write (disk
    full: 507) removes the temporary file, so no partial upload is left behind.
    """
    if folder_type not in ("input", "temp"):
        raise UploadError(400, "invalid_upload", "uploads go to type 'input' or 'temp'")
    parts = _clean_parts(subfolder or "")
    if parts is None:
        raise UploadError(400, "invalid_upload", "the subfolder must be relative and stay inside the folder")
    if len(parts) > MAX_SUBFOLDER_DEPTH or any(
        len(p.encode("utf-8", "surrogateescape")) > 100 for p in parts
    ):
        raise UploadError(
            400,
            "invalid_upload",
            f"the subfolder may have at most {MAX_SUBFOLDER_DEPTH} levels of at most 100 bytes each",
        )
    stem = Path(filename.replace("\\", "/").split("/")[-1]).stem
    stem = re.sub(r"[^A-Za-z0-9._ -]", "_", stem).lstrip(". ") or "upload"
    stem = stem[:100]
    ext = _IMAGE_EXT[kind]
    try:
        folder = _open_folder(roots[folder_type], parts)
    except OSError as e:
        raise _storage_error(e) from e
    tmp = f".upload-{uuid.uuid4().hex}.tmp"
    try:
        fd = os.open(
            tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=folder
        )
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        name = stem + ext
        if overwrite:
            try:
                os.replace(tmp, name, src_dir_fd=folder, dst_dir_fd=folder)
            except IsADirectoryError as e:
                raise UploadError(409, "invalid_upload", f"{name!r} is a folder; choose another name") from e
        else:
            for i in range(1, 100_000):
                try:
                    os.link(tmp, name, src_dir_fd=folder, dst_dir_fd=folder, follow_symlinks=False)
                    break
                except FileExistsError:
                    name = f"{stem} ({i}){ext}"
            else:
                raise UploadError(409, "invalid_upload", f"too many files named {stem}{ext}")
        return name, "/".join(parts)
    except OSError as e:
        raise _storage_error(e) from e
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=folder)
        os.close(folder)


def _storage_error(e: OSError) -> UploadError:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return UploadError(
            507,
            "insufficient_storage",
            "the disk is full: the upload was not saved (no partial file was "
            "left). Free space in the server's data folder and upload again.",
        )
    if e.errno == errno.ENAMETOOLONG:
        return UploadError(
            400, "invalid_upload", "the subfolder or file name is too long for the file system"
        )
    return UploadError(500, "upload_failed", f"the upload could not be saved: {e.strerror or e}")


# -- /view?preview=&channel= -----------------------------------------------------------------------

VIEW_CHANNELS = ("rgba", "rgb", "a")
_PREVIEW_FORMATS = ("webp", "jpeg")


class ViewError(Exception):
    """A /view request that cannot be answered: ``status`` (400, 413, 415), ``type`` and a message."""

    def __init__(self, status: int, type_: str, message: str):
        super().__init__(message)
        self.status, self.type, self.message = status, type_, message


def view_variant(
    path: Path, preview: str | None, channel: str | None, max_pixels: int | None
) -> tuple[bytes, str] | None:
    """The bytes and media type /view answers for ``path`` with ComfyUI's ``preview`` and ``channel``.

    None means "serve the file unchanged" (no ``preview``, and ``channel`` absent or ``rgba``). Otherwise,
    as ComfyUI's /view does:

    - ``preview="FORMAT;QUALITY"`` (``webp;90``, ``jpeg;80``): the image re-encoded as FORMAT (``webp`` or
      ``jpeg``; any other format, or a channel with ``a`` in it, gives ``webp``) at QUALITY (last field when
      it is a number, else 90; clamped to 1..100). ``jpeg`` and ``channel=rgb`` drop the alpha channel.
    - ``channel=rgb``: a PNG of the colour channels only; ``channel=a``: a PNG whose colour is black and
      whose alpha is the image's alpha (opaque when it has none), the form ComfyUI's mask editor reads.

    Raises :class:`ViewError` for an unknown channel (400), a file that is not an image (415) or an image
    over ``max_pixels`` (413, checked from the header before decoding).
    """
    if channel is not None and channel not in VIEW_CHANNELS:
        raise ViewError(
            400, "invalid_request", f"channel must be one of {', '.join(VIEW_CHANNELS)}, got {channel[:40]!r}"
        )
    if preview is None and channel in (None, "rgba"):
        return None
    try:
        img = Image.open(path)
    except Image.DecompressionBombError as e:  # over PIL's own limit (when --max-image-pixels is off)
        raise ViewError(413, "request_too_large", f"{path.name}: {e}") from e
    except (UnidentifiedImageError, OSError) as e:
        raise ViewError(
            415, "unsupported_media_type", f"{path.name} is not an image, so it has no preview or channels"
        ) from e
    with img:
        if max_pixels is not None and img.width * img.height > max_pixels:
            raise ViewError(
                413,
                "request_too_large",
                f"{path.name} is {img.width} x {img.height} pixels, over this server's limit of {max_pixels} "
                "pixels per image (serve --max-image-pixels); fetch it without preview= or channel=",
            )
        try:
            img.load()
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            raise ViewError(415, "unsupported_media_type", f"{path.name} could not be decoded: {e}") from e
        has_alpha = "A" in img.getbands() or (img.mode == "P" and "transparency" in img.info)
        if preview is not None:
            fields = preview.split(";")
            fmt = fields[0] if fields[0] in _PREVIEW_FORMATS and "a" not in (channel or "") else "webp"
            digits = fields[-1].isascii() and fields[-1].isdigit()  # "²".isdigit() is true too
            quality = min(100, max(1, int(fields[-1]))) if digits else 90
            out = (
                img.convert("RGB")
                if fmt == "jpeg" or channel == "rgb"
                else img.convert("RGBA" if has_alpha else "RGB")
            )
            buf = io.BytesIO()
            out.save(buf, format=fmt.upper(), quality=quality)
            return buf.getvalue(), f"image/{fmt}"
        if channel == "rgb":
            out = img.convert("RGB")
        else:  # "a": alpha only, on black
            alpha = img.convert("RGBA").getchannel("A") if has_alpha else Image.new("L", img.size, 255)
            out = Image.new("RGBA", img.size, (0, 0, 0, 0))
            out.putalpha(alpha)
        buf = io.BytesIO()
        out.save(buf, format="PNG")
        return buf.getvalue(), "image/png"
