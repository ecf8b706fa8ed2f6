"""Weight files in storage formats: fp8 safetensors (plain and ComfyUI's scaled fp8) and GGUF, read lazily into
:class:`~latentworks.nn.quant.QuantizedTensor` weights that stay in their format until used.

- **fp8 safetensors** (``F8_E4M3`` / ``F8_E5M2`` tensors, e.g. ``qwen_image_fp8_e4m3fn.safetensors``):
  :class:`Fp8StateDict` gives each fp8 tensor as a ``QuantizedTensor``; other tensors (norms, biases) are read
  as usual and cast to the compute dtype.
- **ComfyUI's scaled fp8** (``*_fp8_scaled.safetensors``): the same, plus per-layer float32 scales. A marker
  tensor ``<prefix>scaled_fp8`` (its dtype names the fp8 format; two elements mean "no fp8 matmul") sits beside
  the weights, and each quantized layer has ``<layer>.scale_weight`` (``weight = fp8 * scale_weight``; newer
  files name it ``<layer>.weight_scale``) and optionally ``<layer>.scale_input`` (``input_scale``), a scale for
  fp8 activations that only an fp8 matmul uses. The marker and the scale keys are hidden from the mapping; the
  weight scale travels inside the weight.
- **GGUF** (the files ComfyUI-GGUF users share, e.g. ``flux1-dev-Q4_K_S.gguf``): :class:`GGUFStateDict` reads
  the header with the ``gguf`` package and each tensor with plain file reads. ``general.architecture`` must be
  one of ComfyUI-GGUF's image architectures that a registered family runs (the caller passes them); tensor
  names are the original single-file ones (``model.diffusion_model.`` prefix optional). Shapes are the logical
  ones: GGUF stores dimensions reversed (ggml order) and ComfyUI-GGUF records reshaped tensors' true shapes in
  ``comfy.gguf.orig_shape.<name>``. Block formats with a torch kernel (:data:`~latentworks.nn.quant.GGUF_BLOCKS`)
  stay quantized; other quantized types are dequantized at load with ``gguf.quants.dequantize``.

Memory: nothing is memory-mapped while tensors are read (a touched map page counts against the process until
unmapped), so loading peaks at the loaded weights plus one tensor.

:func:`cast_to_fp8` is UNETLoader's ``weight_dtype``: a view that stores each weight matrix in fp8 as it is
read. :func:`describe_storage` names the formats in a file for ``latentworks info``.
"""

from __future__ import annotations

import os
import warnings
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from latentworks.checkpoints.io import CheckpointError, LazyStateDict
from latentworks.nn.quant import FP8_DTYPES, GGUF_BLOCKS, QuantizedTensor, fp8_quantize

# ComfyUI-GGUF's image architectures (its loader's IMG_ARCH_LIST) that no registered family runs; those that one
# does are named by the families (``ComfyNames.gguf_architecture``) and passed in as ``architectures``.
GGUF_OTHER_ARCHITECTURES = ("aura", "hidream", "cosmos", "ltxv", "hyvid", "wan")
# ComfyUI-GGUF's text-encoder architectures: llama.cpp tensor names, which our text loaders do not read.
GGUF_TEXT_ARCHITECTURES = ("t5", "t5encoder", "llama", "qwen2vl")

SCALE_SUFFIXES = (".scale_weight", ".weight_scale")  # <layer>.<suffix> scales <layer>.weight
INPUT_SCALE_SUFFIXES = (".scale_input", ".input_scale")  # activation scales for an fp8 matmul; unused here
SCALED_FP8_MARKER = "scaled_fp8"

# UNETLoader's weight_dtype choices -> storage format (ComfyUI's list; "_fast" asks for fp8 matmul).
WEIGHT_DTYPE_FORMATS: dict[str, str | None] = {
    "default": None,
    "fp8_e4m3fn": "F8_E4M3",
    "fp8_e4m3fn_fast": "F8_E4M3",
    "fp8_e5m2": "F8_E5M2",
}


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


class Fp8StateDict(Mapping[str, Tensor]):
    """A safetensors file with fp8 weights, plain or ComfyUI-scaled, as a lazy mapping (see the module
    docstring): fp8 tensors come out as ``QuantizedTensor`` computing in ``dtype``, other floating-point tensors
    cast to ``dtype``; scale and marker keys are hidden.

    Attributes:
        scaled: the file has ComfyUI's ``scaled_fp8`` marker or per-layer weight scales.
        fp8_matmul: the marker asks for fp8 matrix products (a marker of other than two elements).
    """

    def __init__(self, lazy: LazyStateDict, *, dtype: torch.dtype | None = None) -> None:
        self.lazy, self.path, self.dtype = lazy, lazy.path, dtype
        self.metadata = lazy.metadata
        keys = list(lazy)
        markers = [k for k in keys if k == SCALED_FP8_MARKER or k.endswith("." + SCALED_FP8_MARKER)]
        self._scale_of: dict[str, str] = {}
        hidden = set(markers)
        for k in keys:
            for suffix in SCALE_SUFFIXES:
                if k.endswith(suffix):
                    self._scale_of[k[: -len(suffix)] + ".weight"] = k
                    hidden.add(k)
            if k.endswith(INPUT_SCALE_SUFFIXES):
                hidden.add(k)
        shapes = lazy.shapes()
        self.fp8_matmul = bool(markers) and all(_numel(shapes[m]) != 2 for m in markers)
        self.scaled = bool(markers) or bool(self._scale_of)
        self._keys = [k for k in keys if k not in hidden]
        self._visible = set(self._keys)
        self._dtypes = lazy.dtypes()

    def __getitem__(self, key: str) -> Tensor:
        if key not in self._visible:
            raise KeyError(f"{self.path} has no tensor {key!r}")
        t = self.lazy[key]
        qtype = next((q for q, d in FP8_DTYPES.items() if d == t.dtype), None)
        if qtype is None:
            return t.to(self.dtype) if self.dtype is not None and t.is_floating_point() else t
        scale = None
        if key in self._scale_of:
            scale = self.lazy[self._scale_of[key]].to(torch.float32)
            if scale.numel() == 1:
                scale = scale.reshape(())
        return QuantizedTensor(t, qtype, tuple(t.shape), self.dtype or torch.float32, scale)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: object) -> bool:
        return key in self._visible

    def shapes(self) -> dict[str, tuple[int, ...]]:
        all_shapes = self.lazy.shapes()
        return {k: all_shapes[k] for k in self._keys}

    def formats(self) -> dict[str, str]:
        """Each tensor's storage format (``F8_E4M3 scaled``, ``bfloat16``...)."""
        out: dict[str, str] = {}
        for k in self._keys:
            dt = self._dtypes[k]
            name = next((q for q, d in FP8_DTYPES.items() if d == dt), None)
            if name is None:
                out[k] = str(dt).removeprefix("torch.")
            else:
                out[k] = name + (" scaled" if k in self._scale_of else "")
        return out


def has_fp8(lazy: LazyStateDict) -> bool:
    """Whether a safetensors file stores any tensor in fp8."""
    fp8 = set(FP8_DTYPES.values())
    return any(d in fp8 for d in lazy.dtypes().values())


def _field(reader: Any, name: str) -> Any:
    """A GGUF metadata value (string, number or list of them), or None."""
    field = reader.get_field(name)
    return None if field is None else field.contents()


_DENSE_GGUF = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8, "I8": 1, "I16": 2, "I32": 4, "I64": 8}


def _expected_nbytes(qtype: str, shape: tuple[int, ...]) -> int | None:
    """Bytes a GGUF tensor of ``qtype`` and logical ``shape`` takes (None: a type checked by its reader)."""
    if qtype in _DENSE_GGUF:
        return _numel(shape) * _DENSE_GGUF[qtype]
    if qtype in GGUF_BLOCKS:
        per, nbytes = GGUF_BLOCKS[qtype]
        return -1 if _numel(shape) % per else _numel(shape) // per * nbytes
    return None


class GGUFStateDict(Mapping[str, Tensor]):
    """A GGUF file of a diffusion model as a lazy ``Mapping[str, Tensor]`` (see the module docstring).

    Construction reads and checks the header only (raises :class:`CheckpointError` for a file that is not
    GGUF, truncated or corrupt, or of an architecture latentworks does not run). Indexing reads one tensor:
    a ``QuantizedTensor`` for a block format with a kernel, a dense tensor (cast to ``dtype``) otherwise.

    Attributes:
        architecture: ``general.architecture`` (ComfyUI-GGUF's name, e.g. ``flux``), or None when absent.
        qtypes: each tensor's GGUF type name (``Q4_K``, ``F32``...).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        dtype: torch.dtype | None = None,
        architectures: Mapping[str, str] | None = None,
    ) -> None:
        """``architectures``: ``{general.architecture: what runs it}`` (e.g. ``{"flux": "FLUX.1 [dev]"}``); a file of
        another architecture is refused. None accepts any image architecture (text encoders are always refused)."""
        self.path = Path(path)
        self.dtype = dtype
        self._architectures = architectures
        if not self.path.is_file():
            raise FileNotFoundError(f"checkpoint not found: {self.path}")
        try:
            import gguf
        except ImportError:  # pragma: no cover - the extra is part of the test environment
            raise CheckpointError(
                f"{self.path}: reading GGUF files needs the gguf package: pip install 'latentworks[gguf]'"
            ) from None
        size = self.path.stat().st_size
        with open(self.path, "rb") as f:
            magic = f.read(4)
        if magic != b"GGUF":
            raise CheckpointError(
                f"{self.path}: not a GGUF file (it starts with {magic!r}, a GGUF file with b'GGUF'); "
                "re-download it, or pass a .safetensors file"
            )
        try:
            reader = gguf.GGUFReader(self.path)
        except Exception as e:  # noqa: BLE001 - the reader raises ValueError, IndexError, OverflowError...
            raise CheckpointError(
                f"{self.path}: the GGUF header cannot be read ({type(e).__name__}: {e}); the file is truncated "
                "or corrupt. Re-download it."
            ) from None
        try:
            arch = _field(reader, "general.architecture")
            self.architecture = None if arch is None else str(arch)
            self._check_architecture()
            self._entries: dict[str, tuple[str, tuple[int, ...], int, int]] = {}
            self.qtypes: dict[str, str] = {}
            for t in reader.tensors:
                qtype = t.tensor_type.name
                orig = _field(reader, f"comfy.gguf.orig_shape.{t.name}")
                shape = (
                    tuple(int(v) for v in orig)
                    if orig is not None
                    else tuple(int(v) for v in reversed(t.shape))
                )
                begin, nbytes = int(t.data_offset), int(t.n_bytes)
                if begin + nbytes > size:
                    raise CheckpointError(
                        f"{self.path}: tensor {t.name!r} ({qtype}, {nbytes} bytes at offset {begin}) runs past the "
                        f"end of the {size}-byte file; the file is truncated. Re-download it."
                    )
                expected = _expected_nbytes(qtype, shape)
                if expected is not None and expected != nbytes:
                    raise CheckpointError(
                        f"{self.path}: tensor {t.name!r} ({qtype}) has {nbytes} bytes, but its shape {shape} needs "
                        f"{expected}; the file (or its comfy.gguf.orig_shape entry) is corrupt. Re-download it."
                    )
                self._entries[t.name] = (qtype, shape, begin, nbytes)
                self.qtypes[t.name] = qtype
        finally:
            del reader  # drop the memory map before any tensor is read
        if not self._entries:
            raise CheckpointError(f"{self.path}: the GGUF file holds no tensors")
        self.metadata: dict[str, str] = (
            {} if self.architecture is None else {"gguf.architecture": self.architecture}
        )

    def _check_architecture(self) -> None:
        arch = self.architecture
        if arch in GGUF_TEXT_ARCHITECTURES:
            raise CheckpointError(
                f"{self.path}: a GGUF text encoder (architecture {arch!r}, llama.cpp tensor names); latentworks "
                "reads text encoders from .safetensors files: use the safetensors (or fp8 safetensors) release"
            )
        known = self._architectures
        if arch is None or known is None or arch in known:
            return  # no architecture (stable-diffusion.cpp files): detection from the tensor names decides
        supported = ", ".join(f"{k} ({v})" for k, v in known.items())
        what = "a ComfyUI-GGUF model type that latentworks does not run" if arch in GGUF_OTHER_ARCHITECTURES else (
            "not a diffusion-model architecture ComfyUI-GGUF writes"
        )  # fmt: skip
        raise CheckpointError(f"{self.path}: GGUF architecture {arch!r} is {what}; supported: {supported}")

    def __getitem__(self, key: str) -> Tensor:
        try:
            qtype, shape, begin, nbytes = self._entries[key]
        except KeyError:
            raise KeyError(f"{self.path} has no tensor {key!r}") from None
        raw = torch.empty(nbytes, dtype=torch.uint8)
        with open(self.path, "rb") as f:
            f.seek(begin)
            got = f.readinto(raw.numpy())  # type: ignore[arg-type]
        if got != nbytes:
            raise CheckpointError(f"{self.path}: tensor {key!r} is cut short ({got} of {nbytes} bytes)")
        dense = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}
        if qtype in dense:
            t = raw.view(dense[qtype]).reshape(shape)
            return t.to(self.dtype) if self.dtype is not None else t
        if qtype in GGUF_BLOCKS:
            return QuantizedTensor(
                raw.reshape(-1, GGUF_BLOCKS[qtype][1]), qtype, shape, self.dtype or torch.float32
            )
        return self._dequantize_other(raw, qtype, shape, key)

    def _dequantize_other(self, raw: Tensor, qtype: str, shape: tuple[int, ...], key: str) -> Tensor:
        """A type without a torch kernel (I8..I64, Q2_K, Q3_K, IQ*): dense, through ``gguf.quants.dequantize``."""
        import gguf
        from gguf import quants

        ints = {"I8": torch.int8, "I16": torch.int16, "I32": torch.int32, "I64": torch.int64}
        if qtype in ints:
            return raw.view(ints[qtype]).reshape(shape)
        try:
            values = quants.dequantize(raw.numpy(), gguf.GGMLQuantizationType[qtype])
        except (NotImplementedError, KeyError, ValueError) as e:
            raise CheckpointError(
                f"{self.path}: tensor {key!r} is stored as {qtype}, which cannot be read ({e})"
            ) from None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.from_numpy(values.copy()).reshape(shape).to(self.dtype or torch.float32)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Every tensor's logical shape, from the header."""
        return {k: v[1] for k, v in self._entries.items()}

    def formats(self) -> dict[str, str]:
        """Each tensor's GGUF type."""
        return dict(self.qtypes)

    def nbytes(self) -> int:
        return sum(v[3] for v in self._entries.values())


class _CastToFp8(Mapping[str, Tensor]):
    """``base`` with every floating-point tensor of two or more dimensions stored as ``qtype`` fp8 when read."""

    def __init__(self, base: Mapping[str, Tensor], qtype: str) -> None:
        self.base, self.qtype = base, qtype
        self._scratch: Tensor | None = None
        self._header: dict[str, tuple[torch.dtype, tuple[int, ...]]] = {}
        if isinstance(base, LazyStateDict):
            shapes = base.shapes()
            self._header = {k: (d, shapes[k]) for k, d in base.dtypes().items()}
        for attr in ("path", "metadata"):
            if hasattr(base, attr):
                setattr(self, attr, getattr(base, attr))

    def __getitem__(self, key: str) -> Tensor:
        if isinstance(self.base, LazyStateDict) and key in self._header:  # from the file, a chunk at a time
            file_dtype, shape = self._header[key]
            if file_dtype.is_floating_point and len(shape) >= 2 and file_dtype not in FP8_DTYPES.values():
                return self._from_chunks(self.base, key, file_dtype, shape)
        t = self.base[key]
        if isinstance(t, QuantizedTensor) or not t.is_floating_point() or t.ndim < 2:
            return t
        return fp8_quantize(t, self.qtype, dtype=t.dtype)

    def _from_chunks(
        self, lazy: LazyStateDict, key: str, file_dtype: torch.dtype, shape: tuple[int, ...]
    ) -> QuantizedTensor:
        """``key`` cast to fp8 piece by piece as it is read: the whole tensor is never held in the file's dtype
        (freeing a full-size temporary per tensor fragments the heap: measured 1.9x the file at peak)."""
        fp8 = FP8_DTYPES[self.qtype]
        limit = torch.finfo(fp8).max
        out = torch.empty(shape, dtype=fp8)
        flat, at = out.view(-1), 0
        for piece in lazy.read_chunks(key):
            n = piece.numel()
            if self._scratch is None or self._scratch.numel() < n:
                self._scratch = torch.empty(
                    n, dtype=torch.float32
                )  # reused: no temporaries to fragment the heap
            scratch = self._scratch[:n]
            scratch.copy_(piece).clamp_(-limit, limit)  # as fp8_quantize: saturate in float32, then round
            flat[at : at + n].copy_(scratch)
            at += n
        return QuantizedTensor(out, self.qtype, shape, lazy.dtype or file_dtype)

    def __iter__(self) -> Iterator[str]:
        return iter(self.base)

    def __len__(self) -> int:
        return len(self.base)

    def __contains__(self, key: object) -> bool:
        return key in self.base

    def shapes(self) -> dict[str, tuple[int, ...]]:
        shapes = getattr(self.base, "shapes", None)
        return dict(shapes()) if shapes is not None else {k: tuple(v.shape) for k, v in self.base.items()}


def cast_to_fp8(weights: Mapping[str, Tensor], weight_dtype: str) -> Mapping[str, Tensor]:
    """``weights`` with its weight matrices and kernels stored in fp8 as they are read (UNETLoader's
    ``weight_dtype``: ``fp8_e4m3fn``, ``fp8_e4m3fn_fast``, ``fp8_e5m2``; ``default`` returns ``weights``).

    Tensors of one dimension (norms, biases) keep their dtype, as do weights already stored quantized.
    """
    if weight_dtype not in WEIGHT_DTYPE_FORMATS:
        raise ValueError(f"weight_dtype {weight_dtype!r} is not one of {', '.join(WEIGHT_DTYPE_FORMATS)}")
    qtype = WEIGHT_DTYPE_FORMATS[weight_dtype]
    return weights if qtype is None else _CastToFp8(weights, qtype)


def open_storage(
    path: str | os.PathLike[str],
    *,
    dtype: torch.dtype | None = None,
    gguf_architectures: Mapping[str, str] | None = None,
) -> Mapping[str, Tensor]:
    """A lazy mapping over a ``.safetensors`` or ``.gguf`` file that keeps fp8 and GGUF weights in their format
    (as ``QuantizedTensor`` computing in ``dtype``) and casts other floating-point tensors to ``dtype``.
    ``gguf_architectures``: the GGUF architectures accepted (see :class:`GGUFStateDict`)."""
    path = Path(path)
    if path.suffix.lower() == ".gguf":
        return GGUFStateDict(path, dtype=dtype, architectures=gguf_architectures)
    lazy = LazyStateDict(path)
    if has_fp8(lazy):
        return Fp8StateDict(lazy, dtype=dtype)
    return LazyStateDict(path, dtype=dtype) if dtype is not None else lazy


_SHORT = {
    "bfloat16": "bf16",
    "float16": "fp16",
    "float32": "fp32",
    "F8_E4M3": "fp8 e4m3fn",
    "F8_E5M2": "fp8 e5m2",
}


def describe_storage(path: str | os.PathLike[str]) -> str:
    """The storage formats of a weight file, the one holding most values first, with tensor counts:
    ``"bf16 (312 tensors)"``, ``"fp8 e4m3fn scaled (240 tensors), bf16 (72)"``, ``"GGUF Q4_K (200 tensors), F32 (100)"``.
    """
    weights = open_storage(path)
    shapes = weights.shapes()  # type: ignore[attr-defined]
    if isinstance(weights, GGUFStateDict | Fp8StateDict):
        formats = weights.formats()
    else:
        assert isinstance(weights, LazyStateDict)
        formats = {k: str(d).removeprefix("torch.") for k, d in weights.dtypes().items()}
    tensors: Counter[str] = Counter(formats.values())
    values: Counter[str] = Counter()
    for k, name in formats.items():
        values[name] += _numel(shapes[k])
    parts = []
    for i, (name, _) in enumerate(values.most_common()):
        base, _, scaled = name.partition(" ")
        label = _SHORT.get(base, base) + (f" {scaled}" if scaled else "")
        parts.append(f"{label} ({tensors[name]}{' tensors' if i == 0 else ''})")
    prefix = "GGUF " if isinstance(weights, GGUFStateDict) else ""
    extra = ""
    if isinstance(weights, Fp8StateDict) and weights.scaled:
        extra = "; ComfyUI scaled fp8" + (" (asks for fp8 matmul)" if weights.fp8_matmul else "")
    return prefix + ", ".join(parts) + extra


# `latentworks convert --weight-dtype` choices -> (fp8 format, with ComfyUI's per-tensor scales)
FP8_FILE_FORMATS: dict[str, tuple[str, bool]] = {
    "fp8_e4m3fn": ("F8_E4M3", False),
    "fp8_e4m3fn_scaled": ("F8_E4M3", True),
    "fp8_e5m2": ("F8_E5M2", False),
}


def fp8_file_tensors(tensors: Mapping[str, Tensor], prefix: str, weight_dtype: str) -> dict[str, Tensor]:
    """``tensors`` with the weight matrices under ``prefix`` (e.g. ``model.diffusion_model.``) stored in fp8, as
    ComfyUI's fp8 files store them (``weight_dtype`` in :data:`FP8_FILE_FORMATS`); other tensors unchanged.

    ``fp8_e4m3fn_scaled`` writes ComfyUI's scaled fp8: per quantized weight a float32 ``<layer>.scale_weight``
    (``max|w| / 448``) and the marker ``<prefix>scaled_fp8`` (an empty ``float8_e4m3fn`` tensor).
    """
    if weight_dtype not in FP8_FILE_FORMATS:
        raise ValueError(f"weight_dtype must be one of {', '.join(FP8_FILE_FORMATS)}, got {weight_dtype!r}")
    qtype, scaled = FP8_FILE_FORMATS[weight_dtype]
    out: dict[str, Tensor] = {}
    for k, v in tensors.items():
        dense = v.dequantize() if isinstance(v, QuantizedTensor) else v
        if not (
            k.startswith(prefix) and dense.is_floating_point() and dense.ndim >= 2 and k.endswith(".weight")
        ):
            out[k] = dense
            continue
        q = fp8_quantize(dense, qtype, scaled=scaled)
        out[k] = q.qdata
        if q.scale is not None:
            out[k.removesuffix(".weight") + ".scale_weight"] = q.scale
    if scaled:
        out[prefix + SCALED_FP8_MARKER] = torch.empty(0, dtype=FP8_DTYPES[qtype])
    return out
