"""Training-state checkpoints as one safetensors file, written atomically.

Keys: ``model.*``, ``ema.*``, ``optim.<name>.<param index>.<state>`` (+ ``disc.*`` for the VAE
stage). safetensors metadata holds ``step``, ``ema_updates``, the optimizer ``param_groups`` (JSON),
the fp16 ``GradScaler`` state (JSON, ``grad_scaler``) and the run config (JSON). Random numbers in our
loops are a pure function of (seed, step, rank) (``common.step_generator``, ``common.seed_step_globals``),
so the step fully determines the data order, noise and dropout after a resume.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from latentworks.checkpoints.io import load_state_dict, read_metadata, save_file_atomic


def optimizer_to_tensors(opt: torch.optim.Optimizer, prefix: str) -> tuple[dict[str, Tensor], str]:
    sd = opt.state_dict()
    tensors: dict[str, Tensor] = {}
    for idx, state in sd["state"].items():
        for k, v in state.items():
            t = v if isinstance(v, Tensor) else torch.tensor(v)
            tensors[f"{prefix}.{idx}.{k}"] = t
    return tensors, json.dumps(sd["param_groups"])


def optimizer_from_tensors(
    opt: torch.optim.Optimizer, tensors: dict[str, Tensor], prefix: str, param_groups: str
) -> None:
    state: dict[int, dict[str, Tensor]] = {}
    for key, t in tensors.items():
        if not key.startswith(prefix + "."):
            continue
        idx, name = key[len(prefix) + 1 :].split(".", 1)
        state.setdefault(int(idx), {})[name] = t
    opt.load_state_dict({"state": state, "param_groups": json.loads(param_groups)})


def save_training_state(
    path: str | Path,
    *,
    step: int,
    modules: dict[str, nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    extra_meta: dict[str, Any] | None = None,
) -> None:
    """Write the full training state (modules and optimizers by name) atomically."""
    tensors: dict[str, Tensor] = {}
    meta: dict[str, str] = {"step": str(step)}
    for name, m in modules.items():
        for k, v in m.state_dict().items():
            tensors[f"{name}.{k}"] = v
    for name, opt in optimizers.items():
        t, groups = optimizer_to_tensors(opt, f"optim_{name}")
        tensors.update(t)
        meta[f"optim_{name}.param_groups"] = groups
    for k, v in (extra_meta or {}).items():
        meta[k] = v if isinstance(v, str) else json.dumps(v)
    for k, v in tensors.items():
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise FloatingPointError(f"refusing to save a checkpoint with non-finite values in {k!r}")
    save_file_atomic(tensors, path, meta)


def load_training_state(
    path: str | Path,
    *,
    modules: dict[str, nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    device: str | torch.device = "cpu",
) -> dict[str, str]:
    """Load what ``save_training_state`` wrote into the given objects; returns the metadata."""
    tensors = load_state_dict(path, device=device)
    meta = read_metadata(path)
    for name, m in modules.items():
        sub = {k[len(name) + 1 :]: v for k, v in tensors.items() if k.startswith(name + ".")}
        try:
            missing, unexpected = m.load_state_dict(sub, strict=False)
        except RuntimeError as e:  # size mismatches: torch lists every one; keep the first few lines
            lines = [ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln]
            raise ValueError(
                f"{path}: the checkpoint's {name!r} weights do not fit the configured model: "
                f"{'; '.join(lines[:3]) or str(e)[:300]}{' ...' if len(lines) > 3 else ''}. "
                "Resume with the model config the run was started with (its config.json)."
            ) from None
        if missing or unexpected:
            raise ValueError(
                f"{path}: the checkpoint's {name!r} weights do not fit the configured model "
                f"(missing {list(missing)[:5]}, unexpected {list(unexpected)[:5]}); "
                "resume with the same model config the run was started with"
            )
    for name, opt in optimizers.items():
        key = f"optim_{name}.param_groups"
        if key not in meta:
            raise ValueError(f"{path}: no optimizer state {name!r} in checkpoint")
        optimizer_from_tensors(opt, tensors, f"optim_{name}", meta[key])
    return meta


def grad_scaler_meta(scaler: torch.amp.GradScaler) -> str:
    """The GradScaler's state (scale, growth tracker, factors) as JSON for the checkpoint metadata; an
    unused scaler (no fp16) gives ``{}``."""
    return json.dumps({k: (v.item() if isinstance(v, Tensor) else v) for k, v in scaler.state_dict().items()})


def load_grad_scaler(scaler: torch.amp.GradScaler, meta: dict[str, str]) -> None:
    """Restore what ``grad_scaler_meta`` saved (nothing for checkpoints written before it was saved)."""
    state = json.loads(meta.get("grad_scaler", "{}"))
    if state and scaler.is_enabled():
        scaler.load_state_dict(state)


def check_finite(loss: Tensor, step: int, what: str = "loss") -> None:
    v = float(loss.detach())
    if not math.isfinite(v):
        raise FloatingPointError(
            f"{what} became {v} at step {step}; training stopped and no checkpoint was written for this step. "
            "Lower the learning rate, enable gradient clipping, or use bf16 instead of fp16; "
            "then resume from the last checkpoint with --resume."
        )
