"""Where the nodes put networks: through the job's :class:`~latentworks.pipelines.memory.MemoryManager` when
the server was given one (``ExecutionContext.device``), else straight onto the plain device it names.

- Loaders build networks on :func:`load_device`: the manager's offload device (host RAM) when it has a budget,
  so the manager decides what sits on the accelerator; otherwise the compute device itself, as before.
- Nodes that run a network wrap the work in :func:`on_device`, which is ``manager.use(net)`` (load whole or
  stream block by block, evicting idle networks by bytes) or nothing without a manager.
- When the output cache drops an entry, :func:`release_networks` lets the manager forget the networks in it,
  so their device memory and host copies go with the cache entry.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
from torch import nn

from latentworks.graph.cache import walk_nbytes
from latentworks.pipelines.memory import MemoryManager


def manager_of(ctx: Any) -> MemoryManager | None:
    """The job's memory manager, or None when the context holds a plain device (or nothing)."""
    device = getattr(ctx, "device", None)
    return device if isinstance(device, MemoryManager) else None


def load_device(ctx: Any, device: str = "default") -> torch.device | str:
    """Where a loader builds a network: ``cpu`` when the node asks for it, the manager's offload device under a
    budget, else the job's compute device (``cpu`` when none is set)."""
    if device == "cpu":
        return "cpu"
    manager = manager_of(ctx)
    if manager is not None:
        return manager.offload_device if manager.budget is not None else manager.device
    return getattr(ctx, "device", None) or "cpu"


def compute_device(ctx: Any, net: nn.Module) -> torch.device:
    """The device ``net`` computes on: the manager's device, else where its first tensor is."""
    manager = manager_of(ctx)
    if manager is not None:
        return torch.device(manager.device)
    for t in net.parameters():
        return t.device
    return torch.device("cpu")


@contextmanager
def on_device(ctx: Any, *nets: nn.Module) -> Iterator[None]:
    """Run the block with ``nets`` on the compute device (``manager.use`` each), or as they are without one."""
    manager = manager_of(ctx)
    with ExitStack() as stack:
        if manager is not None:
            for net in nets:
                stack.enter_context(manager.use(net))
        yield


def text_networks(encoder: Any) -> list[nn.Module]:
    """The networks of a prompt encoder (its ``modules()`` mapping; through a LoRA wrapper's ``base``)."""
    inner = getattr(encoder, "base", encoder)
    modules = getattr(inner, "modules", None)
    found = modules() if callable(modules) else {}
    return [m for m in found.values() if isinstance(m, nn.Module)] if isinstance(found, dict) else []


def networks_in(value: Any) -> list[nn.Module]:
    """Every top-level ``nn.Module`` reachable from a node's outputs (payload dataclasses, tuples, dicts)."""
    found: list[nn.Module] = []

    def leaf(obj: Any) -> int | None:
        if isinstance(obj, nn.Module):
            found.append(obj)
            return 0
        if isinstance(obj, torch.Tensor):
            return 0
        return None

    walk_nbytes(value, leaf)
    return found


def release_networks(manager: MemoryManager, outputs: Any) -> None:
    """Let ``manager`` forget the networks held by evicted cache ``outputs`` (the output cache's ``on_evict``)."""
    manager.release(*networks_in(outputs))
