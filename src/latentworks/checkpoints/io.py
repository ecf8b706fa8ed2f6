"""safetensors I/O: atomic writes, safe loads, and an explicit opt-in for pickled checkpoints.

* ``save_file_atomic`` writes to a temporary file in the same folder, fsyncs it and then
  ``os.replace``s it over the target, so a crash mid-write leaves the old file intact.
* ``load_state_dict`` reads ``.safetensors``; pickled formats (``.ckpt``, ``.pt``, ``.pth``, ``.bin``)
  are refused unless ``allow_pickle=True``, and then go through ``torch.load(weights_only=True)``.
* A truncated, corrupt or crafted file raises ``CheckpointError`` naming the file, the offending key and
  what was expected. The whole header is validated before any tensor is read: its size
  (``MAX_HEADER_BYTES``) and JSON nesting depth (``MAX_JSON_DEPTH``, checked before parsing), no
  duplicate keys, ``__metadata__`` a ``{str: str}`` object, every entry's ``dtype`` a known name,
  ``shape`` a list of non-negative ints, ``data_offsets`` two ints with ``0 <= begin <= end <= data
  size`` spanning exactly ``numel * itemsize`` bytes, and no two tensors sharing bytes.
* ``LazyStateDict`` is a read-on-access ``Mapping[str, Tensor]`` over a safetensors file: ``shapes()``
  and ``dtypes()`` come from the header alone, and each tensor is read (and cast) only when indexed.
* ``load_into`` puts a (lazy) state dict into a module tensor by tensor; a module built on the ``meta``
  device takes the loaded tensors as its parameters (no second copy of the model).

Memory: tensors are read with plain file reads at the header's offsets, not through a memory map, so
file pages do not stay resident and count against the process (a touched ``mmap`` page stays in RSS
until the map is closed). Casting happens per tensor, so loading an fp32 file as fp16 peaks at the fp16
weights plus the largest single fp32 tensor, never the whole fp32 file.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import struct
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from io import BufferedReader
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from latentworks.atomic import atomic_write_bytes
from latentworks.nn.quant import QuantizedTensor

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
_CHUNK_BYTES = 1 << 20  # casting reads go through one buffer of this size

# safetensors dtype codes -> torch dtypes (those this torch build has).
SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    name: getattr(torch, attr)
    for name, attr in {
        "F64": "float64",
        "F32": "float32",
        "F16": "float16",
        "BF16": "bfloat16",
        "F8_E4M3": "float8_e4m3fn",
        "F8_E5M2": "float8_e5m2",
        "I64": "int64",
        "I32": "int32",
        "I16": "int16",
        "I8": "int8",
        "U8": "uint8",
        "U16": "uint16",
        "U32": "uint32",
        "U64": "uint64",
        "BOOL": "bool",
    }.items()
    if hasattr(torch, attr)
}


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, corrupt, or in a refused format."""


def save_file_atomic(
    tensors: dict[str, Tensor], path: str | os.PathLike[str], metadata: dict[str, str] | None = None
) -> None:
    """Save ``tensors`` as safetensors at ``path`` atomically.

    Tensors are made contiguous and moved to CPU; tensors that share memory are cloned (safetensors
    refuses shared storage); weights kept in a storage format (``QuantizedTensor``) are written dense. ``metadata`` values must be strings.
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
        if isinstance(t, QuantizedTensor):  # a weight kept in fp8/GGUF storage: written dense
            t = t.dequantize()
        t = t.detach().to("cpu").contiguous()
        ptr = t.untyped_storage().data_ptr() if t.numel() else -1
        if ptr in seen:
            t = t.clone()
        elif ptr != -1:
            seen.add(ptr)
        clean[k] = t
    atomic_write_bytes(save(clean, metadata=metadata), path)


# Limits on what a safetensors header may be (the reference implementation caps the header at 100 MB too).
MAX_HEADER_BYTES = 100_000_000
# A valid header nests 3 deep (root {, tensor entry {, shape [); anything much deeper is an attack on the
# recursive JSON parser (RecursionError), so it is refused before parsing.
MAX_JSON_DEPTH = 16
# torch shapes: at most 64 dimensions, every size and the element count within int64.
_MAX_DIMS = 64
_INT64_MAX = (1 << 63) - 1
_ENTRY_FIELDS = {"dtype", "shape", "data_offsets"}
# A JSON string (escapes included) -- or an unterminated one running to the end of the text, so that the
# match never fails and is never retried from inside the string: stripping strings stays linear.
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\\?\Z)', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_BRACKET_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


def _check_json_depth(text: str, path: Path) -> None:
    """Refuse ``text`` if its brackets nest deeper than ``MAX_JSON_DEPTH`` (brackets inside strings do not
    count). Linear time, the scanning done by ``re`` (a 494-tensor header: about 1 ms)."""
    brackets = _NOT_BRACKET.sub("", _JSON_STRING.sub("", text))
    if len(brackets) <= MAX_JSON_DEPTH:
        return
    depth = max(itertools.accumulate(map(_BRACKET_STEP.__getitem__, brackets)))
    if depth > MAX_JSON_DEPTH:
        raise CheckpointError(
            f"{path}: header JSON nests {depth} levels deep, more than the {MAX_JSON_DEPTH} allowed; a "
            "safetensors header nests 3 levels. The file is corrupt or crafted."
        )


class _DuplicateKey(Exception):
    """Raised by ``_no_duplicate_keys``; turned into a CheckpointError that names the key."""


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for k, _ in pairs:
            if k in seen:
                raise _DuplicateKey(k)
            seen.add(k)
    return out


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _validate_header(header: Any, path: Path, data_size: int) -> dict[str, Any]:
    """Check every field of a parsed safetensors header before any tensor is read.

    ``data_size`` is the number of bytes after the header. Returns the header with ``__metadata__``
    normalised to a ``dict[str, str]`` (absent or null -> ``{}``). Raises ``CheckpointError`` naming the
    file and the offending key.
    """
    if not isinstance(header, dict):
        raise CheckpointError(
            f"{path}: header is JSON but a {type(header).__name__}, not an object; expected a safetensors "
            "header {name: {dtype, shape, data_offsets}, ...}"
        )
    meta = header.get("__metadata__")
    if meta is None:
        meta = {}
    if not isinstance(meta, dict):
        raise CheckpointError(
            f"{path}: header key '__metadata__' is a {type(meta).__name__}; it must be an object of "
            "string values. The file is corrupt or crafted."
        )
    for mk, mv in meta.items():
        if not isinstance(mv, str):
            raise CheckpointError(
                f"{path}: '__metadata__' key {mk!r} holds a {type(mv).__name__}; metadata values must be "
                "strings. The file is corrupt or crafted."
            )
    spans: list[tuple[int, int, str]] = []
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        where = f"{path}: tensor {key!r}"
        if not isinstance(entry, dict):
            raise CheckpointError(
                f"{where}: header entry is a {type(entry).__name__}, not an object with dtype, shape and "
                "data_offsets"
            )
        if set(entry) != _ENTRY_FIELDS:
            missing, extra = sorted(_ENTRY_FIELDS - set(entry)), sorted(set(entry) - _ENTRY_FIELDS)
            raise CheckpointError(
                f"{where}: header entry must have exactly dtype, shape and data_offsets "
                f"(missing {missing}, unexpected {extra})"
            )
        dtype_name, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if not isinstance(dtype_name, str) or dtype_name not in SAFETENSORS_DTYPES:
            raise CheckpointError(
                f"{where}: dtype {dtype_name!r} is not one this torch build can hold; "
                f"supported: {sorted(SAFETENSORS_DTYPES)}"
            )
        if (
            not isinstance(shape, list)
            or len(shape) > _MAX_DIMS
            or not all(_is_int(d) and 0 <= d <= _INT64_MAX for d in shape)
        ):
            raise CheckpointError(
                f"{where}: shape {_short(shape)} is not a list of at most {_MAX_DIMS} non-negative integers"
            )
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)):
            raise CheckpointError(f"{where}: data_offsets {_short(offsets)} is not a list of two integers")
        begin, end = offsets
        if not 0 <= begin <= end <= data_size:
            raise CheckpointError(
                f"{where}: data_offsets [{begin}, {end}] do not lie within the {data_size} bytes of tensor "
                "data (need 0 <= begin <= end <= data size); the file is truncated or corrupt. "
                "Re-create or re-download it."
            )
        numel = 1
        for d in shape:
            numel *= d
        nonzero = 1
        for d in shape:
            nonzero *= max(d, 1)
        if nonzero > _INT64_MAX:  # e.g. shape [0, 2**40, 2**40]: no bytes, but torch cannot index it
            raise CheckpointError(f"{where}: shape {_short(shape)} has more elements than torch can index")
        nbytes = numel * SAFETENSORS_DTYPES[dtype_name].itemsize
        if end - begin != nbytes:
            raise CheckpointError(
                f"{where} ({dtype_name}, shape {tuple(shape)}) needs {nbytes} bytes but its data_offsets span "
                f"{end - begin}; the file is corrupt. Re-create or re-download it."
            )
        spans.append((begin, end, key))
    spans.sort()
    prev_end, prev_key = 0, ""
    for begin, end, key in spans:
        if begin == end:
            continue  # an empty tensor owns no bytes
        if begin < prev_end:
            raise CheckpointError(
                f"{path}: tensors {prev_key!r} and {key!r} overlap (bytes {begin}..{min(end, prev_end)} "
                "belong to both); the file is corrupt or crafted. Re-create or re-download it."
            )
        prev_end, prev_key = end, key
    out = dict(header)
    out["__metadata__"] = meta
    return out


def _short(v: object, limit: int = 80) -> str:
    r = repr(v)
    return r if len(r) <= limit else r[: limit - 3] + "..."


def _check_safetensors_header(path: Path) -> dict:
    """Parse and validate the safetensors header; raise CheckpointError with a clear message."""
    return _read_header(path)[0]


def _read_header(path: Path) -> tuple[dict, int]:
    """(header, offset of the data section), the header validated completely (``_validate_header``).

    Refused before parsing: a header longer than ``MAX_HEADER_BYTES`` or than the file, and JSON nested
    deeper than ``MAX_JSON_DEPTH``. Refused while parsing: invalid UTF-8 or JSON and duplicate keys (two
    readers could disagree on which one counts).
    """
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
        if n > MAX_HEADER_BYTES:
            raise CheckpointError(
                f"{path}: header says {n} bytes of JSON, more than the {MAX_HEADER_BYTES} allowed; "
                f"expected {expected}. The file is corrupt or crafted."
            )
        raw = f.read(n)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{path}: header is not UTF-8 ({e}); expected {expected}") from None
    _check_json_depth(text, path)
    try:
        header = json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except _DuplicateKey as e:
        raise CheckpointError(
            f"{path}: header names key {e.args[0]!r} twice; the file is corrupt or crafted"
        ) from None
    except (ValueError, RecursionError) as e:  # JSONDecodeError, or an over-long integer literal
        raise CheckpointError(f"{path}: header is not valid JSON ({e}); expected {expected}") from None
    return _validate_header(header, path, size - 8 - n), 8 + n


def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The ``__metadata__`` dict of a safetensors file (empty if none)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return dict(_check_safetensors_header(path).get("__metadata__", {}) or {})


def load_state_dict(
    path: str | os.PathLike[str],
    *,
    device: str | torch.device = "cpu",
    allow_pickle: bool = False,
    dtype: torch.dtype | None = None,
    keys: Iterable[str] | None = None,
    prefix: str | None = None,
) -> dict[str, Tensor]:
    """Load a state dict from ``path``.

    safetensors files are read tensor by tensor and each floating-point tensor is cast to ``dtype``
    (if given) as it is read, so the peak memory is the result plus one tensor in the file's dtype.
    ``keys`` and ``prefix`` select which tensors to read (``prefix`` keeps keys starting with it, names
    unchanged). Pickled formats (``.ckpt .pt .pth .bin``) are refused unless ``allow_pickle=True``; then
    they load with ``torch.load(weights_only=True)`` (no code execution), and a nested
    ``{"state_dict": ...}`` is unwrapped.
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
        wanted = _selector(keys, prefix)
        return {k: _cast(v, dtype).to(device) for k, v in obj.items() if isinstance(v, Tensor) and wanted(k)}
    lazy = LazyStateDict(path, dtype=dtype, device=device, keys=keys, prefix=prefix)
    return {k: lazy[k] for k in lazy}


def _selector(keys: Iterable[str] | None, prefix: str | None) -> Callable[[str], bool]:
    chosen = None if keys is None else set(keys)
    return lambda k: (chosen is None or k in chosen) and (prefix is None or k.startswith(prefix))


def _cast(t: Tensor, dtype: torch.dtype | None) -> Tensor:
    """Cast floating-point tensors to ``dtype``; integer and bool tensors (ids, counters) keep theirs."""
    if dtype is None or not t.is_floating_point() or t.dtype == dtype:
        return t
    return t.to(dtype)


class LazyStateDict(Mapping[str, Tensor]):
    """A read-only ``Mapping[str, Tensor]`` over a safetensors file that reads a tensor when indexed.

    Construction reads and validates only the header (a truncated or corrupt file raises
    ``CheckpointError`` naming it). ``shapes()``, ``dtypes()``, ``len`` and ``in`` never touch tensor
    data, so detection and key maps can inspect a multi-GB checkpoint for free. Indexing reads that one
    tensor (a fresh tensor each time; nothing is cached), casts floating-point data to ``dtype`` and
    moves it to ``device``.

    Args:
        path: the ``.safetensors`` file.
        dtype: cast floating-point tensors to this on read (None keeps the file's dtype).
        device: where read tensors go.
        keys: only these keys are visible (None: all).
        prefix: only keys starting with this are visible; ``strip_prefix`` removes it from the names.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        dtype: torch.dtype | None = None,
        device: str | torch.device = "cpu",
        keys: Iterable[str] | None = None,
        prefix: str | None = None,
        strip_prefix: bool = False,
    ) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"checkpoint not found: {self.path}")
        if self.path.suffix.lower() in PICKLE_SUFFIXES:
            raise CheckpointError(
                f"{self.path}: a pickled checkpoint cannot be read lazily; convert it to .safetensors "
                "(or use load_state_dict(..., allow_pickle=True) if you trust it)"
            )
        header, self._data_start = _read_header(self.path)
        self.metadata: dict[str, str] = dict(header.pop("__metadata__", None) or {})
        self.dtype = dtype
        self.device = torch.device(device)
        # One reusable buffer per reading thread for casting reads (a fresh buffer per tensor raised the
        # loading peak by ~20% through allocator fragmentation; one shared buffer is unsafe across threads).
        self._local = threading.local()
        wanted = _selector(keys, prefix)
        cut = len(prefix) if (prefix and strip_prefix) else 0
        self._entries: dict[str, dict] = {k[cut:]: v for k, v in header.items() if wanted(k)}
        if keys is not None:
            absent = sorted(set(keys) - set(header))
            if absent:
                raise KeyError(f"{self.path}: no tensors named {absent[:5]} (of {len(absent)} requested)")

    def __getitem__(self, key: str) -> Tensor:
        try:
            entry = self._entries[key]
        except KeyError:
            raise KeyError(f"{self.path} has no tensor {key!r}") from None
        begin, stop = entry["data_offsets"]
        src_dtype = SAFETENSORS_DTYPES[entry["dtype"]]
        cast = self.dtype is not None and src_dtype.is_floating_point and src_dtype != self.dtype
        out = torch.empty(entry["shape"], dtype=self.dtype if cast else src_dtype)
        flat = out.view(-1)
        with open(self.path, "rb") as f:
            f.seek(self._data_start + begin)
            if not cast:  # read straight into the result
                self._read_exact(f, flat.view(torch.uint8), key)
            else:  # read the source in small chunks, cast each into place: no full-size temporary
                per = max(1, _CHUNK_BYTES // src_dtype.itemsize)
                chunk = getattr(self._local, "chunk", None)
                if chunk is None:
                    chunk = self._local.chunk = torch.empty(_CHUNK_BYTES + 16, dtype=torch.uint8)
                for start in range(0, flat.numel(), per):
                    n = min(per, flat.numel() - start)
                    raw = chunk[: n * src_dtype.itemsize]
                    self._read_exact(f, raw, key)
                    flat[start : start + n].copy_(raw.view(src_dtype))
        return out.to(self.device)

    def read_chunks(self, key: str) -> Iterator[Tensor]:
        """Tensor ``key`` as consecutive flat pieces in the file's dtype, each at most ``_CHUNK_BYTES``, read into
        one reusable buffer (valid until the next piece): a caller that converts piece by piece (e.g. to fp8)
        never holds the whole tensor in the file's dtype."""
        try:
            entry = self._entries[key]
        except KeyError:
            raise KeyError(f"{self.path} has no tensor {key!r}") from None
        begin, stop = entry["data_offsets"]
        src_dtype = SAFETENSORS_DTYPES[entry["dtype"]]
        total = (stop - begin) // src_dtype.itemsize
        per = max(1, _CHUNK_BYTES // src_dtype.itemsize)
        buffer = getattr(self._local, "chunk", None)  # the casting reads' buffer: no allocation per tensor
        if buffer is None:
            buffer = self._local.chunk = torch.empty(_CHUNK_BYTES + 16, dtype=torch.uint8)
        with open(self.path, "rb") as f:
            f.seek(self._data_start + begin)
            for start in range(0, total, per):
                raw = buffer[: min(per, total - start) * src_dtype.itemsize]
                self._read_exact(f, raw, key)
                yield raw.view(src_dtype)

    def _read_exact(self, f: BufferedReader, into: Tensor, key: str) -> None:
        """Fill the uint8 tensor ``into`` from ``f``; a short read means the file changed under us."""
        if into.numel() == 0:
            return
        got = f.readinto(into.numpy())  # type: ignore[arg-type]
        if got != into.numel():
            raise CheckpointError(f"{self.path}: tensor {key!r} is cut short ({got} of {into.numel()} bytes)")

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Every visible tensor's shape, from the header (no data read)."""
        return {k: tuple(v["shape"]) for k, v in self._entries.items()}

    def dtypes(self) -> dict[str, torch.dtype]:
        """Every visible tensor's dtype in the file (before any cast), from the header."""
        return {k: SAFETENSORS_DTYPES[v["dtype"]] for k, v in self._entries.items()}

    def nbytes(self, dtype: torch.dtype | None = None) -> int:
        """Bytes the visible tensors take in the file, or once cast to ``dtype`` (floating point only)."""
        total = 0
        for v in self._entries.values():
            src = SAFETENSORS_DTYPES[v["dtype"]]
            target = dtype if dtype is not None and src.is_floating_point else src
            n = 1
            for d in v["shape"]:
                n *= d
            total += n * target.itemsize
        return total

    def __repr__(self) -> str:
        return f"LazyStateDict({str(self.path)!r}, {len(self)} tensors, dtype={self.dtype}, device={self.device})"


class ShardedStateDict(Mapping[str, Tensor]):
    """One read-only ``Mapping[str, Tensor]`` over several safetensors files (the shards of one model), each a
    :class:`LazyStateDict`: headers are validated up front, a tensor is read (and cast) when indexed."""

    def __init__(
        self,
        files: Iterable[str | os.PathLike[str]],
        *,
        dtype: torch.dtype | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        self.shards = [LazyStateDict(f, dtype=dtype, device=device) for f in files]
        self._where: dict[str, LazyStateDict] = {}
        for shard in self.shards:
            for key in shard:
                if key in self._where:
                    raise CheckpointError(
                        f"tensor {key!r} is in both {self._where[key].path} and {shard.path}"
                    )
                self._where[key] = shard

    def __getitem__(self, key: str) -> Tensor:
        return self._where[key][key]  # KeyError for unknown keys, as a dict

    def __contains__(self, key: object) -> bool:
        return key in self._where

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)


def load_into(
    module: torch.nn.Module,
    state_dict: Mapping[str, Tensor],
    *,
    strict: bool = True,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
) -> torch.nn.Module:
    """Load ``state_dict`` (a dict or a ``LazyStateDict``) into ``module`` one tensor at a time.

    Parameters and buffers on the ``meta`` device are *replaced* by the loaded tensors (build the model
    under ``with torch.device("meta"):`` so it is never allocated twice); others are copied into in
    place. Each tensor is read, cast (floating point only, to ``dtype`` if given), moved to ``device``
    (if given) and set before the next is read. Returns ``module``.

    Raises:
        KeyError: with ``strict``, names the keys the module needs that are missing and the keys the
            module does not have.
        ValueError: a tensor whose shape differs from the module's (names the key and both shapes).
    """
    targets: dict[str, tuple[torch.nn.Module, str, bool]] = {}
    for mod_name, mod in module.named_modules():
        for name in dict(mod.named_parameters(recurse=False)):
            targets[f"{mod_name}.{name}" if mod_name else name] = (mod, name, True)
        for name in dict(mod.named_buffers(recurse=False)):
            if name in mod._non_persistent_buffers_set:
                continue
            targets[f"{mod_name}.{name}" if mod_name else name] = (mod, name, False)
    if strict:
        missing = [k for k in targets if k not in state_dict]
        unexpected = [k for k in state_dict if k not in targets]
        if missing or unexpected:
            source = getattr(state_dict, "path", "state dict")
            raise KeyError(
                f"{source} does not fit {type(module).__name__}: {len(missing)} missing keys "
                f"{missing[:5]}, {len(unexpected)} unexpected keys {unexpected[:5]}; is it the right "
                "model and config (or a different key layout that needs a key map first)?"
            )
    with torch.no_grad():
        for key, (mod, name, is_param) in targets.items():
            if key not in state_dict:
                continue
            current = getattr(mod, name)
            tensor = state_dict[key]
            if tuple(tensor.shape) != tuple(current.shape):
                raise ValueError(
                    f"tensor {key!r} has shape {tuple(tensor.shape)} but {type(module).__name__} expects "
                    f"{tuple(current.shape)}: the checkpoint does not match this model config"
                )
            tensor = _cast(tensor, dtype)
            if current.is_meta:
                if device is not None:
                    tensor = tensor.to(device)
                if is_param:
                    mod._parameters[name] = torch.nn.Parameter(tensor, requires_grad=current.requires_grad)
                else:
                    mod._buffers[name] = tensor
            else:
                if device is not None and torch.device(device) != current.device:
                    raise ValueError(
                        f"{key!r} is already allocated on {current.device}, not {device}; build the model "
                        "on the meta device (or move it first) to load it onto another device"
                    )
                if dtype is not None and current.is_floating_point() and current.dtype != dtype:
                    raise ValueError(
                        f"{key!r} is allocated as {current.dtype}, not {dtype}; build the model on the meta "
                        "device (or cast it first) to load it in another dtype"
                    )
                current.copy_(tensor)
            del tensor
    return module


def build_on_meta(
    cls: Any,
    config: Any,
    state: Mapping[str, Tensor],
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
) -> Any:
    """``cls(config)`` built on the meta device (never allocated), then given ``state``'s tensors one at a
    time with :func:`load_into` (cast to ``dtype``, moved to ``device``); in eval mode, frozen.

    Raises ``ValueError`` when a tensor stays unallocated (e.g. a non-persistent buffer computed in
    ``__init__``: such models cannot be built this way), besides :func:`load_into`'s errors.
    """
    with torch.device("meta"):
        net = cls(config)
    load_into(net, state, dtype=dtype, device=device)
    unset = [n for n, t in [*net.named_parameters(), *net.named_buffers()] if t.is_meta]
    if unset:
        raise ValueError(
            f"{cls.__name__}: tensors {unset[:5]} are not in the checkpoint and stayed unallocated"
        )
    return net.eval().requires_grad_(False)
