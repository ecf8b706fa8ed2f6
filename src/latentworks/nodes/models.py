"""Loader nodes: CheckpointLoaderSimple, VAELoader."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from latentworks.graph.types import InputSpec, NodeSpec, OutputSpec
from latentworks.nodes.payloads import ClipPayload, ModelPayload, VAEPayload
from latentworks.pipelines.loading import load_model_folder


def list_checkpoints(models_dir: Path | None) -> list[str]:
    """'default' plus every model folder (holding model.json) under ``models_dir/checkpoints``."""
    names = ["default"]
    root = None if models_dir is None else Path(models_dir) / "checkpoints"
    if root is not None and root.is_dir():
        names += sorted(
            p.name for p in root.iterdir() if (p / "model.json").is_file() and p.name != "default"
        )
    return names


def _resolve(models_dir: Path | None, name: str) -> Path | str:
    if name == "default" or models_dir is None:
        return name
    return Path(models_dir) / "checkpoints" / name


def _load(ctx: Any, models_dir: Path | None, name: str):  # noqa: ANN202
    device = getattr(ctx, "device", None) or "cpu"
    return load_model_folder(_resolve(models_dir, name), device=device)


def loader_nodes(models_dir: Path | None) -> list[NodeSpec]:
    def choices() -> list[str]:
        return list_checkpoints(models_dir)

    def checkpoint_loader(ctx: Any, ckpt_name: str) -> tuple[Any, ...]:
        from latentworks.models.text.minilm import MiniLMTextEncoder

        folder = _load(ctx, models_dir, ckpt_name)
        te = folder.meta.get("text_encoder", {})
        encoder = MiniLMTextEncoder(
            max_length=int(te.get("max_length", 32)), device=getattr(ctx, "device", None) or "cpu"
        )
        return (ModelPayload(folder), ClipPayload(encoder), VAEPayload(folder.vae, folder.latent_format))

    def vae_loader(ctx: Any, vae_name: str) -> tuple[Any, ...]:
        folder = _load(ctx, models_dir, vae_name)
        return (VAEPayload(folder.vae, folder.latent_format),)

    return [
        NodeSpec(
            name="CheckpointLoaderSimple",
            display_name="Load Checkpoint",
            category="loaders",
            description="Load a model folder: the diffusion model, its text encoder and its VAE.",
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
        NodeSpec(
            name="VAELoader",
            display_name="Load VAE",
            category="loaders",
            description="Load the VAE of a model folder.",
            execute=vae_loader,
            inputs=(InputSpec(name="vae_name", type="COMBO", choices=choices, default="default"),),
            outputs=(OutputSpec(type="VAE"),),
        ),
    ]
