"""Stable Diffusion 1.x (1.4, 1.5 and their fine-tunes): an LDM U-Net on 64x64x4 latents, CLIP ViT-L/14."""

from __future__ import annotations

from typing import Any

from latentworks.diffusion.denoisers import SD_DISCRETE_SAMPLING, DiscreteSamplingSpec
from latentworks.diffusion.latent_formats import LatentFormat
from latentworks.families.architectures import UNET
from latentworks.families.base import ComfyNames, DiffusersNames, Generation, ModelFamily, Shapes
from latentworks.models.text.families import ClipReading, TextRecipe
from latentworks.models.unet import UNetConfig

# Preview factors and biases are approximate least-squares fits published in ComfyUI's
# comfy/latent_formats.py (numbers only); the scale/shift factors are those of the released VAE.
SD_RGB = (
    (0.3512, 0.2297, 0.3227),
    (0.3250, 0.4974, 0.2350),
    (-0.2829, 0.1762, 0.2721),
    (-0.2120, -0.2616, -0.7177),
)
SD_SAMPLING = DiscreteSamplingSpec.from_dict(SD_DISCRETE_SAMPLING)  # scaled-linear betas, 1000 steps
LATENT_FORMAT = LatentFormat(channels=4, scale_factor=0.18215, rgb_factors=SD_RGB)
SD_DEFAULTS = {"steps": 20, "guidance": 7.0, "sampler": "euler", "scheduler": "normal"}
SD_INDEX_EXTRA = {
    "safety_checker": [None, None],
    "feature_extractor": [None, None],
    "requires_safety_checker": False,
    "image_encoder": [None, None],
}


def unet_variant_suffix(config: UNetConfig) -> str:
    """``-inpaint`` for 9 input channels (latent + masked-image latent + mask), ``-ip2p`` for 8 (latent + image
    latent, InstructPix2Pix), else ``""``."""
    return {9: "-inpaint", 8: "-ip2p"}.get(config.in_channels, "")


def a1111_prediction(shapes: Shapes) -> str:
    """``v`` when the file carries the ``v_pred`` marker some trainers (and A1111) write, else ``eps``."""
    return "v" if "v_pred" in shapes else "eps"


def _inspect(config: UNetConfig, shapes: Shapes, prefix: str, get_tensor: Any) -> tuple[str, str]:
    return "sd1" + unet_variant_suffix(config), a1111_prediction(shapes)


SD1 = ModelFamily(
    name="sd1",
    title="Stable Diffusion 1.x",
    aliases=("sd15", "sd1.5", "sd14"),
    architecture=UNET,
    # cross-attention over CLIP-L's 768-wide tokens, no pooled/size conditioning
    matches=lambda c: isinstance(c, UNetConfig) and c.context_dim == 768 and not c.has_added_conditioning,
    inspect=_inspect,
    latent_format=LATENT_FORMAT,
    prediction="eps",
    sampling=SD_SAMPLING,
    generation=Generation(resolution=(512, 512), defaults=SD_DEFAULTS),
    text=TextRecipe(
        name="sd1",
        clips={
            "clip_l": ClipReading(
                layer=-1, final_norm=True, project_pooled=False, tokenizer_folder="tokenizer"
            )
        },
        pooled_from=("clip_l",),
    ),
    single_file_text={"clip_l": ("cond_stage_model.transformer.", "hf")},
    diffusers=DiffusersNames(
        pipeline_classes=(
            "StableDiffusionPipeline",
            "StableDiffusionImg2ImgPipeline",
            "StableDiffusionInpaintPipeline",
        ),
        text_slots={"text_encoder": "clip_l"},
        index_extra=SD_INDEX_EXTRA,
        sample_size=64,
    ),
    comfy=ComfyNames(
        clip_type="stable_diffusion", model_sampling_node="ModelSamplingDiscrete", gguf_architecture="sd1"
    ),
)
