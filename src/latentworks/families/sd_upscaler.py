"""Stable Diffusion x4 upscaler (Stability AI 2022, stabilityai/stable-diffusion-x4-upscaler): a latent diffusion
model that redraws an image at four times its size, as people run it: a diffusers ``StableDiffusionUpscalePipeline``
folder. It is also DeepFloyd IF's optional stage III (256 -> 1024 px after IF stage II).

What the folder holds and how :mod:`latentworks.pipelines.x4_upscale` runs it:

- ``unet/`` (``UNet2DConditionModel``, :class:`~latentworks.models.unet.UNet`): 7 input channels = the 4-channel
  latent + the low-res RGB image, which has the latent's spatial size; the noise level of the low-res image is
  a class label (``num_class_embeds`` = 1000) added to the time embedding; its attention levels attend only to
  the text (``only_cross_attention``) except the lowest;
- ``vae/`` (``AutoencoderKL``, 4x downsampling, ``scaling_factor`` 0.08333): decodes the latent to 4x the
  low-res image's size;
- ``text_encoder/`` + ``tokenizer/``: OpenCLIP ViT-H as transformers' ``CLIPTextModel``, last hidden states;
- ``scheduler/``: DDIM, v-prediction, scaled-linear betas (0.00085 .. 0.012);
- ``low_res_scheduler/``: the DDPM schedule (scaled-linear 0.0001 .. 0.02) that noises the low-res image to
  ``noise_level`` (default 20, at most ``max_noise_level`` = 350 from ``model_index.json``) before it is
  concatenated;
- defaults from diffusers' ``StableDiffusionUpscalePipeline.__call__``: 75 steps, guidance 9.

The network is the SD U-Net, but its 7-channel input and class labels need this pipeline, so the family carries
no architecture for single-file detection: it is recognised by the folder's pipeline class
(:func:`is_x4_upscaler_folder` also accepts a folder whose ``unet/config.json`` has the 7-channel,
class-embedding shape when ``model_index.json`` is missing).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from latentworks.diffusion.denoisers import DiscreteSamplingSpec
from latentworks.families.base import DiffusersNames, Generation, ModelFamily

PIPELINE_CLASS = "StableDiffusionUpscalePipeline"
SCALE = 4  # output side / input side
NOISE_LEVEL = 20  # diffusers' default augmentation step of the low-res image
MAX_NOISE_LEVEL = 350  # StableDiffusionUpscalePipeline's max_noise_level when model_index.json lacks it
# the folders of the layout, with what each holds (for messages)
FOLDERS = {
    "unet": ("config.json", "the x4 U-Net (UNet2DConditionModel, 7 input channels)"),
    "vae": ("config.json", "the 4x autoencoder (AutoencoderKL)"),
    "text_encoder": ("config.json", "the OpenCLIP-H text encoder (CLIPTextModel)"),
    "tokenizer": ("tokenizer_config.json", "the CLIP tokenizer (vocab.json + merges.txt or tokenizer.json)"),
    "scheduler": ("scheduler_config.json", "the sampling scheduler (DDIM, v-prediction)"),
    "low_res_scheduler": ("scheduler_config.json", "the DDPM schedule that noises the low-res image"),
}

SD_X4_UPSCALER = ModelFamily(
    name="sd-x4-upscaler",
    title="Stable Diffusion x4 upscaler (latent, text-guided, noise-level conditioned)",
    aliases=("x4-upscaler", "sd-x4"),
    prediction="v",
    sampling=DiscreteSamplingSpec(betas="scaled_linear", linear_start=0.00085, linear_end=0.012),
    generation=Generation(
        resolution=(512, 512), defaults={"steps": 75, "guidance": 9.0, "noise_level": NOISE_LEVEL}
    ),
    diffusers=DiffusersNames(
        pipeline_classes=(PIPELINE_CLASS,), text_slots={"text_encoder": "clip_h"}, sample_size=128
    ),
)


def looks_like_x4_unet(cfg: Mapping[str, Any]) -> bool:
    """True for a ``unet/config.json`` of the x4 upscaler's shape: a UNet2DConditionModel whose input is the
    latent plus 3 image channels and which embeds integer class labels (the noise level)."""
    return (
        cfg.get("_class_name", "UNet2DConditionModel") == "UNet2DConditionModel"
        and cfg.get("num_class_embeds") is not None
        and int(cfg.get("in_channels", 4)) == int(cfg.get("out_channels", 4)) + 3
    )


def is_x4_upscaler_folder(path: str | Path) -> bool:
    """True for a folder of the x4 upscaler: ``model_index.json`` names ``StableDiffusionUpscalePipeline``, or
    (without a ``model_index.json``) ``unet/config.json`` has the x4 shape (:func:`looks_like_x4_unet`)."""
    import json

    root = Path(path)
    if not root.is_dir():
        return False
    index = root / "model_index.json"
    try:
        if index.is_file():
            return json.loads(index.read_text()).get("_class_name") == PIPELINE_CLASS
        unet = root / "unet" / "config.json"
        return unet.is_file() and looks_like_x4_unet(json.loads(unet.read_text()))
    except (OSError, ValueError, AttributeError):
        return False
