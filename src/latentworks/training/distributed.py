"""DDP helpers: works under ``torchrun`` (env vars) and single-process runs alike."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "cpu") -> DistInfo:
    """Initialise the process group if launched by torchrun (``WORLD_SIZE`` > 1); else no-op."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") and torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local)
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
    return DistInfo(rank, world, local)


def wrap_ddp(model: nn.Module, info: DistInfo) -> nn.Module:
    if not info.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    dev = next(model.parameters()).device
    ids = [dev.index] if dev.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def unwrap(model: nn.Module) -> Any:
    """The module inside a DDP wrapper (typed Any: callers use model-specific attributes)."""
    return model.module if hasattr(model, "module") else model


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_reduce_mean(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if not info.enabled:
        return x
    y = x.detach().clone()
    dist.all_reduce(y)
    return y / info.world_size


def cleanup(info: DistInfo) -> None:
    """Tear the process group down on every rank together.

    Without the barrier a rank that finishes first closes its gloo connections while a peer's
    background thread still reads from them, and that peer aborts ("terminate called without an
    active exception") even though training succeeded.
    """
    if info.enabled and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
