"""Torch-side guards for the node adapters: sizing payloads for the byte-bounded output cache, and
making a network's forward pass interruptible between its blocks.

:func:`payload_nbytes` is the sizer the server injects into the torch-free executor
(``Executor(..., sizer=payload_nbytes)``): tensors count ``numel * element_size`` and networks the sum
of their parameters and buffers, each object once per cache entry (a checkpoint loader's MODEL and VAE
share one autoencoder).

:func:`interruptible` registers forward pre-hooks on a network for the duration of a ``with``; each
calls the job's ``ctx.check_cancelled``, so ``/interrupt`` and the wall-time budget stop a job inside a
forward pass instead of after a whole sampler step. The hooks return None (they never touch the inputs),
so results are bit-identical, and they are removed on exit. Two granularities:

- *blocks* (``fine=False``): the network and every direct child of every ``nn.ModuleList``, which is how
  the U-Net, DiT, MM-DiT, FLUX and the autoencoder hold their blocks. A few dozen hooks.
- *layers* (``fine=True``): every module, plus a thread-local ``TorchFunctionMode`` that checks before
  every torch op and splits the two kinds of op that alone run for seconds at a large size, with a check
  between the pieces: ``scaled_dot_product_attention`` into blocks of query rows (multiples of 128;
  16384 tokens: 8 s on one CPU core unsplit) and ``conv2d`` into horizontal bands of output rows, each
  with the input rows it reads (one 3x3 conv over the default U-Net's 2 x 64 x 1024 x 1024 activations
  at 4096 px: 3-4 s unsplit). Each query row and each output pixel is the same dot product as in the
  whole call, and on CPU the results are bit for bit the same (see the tests). Element-wise ops and
  GroupNorm are not split: at 4096 px on the default U-Net the longest takes about 1 s on one core.
  The cost is one Python call per layer and per torch op: 10-30 % of a forward pass of a small model on
  a small latent, noise on a large one.

:func:`needs_fine_checks` picks the granularity from the work of one forward pass (parameters x latent
cells).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils.hooks import RemovableHandle

from latentworks.graph.cache import walk_nbytes


def module_nbytes(module: nn.Module) -> int:
    """Bytes of a network's parameters and buffers (shared tensors once)."""
    seen: set[int] = set()
    total = 0
    for t in (*module.parameters(), *module.buffers()):
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


def _torch_leaf(obj: Any) -> int | None:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, nn.Module):
        return module_nbytes(obj)
    return None


def payload_nbytes(value: Any) -> int:
    """Bytes held by a node's outputs: tensors, networks, and payload dataclasses holding them."""
    return walk_nbytes(value, _torch_leaf)


def hooked_modules(net: nn.Module, fine: bool = True) -> list[nn.Module]:
    """The modules :func:`interruptible` hooks: ``net`` and, if ``fine``, every module inside it that has a
    forward of its own (containers such as ``nn.ModuleList`` are never called), else every direct child of
    every ``nn.ModuleList`` (the network's blocks)."""
    if fine:
        return [m for m in net.modules() if not isinstance(m, nn.ModuleList | nn.ModuleDict)]
    blocks = [net]
    for module in net.modules():
        if isinstance(module, nn.ModuleList):
            blocks.extend(module.children())
    return blocks


FINE_CHECK_WORK = 2**34  # parameters x latent cells of one forward pass from which blocks are too coarse


def needs_fine_checks(net: nn.Module, latent_cells: int) -> bool:
    """Whether one forward pass of ``net`` over ``latent_cells`` (h x w of one latent) is long enough that
    checks between blocks could leave seconds between checks: the 1.2 M-parameter test U-Net from
    122 x 122 latent cells, the 11 M emoji32 U-Net from 40 x 40 (its own latents are 8 x 8), SD 1.x
    (860 M) from 5 x 5, so always in practice; SD's VAE (84 M) from 205 pixels."""
    params = sum(p.numel() for p in net.parameters())
    return params * latent_cells >= FINE_CHECK_WORK


ATTENTION_BLOCK_WORK = 2**31  # multiply-adds per attention block: about 0.3 s on one CPU core
_ROWS = 128  # query rows per block come in multiples of this (SDPA kernels tile queries in divisors of it)


def chunked_attention(
    check: Callable[[], None],
    q: Tensor,
    k: Tensor,
    v: Tensor,
    attn_mask: Tensor | None = None,
    *,
    block_work: int | None = None,
) -> Tensor:
    """``F.scaled_dot_product_attention(q, k, v, attn_mask)`` computed in blocks of query rows, calling
    ``check()`` before each block. q (..., L, d), k and v (..., S, d), attn_mask broadcastable to (..., L, S).

    Each query row's output depends only on that row, so the blocks concatenate to the same result; the
    block height is a multiple of 128 rows, chosen so one block does about ``block_work`` multiply-adds
    (default :data:`ATTENTION_BLOCK_WORK`).
    """
    block_work = ATTENTION_BLOCK_WORK if block_work is None else block_work
    length, keys, head_dim = q.shape[-2], k.shape[-2], q.shape[-1]
    heads = max(1, q.numel() // max(1, length * head_dim))  # batch x heads
    rows = max(_ROWS, block_work // max(1, keys * heads * head_dim) // _ROWS * _ROWS)
    check()
    if length <= rows:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
    per_row_mask = attn_mask is not None and attn_mask.ndim >= 2 and attn_mask.shape[-2] == length
    parts = []
    for start in range(0, length, rows):
        if start:
            check()
        mask = attn_mask[..., start : start + rows, :] if per_row_mask else attn_mask  # type: ignore[index]
        parts.append(F.scaled_dot_product_attention(q[..., start : start + rows, :], k, v, attn_mask=mask))
    return torch.cat(parts, dim=-2)


CONV_BAND_WORK = 2**32  # multiply-adds per convolution band: about 0.2 s on one CPU core
# Input values per band at least. PyTorch's CPU convolution picks its kernel by shape: below 20,480 values a
# batch of one goes to im2col + GEMM instead of oneDNN (``use_mkldnn`` in ATen's ConvUtils.h), and oneDNN
# itself treats small images apart (the default VAE's 48 -> 3 conv_out in 14-row bands of a 64-px image
# differed by 1e-6). Bands of 2**17 values or more matched the whole call in every shape we tried.
CONV_BAND_MIN_VALUES = 2**17


def _pair(value: int | tuple[int, ...] | list[int]) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    if len(value) == 1:
        return value[0], value[0]
    return value[0], value[1]


def banded_conv2d(
    check: Callable[[], None],
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: int | tuple[int, ...] = 1,
    padding: int | tuple[int, ...] = 0,
    dilation: int | tuple[int, ...] = 1,
    groups: int = 1,
    *,
    band_work: int | None = None,
) -> Tensor:
    """``F.conv2d(x, weight, bias, stride, padding, dilation, groups)`` computed in horizontal bands of
    output rows, calling ``check()`` before each band. x (N, C_in, H, W) or (C_in, H, W); weight
    (C_out, C_in / groups, kh, kw); numeric (not ``"same"``) zero padding.

    Output row ``i`` reads input rows ``i * stride - pad + dilation * [0, kh)``, so each band convolves
    the input rows it needs (its halo included), with the zero padding rows added explicitly at the top
    and bottom of the image and the column padding left to the convolution. Every output element is the
    same dot product as in the unsplit call (bit for bit on CPU, see the tests). A band does about
    ``band_work`` multiply-adds (default :data:`CONV_BAND_WORK`) and reads at least
    :data:`CONV_BAND_MIN_VALUES` input values. One exception to bit-identity: oneDNN's multi-threaded 1x1
    kernels can round the last bits differently for some band heights (up to 6e-5 on outputs of size ~50
    from unit random weights with 2 threads, about 1e-6 relative); on one thread, and for every larger
    kernel we tried, the bits are the same. 1x1 convolutions are split anyway: left whole, the U-Net's
    skip convolution at 4096 px held a 2-thread worker for 2-3 s.
    """
    band_work = CONV_BAND_WORK if band_work is None else band_work
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    batched = x.ndim == 4
    xb = x if batched else x.unsqueeze(0)
    n, _, height, width = xb.shape
    c_out, c_in_per_group, kh, kw = weight.shape
    out_h = (height + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    out_w = (width + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    row_work = n * max(out_w, 0) * c_out * c_in_per_group * kh * kw
    check()
    if out_h < 2 or row_work * out_h <= band_work:
        return F.conv2d(x, weight, bias, (sh, sw), (ph, pw), (dh, dw), groups)
    min_rows = -(-CONV_BAND_MIN_VALUES // max(1, n * xb.shape[1] * width * sh))
    rows = max(1, min_rows, band_work // max(1, row_work))
    out: Tensor | None = None
    for o0 in range(0, out_h, rows):
        o1 = min(o0 + rows, out_h)
        if o0:
            check()
        start = o0 * sh - ph  # first input row of the band (negative: inside the top padding)
        stop = (o1 - 1) * sh - ph + dh * (kh - 1) + 1  # one past its last input row
        top = min(max(-start, 0), stop - start)  # rows of zero padding above the image
        bottom = min(max(stop - height, 0), stop - start - top)  # and below it
        band = xb[:, :, max(start + top, 0) : max(stop - bottom, 0), :]
        if top or bottom:
            band = F.pad(band, (0, 0, top, bottom))
        part = F.conv2d(band, weight, bias, (sh, sw), (0, pw), (dh, dw), groups)  # (N, C_out, o1 - o0, W')
        if out is None:
            out = part.new_empty((n, c_out, out_h, out_w))
        out[:, :, o0:o1] = part
    assert out is not None
    return out if batched else out.squeeze(0)


class _InterruptibleOps(TorchFunctionMode):
    """Calls ``check()`` before every torch function, and splits the two kinds of call that alone can run
    for seconds on a large latent: plain SDPA calls (no dropout, causal flag, scale or GQA) go through
    :func:`chunked_attention`, 2-d convolutions with numeric padding through :func:`banded_conv2d`."""

    def __init__(self, check: Callable[[], None]) -> None:
        super().__init__()
        self.check = check

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention and len(args) == 3 and set(kwargs) <= {"attn_mask"}:
            q, k, v = args
            return chunked_attention(self.check, q, k, v, attn_mask=kwargs.get("attn_mask"))
        if func is F.conv2d and not kwargs and 2 <= len(args) <= 7 and not isinstance(_arg(args, 4), str):
            return banded_conv2d(self.check, *args)
        self.check()
        return func(*args, **kwargs)


def _arg(args: tuple[Any, ...], i: int) -> Any:
    return args[i] if len(args) > i else None


@contextmanager
def interruptible(check: Callable[[], None], *nets: nn.Module | None, fine: bool = True) -> Iterator[int]:
    """Call ``check()`` before every block (``fine``: every layer, every torch op in this thread, every
    attention block and convolution band) of ``nets`` while inside the ``with``; yields the number of hooks.

    ``check`` raises to stop the forward pass (``ctx.check_cancelled`` raises ``Interrupted``). Not for
    networks that another thread runs at the same time: the hooks are on the shared modules.
    """

    tripped = False

    def once() -> None:
        # After the first stop, checks pass: the exception is on its way out, and the code it unwinds
        # through (no_grad's exit, LoRA restores) must run its torch calls without being stopped again.
        nonlocal tripped
        if tripped:
            return
        try:
            check()
        except BaseException:
            tripped = True
            raise

    def hook(module: nn.Module, args: Any) -> None:
        once()

    handles: list[RemovableHandle] = []
    try:
        for net in nets:
            if net is not None:
                handles.extend(m.register_forward_pre_hook(hook) for m in hooked_modules(net, fine))
        if fine:
            with _InterruptibleOps(once):  # thread-local: other threads' torch calls are unaffected
                yield len(handles)
        else:
            yield len(handles)
    finally:
        for handle in handles:
            handle.remove()
