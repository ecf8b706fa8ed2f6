"""Weights kept in their storage format (fp8, GGUF blocks) and dequantized per operation at compute time.

A :class:`QuantizedTensor` stands in for a weight tensor: it reports the weight's *logical* shape and its
compute dtype (``bfloat16``, ``float16``, ``float32``), but holds only the stored bytes:

- ``F8_E4M3`` / ``F8_E5M2``: a ``float8_e4m3fn`` / ``float8_e5m2`` tensor of the logical shape, optionally with
  a float32 ``scale`` (ComfyUI's scaled fp8: ``weight = fp8 * scale_weight``);
- GGUF block formats (``Q8_0``, ``Q4_0``, ``Q4_1``, ``Q5_0``, ``Q5_1``, ``Q4_K``, ``Q5_K``, ``Q6_K``): a
  ``uint8`` tensor of ``(blocks, bytes per block)``, the blocks laid out as ggml writes them (each stored row is
  quantized on its own, along its last dimension; rows are whole blocks, so the blocks follow the values in
  row-major order).

Any operation that reads it (``F.linear``, ``F.conv2d``, ``x + w``...) first dequantizes that one tensor to the
compute dtype, so a model made of them holds its weights at storage size and pays one layer's dense weight at
a time. Moving it (``.to(device)``) moves the stored bytes; ``.to(dtype)`` changes only the compute dtype, so a
device manager's ``module.to(...)`` never inflates the weights. Writing into it (``copy_``, ``add_``) raises: a
stored-format weight cannot be patched in place (LoRAs on such layers use forward hooks).

The block layouts are ggml's (``ggml-quants.c``, ``block_q8_0`` ... ``block_q6_K``); the GGUF dequantization is
checked against the ``gguf`` package's own ``gguf.quants.dequantize`` in the tests.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.utils._pytree import tree_map

FP8_DTYPES: dict[str, torch.dtype] = {"F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}

# GGUF block formats with a torch kernel here: name -> (values per block, bytes per block).
GGUF_BLOCKS: dict[str, tuple[int, int]] = {
    "Q4_0": (32, 2 + 16),
    "Q4_1": (32, 2 + 2 + 16),
    "Q5_0": (32, 2 + 4 + 16),
    "Q5_1": (32, 2 + 2 + 4 + 16),
    "Q8_0": (32, 2 + 32),
    "Q4_K": (256, 2 + 2 + 12 + 128),
    "Q5_K": (256, 2 + 2 + 12 + 32 + 128),
    "Q6_K": (256, 128 + 64 + 16 + 2),
}

QTYPES: tuple[str, ...] = (*FP8_DTYPES, *GGUF_BLOCKS)


def _half(b: Tensor) -> Tensor:
    """(n, 2) uint8 -> (n, 1) float32, read as little-endian float16."""
    return b.contiguous().view(torch.float16).float()


def _nibbles(q: Tensor) -> tuple[Tensor, Tensor]:
    return q & 0xF, q >> 4


def _q8_0(b: Tensor) -> Tensor:
    return _half(b[:, :2]) * b[:, 2:].contiguous().view(torch.int8).float()


def _q4_0(b: Tensor) -> Tensor:
    lo, hi = _nibbles(b[:, 2:])
    return _half(b[:, :2]) * (torch.cat([lo, hi], 1).float() - 8)


def _q4_1(b: Tensor) -> Tensor:
    lo, hi = _nibbles(b[:, 4:])
    return _half(b[:, :2]) * torch.cat([lo, hi], 1).float() + _half(b[:, 2:4])


def _fifth_bits(qh: Tensor) -> Tensor:
    """(n, 4) uint8, a little-endian uint32 of high bits -> (n, 32) bits, bit j for value j."""
    shifts = torch.arange(8, device=qh.device, dtype=torch.uint8)
    return ((qh[:, :, None] >> shifts) & 1).reshape(qh.shape[0], 32)


def _q5(qs: Tensor, qh: Tensor) -> Tensor:
    lo, hi = _nibbles(qs)
    return (torch.cat([lo, hi], 1) | (_fifth_bits(qh) << 4)).float()


def _q5_0(b: Tensor) -> Tensor:
    return _half(b[:, :2]) * (_q5(b[:, 6:], b[:, 2:6]) - 16)


def _q5_1(b: Tensor) -> Tensor:
    return _half(b[:, :2]) * _q5(b[:, 8:], b[:, 4:8]) + _half(b[:, 2:4])


def _k_scales(s: Tensor) -> tuple[Tensor, Tensor]:
    """The 12 packed bytes of Q4_K/Q5_K -> (scales, mins), each (n, 8) float: eight 6-bit pairs, the first four
    in the low 6 bits of bytes 0-3 / 4-7, the last four split over bytes 8-11 (low/high nibble) and the top two
    bits of bytes 0-3 / 4-7."""
    sc = torch.cat([s[:, 0:4] & 63, (s[:, 8:12] & 0xF) | ((s[:, 0:4] >> 6) << 4)], 1)
    mn = torch.cat([s[:, 4:8] & 63, (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)], 1)
    return sc.float(), mn.float()


def _k4_values(qs: Tensor) -> Tensor:
    """(n, 128) packed nibbles -> (n, 8, 32): four 32-byte chunks, low nibbles first, then high."""
    q = qs.reshape(qs.shape[0], 4, 32)
    return torch.stack(_nibbles(q), 2).reshape(qs.shape[0], 8, 32)


def _q4_k(b: Tensor) -> Tensor:
    d, dmin = _half(b[:, 0:2]), _half(b[:, 2:4])
    sc, mn = _k_scales(b[:, 4:16])
    q = _k4_values(b[:, 16:144]).float()
    return (d[:, :, None] * sc[:, :, None] * q - dmin[:, :, None] * mn[:, :, None]).reshape(-1, 256)


def _q5_k(b: Tensor) -> Tensor:
    d, dmin = _half(b[:, 0:2]), _half(b[:, 2:4])
    sc, mn = _k_scales(b[:, 4:16])
    qh = b[:, 16:48]  # bit k of qh[l] is the fifth bit of value l of sub-block k
    shifts = torch.arange(8, device=b.device, dtype=torch.uint8)[None, :, None]
    high = (qh[:, None, :] >> shifts) & 1  # (n, 8, 32)
    q = (_k4_values(b[:, 48:176]) | (high << 4)).float()
    return (d[:, :, None] * sc[:, :, None] * q - dmin[:, :, None] * mn[:, :, None]).reshape(-1, 256)


def _q6_k(b: Tensor) -> Tensor:
    n = b.shape[0]
    ql = b[:, 0:128].reshape(n, 2, 64)  # two halves of 128 values
    qh = b[:, 128:192].reshape(n, 2, 32)
    sc = b[:, 192:208].contiguous().view(torch.int8).float()  # (n, 16), one per 16 values
    d = _half(b[:, 208:210])
    low = torch.cat(_nibbles(ql), 2)  # (n, 2, 128): values l, l+32 from low nibbles, l+64, l+96 from high
    shifts = torch.tensor([0, 2, 4, 6], device=b.device, dtype=torch.uint8)[None, None, :, None]
    high = ((qh[:, :, None, :] >> shifts) & 3).reshape(n, 2, 128)
    q = ((low | (high << 4)).float() - 32).reshape(n, 16, 16)
    return (d[:, :, None] * sc[:, :, None] * q).reshape(n, 256)


_KERNELS: dict[str, Callable[[Tensor], Tensor]] = {
    "Q4_0": _q4_0,
    "Q4_1": _q4_1,
    "Q5_0": _q5_0,
    "Q5_1": _q5_1,
    "Q8_0": _q8_0,
    "Q4_K": _q4_k,
    "Q5_K": _q5_k,
    "Q6_K": _q6_k,
}


def gguf_nbytes(qtype: str, shape: tuple[int, ...]) -> int:
    """Bytes of ``qtype`` blocks holding a tensor of logical ``shape``.

    Blocks run along the rows of the shape the file stores, which may differ from the logical one
    (ComfyUI-GGUF stores some tensors reshaped, with ``comfy.gguf.orig_shape``); in row-major order the blocks
    follow the values either way, so only the element count matters."""
    per, nbytes = GGUF_BLOCKS[qtype]
    n = _numel(shape)
    if n % per:
        raise ValueError(f"a {qtype} tensor holds a multiple of {per} values, not {n} (shape {shape})")
    return n // per * nbytes


def dequantize_gguf(data: Tensor, qtype: str, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
    """The dense ``dtype`` tensor of logical ``shape`` held by the ``uint8`` GGUF blocks ``data``."""
    if qtype not in _KERNELS:
        raise ValueError(f"no dequantization kernel for GGUF type {qtype}; known: {', '.join(_KERNELS)}")
    nbytes = GGUF_BLOCKS[qtype][1]
    blocks = data.reshape(-1, nbytes)
    return _KERNELS[qtype](blocks).reshape(shape).to(dtype)


_FP8_TABLES: dict[tuple[torch.dtype, torch.dtype], Tensor] = {}


def fp8_to(data: Tensor, dtype: torch.dtype, scale: Tensor | None = None) -> Tensor:
    """``data.to(dtype)`` for an fp8 tensor, or with a float32 ``scale`` ``(data.float() * scale).to(dtype)``, bit
    for bit. On the CPU through a table of all 256 fp8 values (scaled first when the scale is one number):
    ``index_select`` is 5-8x faster there than torch's elementwise fp8 conversion. Elsewhere plain casts."""
    if data.device.type != "cpu" or (scale is not None and scale.numel() != 1):
        if scale is None:
            return data.to(dtype)
        return (data.to(torch.float32) * scale.to(torch.float32)).to(dtype)
    key = (data.dtype, torch.float32 if scale is not None else dtype)
    table = _FP8_TABLES.get(key)
    if table is None:
        table = _FP8_TABLES[key] = torch.arange(256, dtype=torch.uint8).view(data.dtype).to(key[1])
    if scale is not None:
        table = (table * scale.to(torch.float32).reshape(())).to(dtype)
    index = data.view(torch.uint8).reshape(-1).to(torch.int32)
    return torch.index_select(table, 0, index).reshape(data.shape)


class QuantizedTensor(Tensor):
    """A weight in its storage format that behaves as a dense tensor of ``shape`` and ``dtype`` (see the module
    docstring). ``qdata``: the stored tensor (fp8 of the logical shape, or GGUF ``uint8`` blocks); ``qtype``: one
    of :data:`QTYPES`; ``scale``: a float32 scalar multiplying fp8 values, or None."""

    qdata: Tensor
    qtype: str
    scale: Tensor | None

    @staticmethod
    def __new__(
        cls,
        qdata: Tensor,
        qtype: str,
        shape: tuple[int, ...] | torch.Size,
        dtype: torch.dtype,
        scale: Tensor | None = None,
    ) -> QuantizedTensor:
        if qtype not in QTYPES:
            raise ValueError(f"unknown storage format {qtype!r}; known: {', '.join(QTYPES)}")
        if qtype in FP8_DTYPES and (qdata.dtype != FP8_DTYPES[qtype] or tuple(qdata.shape) != tuple(shape)):
            raise ValueError(f"{qtype} data must be {FP8_DTYPES[qtype]} of shape {tuple(shape)}")
        if qtype in GGUF_BLOCKS and (
            qdata.dtype != torch.uint8 or qdata.numel() != gguf_nbytes(qtype, tuple(shape))
        ):
            raise ValueError(
                f"{qtype} data for shape {tuple(shape)} must be {gguf_nbytes(qtype, tuple(shape))} uint8 bytes, "
                f"got {qdata.numel()} {qdata.dtype}"
            )
        out = Tensor._make_wrapper_subclass(cls, tuple(shape), dtype=dtype, device=qdata.device)
        out.qdata, out.qtype, out.scale = qdata, qtype, scale
        return out

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()

    def __repr__(self) -> str:  # type: ignore[override]
        scaled = ", scaled" if self.scale is not None else ""
        return f"QuantizedTensor({self.qtype}{scaled}, shape={tuple(self.shape)}, dtype={self.dtype}, device={self.device})"

    @property
    def stored_bytes(self) -> int:
        """Bytes the stored form takes (data plus scale)."""
        extra = 0 if self.scale is None else self.scale.numel() * self.scale.element_size()
        return self.qdata.numel() * self.qdata.element_size() + extra

    def dequantize(self, dtype: torch.dtype | None = None) -> Tensor:  # type: ignore[override]
        """The dense tensor, in ``dtype`` (default: the compute dtype)."""
        dtype = dtype or self.dtype
        if self.qtype in FP8_DTYPES:
            return fp8_to(self.qdata, dtype, self.scale)
        return dequantize_gguf(self.qdata, self.qtype, tuple(self.shape), dtype)

    # A traceable wrapper subclass: nn.Module._apply (module.to, .half(), ...) then swaps the Parameter's contents
    # with the moved tensor (torch.utils.swap_tensors) instead of assigning ``.data``.
    def __tensor_flatten__(self) -> tuple[list[str], tuple[str, tuple[int, ...], torch.dtype]]:
        names = ["qdata"] if self.scale is None else ["qdata", "scale"]
        return names, (self.qtype, tuple(self.shape), self.dtype)

    @staticmethod
    def __tensor_unflatten__(
        inner: dict[str, Tensor],
        meta: tuple[str, tuple[int, ...], torch.dtype],
        outer_size: Any,
        outer_stride: Any,
    ) -> QuantizedTensor:
        qtype, shape, dtype = meta
        return QuantizedTensor(inner["qdata"], qtype, shape, dtype, inner.get("scale"))

    def __deepcopy__(self, memo: dict[int, Any]) -> Tensor:
        scale = None if self.scale is None else self.scale.clone()
        out: Tensor = self._like(self.qdata.clone(), scale)
        if getattr(self, "_is_param", False):  # a module's Parameter stays one (copy.deepcopy(model))
            out = torch.nn.Parameter(out, requires_grad=self.requires_grad)
        memo[id(self)] = out
        return out

    def _like(self, qdata: Tensor, scale: Tensor | None, dtype: torch.dtype | None = None) -> QuantizedTensor:
        return QuantizedTensor(qdata, self.qtype, tuple(self.shape), dtype or self.dtype, scale)

    @classmethod
    def __torch_function__(  # type: ignore[override]
        cls, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        # ``param.data = other`` cannot re-point a wrapper (its device and dtype are fixed), and silently keeping
        # the old bytes would be worse: refuse it. Everything else goes straight on to __torch_dispatch__.
        if getattr(func, "__self__", None) is torch._C.TensorBase.data and func.__name__ == "__set__":
            raise RuntimeError(
                f"cannot assign .data of a weight stored as {args[0].qtype}: move the module with module.to(...) "
                "(which keeps the stored form), or replace the Parameter"
            )
        return torch._C._disabled_torch_function_impl(func, types, args, kwargs or {})

    @classmethod
    def __torch_dispatch__(  # type: ignore[override]
        cls, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        aten = torch.ops.aten
        first = args[0] if args else None
        if isinstance(first, QuantizedTensor):
            if func in (aten.detach.default, aten.alias.default):
                return first._like(first.qdata, first.scale)
            if func is aten.clone.default:
                scale = None if first.scale is None else first.scale.clone()
                return first._like(first.qdata.clone(), scale)
            if func is aten._pin_memory.default:  # a device manager pinning weights for fast copies
                scale = None if first.scale is None else first.scale.pin_memory()
                return first._like(first.qdata.pin_memory(), scale)
            if func is aten.is_pinned.default:
                return first.qdata.is_pinned()
            if func is aten._to_copy.default:
                device = kwargs.get("device")
                dtype = kwargs.get("dtype")
                moved = first.qdata if device is None else first.qdata.to(device)
                scale = first.scale if (device is None or first.scale is None) else first.scale.to(device)
                keep = dtype if dtype is not None and dtype.is_floating_point else None
                if dtype is not None and not dtype.is_floating_point:  # e.g. .to(torch.int8): dense cast
                    return first.dequantize().to(dtype=dtype, device=device)
                return first._like(moved, scale, keep)
        schema = func._schema
        for i, arg in enumerate(schema.arguments):
            info = arg.alias_info
            if info is not None and info.is_write:
                value = args[i] if i < len(args) else kwargs.get(arg.name)
                if isinstance(value, QuantizedTensor):
                    raise RuntimeError(
                        f"cannot write into a weight stored as {value.qtype} ({func}): stored-format weights are "
                        "read-only; load the model in bf16/fp16 to change its weights in place"
                    )

        def unwrap(x: Any) -> Any:
            return x.dequantize() if isinstance(x, QuantizedTensor) else x

        return func(*tree_map(unwrap, args), **tree_map(unwrap, kwargs))


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def stored_nbytes(t: Tensor) -> int:
    """Bytes ``t`` occupies: its stored form for a :class:`QuantizedTensor`, ``numel * element_size`` otherwise
    (what a memory budget should count; a quantized weight's logical size in its compute dtype is larger)."""
    if isinstance(t, QuantizedTensor):
        return t.stored_bytes
    return t.numel() * t.element_size()


def is_quantized(t: object) -> bool:
    """Whether ``t`` is a weight kept in a storage format (a :class:`QuantizedTensor`)."""
    return isinstance(t, QuantizedTensor)


def fp8_quantize(
    t: Tensor, qtype: str = "F8_E4M3", *, scaled: bool = False, dtype: torch.dtype | None = None
) -> QuantizedTensor:
    """``t`` stored as fp8 (``F8_E4M3`` or ``F8_E5M2``), computing in ``dtype`` (default ``t.dtype``).

    ``scaled``: store ``t / scale`` with ``scale = max|t| / fp8 max`` (one float32 per tensor, ComfyUI's
    scaled fp8), which uses fp8's whole range; unscaled values are cast as they are (saturating at the max).
    """
    fp8 = FP8_DTYPES[qtype]
    limit = torch.finfo(fp8).max
    dense = t.detach()
    if scaled:
        amax = dense.abs().amax().float()
        scale = (amax / limit).clamp(min=torch.finfo(torch.float32).tiny).reshape(())
        data = (dense.float() / scale).clamp(-limit, limit).to(fp8)
        return QuantizedTensor(data, qtype, tuple(t.shape), dtype or t.dtype, scale)
    data = dense.float().clamp(-limit, limit).to(fp8)
    return QuantizedTensor(data, qtype, tuple(t.shape), dtype or t.dtype, None)


def storage_format(t: Tensor) -> str:
    """A short name for how ``t`` is stored: ``Q4_K``, ``F8_E4M3 scaled``, or the dtype (``bfloat16``)."""
    if isinstance(t, QuantizedTensor):
        return t.qtype + (" scaled" if t.scale is not None else "")
    return str(t.dtype).removeprefix("torch.")


def fp8_compute_available(device: torch.device | str) -> bool:
    """Whether ``device`` multiplies fp8 matrices natively (CUDA compute capability 8.9 or newer). Weights
    stored in fp8 are upcast per layer either way; this only decides whether that is a fallback."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    return torch.cuda.get_device_capability(device) >= (8, 9)


def warn_if_fp8_upcast(module: torch.nn.Module, device: torch.device | str) -> bool:
    """Warn (and return True) when ``module`` holds fp8 weights for a ``device`` without fp8 compute: there each
    layer's fp8 weights are upcast to the compute dtype when used (memory stays fp8; only speed differs)."""
    formats = sorted(
        {p.qtype for p in module.parameters() if isinstance(p, QuantizedTensor) and p.qtype in FP8_DTYPES}
    )
    if not formats or fp8_compute_available(device):
        return False
    dtype = next(p.dtype for p in module.parameters() if isinstance(p, QuantizedTensor))
    warnings.warn(
        f"{type(module).__name__} has weights stored in fp8 ({', '.join(formats)}) but {torch.device(device)} has "
        f"no fp8 compute: each layer's weights are upcast to {dtype} when used (they stay fp8 in memory)",
        stacklevel=2,
    )
    return True
