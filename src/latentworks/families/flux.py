"""FLUX.1 [dev] (guidance-distilled, dynamic shift) and [schnell] (timestep-distilled): a double/single-stream
transformer on 16-channel latents, CLIP-L pooled + T5-XXL tokens, rectified flow."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from latentworks.diffusion.denoisers import FLUX_DYNAMIC_SHIFT, FlowDynamicShift, FlowSamplingSpec
from latentworks.diffusion.latent_formats import LatentFormat
from latentworks.families.architectures import FLUX
from latentworks.families.base import ComfyNames, DiffusersNames, Generation, ModelFamily, Shapes
from latentworks.models.flux import FluxConfig
from latentworks.models.text.families import ClipReading, TextRecipe

# Preview factors and biases are approximate least-squares fits published in ComfyUI's
# comfy/latent_formats.py (numbers only); the scale/shift factors are those of the released VAE.
FLUX_RGB = (
    (-0.0346, 0.0244, 0.0681),
    (0.0034, 0.0210, 0.0687),
    (0.0437, 0.0689, 0.0471),
    (0.0440, 0.0967, 0.0728),
    (0.0386, 0.0445, -0.0601),
    (0.0444, 0.0921, 0.0335),
    (0.0986, 0.0331, 0.0743),
    (-0.0279, 0.0553, 0.0452),
    (-0.0060, 0.0298, 0.0636),
    (0.0349, 0.0784, 0.0276),
    (0.0732, 0.0735, 0.0148),
    (0.0091, 0.0420, 0.0073),
    (0.0719, 0.0669, 0.0757),
    (0.0270, 0.0658, 0.0031),
    (-0.0156, 0.0353, 0.0604),
    (0.0472, 0.0316, 0.0701),
)
LATENT_FORMAT = LatentFormat(
    channels=16,
    scale_factor=0.3611,
    shift_factor=0.1159,
    rgb_factors=FLUX_RGB,
    rgb_bias=(-0.0329, -0.0718, -0.0851),
)
CLIP_L = ClipReading(layer=-1, final_norm=True, project_pooled=False, tokenizer_folder="tokenizer")
DIFFUSERS = DiffusersNames(
    pipeline_classes=("FluxPipeline", "FluxImg2ImgPipeline"),
    text_slots={"text_encoder": "clip_l", "text_encoder_2": "t5xxl"},
)
COMFY = ComfyNames(clip_type="flux", model_sampling_node="ModelSamplingFlux", gguf_architecture="flux")


def _inspector(name: str) -> Any:
    def inspect(config: FluxConfig, shapes: Shapes, prefix: str, get_tensor: Any) -> tuple[str, str]:
        # FLUX.1 Fill takes 16 + 16 image + 64 mask channels (96), Canny/Depth 16 + 16 control channels (32)
        out = config.out_channels or config.in_channels
        tool = {96: "-fill", 32: "-control"}.get(config.in_channels, "") if out == 16 else ""
        return name + tool, "flow"

    return inspect


FLUX_DEV = ModelFamily(
    name="flux-dev",
    title="FLUX.1 [dev]",
    aliases=("flux", "flux1-dev", "flux.1-dev"),
    architecture=FLUX,
    matches=lambda c: isinstance(c, FluxConfig) and c.guidance_embed,
    inspect=_inspector("flux-dev"),
    latent_format=LATENT_FORMAT,
    prediction="flow",
    # the shift follows the image's token count (FlowModelSampling.flux), as FLUX.1-dev samples
    sampling=FlowSamplingSpec(
        shift=1.0, multiplier=1000.0, dynamic_shift=FlowDynamicShift.from_dict(FLUX_DYNAMIC_SHIFT)
    ),
    generation=Generation(
        resolution=(1024, 1024),
        defaults={"steps": 20, "guidance": 3.5, "sampler": "euler", "scheduler": "simple"},
        distilled_guidance=True,
    ),
    text=TextRecipe(
        name="flux-dev",
        clips={"clip_l": CLIP_L},
        pooled_from=("clip_l",),
        t5_length=512,
        t5_required=True,
        t5_tokens_only=True,
    ),
    single_file_vae_prefix="vae.",
    diffusers=DIFFUSERS,
    comfy=COMFY,
)
FLUX_SCHNELL = replace(
    FLUX_DEV,
    name="flux-schnell",
    title="FLUX.1 [schnell]",
    aliases=("flux1-schnell", "flux.1-schnell"),
    matches=lambda c: isinstance(c, FluxConfig) and not c.guidance_embed,
    inspect=_inspector("flux-schnell"),
    # schnell samples with shift 1 at every size (diffusers' scheduler config: no dynamic shifting)
    sampling=FlowSamplingSpec(shift=1.0, multiplier=1000.0),
    generation=Generation(
        resolution=(1024, 1024),
        defaults={"steps": 4, "guidance": 1.0, "sampler": "euler", "scheduler": "simple"},
    ),
    text=replace(FLUX_DEV.text, name="flux-schnell", t5_length=256)
    if isinstance(FLUX_DEV.text, TextRecipe)
    else None,
)
