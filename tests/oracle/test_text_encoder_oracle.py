"""Our prompt encoders against diffusers pipelines' ``encode_prompt`` on identical random weights.

The text encoders are transformers models built from local configs at the real widths (CLIP-L 768, OpenCLIP-H
1024, bigG 1280; T5 at 2048, wide enough for SD3's zero-padding of the 2048 CLIP features) with reduced depth,
intermediate size and vocabulary. Both sides tokenize with the same small CLIP BPE vocabulary (written to a
temp folder as a diffusers ``tokenizer``/``tokenizer_2`` folder: the 512 byte tokens of the real vocabulary
plus merges for a few words) and a small T5 word-level ``tokenizer.json``. Our side receives only state
dicts (the OpenCLIP towers in open_clip layout) and the folder, as it would from a checkpoint.
"""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
import torch
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
)

from latentworks import families
from latentworks.models.text.families import make_prompt_encoder
from latentworks.models.text.layouts import hf_to_open_clip
from support.tokenizers import WORDS
from support.tokenizers import t5_tokenizer_for_diffusers as _t5_tokenizer_for_diffusers
from support.tokenizers import write_clip_tokenizer as _write_clip_tokenizer
from support.tokenizers import write_t5_tokenizer as _write_t5_tokenizer

diffusers = pytest.importorskip("diffusers")
tokenizers = pytest.importorskip("tokenizers")

pytestmark = pytest.mark.slow
TOLERANCE = 1e-4
PROMPTS = ["a red apple on the table", "photo of a cat"]


def _randomise(model: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ("norm" in name) and p.ndim == 1:
                p.normal_(1.0, 0.3)
            elif name.endswith("bias"):
                p.normal_(0.0, 0.1)
    return model.eval()


def _clip(width: int, vocab: int, *, layers: int = 3, projection: bool = False, seed: int = 0):
    torch.manual_seed(seed)
    cfg = CLIPTextConfig(
        vocab_size=vocab,
        hidden_size=width,
        intermediate_size=256,
        num_hidden_layers=layers,
        num_attention_heads=width // 64,
        max_position_embeddings=77,
        hidden_act="quick_gelu" if width == 768 else "gelu",
        projection_dim=width,
        bos_token_id=vocab - 2,
        eos_token_id=vocab - 1,
        pad_token_id=0,
    )
    cls = CLIPTextModelWithProjection if projection else CLIPTextModel
    return _randomise(cls(cfg))


def _t5(seed: int = 3) -> T5EncoderModel:
    torch.manual_seed(seed)
    cfg = T5Config(
        vocab_size=len(WORDS) + 3, d_model=2048, d_kv=32, d_ff=128, num_layers=2, num_heads=4,
        feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False, dropout_rate=0.0,
    )  # fmt: skip
    return _randomise(T5EncoderModel(cfg))


def _close(ours: torch.Tensor, ref: torch.Tensor) -> None:
    assert ours.shape == ref.shape
    err = (ours - ref).abs().max() / ref.abs().max()
    assert err < TOLERANCE, f"relative error {err:.2e}"


def _sd(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _drop_last_layer(model: CLIPTextModel) -> CLIPTextModel:
    """diffusers' SD2 text encoder: the OpenCLIP-H tower without its last layer (penultimate + final LN)."""
    cfg = CLIPTextConfig(
        **{**model.config.to_dict(), "num_hidden_layers": model.config.num_hidden_layers - 1}
    )
    short = CLIPTextModel(cfg).eval()
    short.load_state_dict(model.state_dict(), strict=False)
    return short


def test_sd1_and_sd2_match_stable_diffusion_pipeline(tmp_path: Path) -> None:
    vocab = _write_clip_tokenizer(tmp_path / "sd1" / "tokenizer", "<|endoftext|>")
    clip_l = _clip(768, vocab)
    pipe = diffusers.StableDiffusionPipeline(
        vae=None, text_encoder=clip_l, tokenizer=CLIPTokenizer.from_pretrained(str(tmp_path / "sd1" / "tokenizer")),
        unet=None, scheduler=None, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    ref, _ = pipe.encode_prompt(PROMPTS, "cpu", 1, False)
    ours = make_prompt_encoder(
        families.get("sd15").text, {"clip_l": _sd(clip_l)}, tokenizer_dir=tmp_path / "sd1"
    ).encode(PROMPTS)
    _close(ours.tokens, ref)

    _write_clip_tokenizer(tmp_path / "sd2" / "tokenizer", "!")
    clip_h = _clip(1024, vocab, seed=1)
    pipe = diffusers.StableDiffusionPipeline(
        vae=None, text_encoder=_drop_last_layer(clip_h),
        tokenizer=CLIPTokenizer.from_pretrained(str(tmp_path / "sd2" / "tokenizer")),
        unet=None, scheduler=None, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    ref, _ = pipe.encode_prompt(PROMPTS + [""], "cpu", 1, False)
    enc = make_prompt_encoder(
        families.get("sd2").text, {"clip_h": hf_to_open_clip(_sd(clip_h))}, tokenizer_dir=tmp_path / "sd2"
    )
    ours = enc.encode(PROMPTS + [""])
    _close(ours.tokens, ref)
    assert enc.dim == 1024 and enc.max_length == 77


def _sdxl_folder(tmp_path: Path) -> int:
    vocab = _write_clip_tokenizer(tmp_path / "tokenizer", "<|endoftext|>")
    _write_clip_tokenizer(tmp_path / "tokenizer_2", "!")
    return vocab


def test_sdxl_matches_diffusers_including_zero_negative(tmp_path: Path) -> None:
    vocab = _sdxl_folder(tmp_path)
    clip_l, clip_g = _clip(768, vocab), _clip(1280, vocab, projection=True, seed=2)
    pipe = diffusers.StableDiffusionXLPipeline(
        vae=None, text_encoder=clip_l, text_encoder_2=clip_g,
        tokenizer=CLIPTokenizer.from_pretrained(str(tmp_path / "tokenizer")),
        tokenizer_2=CLIPTokenizer.from_pretrained(str(tmp_path / "tokenizer_2")),
        unet=None, scheduler=None,
    )  # fmt: skip
    ref, ref_neg, ref_pooled, ref_neg_pooled = pipe.encode_prompt(
        PROMPTS, device="cpu", do_classifier_free_guidance=True
    )
    enc = make_prompt_encoder(
        families.get("sdxl").text,
        {"clip_l": _sd(clip_l), "clip_g": hf_to_open_clip(_sd(clip_g))},
        tokenizer_dir=tmp_path,
    )
    ours = enc.encode(PROMPTS + [""])
    _close(ours.tokens[:2], ref)
    _close(ours.pooled[:2], ref_pooled)
    assert ours.tokens.shape == (3, 77, 2048) and ours.pooled.shape == (3, 1280)
    # diffusers' unconditional input for SDXL base is all zeros (force_zeros_for_empty_prompt)
    assert torch.equal(ours.tokens[2:], ref_neg[:1]) and torch.equal(ours.pooled[2:], ref_neg_pooled[:1])

    # refiner: bigG only
    refiner = diffusers.StableDiffusionXLImg2ImgPipeline(
        vae=None, text_encoder=None, text_encoder_2=clip_g, tokenizer=None,
        tokenizer_2=CLIPTokenizer.from_pretrained(str(tmp_path / "tokenizer_2")), unet=None, scheduler=None,
    )  # fmt: skip
    ref, _, ref_pooled, _ = refiner.encode_prompt(PROMPTS, device="cpu", do_classifier_free_guidance=False)
    ours = make_prompt_encoder(
        families.get("sdxl-refiner").text, {"clip_g": _sd(clip_g)}, tokenizer_dir=tmp_path
    ).encode(PROMPTS)
    _close(ours.tokens, ref)
    _close(ours.pooled, ref_pooled)


def test_sd3_matches_diffusers(tmp_path: Path) -> None:
    vocab = _sdxl_folder(tmp_path)
    t5_path = _write_t5_tokenizer(tmp_path / "tokenizer_3")
    clip_l = _clip(768, vocab, projection=True)
    clip_g = _clip(1280, vocab, projection=True, seed=2)
    t5 = _t5()
    pipe = diffusers.StableDiffusion3Pipeline(
        transformer=None, scheduler=None, vae=None,
        text_encoder=clip_l, tokenizer=CLIPTokenizer.from_pretrained(str(tmp_path / "tokenizer")),
        text_encoder_2=clip_g, tokenizer_2=CLIPTokenizer.from_pretrained(str(tmp_path / "tokenizer_2")),
        text_encoder_3=t5, tokenizer_3=_t5_tokenizer_for_diffusers(t5_path),
    )  # fmt: skip
    ref, _, ref_pooled, _ = pipe.encode_prompt(
        PROMPTS, None, None, device="cpu", do_classifier_free_guidance=False, max_sequence_length=256
    )
    components = {"clip_l": _sd(clip_l), "clip_g": hf_to_open_clip(_sd(clip_g)), "t5xxl": _sd(t5)}
    enc = make_prompt_encoder(families.get("sd3").text, components, tokenizer_dir=tmp_path)
    ours = enc.encode(PROMPTS)
    assert ref.shape == (2, 77 + 256, 2048)
    _close(ours.tokens, ref)
    _close(ours.pooled, ref_pooled)
    assert enc.max_length == 333 and enc.dim == 2048

    # without T5: the CLIP part is unchanged, the T5 part is zeros (diffusers' behaviour), padded to 4096
    no_t5 = make_prompt_encoder(families.get("sd3").text, {"clip_l": components["clip_l"], "clip_g": components["clip_g"]},
                                tokenizer_dir=tmp_path).encode(PROMPTS)  # fmt: skip
    assert no_t5.tokens.shape == (2, 333, 4096)
    _close(no_t5.tokens[:, :77, :2048], ref[:, :77, :2048])
    assert not no_t5.tokens[:, 77:].any() and not no_t5.tokens[:, :, 2048:].any()
    _close(no_t5.pooled, ref_pooled)


@pytest.mark.parametrize("family,length", [("flux-dev", 512), ("flux-schnell", 256)])
def test_flux_matches_diffusers(tmp_path: Path, family: str, length: int) -> None:
    vocab = _write_clip_tokenizer(tmp_path / "tokenizer", "<|endoftext|>")
    t5_path = _write_t5_tokenizer(tmp_path / "tokenizer_2")
    clip_l, t5 = _clip(768, vocab), _t5()
    pipe = diffusers.FluxPipeline(
        scheduler=None, vae=None, transformer=None,
        text_encoder=clip_l, tokenizer=CLIPTokenizer.from_pretrained(str(tmp_path / "tokenizer")),
        text_encoder_2=t5, tokenizer_2=_t5_tokenizer_for_diffusers(t5_path),
    )  # fmt: skip
    ref, ref_pooled, _ = pipe.encode_prompt(PROMPTS, None, device="cpu", max_sequence_length=length)
    enc = make_prompt_encoder(
        families.get(family).text, {"clip_l": _sd(clip_l), "t5xxl": _sd(t5)}, tokenizer_dir=tmp_path
    )
    ours = enc.encode(PROMPTS)
    assert ref.shape == (2, length, 2048)
    _close(ours.tokens, ref)
    _close(ours.pooled, ref_pooled)
    assert enc.max_length == length
    del pipe, clip_l, t5
    gc.collect()
