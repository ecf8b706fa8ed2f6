"""Karlo v1 alpha (Kakao Brain 2022): the open reproduction of DALL-E 2's unCLIP (Ramesh et al. 2022), as people
run it: a diffusers ``UnCLIPPipeline`` folder.

A cascade of four networks, each its own diffusion process on the cosine (``squaredcos_cap_v2``) 1000-step
schedule, driven by :mod:`latentworks.pipelines.karlo`:

1. prior (``prior/``, :class:`~latentworks.models.prior.PriorTransformer`): CLIP ViT-L/14 text embedding and
   token states -> a CLIP image embedding (x0 prediction, clamped to [-5, 5] in its normalised space, DDPM
   steps with the posterior variance, 25 steps, guidance 4);
2. text projection (``text_proj/``): the image embedding -> 4 extra context tokens and a time-embedding vector;
3. decoder (``decoder/``, :class:`~latentworks.models.pixel_unet.PixelUNet`): 64 px pixels, eps prediction
   with a learned variance (``learned_range``), 25 steps, guidance 8;
4. super-resolution 64 -> 256 (``super_res_first/`` for every step but the last, ``super_res_last/`` for it):
   eps prediction, posterior variance, 7 steps, no guidance.

Numbers: diffusers' ``UnCLIPPipeline.__call__`` defaults and the scheduler configs of kakaobrain/karlo-v1-alpha
(``prior_scheduler``: ``prediction_type=sample``, ``clip_sample_range=5``; ``decoder_scheduler``:
``variance_type=learned_range``; ``super_res_scheduler``: ``fixed_small_log``); the configs of a folder are read
as they are, so a folder with other settings runs with them.
"""

from __future__ import annotations

from latentworks.diffusion.denoisers import DiscreteSamplingSpec
from latentworks.families.base import DiffusersNames, Generation, ModelFamily

PIPELINE_CLASS = "UnCLIPPipeline"
# the folders of diffusers' UnCLIPPipeline layout, with what each holds (for messages)
STAGE_FOLDERS = {
    "tokenizer": "the CLIP tokenizer (vocab.json, merges.txt)",
    "text_encoder": "CLIP ViT-L/14 text encoder (CLIPTextModelWithProjection)",
    "prior": "the prior (PriorTransformer)",
    "text_proj": "the text projection (UnCLIPTextProjModel)",
    "decoder": "the 64 px decoder (UNet2DConditionModel)",
    "super_res_first": "the 64->256 super-resolution U-Net for all but the last step (UNet2DModel)",
    "super_res_last": "the 64->256 super-resolution U-Net for the last step (UNet2DModel)",
}
SCHEDULER_FOLDERS = ("prior_scheduler", "decoder_scheduler", "super_res_scheduler")
DEFAULTS = {
    "prior_steps": 25,
    "decoder_steps": 25,
    "super_res_steps": 7,
    "prior_guidance": 4.0,
    "decoder_guidance": 8.0,
}

KARLO = ModelFamily(
    name="karlo",
    title="Karlo v1 alpha (unCLIP: prior, 64 px decoder, 64->256 super-resolution)",
    aliases=("karlo-v1", "karlo-v1-alpha"),
    prediction="eps",  # the decoder's and super-resolution's; the prior predicts x0 (its scheduler says so)
    sampling=DiscreteSamplingSpec(betas="cosine", num_timesteps=1000),
    generation=Generation(resolution=(256, 256), defaults=DEFAULTS),
    diffusers=DiffusersNames(pipeline_classes=(PIPELINE_CLASS,), text_slots={"text_encoder": "clip_l"}),
)
