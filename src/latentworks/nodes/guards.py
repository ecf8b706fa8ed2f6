"""Torch-side guards for the node adapters: sizing payloads for the byte-bounded output cache, and
making a network's forward pass interruptible between its blocks.

:func:`payload_nbytes` is the sizer the server injects into the torch-free executor
(``Executor(..., sizer=payload_nbytes)``): tensors count ``numel * element_size`` and networks the sum
of their parameters and buffers, each object once per cache entry (a checkpoint loader's MODEL and VAE
share one autoencoder).

:func:`interruptible` registers a forward pre-hook on every block of a network (every direct child of
every ``nn.ModuleList``, which is how the U-Net, DiT, MM-DiT, FLUX and the autoencoder hold their blocks,
plus the network itself) for the duration of a ``with``. Each hook calls the job's
``ctx.check_cancelled``, so ``/interrupt`` and the wall-time budget stop a job within one block instead of
one whole sampler step. The hooks return None (they never touch the inputs), so results are
bit-identical, and they are removed on exit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
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


def block_modules(net: nn.Module) -> list[nn.Module]:
    """``net`` and every direct child of every ``nn.ModuleList`` inside it: the network's blocks."""
    blocks: list[nn.Module] = [net]
    for module in net.modules():
        if isinstance(module, nn.ModuleList):
            blocks.extend(module.children())
    return blocks


@contextmanager
def interruptible(check: Callable[[], None], *nets: nn.Module | None) -> Iterator[int]:
    """Call ``check()`` before every block of ``nets`` while inside the ``with``; yields the hook count.

    ``check`` raises to stop the forward pass (``ctx.check_cancelled`` raises ``Interrupted``). Not for
    networks that another thread runs at the same time: the hooks are on the shared modules.
    """

    def hook(module: nn.Module, args: Any) -> None:
        check()

    handles: list[RemovableHandle] = []
    try:
        for net in nets:
            if net is not None:
                handles.extend(m.register_forward_pre_hook(hook) for m in block_modules(net))
        yield len(handles)
    finally:
        for handle in handles:
            handle.remove()
