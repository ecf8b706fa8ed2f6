"""ControlNet end to end against diffusers' StableDiffusionControlNetPipeline: the tiny SD1.5-layout pipeline of
``test_pipeline_e2e_oracle`` plus a random ControlNetModel (saved as a bare diffusers-layout file, which
latentworks detects from shapes) generate the same latents and images from the same start noise, with the
ControlNet on the prompt and the negative prompt at strength 0.8 (diffusers' ``controlnet_conditioning_scale``)."""

from __future__ import annotations

import gc
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from test_pipeline_e2e_oracle import SEED, SIZE, STEPS, _compare, _perturb, sd15_folder  # noqa: F401

from latentworks.diffusion.noise import seeded_noise
from latentworks.diffusion.schedules import get_sigmas
from latentworks.pipelines import Pipeline
from latentworks.pipelines.control import Control

diffusers = pytest.importorskip("diffusers")

PROMPT = "a red apple on the table"


def test_sd15_controlnet_pipeline_matches_diffusers(sd15_folder: tuple[Path, object], tmp_path: Path) -> None:  # noqa: F811
    folder, base = sd15_folder
    torch.manual_seed(5)
    controlnet = _perturb(
        diffusers.ControlNetModel(
            in_channels=4,
            layers_per_block=1,
            block_out_channels=(32, 64),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            cross_attention_dim=768,
            attention_head_dim=8,
            norm_num_groups=32,
            conditioning_embedding_out_channels=(16, 32),  # the tiny VAE downsamples 2x
        ),
        0.05,
    )
    file = tmp_path / "cn.safetensors"
    save_file({k: v.contiguous() for k, v in controlnet.state_dict().items()}, str(file))
    pipe = diffusers.StableDiffusionControlNetPipeline(**base.components, controlnet=controlnet)  # type: ignore[attr-defined]
    pipe.set_progress_bar_config(disable=True)

    rng = np.random.default_rng(0)
    control = Image.fromarray((rng.random((SIZE, SIZE, 3)) > 0.7).astype(np.uint8) * 255)
    ours = Pipeline.from_pretrained(folder)
    run = dict(negative_prompt="", steps=STEPS, guidance=7.0, sampler="euler", scheduler="normal")
    result = ours(PROMPT, seed=SEED, width=SIZE, height=SIZE, control=[Control(control, file, 0.8)], **run)
    plain = ours(PROMPT, seed=SEED, width=SIZE, height=SIZE, **run)

    sigmas = get_sigmas(ours.model.model_sampling, "normal", STEPS)
    noise = seeded_noise((4, SIZE // 2, SIZE // 2), [SEED])
    pipe.scheduler.set_timesteps(STEPS)
    start = noise * sigmas[0] / pipe.scheduler.init_noise_sigma
    kw = dict(
        image=control, negative_prompt="", num_inference_steps=STEPS, guidance_scale=7.0, height=SIZE, width=SIZE,
        controlnet_conditioning_scale=0.8,
    )  # fmt: skip
    with torch.no_grad():
        lat = pipe(PROMPT, latents=start.clone(), output_type="latent", **kw).images
        img = pipe(PROMPT, latents=start.clone(), output_type="np", **kw).images
    _compare(result, lat, img)
    assert (plain.latents - lat).abs().max() > 1e-2  # the ControlNet does move the latents
    del ours, pipe
    gc.collect()
