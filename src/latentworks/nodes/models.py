"""Loader nodes: CheckpointLoaderSimple, LoraLoader (the split-file loaders, VAELoader included, are in
:mod:`latentworks.nodes.loaders`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from latentworks.families.load import read_checkpoint
from latentworks.graph.types import InputSpec, NodeSpec, OutputSpec
from latentworks.nodes.devices import load_device, manager_of
from latentworks.nodes.loaders import t5_tokenizer_beside
from latentworks.nodes.payloads import ClipPayload, ModelPayload, VAEPayload
from latentworks.pipelines.loading import load_model_folder


def list_checkpoints(models_dir: Path | None) -> list[str]:
    """'default' plus, under ``models_dir/checkpoints``, every latentworks model folder (model.json), diffusers
    folder (model_index.json) and ``.safetensors`` checkpoint file (subfolders included, '/'-separated)."""
    names = ["default"]
    root = None if models_dir is None else Path(models_dir) / "checkpoints"
    if root is not None and root.is_dir():
        found = [
            p.relative_to(root).as_posix()
            for p in root.rglob("*")
            if (p.is_dir() and ((p / "model.json").is_file() or (p / "model_index.json").is_file()))
            or (p.is_file() and p.suffix.lower() == ".safetensors" and not _inside_folder_model(p, root))
        ]
        names += sorted(n for n in found if n != "default")
    return names


def _inside_folder_model(path: Path, root: Path) -> bool:
    """True for weight files that belong to a model folder or diffusers folder (not checkpoints of their own)."""
    return any(
        (parent / "model.json").is_file() or (parent / "model_index.json").is_file()
        for parent in path.parents
        if parent != root and root in parent.parents
    )


LORA_SUFFIXES = (".safetensors",)


def list_loras(models_dir: Path | None) -> list[str]:
    """Every LoRA file under ``models_dir/loras`` (subfolders included), as a '/'-separated relative path."""
    root = None if models_dir is None else Path(models_dir) / "loras"
    if root is None or not root.is_dir():
        return []
    return sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and p.suffix.lower() in LORA_SUFFIXES
    )


def _lora_path(models_dir: Path | None, name: str) -> Path:
    if models_dir is None:
        raise FileNotFoundError(f"LoRA {name!r}: the server has no models folder; start it with --models-dir")
    root = (Path(models_dir) / "loras").resolve()
    path = (root / name).resolve()
    if root not in path.parents or not path.is_file():
        raise FileNotFoundError(f"LoRA {name!r} is not a file in {root}; put LoRA .safetensors files there")
    return path


def _resolve(models_dir: Path | None, name: str) -> Path | str:
    if name == "default" or models_dir is None:
        return name
    root = (Path(models_dir) / "checkpoints").resolve()
    path = (root / name).resolve()
    if root not in path.parents:
        raise FileNotFoundError(f"checkpoint {name!r} is not inside {root}")
    return path


def _load(ctx: Any, models_dir: Path | None, name: str) -> tuple[Any, Any]:
    """(ModelFolder, text encoder) for a model folder, a diffusers folder or a checkpoint file."""
    from latentworks.pipelines.loading import model_from_parts, resolve_checkpoint, text_encoder_from_parts

    device = load_device(ctx)  # host RAM under a memory manager with a budget
    path = _resolve(models_dir, name)
    if resolve_checkpoint(path) is not None:
        tokenizer = t5_tokenizer_beside(path) if isinstance(path, Path) and path.is_file() else None
        parts = read_checkpoint(path, tokenizer=tokenizer)
        return model_from_parts(parts, device=device), text_encoder_from_parts(parts, device=device)
    from latentworks.models.text.minilm import MiniLMTextEncoder

    folder = load_model_folder(path, device=device)
    te = folder.meta.get("text_encoder", {})
    manager = manager_of(ctx)  # MiniLM puts its token ids on the device it was made for: the compute device
    te_device = manager.device if manager is not None else device
    return folder, MiniLMTextEncoder(max_length=int(te.get("max_length", 32)), device=te_device)


def loader_nodes(models_dir: Path | None) -> list[NodeSpec]:
    def choices() -> list[str]:
        return list_checkpoints(models_dir)

    def checkpoint_loader(ctx: Any, ckpt_name: str) -> tuple[Any, ...]:
        folder, encoder = _load(ctx, models_dir, ckpt_name)
        return (ModelPayload(folder), ClipPayload(encoder), VAEPayload(folder.vae, folder.latent_format))

    def lora_loader(
        ctx: Any,
        model: ModelPayload,
        clip: ClipPayload,
        lora_name: str,
        strength_model: float,
        strength_clip: float,
    ) -> tuple[Any, ...]:
        from latentworks.checkpoints.lora import add_lora

        if strength_model == 0 and strength_clip == 0:
            return (model, clip)
        # A new folder and encoder sharing the same networks: the upstream MODEL and CLIP are untouched.
        folder, encoder, _ = add_lora(
            model.folder, clip.encoder, _lora_path(models_dir, lora_name), strength_model, strength_clip
        )
        return (dataclasses.replace(model, folder=folder), dataclasses.replace(clip, encoder=encoder))

    strength: dict[str, Any] = {"default": 1.0, "min": -100.0, "max": 100.0, "step": 0.01}
    return [
        NodeSpec(
            name="LoraLoader",
            display_name="Load LoRA",
            category="loaders",
            description=(
                "Add a LoRA (kohya/A1111 or diffusers/PEFT file in models/loras) to the model and text encoder. "
                "It is applied only while sampling and encoding; the upstream model stays unchanged."
            ),
            execute=lora_loader,
            inputs=(
                InputSpec(name="model", type="MODEL"),
                InputSpec(name="clip", type="CLIP"),
                InputSpec(
                    name="lora_name",
                    type="COMBO",
                    choices=lambda: list_loras(models_dir),
                    tooltip="a .safetensors file in models/loras",
                ),
                InputSpec(name="strength_model", type="FLOAT", **strength),
                InputSpec(name="strength_clip", type="FLOAT", **strength),
            ),
            outputs=(OutputSpec(type="MODEL"), OutputSpec(type="CLIP")),
        ),
        NodeSpec(
            name="CheckpointLoaderSimple",
            display_name="Load Checkpoint",
            category="loaders",
            description=(
                "Load a checkpoint from models/checkpoints: a latentworks model folder, a diffusers folder or a "
                ".safetensors file (SD 1.x/2.x/XL, SD3 with its text encoders; family detected from the weights)."
            ),
            execute=checkpoint_loader,
            inputs=(
                InputSpec(
                    name="ckpt_name",
                    type="COMBO",
                    choices=choices,
                    default="default",
                    tooltip="a model folder in models/checkpoints, or the embedded 'default'",
                ),
            ),
            outputs=(OutputSpec(type="MODEL"), OutputSpec(type="CLIP"), OutputSpec(type="VAE")),
        ),
    ]
