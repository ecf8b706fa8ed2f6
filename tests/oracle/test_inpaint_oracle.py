"""Inpainting end to end against diffusers' StableDiffusionInpaintPipeline: a tiny random 9-channel SD1.5-layout
inpainting model saved by diffusers as a folder, loaded by latentworks, gives the same latents and images.

Matching settings: Euler on the "normal" (linspace) schedule, CFG 7, empty negative prompt, strength 1 (the
masked area starts from pure noise). Both start from the same noise (ours from the seed; diffusers through
``latents=``, divided by its ``init_noise_sigma``). diffusers samples the masked image's VAE posterior
(``latent_dist.sample``) where latentworks takes its mode, so the VAE's log-variance is pinned to -30 (standard
deviation 3e-7): both then encode the same latent.
"""

from __future__ import annotations

import gc
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from latentworks.diffusion.noise import seeded_noise
from latentworks.diffusion.schedules import get_sigmas
from latentworks.families.load import read_checkpoint, write_single_file
from latentworks.pipelines import Pipeline
from support.tokenizers import write_clip_tokenizer

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

PROMPT = "a red apple on the table"
SEED = 5
STEPS = 4
SIZE = 16  # pixels; the tiny VAE downsamples 2x -> 8x8 latents


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _perturb(model: torch.nn.Module, scale: float) -> torch.nn.Module:
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * scale)
    return model.eval()


def _inpaint_pipe(tmp: Path):  # noqa: ANN202
    vocab = write_clip_tokenizer(tmp / "tokenizer_src")
    torch.manual_seed(0)
    unet = _perturb(
        diffusers.UNet2DConditionModel(
            sample_size=8,
            in_channels=9,  # latent 4 + mask 1 + masked-image latent 4
            out_channels=4,
            layers_per_block=1,
            block_out_channels=(32, 64),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=768,
            attention_head_dim=8,
            norm_num_groups=32,
        ),
        0.02,
    )
    vae = _perturb(
        diffusers.AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2,
            block_out_channels=(32, 64),
            latent_channels=4,
            layers_per_block=1,
            norm_num_groups=32,
            sample_size=SIZE,
        ),
        0.02,
    )
    with torch.no_grad():  # log-variance -30 everywhere: posterior sample == mode up to 3e-7
        vae.quant_conv.weight[4:] = 0
        vae.quant_conv.bias[4:] = -30
    clip = _perturb(
        transformers.CLIPTextModel(
            transformers.CLIPTextConfig(
                vocab_size=vocab,
                hidden_size=768,
                intermediate_size=128,
                num_hidden_layers=2,
                num_attention_heads=12,
                max_position_embeddings=77,
                hidden_act="quick_gelu",
                bos_token_id=vocab - 2,
                eos_token_id=vocab - 1,
                pad_token_id=vocab - 1,
            )
        ),
        0.05,
    )
    pipe = diffusers.StableDiffusionInpaintPipeline(
        vae=vae,
        text_encoder=clip,
        tokenizer=transformers.CLIPTokenizer.from_pretrained(str(tmp / "tokenizer_src")),
        unet=unet,
        scheduler=diffusers.EulerDiscreteScheduler(
            beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", timestep_spacing="linspace"
        ),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(str(tmp / "sd15-inpaint"))
    return tmp / "sd15-inpaint", pipe


def _image_and_mask() -> tuple[Image.Image, Image.Image]:
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))
    m = np.zeros((SIZE, SIZE), dtype=np.uint8)
    m[4:12, 6:14] = 255  # regenerate a square; keep the rest
    return image, Image.fromarray(m, mode="L")


def test_sd15_inpainting_model_matches_diffusers_inpaint_pipeline(tmp_path: Path) -> None:
    folder, theirs = _inpaint_pipe(tmp_path)
    ours = Pipeline.from_pretrained(folder)
    assert ours.model.meta["family"] == "sd1"
    assert ours.inpaint_channels == 5
    image, mask = _image_and_mask()
    run = dict(negative_prompt="", steps=STEPS, guidance=7.0, sampler="euler", scheduler="normal")
    result = ours(PROMPT, image=image, mask=mask, seed=SEED, **run)
    assert result.parameters["inpaint"]["inpainting_model"] is True
    assert (
        result.parameters["inpaint"]["noise_mask"] is False
    )  # diffusers does not blend for 9-channel models

    sigmas = get_sigmas(ours.model.model_sampling, "normal", STEPS)
    noise = seeded_noise((4, SIZE // 2, SIZE // 2), [SEED])
    theirs.scheduler.set_timesteps(STEPS)
    start = noise * sigmas[0] / theirs.scheduler.init_noise_sigma
    kw = dict(
        image=image,
        mask_image=mask,
        negative_prompt="",
        num_inference_steps=STEPS,
        guidance_scale=7.0,
        height=SIZE,
        width=SIZE,
        strength=1.0,
    )
    with torch.no_grad():
        lat = theirs(PROMPT, latents=start.clone(), output_type="latent", **kw).images
        img = theirs(PROMPT, latents=start.clone(), output_type="np", **kw).images
    err = (result.latents.float() - lat.float()).abs().max().item()
    scale = lat.abs().max().item()
    assert err <= 1e-3 * max(scale, 1.0), f"latents differ by {err} (scale {scale})"
    mine = np.asarray(result.images[0], dtype=np.float32)[None] / 255.0
    assert np.abs(mine - img).max() <= 1.0 / 255 + 1e-6

    # The oracle can fail: without the masked-image channels (a blank mask) the latents differ.
    other = ours(PROMPT, image=image, mask=Image.new("L", (SIZE, SIZE), 0), seed=SEED, **run)
    assert (other.latents.float() - lat.float()).abs().max().item() > 1e-2

    # the same model as one original-layout single file (as sd-v1-5-inpainting.safetensors): detected and run alike
    single = write_single_file(read_checkpoint(folder), tmp_path / "tiny-sd15-inpainting.safetensors")
    from_file = Pipeline.from_pretrained(single, tokenizer=folder)
    assert from_file.model.meta["family"] == "sd1" and from_file.inpaint_channels == 5
    again = from_file(PROMPT, image=image, mask=mask, seed=SEED, **run)
    assert (again.latents.float() - lat.float()).abs().max().item() <= 1e-3 * max(scale, 1.0)
    del ours, from_file
    gc.collect()


def test_sdxl_inpainting_unet_matches_diffusers_sdxl_inpaint_pipeline(tmp_path: Path) -> None:
    """The SDXL inpainting U-Net (9 input channels, SDXL's text encoders and size ids) against diffusers'
    StableDiffusionXLInpaintPipeline at strength 1."""
    vocab = write_clip_tokenizer(tmp_path / "tok")
    write_clip_tokenizer(tmp_path / "tok2", pad_token="!")
    _, sd15 = _inpaint_pipe(tmp_path / "sd15")  # reuse its pinned-variance VAE and CLIP-L
    torch.manual_seed(2)
    big_g = transformers.CLIPTextModelWithProjection(
        transformers.CLIPTextConfig(
            vocab_size=vocab, hidden_size=1280, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=20, max_position_embeddings=77, hidden_act="gelu", projection_dim=1280,
            bos_token_id=vocab - 2, eos_token_id=vocab - 1, pad_token_id=0,
        )
    )  # fmt: skip
    unet = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=9, out_channels=4, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        layers_per_block=1, attention_head_dim=(2, 4), transformer_layers_per_block=(1, 2), cross_attention_dim=2048,
        norm_num_groups=32, use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + 1280,
    )  # fmt: skip
    sd15.vae.register_to_config(scaling_factor=0.13025)
    theirs = diffusers.StableDiffusionXLInpaintPipeline(
        vae=sd15.vae,
        text_encoder=sd15.text_encoder,
        text_encoder_2=_perturb(big_g, 0.02),
        tokenizer=transformers.CLIPTokenizer.from_pretrained(str(tmp_path / "tok")),
        tokenizer_2=transformers.CLIPTokenizer.from_pretrained(str(tmp_path / "tok2")),
        unet=_perturb(unet, 0.02),
        scheduler=diffusers.EulerDiscreteScheduler(
            beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", timestep_spacing="linspace"
        ),
        force_zeros_for_empty_prompt=True,
        requires_aesthetics_score=False,
    )
    theirs.set_progress_bar_config(disable=True)
    theirs.save_pretrained(str(tmp_path / "sdxl-inpaint"))

    ours = Pipeline.from_pretrained(tmp_path / "sdxl-inpaint")
    assert ours.model.meta["family"] == "sdxl" and ours.inpaint_channels == 5
    image, mask = _image_and_mask()
    result = ours(PROMPT, "", image=image, mask=mask, steps=STEPS, guidance=5.0, sampler="euler",
                  scheduler="normal", seed=SEED)  # fmt: skip

    sigmas = get_sigmas(ours.model.model_sampling, "normal", STEPS)
    noise = seeded_noise((4, SIZE // 2, SIZE // 2), [SEED])
    theirs.scheduler.set_timesteps(STEPS)
    start = noise * sigmas[0] / theirs.scheduler.init_noise_sigma
    kw = dict(image=image, mask_image=mask, negative_prompt=None, num_inference_steps=STEPS, guidance_scale=5.0,
              height=SIZE, width=SIZE, strength=1.0)  # fmt: skip
    with torch.no_grad():
        lat = theirs(PROMPT, latents=start.clone(), output_type="latent", **kw).images
    err = (result.latents.float() - lat.float()).abs().max().item()
    scale = lat.abs().max().item()
    assert err <= 1e-3 * max(scale, 1.0), f"latents differ by {err} (scale {scale})"
    del ours
    gc.collect()


def test_flux_fill_matches_diffusers_flux_fill_pipeline(tmp_path: Path) -> None:
    """FLUX.1 Fill: the masked image's latent and the mask folded per latent cell go in with the latent (packed
    2x2 together), against diffusers' FluxFillPipeline. The tiny VAE downsamples 2x, so the mask folds into 4
    channels (8x8 = 64 for the real model) and the transformer takes (16 + 16 + 4) * 4 = 144 packed channels."""
    from support.tokenizers import t5_tokenizer_for_diffusers, write_t5_tokenizer

    vocab = write_clip_tokenizer(tmp_path / "clip_tok")
    t5_file = write_t5_tokenizer(tmp_path / "t5_tok")
    torch.manual_seed(1)
    transformer = _perturb(
        diffusers.FluxTransformer2DModel(
            patch_size=1, in_channels=144, out_channels=64, num_layers=1, num_single_layers=1,
            attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=768,
            guidance_embeds=True, axes_dims_rope=(4, 6, 6),
        ),
        0.02,
    )  # fmt: skip
    t5 = _perturb(
        transformers.T5EncoderModel(
            transformers.T5Config(
                vocab_size=32, d_model=32, d_kv=8, num_heads=4, d_ff=64, num_layers=1,
                feed_forward_proj="gated-gelu", relative_attention_num_buckets=8,
            )
        ),
        0.02,
    )  # fmt: skip
    vae = _perturb(
        diffusers.AutoencoderKL(
            in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(32, 64), latent_channels=16,
            layers_per_block=1, norm_num_groups=32, sample_size=SIZE, use_quant_conv=False,
            use_post_quant_conv=False, scaling_factor=0.3611, shift_factor=0.1159,
        ),
        0.02,
    )  # fmt: skip
    with torch.no_grad():  # pin the log-variance: posterior sample == mode
        vae.encoder.conv_out.weight[16:] = 0
        vae.encoder.conv_out.bias[16:] = -30
    clip = _perturb(
        transformers.CLIPTextModel(
            transformers.CLIPTextConfig(
                vocab_size=vocab, hidden_size=768, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
                bos_token_id=vocab - 2, eos_token_id=vocab - 1, pad_token_id=vocab - 1,
            )
        ),
        0.05,
    )  # fmt: skip
    theirs = diffusers.FluxFillPipeline(
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(
            shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
            max_image_seq_len=4096,
        ),
        vae=vae,
        text_encoder=clip,
        tokenizer=transformers.CLIPTokenizer.from_pretrained(str(tmp_path / "clip_tok")),
        text_encoder_2=t5,
        tokenizer_2=t5_tokenizer_for_diffusers(t5_file),
        transformer=transformer,
    )  # fmt: skip
    theirs.set_progress_bar_config(disable=True)
    theirs.save_pretrained(str(tmp_path / "flux-fill"))

    ours = Pipeline.from_pretrained(tmp_path / "flux-fill")
    assert ours.model.meta["family"] == "flux-dev" and ours.inpaint_channels == 20
    image, mask = _image_and_mask()
    result = ours(PROMPT, image=image, mask=mask, steps=STEPS, guidance=3.5, sampler="euler", scheduler="simple",
                  seed=SEED)  # fmt: skip

    h = SIZE // 2
    packed = theirs._pack_latents(seeded_noise((16, h, h), [SEED]), 1, 16, h, h)
    kw = dict(image=image, mask_image=mask, num_inference_steps=STEPS, guidance_scale=3.5, height=SIZE, width=SIZE,
              max_sequence_length=512)  # fmt: skip
    with torch.no_grad():
        lat = theirs(PROMPT, latents=packed.clone(), output_type="latent", **kw).images
    lat = theirs._unpack_latents(lat, SIZE, SIZE, theirs.vae_scale_factor)
    err = (result.latents.float() - lat.float()).abs().max().item()
    scale = lat.abs().max().item()
    assert err <= 1e-3 * max(scale, 1.0), f"latents differ by {err} (scale {scale})"
    del ours
    gc.collect()
