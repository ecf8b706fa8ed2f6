"""DeepFloyd IF end to end against diffusers' IFPipeline + IFSuperResolutionPipeline on identical tiny random weights.

Tiny IF-I / IF-II folders (tests/support/if_fixtures.py) are read by latentworks' cascade and by diffusers
(with transformers' T5 and tokenizer from the same folder). Both sides get the same noise: one seeded generator
per stage, drawn in diffusers' order (start noise, [stage II: augmentation noise], then one draw per step except
the last). Stage I: learned-variance DDPM, CFG 7, dynamic thresholding 0.95 / max 1.5; stage II: 64->256-style
upsampling of stage I's output, noise level 250, CFG 4.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from latentworks.pipelines.cascade import CascadePipeline
from support.if_fixtures import SIZE_I, SIZE_II, write_if_folders

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

PROMPT, NEGATIVE = "a red apple on the table", "snow"
SEED_I, SEED_II, STEPS_I, STEPS_II = 3, 4, 4, 3


@pytest.fixture(scope="module")
def if_folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_if_folders(tmp_path_factory.mktemp("deepfloyd"))


def _generator_noise(seed: int, shape: tuple[int, ...], draws_first: int):  # noqa: ANN202
    """(the first ``draws_first`` draws, a NoiseFn continuing the same generator) - diffusers' draw order."""
    g = torch.Generator().manual_seed(seed)
    first = [torch.randn(shape, generator=g) for _ in range(draws_first)]
    return first, lambda *_: torch.randn(shape, generator=g)


def test_if_cascade_matches_diffusers(if_folders: tuple[Path, Path]) -> None:
    from diffusers import IFPipeline, IFSuperResolutionPipeline

    stage1, stage2 = if_folders
    ours = CascadePipeline.from_pretrained(stage1, upscaler=stage2)
    cond, uncond = ours.conditionings([PROMPT], [NEGATIVE])

    (start,), noise = _generator_noise(SEED_I, (1, 3, SIZE_I, SIZE_I), 1)
    image = ours.run_base(cond, uncond, start, noise, steps=STEPS_I, guidance=7.0)
    (start2, augment), noise2 = _generator_noise(SEED_II, (1, 3, SIZE_II, SIZE_II), 2)
    big = ours.run_upscaler(
        image, cond, uncond, start2, augment, noise2, steps=STEPS_II, guidance=4.0, noise_level=250
    )

    pipe1 = IFPipeline.from_pretrained(stage1, safety_checker=None, watermarker=None, feature_extractor=None)
    pipe1.set_progress_bar_config(disable=True)
    with torch.no_grad():
        embeds, negative_embeds = pipe1.encode_prompt(PROMPT, negative_prompt=NEGATIVE, clean_caption=False)
    torch.testing.assert_close(cond.tokens, embeds, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(uncond.tokens, negative_embeds, atol=1e-5, rtol=1e-5)
    theirs = pipe1(
        prompt_embeds=embeds, negative_prompt_embeds=negative_embeds, num_inference_steps=STEPS_I,
        guidance_scale=7.0, generator=torch.Generator().manual_seed(SEED_I), output_type="pt",
    ).images  # fmt: skip
    scale = max(theirs.abs().max().item(), 1.0)
    err = (image - theirs).abs().max().item()
    assert err <= 1e-3 * scale, f"stage I differs by {err} (scale {scale})"

    pipe2 = IFSuperResolutionPipeline.from_pretrained(
        stage2,
        text_encoder=None,
        tokenizer=None,
        safety_checker=None,
        watermarker=None,
        feature_extractor=None,
    )
    pipe2.set_progress_bar_config(disable=True)
    theirs2 = pipe2(
        image=theirs, prompt_embeds=embeds, negative_prompt_embeds=negative_embeds, num_inference_steps=STEPS_II,
        guidance_scale=4.0, noise_level=250, generator=torch.Generator().manual_seed(SEED_II), output_type="pt",
    ).images  # fmt: skip
    assert theirs2.shape == big.shape == (1, 3, SIZE_II, SIZE_II)
    scale2 = max(theirs2.abs().max().item(), 1.0)
    err2 = (big - theirs2).abs().max().item()
    assert err2 <= 1e-3 * scale2, f"stage II differs by {err2} (scale {scale2})"

    # the test can fail: another noise level or guidance moves the result well past the tolerance
    other = ours.run_upscaler(
        image, cond, uncond, start2, augment, lambda *_: torch.zeros_like(start2), steps=STEPS_II, guidance=4.0,
        noise_level=100,
    )  # fmt: skip
    assert (other - theirs2).abs().max().item() > 100 * max(err2, 1e-5)
