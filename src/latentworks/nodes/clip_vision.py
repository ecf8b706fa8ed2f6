"""CLIP vision and SD 2.1 unCLIP nodes, with ComfyUI's names, inputs and defaults: CLIPVisionLoader,
CLIPVisionEncode, unCLIPConditioning, unCLIPCheckpointLoader.

- CLIPVisionLoader reads ``models/clip_vision/*.safetensors`` (clip_vision_h, clip_vision_g, ViT-L...); the
  encoder's size comes from the weights.
- CLIPVisionEncode gives a CLIP_VISION_OUTPUT (:class:`~latentworks.models.clip_vision.ClipVisionOutput`):
  ``image_embeds``, ``last_hidden_state``, ``penultimate_hidden_states``.
- unCLIPCheckpointLoader loads an unCLIP checkpoint (single file or diffusers folder) as CheckpointLoaderSimple
  does, plus its image encoder, which carries the checkpoint's embedding statistics.
- unCLIPConditioning turns an image embedding into the denoiser's class input (noise augmentation, see
  :mod:`latentworks.models.unclip`); chained nodes add up, each weighted by its strength. The embedding noise
  is drawn here from a fixed seed (0), so a workflow gives the same image for the same sampler seed; ComfyUI
  draws it from the sampler's seed instead, so at ``noise_augmentation`` > 0 the two differ in that noise.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from latentworks import families
from latentworks.graph.types import InputSpec, NodeSpec, OutputSpec
from latentworks.models.clip_vision import ClipVision, ClipVisionOutput
from latentworks.models.unet import CLASS_INPUT_KEY
from latentworks.nodes.loaders import list_weights, resolve_weights
from latentworks.nodes.models import _load, _resolve, list_checkpoints
from latentworks.nodes.payloads import ClipPayload, ConditioningPayload, ModelPayload, VAEPayload
from latentworks.pipelines.unclip import image_class_input, load_clip_vision, load_unclip_image_parts

CLIP_VISION_FOLDERS = ("clip_vision",)
CROPS = ("center", "none")
UNCLIP_NOISE_SEED = 0  # the embedding noise of unCLIPConditioning (see the module docstring)


def unclip_conditioning(
    conditioning: ConditioningPayload, output: ClipVisionOutput, strength: float, noise_augmentation: float
) -> ConditioningPayload:
    """Add ``strength`` x the augmented image embedding of ``output`` to the conditioning's class input."""
    if strength == 0:
        return conditioning
    augment = output.augmentor
    if augment is None:
        raise ValueError(
            "unCLIPConditioning: this CLIP_VISION_OUTPUT comes from a CLIP vision model without an unCLIP "
            "checkpoint's embedding statistics; encode the image with the CLIP_VISION output of "
            "unCLIPCheckpointLoader"
        )
    cond = conditioning.cond
    embeds = output.image_embeds
    if embeds.shape[0] != 1 and embeds.shape[0] != cond.batch_size:
        raise ValueError(
            f"unCLIPConditioning: {embeds.shape[0]} images for a conditioning of batch {cond.batch_size}; "
            "encode one image per unCLIPConditioning node (chain several to mix images)"
        )
    added = image_class_input(
        embeds, augment, strength=strength, noise_augmentation=noise_augmentation, seed=UNCLIP_NOISE_SEED
    )  # (N, 2D)
    added = added.to(cond.tokens.device).expand(cond.batch_size, -1)
    previous = cond.extra.get(CLASS_INPUT_KEY)
    total = added if previous is None else previous + added
    return dataclasses.replace(conditioning, cond=cond.with_extra(**{CLASS_INPUT_KEY: total}))


def clip_vision_nodes(models_dir: Path | None) -> list[NodeSpec]:
    def clip_vision_loader(ctx: Any, clip_name: str) -> tuple[Any, ...]:
        return (
            load_clip_vision(resolve_weights(models_dir, CLIP_VISION_FOLDERS, clip_name, what="CLIP vision")),
        )

    def clip_vision_encode(
        ctx: Any, clip_vision: ClipVision, image: torch.Tensor, crop: str = "center"
    ) -> Any:
        if crop not in CROPS:
            raise ValueError(f"CLIPVisionEncode: crop must be one of {CROPS}, got {crop!r}")
        return (clip_vision.encode(image, crop=crop == "center"),)

    def unclip_conditioning_node(
        ctx: Any,
        conditioning: ConditioningPayload,
        clip_vision_output: ClipVisionOutput,
        strength: float = 1.0,
        noise_augmentation: float = 0.0,
    ) -> tuple[Any, ...]:
        return (unclip_conditioning(conditioning, clip_vision_output, strength, noise_augmentation),)

    def unclip_checkpoint_loader(ctx: Any, ckpt_name: str) -> tuple[Any, ...]:
        folder, encoder = _load(ctx, models_dir, ckpt_name)
        family = families.get(folder.meta.get("family"))
        if not family.generation.class_input_dim:
            raise ValueError(
                f"unCLIPCheckpointLoader: {ckpt_name!r} is a {family.title} model, not an SD 2.1 unCLIP one; "
                "load it with CheckpointLoaderSimple"
            )
        vision, augmentor = load_unclip_image_parts(_resolve(models_dir, ckpt_name))
        vision.augmentor = augmentor
        return (
            ModelPayload(folder),
            ClipPayload(encoder),
            VAEPayload(folder.vae, folder.latent_format),
            vision,
        )

    return [
        NodeSpec(
            name="CLIPVisionLoader",
            display_name="Load CLIP Vision",
            category="loaders",
            description="Load a CLIP vision encoder from models/clip_vision (its size is read from the weights).",
            execute=clip_vision_loader,
            inputs=(
                InputSpec(
                    name="clip_name",
                    type="COMBO",
                    choices=lambda: list_weights(models_dir, CLIP_VISION_FOLDERS),
                ),
            ),
            outputs=(OutputSpec(type="CLIP_VISION"),),
        ),
        NodeSpec(
            name="CLIPVisionEncode",
            display_name="CLIP Vision Encode",
            category="conditioning",
            description=(
                "Encode an image with a CLIP vision model: the projected image embedding and the hidden states. "
                "crop 'center' resizes the short side and center-crops (as CLIPImageProcessor); 'none' squashes."
            ),
            execute=clip_vision_encode,
            inputs=(
                InputSpec(name="clip_vision", type="CLIP_VISION"),
                InputSpec(name="image", type="IMAGE"),
                InputSpec(name="crop", type="COMBO", choices=CROPS, default="center"),
            ),
            outputs=(OutputSpec(type="CLIP_VISION_OUTPUT"),),
        ),
        NodeSpec(
            name="unCLIPConditioning",
            category="conditioning",
            description=(
                "Condition an unCLIP model on an image embedding (image variations). noise_augmentation noises "
                "the embedding (0 = keep the image closely, 1 = only its gist); chained nodes add up."
            ),
            execute=unclip_conditioning_node,
            inputs=(
                InputSpec(name="conditioning", type="CONDITIONING"),
                InputSpec(name="clip_vision_output", type="CLIP_VISION_OUTPUT"),
                InputSpec(name="strength", type="FLOAT", default=1.0, min=-10.0, max=10.0, step=0.01),
                InputSpec(name="noise_augmentation", type="FLOAT", default=0.0, min=0.0, max=1.0, step=0.01),
            ),
            outputs=(OutputSpec(type="CONDITIONING"),),
        ),
        NodeSpec(
            name="unCLIPCheckpointLoader",
            display_name="unCLIP Checkpoint Loader",
            category="loaders",
            description=(
                "Load an SD 2.1 unCLIP checkpoint (single file or diffusers folder in models/checkpoints): the "
                "model, its text encoder, its VAE and its CLIP vision encoder."
            ),
            execute=unclip_checkpoint_loader,
            inputs=(InputSpec(name="ckpt_name", type="COMBO", choices=lambda: list_checkpoints(models_dir)),),
            outputs=(
                OutputSpec(type="MODEL"),
                OutputSpec(type="CLIP"),
                OutputSpec(type="VAE"),
                OutputSpec(type="CLIP_VISION"),
            ),
        ),
    ]
