"""Writers for one model's weights in the storage formats people download: bf16/fp16 safetensors, fp8 (e4m3fn,
e5m2), ComfyUI's scaled fp8, and GGUF files in ComfyUI-GGUF's layout (written with the ``gguf`` package's
``GGUFWriter``). Each writer also returns the *oracle* dense weights its file holds, computed without
latentworks: torch's own fp8 casts, and ``gguf.quants.dequantize`` for GGUF blocks.

``gguf`` 0.19 quantizes Q8_0, Q4_0, Q4_1, Q5_0 and Q5_1 itself (``gguf.quants.quantize``) but has no K-quant
quantizer; :func:`quantize_q6_k` packs Q6_K blocks here, and the oracle for those bytes is still
``gguf.quants.dequantize``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from latentworks.checkpoints.io import save_file_atomic

FP8 = {"fp8_e4m3fn": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}


def is_matrix(t: Tensor) -> bool:
    """The tensors quantized formats store quantized: floating point with two or more dimensions."""
    return t.is_floating_point() and t.ndim >= 2


def write_safetensors(state: dict[str, Tensor], path: Path, fmt: str) -> dict[str, Tensor]:
    """Write ``state`` as ``fmt`` (``bf16``, ``fp16``, ``fp8_e4m3fn``, ``fp8_e5m2``, ``fp8_scaled``); return the
    dense float32 weights the file holds (the oracle)."""
    out: dict[str, Tensor] = {}
    oracle: dict[str, Tensor] = {}
    for k, v in state.items():
        if fmt in ("bf16", "fp16"):
            out[k] = v.to(torch.bfloat16 if fmt == "bf16" else torch.float16)
            oracle[k] = out[k].float()
        elif fmt in FP8 and is_matrix(v):
            out[k] = v.float().to(FP8[fmt])
            oracle[k] = out[k].float()
        elif fmt == "fp8_scaled" and is_matrix(v) and k.endswith(".weight"):  # ComfyUI scales layer weights
            # ComfyUI's scaled fp8: weight = fp8 * scale_weight, scale = max|w| / 448 (e4m3fn's largest value)
            scale = (v.float().abs().amax() / 448.0).reshape(())
            out[k] = (v.float() / scale).to(torch.float8_e4m3fn)
            layer = k.removesuffix(".weight")
            out[f"{layer}.scale_weight"] = scale.clone()
            out[f"{layer}.scale_input"] = torch.ones(())  # used by an fp8 matmul only
            oracle[k] = out[k].float() * scale
        else:
            out[k] = v.to(torch.bfloat16)
            oracle[k] = out[k].float()
    if fmt == "fp8_scaled":
        out["scaled_fp8"] = torch.empty(
            0, dtype=torch.float8_e4m3fn
        )  # the marker: its dtype names the format
    save_file_atomic(out, path)
    return oracle


def quantize_q6_k(x: np.ndarray) -> np.ndarray:
    """Float rows ``(..., n * 256)`` -> Q6_K bytes ``(..., n * 210)``: per 16 values an int8 scale, per 256 a
    float16 ``d``, values ``q - 32`` in 6 bits (low nibbles in ``ql``, top two bits in ``qh``)."""
    rows = x.reshape(-1, 256).astype(np.float32)
    n = rows.shape[0]
    groups = rows.reshape(n, 16, 16)
    s = np.abs(groups).max(axis=2) / 31.0  # (n, 16): per-group step so that |q| <= 31
    d = (s.max(axis=1) / 127.0).astype(np.float16)  # (n,)
    d32 = d.astype(np.float32)
    sc = np.where(d32[:, None] > 0, np.round(s / np.where(d32[:, None] > 0, d32[:, None], 1)), 0)
    sc = np.clip(sc, -128, 127).astype(np.int8)
    step = d32[:, None] * sc.astype(np.float32)  # (n, 16)
    q = np.where(
        step[:, :, None] > 0, np.round(groups / np.where(step[:, :, None] > 0, step[:, :, None], 1)), 0
    )
    q = (np.clip(q, -32, 31) + 32).astype(np.uint8).reshape(n, 2, 4, 32)  # half, quarter, l
    ql = np.concatenate(
        [(q[:, :, 0] & 0xF) | ((q[:, :, 2] & 0xF) << 4), (q[:, :, 1] & 0xF) | ((q[:, :, 3] & 0xF) << 4)], 2
    )
    qh = (q[:, :, 0] >> 4) | ((q[:, :, 1] >> 4) << 2) | ((q[:, :, 2] >> 4) << 4) | ((q[:, :, 3] >> 4) << 6)
    blocks = np.concatenate(
        [ql.reshape(n, 128), qh.reshape(n, 64), sc.view(np.uint8), d.reshape(n, 1).view(np.uint8)], axis=1
    )
    return blocks.reshape(*x.shape[:-1], x.shape[-1] // 256 * 210)


def write_gguf(
    state: dict[str, Tensor], path: Path, qtype: str, *, arch: str = "flux", prefix: str = ""
) -> dict[str, Tensor]:
    """Write ``state`` as a ComfyUI-GGUF-style file: matrices whose last dimension fits ``qtype``'s block in
    ``qtype``, everything else in F32; ``general.architecture = arch``. Returns the oracle dense weights
    (``gguf.quants.dequantize`` of the written blocks)."""
    import gguf
    from gguf import quants

    gtype = gguf.GGMLQuantizationType[qtype]
    block = gguf.GGML_QUANT_SIZES[gtype][0]
    writer = gguf.GGUFWriter(str(path), arch=arch)
    writer.add_file_type(int(gtype))
    oracle: dict[str, Tensor] = {}
    for k, v in state.items():
        arr = v.detach().float().numpy()
        if is_matrix(v) and arr.shape[-1] % block == 0:
            data = quantize_q6_k(arr) if qtype == "Q6_K" else quants.quantize(arr, gtype)
            writer.add_tensor(prefix + k, data, raw_dtype=gtype)
            oracle[k] = torch.from_numpy(np.ascontiguousarray(quants.dequantize(data, gtype))).reshape(
                v.shape
            )
        else:
            writer.add_tensor(prefix + k, arr.astype(np.float32))
            oracle[k] = torch.from_numpy(arr.copy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return oracle
