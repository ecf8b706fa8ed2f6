"""SD 2.1 unCLIP end to end against diffusers' StableUnCLIPImg2ImgPipeline on identical random weights.

A tiny unCLIP-H-shaped pipeline (class embedding of 2 x 1024: the real width; reduced depth) is saved by
diffusers as a folder and loaded by latentworks. Both sides condition on the same image: ours through our
CLIP vision encoder and :class:`ImageEmbeddingAugmentor` with the folder's ``image_normalizer`` statistics,
diffusers through ``image_embeds=`` from its own image encoder; the embedding noise comes from the same seeded
generator (diffusers draws it first). Euler on the "normal" schedule, CFG 5, v-prediction.
"""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
import torch

from latentworks.diffusion.noise import seeded_noise
from latentworks.diffusion.schedules import get_sigmas
from latentworks.models.clip_vision import ClipVision, preprocess
from latentworks.models.unclip import ImageEmbeddingAugmentor
from latentworks.pipelines import Pipeline
from support.unclip import EMBED, SIZE, tiny_unclip_pipe, unclip_single_file

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

PROMPT = "a red apple on the table"
SEED, STEPS, NOISE_LEVEL, CFG = 3, 4, 100, 5.0


@pytest.fixture(scope="module")
def unclip_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    return tiny_unclip_pipe(tmp_path_factory.mktemp("unclip"))


def test_unclip_image_variation_matches_diffusers(unclip_folder: tuple[Path, object], tmp_path: Path) -> None:
    folder, pipe = unclip_folder
    ours = Pipeline.from_pretrained(folder)
    assert ours.model.meta["family"] == "sd2-unclip-h"
    image = torch.rand(1, 40, 48, 3, generator=torch.Generator().manual_seed(5))

    # ours: CLIP vision -> noise augmentation with the checkpoint's statistics -> class input
    vision = ClipVision.from_state_dict(pipe.image_encoder.state_dict())
    embeds = vision.encode(image).image_embeds  # (1, 1024)
    augment = ImageEmbeddingAugmentor(pipe.image_normalizer.mean, pipe.image_normalizer.std)
    noise = torch.randn(1, EMBED, generator=torch.Generator().manual_seed(SEED))  # diffusers' first draw
    class_input = augment(embeds, NOISE_LEVEL, noise)
    run = dict(negative_prompt="", steps=STEPS, guidance=CFG, sampler="euler", scheduler="normal")
    result = ours(PROMPT, seed=SEED, width=SIZE, height=SIZE, class_input=class_input, **run)

    # diffusers: the same embeddings (its encoder on our preprocessing), the same start noise
    with torch.no_grad():
        their_embeds = pipe.image_encoder(pixel_values=preprocess(image, size=32)).image_embeds
    torch.testing.assert_close(embeds, their_embeds, atol=1e-5, rtol=1e-5)
    sigmas = get_sigmas(ours.model.model_sampling, "normal", STEPS)
    pipe.scheduler.set_timesteps(STEPS)
    # this pipeline uses given latents as they are (no init_noise_sigma scaling): hand it x_T = noise * sigma_max
    start = seeded_noise((4, SIZE // 2, SIZE // 2), [SEED]) * sigmas[0]
    with torch.no_grad():
        theirs = pipe(
            prompt=PROMPT, image_embeds=their_embeds, noise_level=NOISE_LEVEL, negative_prompt="",
            num_inference_steps=STEPS, guidance_scale=CFG, height=SIZE, width=SIZE, latents=start,
            generator=torch.Generator().manual_seed(SEED), output_type="latent",
        ).images  # fmt: skip
    err = (result.latents.float() - theirs.float()).abs().max().item()
    scale = theirs.abs().max().item()
    assert err <= 1e-3 * max(scale, 1.0), f"latents differ by {err} (scale {scale})"

    # the same model as one LDM single file (with the open_clip image encoder and statistics, as released)
    single = unclip_single_file(folder, pipe, tmp_path / "tiny-unclip.safetensors")
    from_file = Pipeline.from_pretrained(single, tokenizer=folder)
    assert from_file.model.meta["family"] == "sd2-unclip-h"
    again = from_file(PROMPT, seed=SEED, width=SIZE, height=SIZE, class_input=class_input, **run)
    assert (again.latents.float() - theirs.float()).abs().max().item() <= 1e-3 * max(scale, 1.0)

    # the image matters: without it (zeros class input) the result moves well beyond the tolerance
    plain = ours(PROMPT, seed=SEED, width=SIZE, height=SIZE, **run)
    assert (plain.latents.float() - theirs.float()).abs().max().item() > 10 * max(err, 1e-4)
    del ours
    gc.collect()
