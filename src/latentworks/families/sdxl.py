"""Stable Diffusion XL: base (CLIP-L + OpenCLIP-bigG, size ids) and refiner (bigG, size + aesthetic ids)."""

from __future__ import annotations

from typing import Any

from latentworks.diffusion.latent_formats import LatentFormat
from latentworks.families.architectures import UNET
from latentworks.families.base import ComfyNames, DiffusersNames, Generation, ModelFamily, Shapes
from latentworks.families.sd1 import SD_DEFAULTS, SD_SAMPLING, a1111_prediction, unet_variant_suffix
from latentworks.models.text.families import ClipReading, TextRecipe
from latentworks.models.unet import UNetConfig

# Preview factors and biases are approximate least-squares fits published in ComfyUI's
# comfy/latent_formats.py (numbers only); the scale/shift factors are those of the released VAE.
SDXL_RGB = (
    (0.3651, 0.4232, 0.4341),
    (-0.2533, -0.0042, 0.1068),
    (0.1076, 0.1111, -0.0362),
    (-0.3165, -0.2492, -0.2188),
)
LATENT_FORMAT = LatentFormat(
    channels=4, scale_factor=0.13025, rgb_factors=SDXL_RGB, rgb_bias=(0.1084, -0.0175, -0.0011)
)
DEFAULTS = {**SD_DEFAULTS, "guidance": 5.0}
PIPELINE_CLASSES = (
    "StableDiffusionXLPipeline",
    "StableDiffusionXLImg2ImgPipeline",
    "StableDiffusionXLInpaintPipeline",
)
CLIP_G = ClipReading(layer=-2, final_norm=False, project_pooled=True, tokenizer_folder="tokenizer_2")
COMFY = ComfyNames(clip_type="sdxl", model_sampling_node="ModelSamplingDiscrete", gguf_architecture="sdxl")


def _inspector(name: str) -> Any:
    def inspect(config: UNetConfig, shapes: Shapes, prefix: str, get_tensor: Any) -> tuple[str, str]:
        return name + unet_variant_suffix(config), a1111_prediction(shapes)

    return inspect


def _with_time_ids(n: int) -> Any:
    # SDXL's added conditioning: 1280-wide bigG pooled + n 256-wide size/crop(/aesthetic) ids
    return lambda c: isinstance(c, UNetConfig) and c.has_added_conditioning and c.num_time_ids == n


SDXL = ModelFamily(
    name="sdxl",
    title="Stable Diffusion XL (base)",
    aliases=("sdxl-base", "sdxl1.0"),
    architecture=UNET,
    matches=_with_time_ids(6),
    inspect=_inspector("sdxl"),
    latent_format=LATENT_FORMAT,
    prediction="eps",
    sampling=SD_SAMPLING,
    generation=Generation(resolution=(1024, 1024), defaults=DEFAULTS, size_conditioning="size-ids"),
    text=TextRecipe(
        name="sdxl",
        clips={
            "clip_l": ClipReading(
                layer=-2, final_norm=False, project_pooled=False, tokenizer_folder="tokenizer"
            ),
            "clip_g": CLIP_G,
        },
        pooled_from=("clip_g",),
        zero_empty_prompt=True,  # diffusers' force_zeros_for_empty_prompt
    ),
    single_file_text={
        "clip_l": ("conditioner.embedders.0.transformer.", "hf"),
        "clip_g": ("conditioner.embedders.1.model.", "open_clip"),
    },
    diffusers=DiffusersNames(
        pipeline_classes=PIPELINE_CLASSES,
        text_slots={"text_encoder": "clip_l", "text_encoder_2": "clip_g"},
        index_extra={"force_zeros_for_empty_prompt": True},
        sample_size=128,
        requires_aesthetics_score=False,
    ),
    comfy=COMFY,
)
SDXL_REFINER = ModelFamily(
    name="sdxl-refiner",
    title="Stable Diffusion XL (refiner)",
    architecture=UNET,
    matches=_with_time_ids(5),
    inspect=_inspector("sdxl-refiner"),
    latent_format=LATENT_FORMAT,
    prediction="eps",
    sampling=SD_SAMPLING,
    generation=Generation(resolution=(1024, 1024), defaults=DEFAULTS, size_conditioning="size-aesthetic-ids"),
    text=TextRecipe(name="sdxl-refiner", clips={"clip_g": CLIP_G}, pooled_from=("clip_g",)),
    single_file_text={"clip_g": ("conditioner.embedders.0.model.", "open_clip")},
    diffusers=DiffusersNames(
        pipeline_classes=("StableDiffusionXLImg2ImgPipeline",),
        text_slots={"text_encoder_2": "clip_g"},
        # the refiner has bigG only
        index_extra={
            "requires_aesthetics_score": True,
            "force_zeros_for_empty_prompt": False,
            "text_encoder": [None, None],
            "tokenizer": [None, None],
        },
        sample_size=128,
        requires_aesthetics_score=True,
    ),
    comfy=COMFY,
)
