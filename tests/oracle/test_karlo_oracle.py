"""Karlo end to end against diffusers' UnCLIPPipeline on identical tiny random weights.

A tiny UnCLIPPipeline (Karlo's block types, scheduler configs and 77-token prior at small widths;
tests/support/karlo.py) is saved by diffusers and loaded by latentworks. Both sides draw every random number from
one CPU generator seeded alike, in the release's order (prior start and step noise, decoder, super-resolution),
so the images must agree within 1e-3 of their scale: prior (x0 prediction, clamp 5, CFG), text projection,
decoder (learned-range variance, CFG, clamp), bicubic upscale, and the two super-resolution U-Nets.

diffusers keeps its schedule tables in float32 (Karlo's own code and latentworks: float64); the end-to-end
comparison gives diffusers float64 tables (``use_float64_tables``), and a second check runs diffusers unchanged
through the prior, where the float32 tables alone move the image embedding by less than 1e-3 of its scale.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from latentworks.pipelines.karlo import KarloPipeline
from support.karlo import SUPER_RES_SIZE, tiny_karlo_pipe, use_float64_tables

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

PROMPT = "a red apple on the table"
SEED = 7


@pytest.fixture(scope="module")
def karlo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object, KarloPipeline]:
    folder, pipe = tiny_karlo_pipe(tmp_path_factory.mktemp("karlo"))
    return folder, pipe, KarloPipeline.from_pretrained(folder)


def _run_theirs(
    pipe, steps: tuple[int, int, int], guidance: tuple[float, float]
) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: ANN001
    """(images (1, 3, H, W) in [-1, 1], image embeddings (1, E)) from diffusers."""
    seen: dict[str, torch.Tensor] = {}
    post = pipe.prior.post_process_latents

    def record(latents: torch.Tensor) -> torch.Tensor:
        seen["embeddings"] = post(latents)
        return seen["embeddings"]

    pipe.prior.post_process_latents = record
    try:
        with torch.no_grad():
            out = pipe(
                PROMPT, generator=torch.Generator().manual_seed(SEED), prior_num_inference_steps=steps[0],
                decoder_num_inference_steps=steps[1], super_res_num_inference_steps=steps[2],
                prior_guidance_scale=guidance[0], decoder_guidance_scale=guidance[1], output_type="np",
            ).images  # fmt: skip
    finally:
        pipe.prior.post_process_latents = post
    return torch.from_numpy(out).permute(0, 3, 1, 2) * 2 - 1, seen["embeddings"]


def _ours(pipe: KarloPipeline, steps: tuple[int, int, int], guidance: tuple[float, float], seed: int = SEED):  # noqa: ANN202
    return pipe(
        PROMPT, seed=seed, prior_steps=steps[0], decoder_steps=steps[1], super_res_steps=steps[2],
        prior_guidance=guidance[0], decoder_guidance=guidance[1],
    )  # fmt: skip


@pytest.mark.parametrize(("steps", "guidance"), [((3, 4, 3), (4.0, 8.0)), ((2, 3, 2), (1.0, 1.0))])
def test_karlo_matches_unclip_pipeline(
    karlo: tuple[Path, object, KarloPipeline], steps: tuple[int, int, int], guidance: tuple[float, float]
) -> None:
    _, pipe, ours = karlo
    result = _ours(ours, steps, guidance)
    exact = copy.copy(pipe)  # the same networks; float64 schedule tables on copies of the schedulers
    for name in ("prior_scheduler", "decoder_scheduler", "super_res_scheduler"):
        setattr(exact, name, copy.deepcopy(getattr(pipe, name)))
    use_float64_tables(exact)
    theirs, embeddings = _run_theirs(exact, steps, guidance)
    assert result.pixels.shape == theirs.shape == (1, 3, SUPER_RES_SIZE, SUPER_RES_SIZE)
    scale = embeddings.abs().max().item()
    assert (result.image_embeddings - embeddings).abs().max().item() <= 1e-3 * scale
    err = (result.pixels - theirs).abs().max().item()
    scale = theirs.abs().max().item()
    assert err <= 1e-3 * max(scale, 1.0), f"images differ by {err} (scale {scale})"
    # the seed matters: another seed moves the result far beyond the tolerance
    other = _ours(ours, steps, guidance, seed=SEED + 1)
    assert (other.pixels - theirs).abs().max().item() > 100 * max(err, 1e-5)


def test_karlo_prior_matches_diffusers_float32_tables(karlo: tuple[Path, object, KarloPipeline]) -> None:
    _, pipe, ours = karlo
    steps, guidance = (3, 2, 2), (4.0, 8.0)
    _, embeddings = _run_theirs(pipe, steps, guidance)  # diffusers exactly as released
    result = _ours(ours, steps, guidance)
    err = (result.image_embeddings - embeddings).abs().max().item()
    assert err <= 1e-3 * embeddings.abs().max().item(), err


def _unused_image_encoder() -> torch.nn.Module:
    """A tiny CLIP vision tower: the variation pipeline reads its dtype, and nothing else, when given embeddings."""
    config = transformers.CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=16,
        patch_size=8,
    )
    return transformers.CLIPVisionModelWithProjection(config).eval()


def test_karlo_from_image_embeddings_matches_unclip_image_variation(
    karlo: tuple[Path, object, KarloPipeline],
) -> None:
    """``image_embeddings=`` skips the prior, as diffusers' UnCLIPImageVariationPipeline (empty prompt); the
    decoder's start noise is then the generator's first draw on both sides."""
    _, pipe, ours = karlo
    embeddings = torch.randn(1, pipe.prior.config.embedding_dim, generator=torch.Generator().manual_seed(11))
    variation = diffusers.UnCLIPImageVariationPipeline(
        decoder=pipe.decoder, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, text_proj=pipe.text_proj,
        feature_extractor=None, image_encoder=_unused_image_encoder(), super_res_first=pipe.super_res_first,
        super_res_last=pipe.super_res_last, decoder_scheduler=copy.deepcopy(pipe.decoder_scheduler),
        super_res_scheduler=copy.deepcopy(pipe.super_res_scheduler),
    )  # fmt: skip
    variation.set_progress_bar_config(disable=True)
    variation.prior_scheduler = copy.deepcopy(pipe.prior_scheduler)  # use_float64_tables sets all three
    use_float64_tables(variation)
    with torch.no_grad():
        theirs = variation(
            image_embeddings=embeddings, generator=torch.Generator().manual_seed(SEED), decoder_num_inference_steps=3,
            super_res_num_inference_steps=2, decoder_guidance_scale=5.0, output_type="np",
        ).images  # fmt: skip
    theirs_t = torch.from_numpy(theirs).permute(0, 3, 1, 2) * 2 - 1
    result = ours(
        "", image_embeddings=embeddings, seed=SEED, decoder_steps=3, super_res_steps=2, decoder_guidance=5.0
    )
    err = (result.pixels - theirs_t).abs().max().item()
    assert err <= 1e-3 * max(theirs_t.abs().max().item(), 1.0), err
