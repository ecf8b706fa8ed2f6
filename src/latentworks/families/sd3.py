"""Stable Diffusion 3 / 3.5: an MM-DiT on 16-channel latents, CLIP-L + CLIP-G + optional T5-XXL, rectified flow."""

from __future__ import annotations

from typing import Any

from latentworks.diffusion.denoisers import FlowSamplingSpec
from latentworks.diffusion.latent_formats import LatentFormat
from latentworks.families.architectures import MMDIT
from latentworks.families.base import ComfyNames, DiffusersNames, Generation, ModelFamily, Shapes
from latentworks.models.mmdit import MMDiTConfig
from latentworks.models.text.families import ClipReading, TextRecipe

# Preview factors and biases are approximate least-squares fits published in ComfyUI's
# comfy/latent_formats.py (numbers only); the scale/shift factors are those of the released VAE.
SD3_RGB = (
    (-0.0645, 0.0177, 0.1052),
    (0.0028, 0.0312, 0.0650),
    (0.1848, 0.0762, 0.0360),
    (0.0944, 0.0360, 0.0889),
    (0.0897, 0.0506, -0.0364),
    (-0.0020, 0.1203, 0.0284),
    (0.0855, 0.0118, 0.0283),
    (-0.0539, 0.1160, 0.1077),
    (-0.0057, 0.0116, 0.0700),
    (-0.0412, 0.0281, -0.0039),
    (0.1106, 0.1171, 0.1220),
    (-0.0248, 0.0682, -0.0481),
    (0.0815, 0.0846, 0.1207),
    (-0.0120, -0.0055, -0.1463),
    (0.0020, 0.0523, 0.1994),
    (0.0339, 0.0254, 0.0459),
)
LATENT_FORMAT = LatentFormat(
    channels=16,
    scale_factor=1.5305,
    shift_factor=0.0609,
    rgb_factors=SD3_RGB,
    rgb_bias=(0.2394, 0.2135, 0.1925),
)
T5_LENGTH = 256  # diffusers' StableDiffusion3Pipeline default max_sequence_length


def _inspect(config: MMDiTConfig, shapes: Shapes, prefix: str, get_tensor: Any) -> tuple[str, str]:
    # SD3 has no qk-norm; SD3.5 adds it, and 3.5 Medium also dual-attention (MM-DiT-X) blocks
    if config.qk_norm is None:
        variant = "sd3-medium" if config.depth == 24 else f"sd3-{config.depth}-blocks"
    elif config.dual_attention_layers:
        variant = "sd3.5-medium"
    else:
        variant = "sd3.5-large" if config.depth == 38 else f"sd3.5-{config.depth}-blocks"
    return variant, "flow"


SD3 = ModelFamily(
    name="sd3",
    title="Stable Diffusion 3 / 3.5",
    aliases=("sd35", "sd3.5"),
    architecture=MMDIT,
    matches=lambda c: isinstance(c, MMDiTConfig),
    inspect=_inspect,
    latent_format=LATENT_FORMAT,
    prediction="flow",
    sampling=FlowSamplingSpec(shift=3.0, multiplier=1000.0),
    generation=Generation(
        resolution=(1024, 1024),
        defaults={"steps": 28, "guidance": 4.5, "sampler": "euler", "scheduler": "simple"},
    ),
    text=TextRecipe(
        name="sd3",
        clips={
            "clip_l": ClipReading(
                layer=-2, final_norm=False, project_pooled=True, tokenizer_folder="tokenizer"
            ),
            "clip_g": ClipReading(
                layer=-2, final_norm=False, project_pooled=True, tokenizer_folder="tokenizer_2"
            ),
        },
        pooled_from=("clip_l", "clip_g"),
        t5_length=T5_LENGTH,
        pad_clip_to_t5=True,
    ),
    single_file_vae_prefix="vae.",
    diffusers=DiffusersNames(
        pipeline_classes=("StableDiffusion3Pipeline", "StableDiffusion3Img2ImgPipeline"),
        text_slots={"text_encoder": "clip_l", "text_encoder_2": "clip_g", "text_encoder_3": "t5xxl"},
    ),
    comfy=ComfyNames(clip_type="sd3", model_sampling_node="ModelSamplingSD3", gguf_architecture="sd3"),
)
