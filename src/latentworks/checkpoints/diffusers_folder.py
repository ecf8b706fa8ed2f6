"""diffusers folders on disk: weights (single files or sharded with an index, safetensors or opt-in pickles)
and JSON files, without any knowledge of model families.

A diffusers folder holds ``model_index.json`` and one folder per component, each with ``config.json`` and
``diffusion_pytorch_model.safetensors`` (or ``model.safetensors`` for transformers' text encoders), possibly
sharded as ``<stem>-0000i-of-0000n.safetensors`` plus ``<stem>.safetensors.index.json``. What the components
mean per family is :mod:`latentworks.families.diffusers`'s business.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from latentworks.checkpoints.io import (
    CheckpointError,
    ShardedStateDict,
    load_state_dict,
    save_file_atomic,
)

CLIP_BY_WIDTH = {768: "clip_l", 1024: "clip_h", 1280: "clip_g"}
TEXT_ENCODER_CLASS = {"clip_l": "CLIPTextModel", "clip_h": "CLIPTextModel", "clip_g": "CLIPTextModelWithProjection",
                      "t5xxl": "T5EncoderModel", "qwen3_4b": "Qwen3Model",
                      "qwen25vl_7b": "Qwen2_5_VLForConditionalGeneration"}  # fmt: skip
TOKENIZER_CLASS = {"clip_l": "CLIPTokenizer", "clip_h": "CLIPTokenizer", "clip_g": "CLIPTokenizer",
                   "t5xxl": "T5TokenizerFast", "qwen3_4b": "Qwen2Tokenizer",
                   "qwen25vl_7b": "Qwen2Tokenizer"}  # fmt: skip
DIFFUSERS_WEIGHTS = "diffusion_pytorch_model"
TRANSFORMERS_WEIGHTS = "model"


# --------------------------------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------------------------------


def read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path.parent}: expected {what} at {path}, but the file does not exist")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def read_weights(
    folder: Path,
    stem: str = DIFFUSERS_WEIGHTS,
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    allow_pickle: bool = False,
    variant: str | None = None,
) -> Mapping[str, Tensor]:
    """A component's weights: ``<stem>.safetensors``, or shards listed in ``<stem>.safetensors.index.json``
    (safetensors are read lazily, see :class:`~latentworks.checkpoints.io.ShardedStateDict`); ``<stem>.bin`` (and its index) only with
    ``allow_pickle=True``. ``variant="fp16"`` reads ``<stem>.fp16.safetensors`` (diffusers' naming)."""
    v = f".{variant}" if variant else ""
    single, index = folder / f"{stem}{v}.safetensors", folder / f"{stem}.safetensors.index{v}.json"
    if single.is_file():
        return ShardedStateDict([single], dtype=dtype, device=device)
    if index.is_file():
        files = _shard_files(index)
        weights = ShardedStateDict(files, dtype=dtype, device=device)
        missing = sorted(set(read_json(index, "a shard index")["weight_map"]) - set(weights))
        if missing:
            raise CheckpointError(f"{index}: tensors {missing[:5]} are listed but not in their shards")
        return weights
    pickled, pickled_index = folder / f"{stem}{v}.bin", folder / f"{stem}.bin.index{v}.json"
    if pickled.is_file() or pickled_index.is_file():
        if not allow_pickle:
            raise CheckpointError(
                f"{folder}: only pickled weights ({stem}{v}.bin) were found; pickles can run code, so they are "
                f"refused. Convert them to {stem}{v}.safetensors, or pass allow_pickle=True (CLI: --allow-pickle) "
                "if you trust them."
            )
        files = [pickled] if pickled.is_file() else _shard_files(pickled_index)
        out: dict[str, Tensor] = {}
        for path in files:
            out |= load_state_dict(path, allow_pickle=True, dtype=dtype, device=device)
        return out
    others = sorted(p.name for p in folder.glob(f"{stem}*") if p.suffix in (".safetensors", ".bin", ".json"))
    hint = (
        f"; the folder has {others} (a variant? pass variant='fp16' for {stem}.fp16.safetensors)"
        if others
        else ""
    )
    raise FileNotFoundError(
        f"{folder}: no weights found; expected {single.name} (or {index.name} with its shards){hint}"
    )


def _shard_files(index: Path) -> list[Path]:
    weight_map = read_json(index, "a shard index").get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index}: has no 'weight_map' of tensor name -> shard file")
    files = [index.parent / shard for shard in sorted(set(weight_map.values()))]
    for path in files:
        if not path.is_file():
            raise FileNotFoundError(f"{index}: lists shard {path.name}, which is missing from {index.parent}")
    return files


def write_weights(
    tensors: dict[str, Tensor], folder: Path, stem: str, *, max_shard_bytes: int | None = None
) -> None:
    """Write ``<stem>.safetensors``, or shards ``<stem>-0000i-of-0000n.safetensors`` + index when the tensors
    exceed ``max_shard_bytes``. Weights of an earlier write in another layout are removed first (a stale
    single file would otherwise shadow new shards for every reader)."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in (folder / f"{stem}.safetensors", folder / f"{stem}.safetensors.index.json"):
        old.unlink(missing_ok=True)
    for old in folder.glob(f"{stem}-*-of-*.safetensors"):
        old.unlink()
    meta = {"format": "pt"}
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    if max_shard_bytes is None or total <= max_shard_bytes:
        save_file_atomic(tensors, folder / f"{stem}.safetensors", metadata=meta)
        return
    shards: list[dict[str, Tensor]] = [{}]
    size = 0
    for key, t in tensors.items():
        n = t.numel() * t.element_size()
        if shards[-1] and size + n > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = t
        size += n
    weight_map: dict[str, str] = {}
    for i, shard in enumerate(shards):
        name = f"{stem}-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file_atomic(shard, folder / name, metadata=meta)
        weight_map |= dict.fromkeys(shard, name)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / f"{stem}.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def write_json(data: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


def diffusers_version() -> str:
    try:
        from importlib.metadata import version

        return version("diffusers")
    except Exception:  # noqa: BLE001 - diffusers is optional; the field is informational
        return "0.30.0"
