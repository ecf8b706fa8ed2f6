"""Stable Diffusion 2.x: the SD U-Net with OpenCLIP ViT-H; 512 px eps models and 768 px v models.

Shapes cannot tell eps from v (see :func:`latentworks.checkpoints.detect.sd2_prediction`), so the two are two
families that differ only in prediction and native size; each names the other in ``by_prediction``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from latentworks.checkpoints.detect import sd2_prediction
from latentworks.diffusion.latent_formats import LatentFormat
from latentworks.families.architectures import UNET
from latentworks.families.base import ComfyNames, DiffusersNames, Generation, ModelFamily, Shapes
from latentworks.families.sd1 import SD_DEFAULTS, SD_INDEX_EXTRA, SD_RGB, SD_SAMPLING, unet_variant_suffix
from latentworks.models.text.families import ClipReading, TextRecipe
from latentworks.models.unet import UNetConfig

LATENT_FORMAT = LatentFormat(channels=4, scale_factor=0.18215, rgb_factors=SD_RGB)  # SD 1.x's VAE


def _inspect(config: UNetConfig, shapes: Shapes, prefix: str, get_tensor: Any) -> tuple[str, str]:
    # inpainting models (9 channels) are eps; the eps/v heuristic reads a key they may lack
    prediction = sd2_prediction(shapes, get_tensor, prefix) if config.in_channels == 4 else "eps"
    return "sd2" + unet_variant_suffix(config) + ("-v" if prediction == "v" else ""), prediction


SD2 = ModelFamily(
    name="sd2",
    title="Stable Diffusion 2.x (512 px, eps)",
    aliases=("sd21", "sd2.1", "sd20", "sd2.0"),
    architecture=UNET,
    # cross-attention over OpenCLIP-H's 1024-wide tokens, no pooled/size conditioning
    matches=lambda c: isinstance(c, UNetConfig) and c.context_dim == 1024 and not c.has_added_conditioning,
    inspect=_inspect,
    by_prediction={"v": "sd2-v"},
    latent_format=LATENT_FORMAT,
    prediction="eps",
    sampling=SD_SAMPLING,
    generation=Generation(resolution=(512, 512), defaults=SD_DEFAULTS),
    text=TextRecipe(
        name="sd2",
        clips={
            "clip_h": ClipReading(
                layer=-2, final_norm=True, project_pooled=False, tokenizer_folder="tokenizer"
            )
        },
        pooled_from=("clip_h",),
    ),
    single_file_text={"clip_h": ("cond_stage_model.model.", "open_clip")},
    diffusers=DiffusersNames(
        pipeline_classes=("StableDiffusionPipeline",),
        text_slots={"text_encoder": "clip_h"},
        index_extra=SD_INDEX_EXTRA,
        sample_size=64,
    ),
    comfy=ComfyNames(clip_type="stable_diffusion", model_sampling_node="ModelSamplingDiscrete"),
)
# SD 2.x 768-v: detected as SD2 (matches=None here), then moved by its prediction
SD2_V = replace(
    SD2,
    name="sd2-v",
    title="Stable Diffusion 2.x (768 px, v-prediction)",
    aliases=("sd21-v", "sd2.1-v", "sd2-768-v"),
    matches=None,
    inspect=None,
    by_prediction={"eps": "sd2"},
    prediction="v",
    generation=Generation(resolution=(768, 768), defaults=SD_DEFAULTS),
    single_file_markers={"v_pred": lambda: torch.zeros(())},  # the A1111 marker for v-prediction files
    diffusers=replace(SD2.diffusers, sample_size=96) if SD2.diffusers else None,
)
