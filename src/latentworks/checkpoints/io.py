"""safetensors I/O: atomic writes, safe loads, and an explicit opt-in for pickled checkpoints.

* ``save_file_atomic`` writes to a temporary file in the same folder, fsyncs it and then
  ``os.replace``s it over the target, so a crash mid-write leaves the old file intact.
* ``load_state_dict`` reads ``.safetensors``; pickled formats (``.ckpt``, ``.pt``, ``.pth``, ``.bin``)
  are refused unless ``allow_pickle=True``, and then go through ``torch.load(weights_only=True)``.
* A truncated or corrupt file raises ``CheckpointError`` naming the file and what was expected.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from pathlib import Path

import torch
from torch import Tensor

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, corrupt, or in a refused format."""


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. Windows: directories cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(data: bytes, path: str | os.PathLike[str]) -> None:
    """Write ``data`` to ``path`` atomically (tmp file + fsync + ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)


def save_file_atomic(
    tensors: dict[str, Tensor], path: str | os.PathLike[str], metadata: dict[str, str] | None = None
) -> None:
    """Save ``tensors`` as safetensors at ``path`` atomically.

    Tensors are made contiguous and moved to CPU; tensors that share memory are cloned (safetensors
    refuses shared storage). ``metadata`` values must be strings.
    """
    from safetensors.torch import save

    if metadata is not None:
        bad = [k for k, v in metadata.items() if not isinstance(v, str)]
        if bad:
            raise TypeError(f"safetensors metadata values must be str; not str for keys {bad}")
    seen: set[int] = set()
    clean: dict[str, Tensor] = {}
    for k, t in tensors.items():
        if not isinstance(t, Tensor):
            raise TypeError(f"tensor {k!r} is a {type(t).__name__}, not a torch.Tensor")
        t = t.detach().to("cpu").contiguous()
        ptr = t.untyped_storage().data_ptr() if t.numel() else -1
        if ptr in seen:
            t = t.clone()
        elif ptr != -1:
            seen.add(ptr)
        clean[k] = t
    atomic_write_bytes(save(clean, metadata=metadata), path)


def _check_safetensors_header(path: Path) -> dict:
    """Parse and validate the safetensors header; raise CheckpointError with a clear message."""
    size = path.stat().st_size
    expected = "a safetensors file (8-byte little-endian header length, JSON header, tensor data)"
    if size < 8:
        raise CheckpointError(f"{path}: file is {size} bytes, too short to be {expected}; it is truncated")
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > size - 8:
            raise CheckpointError(
                f"{path}: header says {n} bytes of JSON but the file has only {size - 8} after the length; "
                f"expected {expected}. The file is truncated or not safetensors."
            )
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: header is not valid JSON ({e}); expected {expected}") from None
    end = 0
    for k, v in header.items():
        if k == "__metadata__":
            continue
        try:
            end = max(end, int(v["data_offsets"][1]))
        except (KeyError, TypeError, IndexError, ValueError):
            raise CheckpointError(f"{path}: header entry {k!r} has no valid data_offsets") from None
    if 8 + n + end > size:
        raise CheckpointError(
            f"{path}: tensor data needs {8 + n + end} bytes but the file has {size}; "
            "the file is truncated (an interrupted download or write?). Re-create or re-download it."
        )
    return header


def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The ``__metadata__`` dict of a safetensors file (empty if none)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return dict(_check_safetensors_header(path).get("__metadata__", {}) or {})


def load_state_dict(
    path: str | os.PathLike[str], *, device: str | torch.device = "cpu", allow_pickle: bool = False
) -> dict[str, Tensor]:
    """Load a state dict from ``path``.

    safetensors files load directly. Pickled formats (``.ckpt .pt .pth .bin``) are refused unless
    ``allow_pickle=True``; then they load with ``torch.load(weights_only=True)`` (no code execution),
    and a nested ``{"state_dict": ...}`` is unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix.lower() in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise CheckpointError(
                f"{path}: refusing to load a pickled checkpoint ({path.suffix}); pickles can run code. "
                "Convert it to .safetensors, or pass allow_pickle=True (CLI: --allow-pickle) if you trust it."
            )
        try:
            obj = torch.load(path, map_location=device, weights_only=True)
        except Exception as e:  # noqa: BLE001 - re-raised with the file name
            raise CheckpointError(
                f"{path}: could not read pickled checkpoint with weights_only=True: {e}"
            ) from e
        if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
            obj = obj["state_dict"]
        if not isinstance(obj, dict):
            raise CheckpointError(f"{path}: expected a dict of tensors, got {type(obj).__name__}")
        return {k: v for k, v in obj.items() if isinstance(v, Tensor)}
    _check_safetensors_header(path)
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device=str(device))
    except SafetensorError as e:
        raise CheckpointError(f"{path}: not a valid safetensors file ({e})") from e
