"""DeepFloyd IF: Imagen's cascade as released (Saharia et al. 2022; DeepFloyd 2023), in diffusers' folder layout.

Two pixel-space stages, each its own diffusers folder, run one after the other
(:mod:`latentworks.pipelines.cascade`):

- stage I (``IFPipeline``, e.g. IF-I-XL-v1.0): a 64 px U-Net (:mod:`latentworks.models.deepfloyd_if`) on
  frozen T5-XXL states of a 77-token prompt; DDPM with a learned variance and dynamic thresholding (its
  ``scheduler/scheduler_config.json``), guidance 7, 100 steps;
- stage II (``IFSuperResolutionPipeline``, e.g. IF-II-L-v1.0): 64 -> 256 px, conditioned on the stage I image
  upsampled and noise-augmented to step 250 of its ``image_noising_scheduler``, with the same T5 states;
  guidance 4, 50 steps.

DeepFloyd's optional stage III is Stable Diffusion's x4 latent upscaler (``StableDiffusionUpscalePipeline``, its
own family: :mod:`latentworks.families.sd_upscaler`), 256 -> 1024 px on the same prompt (re-encoded by its own CLIP
text encoder); DeepFloyd's examples run it at noise level 100 (:data:`STAGE_III_NOISE_LEVEL`), 75 steps, guidance 9.

Neither stage is detected from weights alone (a diffusers folder's ``model_index.json`` names the pipeline class),
so the families carry no architecture for single-file detection.
"""

from __future__ import annotations

from latentworks.diffusion.denoisers import DiscreteSamplingSpec
from latentworks.families.base import DiffusersNames, Generation, ModelFamily

T5_LENGTH = 77  # tokens per prompt (diffusers' IF pipelines: max_length=77, padded, with an attention mask)
NOISE_LEVEL = 250  # stage II's default augmentation step of the upsampled stage I image
STAGE_III_PIPELINES = ("StableDiffusionUpscalePipeline",)  # DeepFloyd's optional stage III (the x4 upscaler)
STAGE_III_NOISE_LEVEL = (
    100  # the augmentation step DeepFloyd's examples give stage III (diffusers' default: 20)
)

IF_I = ModelFamily(
    name="deepfloyd-if-i",
    title="DeepFloyd IF stage I (64 px pixel U-Net, T5-XXL, learned-variance DDPM)",
    aliases=("if-i",),
    prediction="eps",
    sampling=DiscreteSamplingSpec(betas="cosine"),
    generation=Generation(resolution=(64, 64), defaults={"steps": 100, "guidance": 7.0}),
    diffusers=DiffusersNames(
        pipeline_classes=("IFPipeline",), text_slots={"text_encoder": "t5xxl"}, sample_size=64
    ),
)
IF_II = ModelFamily(
    name="deepfloyd-if-ii",
    title="DeepFloyd IF stage II (64 -> 256 px super-resolution with noise augmentation)",
    aliases=("if-ii",),
    prediction="eps",
    sampling=DiscreteSamplingSpec(betas="cosine"),
    generation=Generation(
        resolution=(256, 256), defaults={"steps": 50, "guidance": 4.0, "noise_level": NOISE_LEVEL}
    ),
    diffusers=DiffusersNames(
        pipeline_classes=("IFSuperResolutionPipeline",), text_slots={"text_encoder": "t5xxl"}, sample_size=256
    ),
)
UPSCALER_OF = {IF_I.name: IF_II.name}  # the super-resolution family each base stage takes
