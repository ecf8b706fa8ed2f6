"""Pieces shared by the training loops: data order, per-step randomness, run folder, logging.

Randomness is a pure function of ``(seed, step, rank)``: the data order of epoch ``e`` is
``randperm(N, seed=hash(seed, e))`` and every step's noise comes from a generator seeded with
``hash(seed, step, rank)``. Whatever draws from torch's global generator inside a step (dropout) sees it
reseeded per step by ``seed_step_globals``. A resumed run therefore replays exactly what a straight run
would do, with no generator state to save. (The loops draw nothing from numpy's or Python's ``random``.)
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import torch

from latentworks.checkpoints.io import atomic_write_bytes


def derive(seed: int, *parts: int) -> int:
    h = hashlib.sha256(repr((seed, *parts)).encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def step_generator(
    seed: int, step: int, rank: int = 0, device: str | torch.device = "cpu"
) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(derive(seed, 1, step, rank))
    return g


def seed_step_globals(seed: int, step: int, rank: int = 0) -> None:
    """Seed torch's global generators (CPU and every CUDA device) for ``step``: dropout and any other
    draw from the ambient generator become a function of ``(seed, step, rank)``, like the explicit noise,
    so they replay exactly after a resume."""
    torch.manual_seed(derive(seed, 2, step, rank))


def batch_indices(
    step: int, num_items: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1
) -> torch.Tensor:
    """Indices of this rank's share of global batch ``step`` (epochs reshuffle; the last partial batch is dropped)."""
    global_bs = batch_size * world_size
    if num_items < global_bs:
        raise ValueError(
            f"the dataset has {num_items} items, fewer than one global batch "
            f"({batch_size} x {world_size} processes); lower --batch-size"
        )
    per_epoch = num_items // global_bs
    epoch, pos = divmod(step, per_epoch)
    g = torch.Generator().manual_seed(derive(seed, 0, epoch))
    perm = torch.randperm(num_items, generator=g)
    batch = perm[pos * global_bs : (pos + 1) * global_bs]
    return batch[rank * batch_size : (rank + 1) * batch_size]


def to_jsonable(obj: Any) -> Any:
    if is_dataclass(obj) and not isinstance(obj, type):
        return {k: to_jsonable(v) for k, v in asdict(obj).items()}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes((json.dumps(to_jsonable(obj), indent=2) + "\n").encode(), path)


class RunLog:
    """Appends one JSON line per log step to ``log.jsonl`` and redraws ``loss.png``."""

    def __init__(self, run_dir: Path, resume_step: int = 0) -> None:
        self.path = run_dir / "log.jsonl"
        self.png = run_dir / "loss.png"
        self.steps: list[int] = []
        self.losses: list[float] = []
        if self.path.is_file():
            kept = []
            for line in self.path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a kill
                if rec["step"] <= resume_step:
                    kept.append(line)
                    self.steps.append(rec["step"])
                    self.losses.append(rec["loss"])
            self.path.write_text("".join(k + "\n" for k in kept))
        self.t0 = time.perf_counter()

    def log(self, step: int, **values: float) -> None:
        rec = {
            "step": step,
            **{k: (v if math.isfinite(v) else None) for k, v in values.items()},
            "time": round(time.perf_counter() - self.t0, 3),
        }
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        self.steps.append(step)
        self.losses.append(values["loss"])

    def plot(self, title: str) -> None:
        from latentworks.training.grids import plot_loss_curve

        plot_loss_curve(self.steps, self.losses, self.png, title=title, smooth=max(1, len(self.losses) // 50))
