"""End to end against diffusers' pipelines: tiny random SD1.5-, SDXL- and FLUX-layout pipelines,
saved by diffusers as folders, loaded by latentworks (as the diffusers folder and, for SD1.5, converted to one
original-layout single file), generate the same latents and images with matching sampler settings.

Matching settings: Euler on the "normal" (diffusers: linspace-spaced) schedule for SD1.5 with CFG 7 and an
empty negative prompt; FLUX.1-dev-style Euler on the dynamically shifted flow schedule with distilled guidance
3.5 and no CFG. Both sides start from the same initial noise: ours is drawn from the seed, and diffusers gets
it through ``latents=`` (divided by its ``init_noise_sigma``; packed 2x2 for FLUX).
"""

from __future__ import annotations

import gc
from pathlib import Path

import numpy as np
import pytest
import torch

from latentworks.diffusion.noise import seeded_noise
from latentworks.diffusion.schedules import get_sigmas
from latentworks.families.load import read_checkpoint, write_single_file
from latentworks.pipelines import Pipeline
from support.tokenizers import t5_tokenizer_for_diffusers, write_clip_tokenizer, write_t5_tokenizer

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

PROMPT = "a red apple on the table"
SEED = 3
STEPS = 4
SIZE = 16  # pixels; the tiny VAEs downsample 2x -> 8x8 latents


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _perturb(model: torch.nn.Module, scale: float = 0.05) -> torch.nn.Module:
    """Random init leaves zero-initialised output layers; perturb every weight so all paths matter."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * scale)
    return model.eval()


def _tiny_vae(latent_channels: int, **kwargs):  # noqa: ANN003, ANN202
    return diffusers.AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(32, 64),
        latent_channels=latent_channels,
        layers_per_block=1,
        norm_num_groups=32,
        sample_size=SIZE,
        **kwargs,
    )


def _clip(vocab: int, width: int):  # noqa: ANN202
    cfg = transformers.CLIPTextConfig(
        vocab_size=vocab,
        hidden_size=width,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=width // 64,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        bos_token_id=vocab - 2,
        eos_token_id=vocab - 1,
        pad_token_id=vocab - 1,
    )
    return _perturb(transformers.CLIPTextModel(cfg))


def _compare(ours, theirs_latents: torch.Tensor, theirs_images: np.ndarray) -> None:  # noqa: ANN001
    lat = ours.latents.float()
    err = (lat - theirs_latents.float()).abs().max().item()
    scale = theirs_latents.abs().max().item()
    assert err <= 1e-3 * max(scale, 1.0), f"latents differ by {err} (scale {scale})"
    mine = np.stack([np.asarray(im, dtype=np.float32) / 255.0 for im in ours.images])
    assert mine.shape == theirs_images.shape
    # diffusers rounds (x * 255) where we round from [-1, 1]: allow one uint8 step
    assert np.abs(mine - theirs_images).max() <= 1.0 / 255 + 1e-6


@pytest.fixture(scope="module")
def sd15_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    tmp = tmp_path_factory.mktemp("sd15")
    vocab = write_clip_tokenizer(tmp / "tokenizer_src")
    torch.manual_seed(0)
    unet = _perturb(
        diffusers.UNet2DConditionModel(
            sample_size=8,
            in_channels=4,
            out_channels=4,
            layers_per_block=1,
            block_out_channels=(32, 64),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=768,  # SD 1.x width: what single-file detection reads as SD1 (8 heads)
            attention_head_dim=8,
            norm_num_groups=32,
        ),
        0.02,
    )
    pipe = diffusers.StableDiffusionPipeline(
        vae=_perturb(_tiny_vae(4), 0.02),
        text_encoder=_clip(vocab, 768),
        tokenizer=transformers.CLIPTokenizer.from_pretrained(str(tmp / "tokenizer_src")),
        unet=unet,
        scheduler=diffusers.EulerDiscreteScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            timestep_spacing="linspace",
        ),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(str(tmp / "sd15"))
    return tmp / "sd15", pipe


def _sd15_reference(pipe, ours) -> tuple[torch.Tensor, np.ndarray]:  # noqa: ANN001
    sigmas = get_sigmas(ours.model.model_sampling, "normal", STEPS)
    noise = seeded_noise((4, SIZE // 2, SIZE // 2), [SEED])
    pipe.scheduler.set_timesteps(STEPS)
    start = noise * sigmas[0] / pipe.scheduler.init_noise_sigma
    kw = dict(negative_prompt="", num_inference_steps=STEPS, guidance_scale=7.0, height=SIZE, width=SIZE)
    with torch.no_grad():
        lat = pipe(PROMPT, latents=start.clone(), output_type="latent", **kw).images
        img = pipe(PROMPT, latents=start.clone(), output_type="np", **kw).images
    return lat, img


def test_sd15_diffusers_folder_and_single_file_match_diffusers_pipeline(
    sd15_folder: tuple[Path, object], tmp_path: Path
) -> None:
    folder, pipe = sd15_folder
    ours = Pipeline.from_pretrained(folder)
    assert ours.model.meta["family"] == "sd1"
    run = dict(negative_prompt="", steps=STEPS, guidance=7.0, sampler="euler", scheduler="normal")
    result = ours(PROMPT, seed=SEED, width=SIZE, height=SIZE, **run)
    lat, img = _sd15_reference(pipe, ours)
    _compare(result, lat, img)

    # the same model as one LDM-layout single file (VAE and CLIP inside), tokenizer from the folder
    single = write_single_file(read_checkpoint(folder), tmp_path / "tiny-sd15.safetensors")
    from_file = Pipeline.from_pretrained(single, tokenizer=folder)
    assert from_file.model.meta["family"] == "sd1"
    _compare(from_file(PROMPT, seed=SEED, width=SIZE, height=SIZE, **run), lat, img)
    del ours, from_file
    gc.collect()


def test_flux_dev_diffusers_folder_matches_diffusers_pipeline(tmp_path: Path) -> None:
    vocab = write_clip_tokenizer(tmp_path / "clip_tok")
    t5_file = write_t5_tokenizer(tmp_path / "t5_tok")
    torch.manual_seed(1)
    transformer = _perturb(
        diffusers.FluxTransformer2DModel(
            patch_size=1,
            in_channels=64,  # 16 latent channels packed 2x2
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=32,
            pooled_projection_dim=768,  # CLIP-L width (text encoders are recognised by width)
            guidance_embeds=True,
            axes_dims_rope=(4, 6, 6),
        ),
        0.02,
    )
    t5 = _perturb(
        transformers.T5EncoderModel(
            transformers.T5Config(
                vocab_size=32,
                d_model=32,
                d_kv=8,
                num_heads=4,
                d_ff=64,
                num_layers=1,
                feed_forward_proj="gated-gelu",
                relative_attention_num_buckets=8,
            )
        ),
        0.02,
    )
    pipe = diffusers.FluxPipeline(
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(
            shift=3.0,
            use_dynamic_shifting=True,
            base_shift=0.5,
            max_shift=1.15,
            base_image_seq_len=256,
            max_image_seq_len=4096,
        ),
        vae=_perturb(
            _tiny_vae(
                16,
                use_quant_conv=False,
                use_post_quant_conv=False,
                scaling_factor=0.3611,
                shift_factor=0.1159,
            ),
            0.02,
        ),
        text_encoder=_clip(vocab, 768),
        tokenizer=transformers.CLIPTokenizer.from_pretrained(str(tmp_path / "clip_tok")),
        text_encoder_2=t5,
        tokenizer_2=t5_tokenizer_for_diffusers(t5_file),
        transformer=transformer,
    )
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(str(tmp_path / "flux"))

    ours = Pipeline.from_pretrained(tmp_path / "flux")
    assert ours.model.meta["family"] == "flux-dev"
    result = ours(
        PROMPT,
        steps=STEPS,
        guidance=3.5,
        sampler="euler",
        scheduler="simple",
        seed=SEED,
        width=SIZE,
        height=SIZE,
    )

    h = SIZE // 2
    noise = seeded_noise((16, h, h), [SEED])
    packed = pipe._pack_latents(noise, 1, 16, h, h)
    kw = dict(num_inference_steps=STEPS, guidance_scale=3.5, height=SIZE, width=SIZE, max_sequence_length=512)
    with torch.no_grad():
        lat = pipe(PROMPT, latents=packed.clone(), output_type="latent", **kw).images
        img = pipe(PROMPT, latents=packed.clone(), output_type="np", **kw).images
    lat = pipe._unpack_latents(lat, SIZE, SIZE, pipe.vae_scale_factor)
    _compare(result, lat, img)


def test_sdxl_diffusers_folder_matches_diffusers_pipeline(tmp_path: Path) -> None:
    """SDXL's glue: CLIP-L + bigG penultimate states concatenated, bigG's projected pooled vector, size ids
    (h, w, 0, 0, h, w) and zeroed unconditional embeddings for the empty negative prompt."""
    vocab = write_clip_tokenizer(tmp_path / "tok")
    write_clip_tokenizer(tmp_path / "tok2", pad_token="!")
    torch.manual_seed(2)
    big_g = transformers.CLIPTextModelWithProjection(
        transformers.CLIPTextConfig(
            vocab_size=vocab, hidden_size=1280, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=20, max_position_embeddings=77, hidden_act="gelu", projection_dim=1280,
            bos_token_id=vocab - 2, eos_token_id=vocab - 1, pad_token_id=0,
        )
    )  # fmt: skip
    unet = diffusers.UNet2DConditionModel(
        sample_size=8, block_out_channels=(32, 64), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), layers_per_block=1, attention_head_dim=(2, 4),
        transformer_layers_per_block=(1, 2), cross_attention_dim=2048, norm_num_groups=32,
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + 1280,
    )  # fmt: skip
    pipe = diffusers.StableDiffusionXLPipeline(
        vae=_perturb(_tiny_vae(4, scaling_factor=0.13025), 0.02),
        text_encoder=_clip(vocab, 768),
        text_encoder_2=_perturb(big_g, 0.02),
        tokenizer=transformers.CLIPTokenizer.from_pretrained(str(tmp_path / "tok")),
        tokenizer_2=transformers.CLIPTokenizer.from_pretrained(str(tmp_path / "tok2")),
        unet=_perturb(unet, 0.02),
        scheduler=diffusers.EulerDiscreteScheduler(
            beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", timestep_spacing="linspace"
        ),
        force_zeros_for_empty_prompt=True,
    )
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(str(tmp_path / "sdxl"))

    ours = Pipeline.from_pretrained(tmp_path / "sdxl")
    assert ours.model.meta["family"] == "sdxl"
    width, height = SIZE, SIZE + 8  # not square: the size ids' order matters
    result = ours(
        PROMPT,
        "",
        steps=STEPS,
        guidance=5.0,
        sampler="euler",
        scheduler="normal",
        seed=SEED,
        width=width,
        height=height,
    )

    sigmas = get_sigmas(ours.model.model_sampling, "normal", STEPS)
    noise = seeded_noise((4, height // 2, width // 2), [SEED])
    pipe.scheduler.set_timesteps(STEPS)
    start = noise * sigmas[0] / pipe.scheduler.init_noise_sigma
    # negative_prompt=None: diffusers zeroes the unconditional embeddings, as our SDXL encoder does for ""
    kw = dict(negative_prompt=None, num_inference_steps=STEPS, guidance_scale=5.0, height=height, width=width)
    with torch.no_grad():
        lat = pipe(PROMPT, latents=start.clone(), output_type="latent", **kw).images
        img = pipe(PROMPT, latents=start.clone(), output_type="np", **kw).images
    _compare(result, lat, img)
