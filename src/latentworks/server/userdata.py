"""The user data folder: ComfyUI's ``/userdata``, ``/v2/userdata`` and ``/settings`` over one confined folder.

ComfyUI's frontend keeps its settings (``comfy.settings.json``), saved workflows (``workflows/*.json``),
keybinding presets and subgraph blueprints there. latentworks has one user, ``default``, as ComfyUI has
without ``--multi-user``: everything lives in ``DATA_DIR/user/default``.

Every path a client names is relative to that folder and is refused (400) when it is absolute, holds
``..``, a NUL, a backslash or a drive letter, or leads (through a symlink) outside the folder. Writes are
atomic (a temporary file in the same folder, then ``os.replace``), so a crash never leaves half a file.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import threading
import time
import uuid
from pathlib import Path
from typing import Any

SETTINGS_FILE = "comfy.settings.json"
DEFAULT_MAX_FILE_BYTES = 16 * 2**20  # one file (a workflow is a few hundred KB at most)
DEFAULT_MAX_TOTAL_BYTES = 1 * 2**30  # the whole user folder
MAX_FILES = 20_000  # files the folder may hold (and a listing may return)
MAX_PATH_CHARS = 1024
MAX_DEPTH = 32
_TMP_PREFIX = ".lw-tmp-"
DEFAULT_FOLDERS = ("workflows", "subgraphs")


class UserDataError(Exception):
    """A refused request: HTTP ``status``, ComfyUI-style error ``type`` and a message for people."""

    def __init__(self, status: int, type_: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.type = type_
        self.message = message


def _bad_path(path: str, why: str) -> UserDataError:
    shown = path[:200].encode("unicode_escape").decode("ascii")
    return UserDataError(
        400,
        "invalid_path",
        f"user data path {shown!r} {why}; name a file inside the user folder, e.g. 'workflows/my.json'",
    )


def clean_parts(path: str) -> list[str]:
    """The parts of a relative user-data path; raises :class:`UserDataError` (400) on anything that could
    leave the folder or that a file system treats specially."""
    if len(path) > MAX_PATH_CHARS:
        raise _bad_path(path, f"is longer than {MAX_PATH_CHARS} characters")
    if "\x00" in path:
        raise _bad_path(path, "holds a NUL character")
    if "\\" in path:
        raise _bad_path(path, "holds a backslash (use '/' between folders)")
    if path.startswith("/") or re.match(r"^[A-Za-z]:", path):
        raise _bad_path(path, "is absolute")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise _bad_path(path, "climbs out of its folder ('..')")
    if any(len(p.encode("utf-8", "surrogateescape")) > 255 for p in parts):
        raise _bad_path(path, "has a file or folder name longer than 255 bytes")
    if len(parts) > MAX_DEPTH:
        raise _bad_path(path, f"is nested deeper than {MAX_DEPTH} folders")
    if any(p.startswith(_TMP_PREFIX) for p in parts):
        raise _bad_path(path, f"names a temporary file ({_TMP_PREFIX}*)")
    return parts


def _os_error(path: str, e: OSError) -> UserDataError:
    """A refusal for a file-system error: 507 when the disk is full, else 409 (the path conflicts with what
    is there: a file where a folder is needed, a name too long for the file system, ...)."""
    shown = path[:200].encode("unicode_escape").decode("ascii")
    if e.errno == errno.ENOSPC:
        return UserDataError(507, "insufficient_storage", f"the disk is full; {shown!r} was not written")
    return UserDataError(409, "conflict", f"{shown!r} could not be written: {e.strerror or e}")


class UserData:
    """One user's folder (created on first use).

    Args:
        root: the folder (``DATA_DIR/user/default``).
        max_file_bytes: largest file a POST may store (413 beyond).
        max_total_bytes: what the whole folder may hold (413 when a write would pass it).
    """

    def __init__(
        self,
        root: str | Path,
        *,
        max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
        max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES,
    ) -> None:
        self.root = Path(root)
        self.max_file_bytes = max_file_bytes
        self.max_total_bytes = max_total_bytes
        self._lock = threading.RLock()

    # -- paths -----------------------------------------------------------------------------------

    def _base(self) -> Path:
        if not self.root.is_dir():
            for folder in DEFAULT_FOLDERS:  # the frontend lists these at start-up (404 when missing)
                (self.root / folder).mkdir(parents=True, exist_ok=True)
        return self.root.resolve()

    def resolve(self, path: str, *, allow_root: bool = False) -> Path:
        """The absolute path of ``path`` inside the folder (it need not exist); raises UserDataError (400)
        when it is not a clean relative path or resolves (through symlinks) outside the folder."""
        parts = clean_parts(path)
        if not parts and not allow_root:
            raise _bad_path(path, "names no file")
        base = self._base()
        target = base.joinpath(*parts)
        if not target.resolve().is_relative_to(base):
            raise _bad_path(path, "leads outside the user folder (through a symbolic link)")
        return target

    def relative(self, path: Path) -> str:
        return path.relative_to(self._base()).as_posix()

    def file_info(self, path: Path) -> dict[str, Any]:
        """``{"path", "size", "modified", "created"}`` (times in ms since the epoch), as ComfyUI's full_info."""
        st = path.stat()
        return {
            "path": self.relative(path),
            "size": st.st_size,
            "modified": int(st.st_mtime * 1000),
            "created": int(st.st_ctime * 1000),
        }

    # -- listing ---------------------------------------------------------------------------------

    def _walk(self, folder: Path, recurse: bool) -> list[Path]:
        """Regular files under ``folder`` (symlinks that lead outside the folder and temp files skipped)."""
        base = self._base()
        found: list[Path] = []
        stack = [folder]
        while stack and len(found) < MAX_FILES:
            current = stack.pop()
            try:
                entries = sorted(os.scandir(current), key=lambda e: e.name)
            except OSError:
                continue
            for entry in entries:
                if entry.name.startswith(_TMP_PREFIX):
                    continue
                p = Path(entry.path)
                if entry.is_symlink() and not p.resolve().is_relative_to(base):
                    continue
                if entry.is_dir():
                    if recurse and not entry.is_symlink():  # never into linked folders: no loops
                        stack.append(p)
                elif entry.is_file():
                    found.append(p)
        return sorted(found)

    def listing(self, directory: str, *, recurse: bool, full_info: bool, split: bool) -> list[Any]:
        """GET /userdata: the files in ``directory``, paths relative to it (404 when it does not exist).

        ``full_info`` gives :meth:`file_info` dicts; ``split`` gives ``[path, *parts]`` lists."""
        folder = self.resolve(directory, allow_root=True)
        if not folder.is_dir():
            raise UserDataError(404, "not_found", f"no folder {directory[:200]!r} in the user data")
        out: list[Any] = []
        for p in self._walk(folder, recurse):
            rel = p.relative_to(folder).as_posix()
            if full_info:
                with contextlib.suppress(OSError):
                    out.append({**self.file_info(p), "path": rel})
            elif split:
                out.append([rel, *rel.split("/")])
            else:
                out.append(rel)
        return out

    def listing_v2(self, path: str) -> list[dict[str, Any]]:
        """GET /v2/userdata: the entries of one folder (not recursive), folders first, as
        ``{"name", "path", "type": "file"|"directory", "size"?, "modified"}`` with paths from the user root."""
        folder = self.resolve(path, allow_root=True)
        if not folder.is_dir():
            raise UserDataError(404, "not_found", f"no folder {path[:200]!r} in the user data")
        base = self._base()
        out: list[dict[str, Any]] = []
        for entry in sorted(os.scandir(folder), key=lambda e: (not e.is_dir(), e.name))[:MAX_FILES]:
            p = Path(entry.path)
            if entry.name.startswith(_TMP_PREFIX):
                continue
            if entry.is_symlink() and not p.resolve().is_relative_to(base):
                continue
            try:
                st = p.stat()
            except OSError:
                continue
            item: dict[str, Any] = {
                "name": entry.name,
                "path": p.relative_to(base).as_posix(),
                "type": "directory" if entry.is_dir() else "file",
                "modified": st.st_mtime,
            }
            if not entry.is_dir():
                item["size"] = st.st_size
            out.append(item)
        return out

    # -- files -----------------------------------------------------------------------------------

    def existing_file(self, path: str) -> Path:
        target = self.resolve(path)
        if not target.is_file():
            raise UserDataError(404, "not_found", f"no file {path[:200]!r} in the user data")
        return target

    def _used_bytes(self) -> int:
        return sum(p.stat().st_size for p in self._walk(self._base(), True) if p.exists())

    def _make_parents(self, target: Path, display: str) -> None:
        base = self._base()
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.parent.resolve().is_relative_to(base):  # a symlinked folder made after resolve()
            raise _bad_path(display, "leads outside the user folder (through a symbolic link)")
        if target.is_dir():
            raise UserDataError(409, "conflict", f"{display[:200]!r} is a folder, not a file")

    def write(self, path: str, data: bytes, *, overwrite: bool) -> Path:
        """Store ``data`` at ``path`` atomically (409 if it exists and not ``overwrite``; 413 over a limit)."""
        try:
            return self._write(path, data, overwrite=overwrite)
        except OSError as e:
            raise _os_error(path, e) from e

    def _write(self, path: str, data: bytes, *, overwrite: bool) -> Path:
        if len(data) > self.max_file_bytes:
            raise UserDataError(
                413, "request_too_large", f"the file is larger than the limit of {self.max_file_bytes} bytes"
            )
        with self._lock:
            target = self.resolve(path)
            if target.exists() and not overwrite:
                raise UserDataError(
                    409, "conflict", f"{path[:200]!r} already exists; send overwrite=true to replace it"
                )
            old = target.stat().st_size if target.is_file() else 0
            if self._used_bytes() - old + len(data) > self.max_total_bytes:
                raise UserDataError(
                    413,
                    "user_folder_full",
                    f"the user folder would hold more than {self.max_total_bytes} bytes; delete some files",
                )
            self._make_parents(target, path)
            self._atomic_write(target, data)
            return target

    def _atomic_write(self, target: Path, data: bytes) -> None:
        tmp = target.with_name(f"{_TMP_PREFIX}{uuid.uuid4().hex}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)  # replaces a symlink itself, never the file it points to
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def delete(self, path: str) -> None:
        try:
            self._delete(path)
        except OSError as e:
            raise _os_error(path, e) from e

    def _delete(self, path: str) -> None:
        with self._lock:
            target = self.resolve(path)
            if target.is_symlink():
                target.unlink()
                return
            if not target.is_file():
                raise UserDataError(404, "not_found", f"no file {path[:200]!r} in the user data")
            target.unlink()

    def move(self, source: str, dest: str, *, overwrite: bool) -> Path:
        try:
            return self._move(source, dest, overwrite=overwrite)
        except OSError as e:
            raise _os_error(dest, e) from e

    def _move(self, source: str, dest: str, *, overwrite: bool) -> Path:
        with self._lock:
            src = self.existing_file(source)
            dst = self.resolve(dest)
            if dst.exists() and not overwrite:
                raise UserDataError(
                    409, "conflict", f"{dest[:200]!r} already exists; send overwrite=true to replace it"
                )
            self._make_parents(dst, dest)
            os.replace(src, dst)
            return dst

    # -- settings --------------------------------------------------------------------------------

    def settings(self) -> dict[str, Any]:
        """The stored settings (``{}`` when none, or when the file is damaged: it is then kept aside)."""
        path = self._base() / SETTINGS_FILE
        try:
            value = json.loads(path.read_bytes())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, RecursionError):
            with contextlib.suppress(OSError):
                path.rename(path.with_name(f"{SETTINGS_FILE}.damaged-{time.strftime('%Y%m%dT%H%M%S')}"))
            return {}
        return value if isinstance(value, dict) else {}

    def update_settings(self, changes: dict[str, Any]) -> None:
        """Merge ``changes`` into the stored settings (read-modify-write under a lock, atomic on disk)."""
        with self._lock:
            merged = {**self.settings(), **changes}
            data = json.dumps(merged, indent=4, ensure_ascii=True, allow_nan=False).encode()
            if len(data) > self.max_file_bytes:
                raise UserDataError(
                    413, "request_too_large", f"the settings would exceed {self.max_file_bytes} bytes"
                )
            try:
                self._atomic_write(self._base() / SETTINGS_FILE, data)
            except OSError as e:
                raise _os_error(SETTINGS_FILE, e) from e
