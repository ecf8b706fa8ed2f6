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
from support.tokenizers import write_clip_tokenizer

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

PROMPT = "a red apple on the table"
SEED, STEPS, SIZE, NOISE_LEVEL, CFG = 3, 4, 16, 100, 5.0
EMBED = 1024  # OpenCLIP ViT-H's image embedding width: the real class-input width 2 x 1024


def _perturb(model: torch.nn.Module, scale: float = 0.05) -> torch.nn.Module:
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * scale)
    return model.eval()


@pytest.fixture(scope="module")
def unclip_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    tmp = tmp_path_factory.mktemp("unclip")
    vocab = write_clip_tokenizer(tmp / "tokenizer_src")
    torch.manual_seed(0)
    unet = _perturb(
        diffusers.UNet2DConditionModel(
            sample_size=8,
            layers_per_block=1,
            block_out_channels=(32, 64),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=1024,  # OpenCLIP-H text, as SD 2.x
            attention_head_dim=(1, 1),  # head count per level: 32- and 64-wide heads... diffusers' naming
            use_linear_projection=True,
            class_embed_type="projection",
            projection_class_embeddings_input_dim=2 * EMBED,
            norm_num_groups=32,
        ),
        0.02,
    )
    text = transformers.CLIPTextModel(
        transformers.CLIPTextConfig(
            vocab_size=vocab, hidden_size=1024, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=16, max_position_embeddings=77, hidden_act="gelu",
            bos_token_id=vocab - 2, eos_token_id=vocab - 1, pad_token_id=vocab - 1,
        )
    )  # fmt: skip
    image_encoder = transformers.CLIPVisionModelWithProjection(
        transformers.CLIPVisionConfig(
            hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
            image_size=32, patch_size=8, projection_dim=EMBED, hidden_act="gelu",
        )
    )  # fmt: skip
    normalizer = (
        diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer.StableUnCLIPImageNormalizer(
            embedding_dim=EMBED
        )
    )
    with torch.no_grad():
        normalizer.mean.copy_(torch.randn(1, EMBED) * 0.1)
        normalizer.std.copy_(torch.rand(1, EMBED) + 0.5)
    vae = diffusers.AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(32, 64), latent_channels=4, layers_per_block=1, norm_num_groups=32, sample_size=SIZE,
    )  # fmt: skip
    pipe = diffusers.StableUnCLIPImg2ImgPipeline(
        feature_extractor=transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size=32),
        image_encoder=_perturb(image_encoder),
        image_normalizer=normalizer,
        image_noising_scheduler=diffusers.DDPMScheduler(beta_schedule="squaredcos_cap_v2"),
        tokenizer=transformers.CLIPTokenizer.from_pretrained(str(tmp / "tokenizer_src")),
        text_encoder=_perturb(text),
        unet=unet,
        scheduler=diffusers.EulerDiscreteScheduler(
            beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", timestep_spacing="linspace",
            prediction_type="v_prediction",
        ),
        vae=_perturb(vae, 0.02),
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(str(tmp / "unclip"))
    # diffusers' SD 2.x text encoders drop OpenCLIP-H's last layer (penultimate + final LN); ours reads the full
    # tower's penultimate layer: run diffusers with the truncated copy (as tests/oracle/test_text_encoder_oracle)
    short = transformers.CLIPTextModel(
        transformers.CLIPTextConfig(**{**text.config.to_dict(), "num_hidden_layers": 1})
    )
    short.load_state_dict({k: v for k, v in text.state_dict().items() if ".layers.1." not in k})
    pipe.text_encoder = short.eval()
    return tmp / "unclip", pipe


def test_unclip_image_variation_matches_diffusers(unclip_folder: tuple[Path, object]) -> None:
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

    # the image matters: without it (zeros class input) the result moves well beyond the tolerance
    plain = ours(PROMPT, seed=SEED, width=SIZE, height=SIZE, **run)
    assert (plain.latents.float() - theirs.float()).abs().max().item() > 10 * max(err, 1e-4)
    del ours
    gc.collect()
