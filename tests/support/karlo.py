"""A tiny Karlo in diffusers' ``UnCLIPPipeline`` layout on random weights, for the oracle, CLI and bad-input tests.

Karlo's architecture (ResNet up/down blocks with scale-shift norms, added-KV cross attention, a 77-token causal
prior with clip_mean/clip_std, the three UnCLIPScheduler configs of kakaobrain/karlo-v1-alpha), at small widths:
CLIP width 32, decoder 16 px with widths (32, 64), super-resolution 16 -> 32 px. Every parameter is perturbed
(diffusers zero-initialises some, which would hide a misplaced weight).
"""

from __future__ import annotations

from pathlib import Path

import torch

from support.tokenizers import write_clip_tokenizer

EMBED = 32  # CLIP embedding width (text states, text embedding, image embedding)
DECODER_SIZE, SUPER_RES_SIZE = 16, 32
CONTEXT = 48  # the decoder's text-token width


def _perturb(model: torch.nn.Module, scale: float = 0.05) -> torch.nn.Module:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("clip_std"):
                p.copy_(torch.rand_like(p) + 0.5)
            else:
                p.add_(torch.randn_like(p) * scale)
    return model.eval()


def tiny_karlo_pipe(tmp: Path, name: str = "karlo", *, mid_attention: bool = True) -> tuple[Path, object]:
    """Save a tiny ``UnCLIPPipeline`` as ``tmp/name``; return (folder, pipe)."""
    import diffusers
    import transformers
    from diffusers.pipelines.deprecated.unclip.text_proj import UnCLIPTextProjModel

    vocab = write_clip_tokenizer(tmp / f"{name}_tokenizer_src")
    torch.manual_seed(0)
    text_encoder = transformers.CLIPTextModelWithProjection(
        transformers.CLIPTextConfig(
            vocab_size=vocab, hidden_size=EMBED, projection_dim=EMBED, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=2, max_position_embeddings=77, hidden_act="quick_gelu",
            bos_token_id=vocab - 2, eos_token_id=vocab - 1, pad_token_id=vocab - 1,
        )
    )  # fmt: skip
    prior = diffusers.PriorTransformer(
        num_attention_heads=2, attention_head_dim=16, num_layers=2, embedding_dim=EMBED, num_embeddings=77
    )
    decoder = diffusers.UNet2DConditionModel(
        sample_size=DECODER_SIZE, in_channels=3, out_channels=6,
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn", block_out_channels=(32, 64), layers_per_block=1,
        cross_attention_dim=CONTEXT, attention_head_dim=16, resnet_time_scale_shift="scale_shift",
        class_embed_type="identity",
    )  # fmt: skip
    text_proj = UnCLIPTextProjModel(
        clip_embeddings_dim=EMBED,
        time_embed_dim=decoder.config.block_out_channels[0] * 4,
        cross_attention_dim=CONTEXT,
    )

    def super_res() -> torch.nn.Module:
        return diffusers.UNet2DModel(
            sample_size=SUPER_RES_SIZE, in_channels=6, out_channels=3, layers_per_block=1,
            down_block_types=("ResnetDownsampleBlock2D",) * 2, up_block_types=("ResnetUpsampleBlock2D",) * 2,
            block_out_channels=(32, 64), resnet_time_scale_shift="scale_shift", add_attention=mid_attention,
            attention_head_dim=16,
        )  # fmt: skip

    pipe = diffusers.UnCLIPPipeline(
        prior=_perturb(prior),
        decoder=_perturb(decoder, 0.02),
        text_encoder=_perturb(text_encoder),
        tokenizer=transformers.CLIPTokenizer.from_pretrained(str(tmp / f"{name}_tokenizer_src")),
        text_proj=_perturb(text_proj),
        super_res_first=_perturb(super_res(), 0.02),
        super_res_last=_perturb(super_res(), 0.02),
        prior_scheduler=diffusers.UnCLIPScheduler(
            variance_type="fixed_small_log", prediction_type="sample", clip_sample_range=5.0
        ),
        decoder_scheduler=diffusers.UnCLIPScheduler(variance_type="learned_range", prediction_type="epsilon"),
        super_res_scheduler=diffusers.UnCLIPScheduler(
            variance_type="fixed_small_log", prediction_type="epsilon"
        ),
    )
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(str(tmp / name))
    return tmp / name, pipe


def use_float64_tables(pipe: object) -> None:
    """Give the pipeline's three ``UnCLIPScheduler`` s their cosine tables in float64.

    diffusers keeps betas and alpha_bar in float32, where the capped last betas (0.999) lose digits: 1 - 0.999
    is 0.0010000467 in float32, so alpha_bar near t = 999 is off by ~1e-4 relative, which a random network
    amplifies. Karlo's own code (GLIDE's ``gaussian_diffusion``) computes the tables in float64 numpy, as
    latentworks does; the oracle compares the algorithms on those tables. The betas are written here from the
    formula (Nichol & Dhariwal 2021, eq. 17, capped at 0.999), independently of the code under test.
    """
    import math

    def f(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = torch.tensor(
        [min(1 - f((i + 1) / 1000) / f(i / 1000), 0.999) for i in range(1000)], dtype=torch.float64
    )
    for name in ("prior_scheduler", "decoder_scheduler", "super_res_scheduler"):
        s = getattr(pipe, name)
        s.betas, s.alphas = betas.clone(), 1 - betas
        s.alphas_cumprod = torch.cumprod(1 - betas, 0)
        s.one = torch.tensor(1.0, dtype=torch.float64)
