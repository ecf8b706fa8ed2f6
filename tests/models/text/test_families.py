"""Per-family prompt encoders with the bundled CLIP tokenizer: chunking, weighting, empty prompts, errors.

The diffusers comparisons live in tests/oracle/test_text_encoder_oracle.py; here the encoders run on the real
CLIP vocabulary (instant-clip-tokenizer) with real-width, 2-layer towers and check properties that follow from
CLIP's causal attention and from the weighting rule.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel

from latentworks import families
from latentworks.models.text.base import TextEncoder
from latentworks.models.text.clip import build_clip, clip_encode
from latentworks.models.text.families import make_prompt_encoder
from latentworks.models.text.layouts import hf_to_open_clip, normalize_hf_clip
from latentworks.models.text.prompts import InstantClipTokenizer

WORDS = ["apple", "red", "cat", "dog"]  # one CLIP token each; 75 % 4 != 0, so chunks differ


def _clip(width: int, *, projection: bool = False, seed: int = 0) -> dict[str, torch.Tensor]:
    cfg = CLIPTextConfig(
        vocab_size=49408, hidden_size=width, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=width // 64, max_position_embeddings=77, projection_dim=width,
        hidden_act="quick_gelu" if width == 768 else "gelu",
    )  # fmt: skip
    with torch.device("meta"):  # only the shapes: transformers' own init is slow on the 49408-token embedding
        model = (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg)
    return normalize_hf_clip(_random_like(model.state_dict(), seed))


def _random_like(shapes: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in shapes.items():
        scale, mean = (0.3, 1.0) if ("norm" in k and k.endswith("weight")) else (0.02, 0.0)
        out[k] = mean + scale * torch.randn(v.shape, generator=g)
    return out


def _t5() -> dict[str, torch.Tensor]:
    cfg = T5Config(
        vocab_size=8, d_model=64, d_kv=16, d_ff=96, num_layers=1, num_heads=4,
        feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False, dropout_rate=0.0,
    )  # fmt: skip
    with torch.device("meta"):
        model = T5EncoderModel(cfg)
    sd = _random_like(model.state_dict(), 5)
    sd["encoder.embed_tokens.weight"] = sd["shared.weight"]
    return sd


@pytest.fixture(scope="module")
def clip_l() -> dict[str, torch.Tensor]:
    return _clip(768)


@pytest.fixture(scope="module")
def clip_g() -> dict[str, torch.Tensor]:
    return hf_to_open_clip(_clip(1280, projection=True, seed=1))


@pytest.fixture(scope="module")
def sd1(clip_l: dict[str, torch.Tensor]) -> TextEncoder:
    return make_prompt_encoder(families.get("sd15").text, {"clip_l": clip_l})


def _words(n: int, offset: int = 0) -> str:
    return " ".join(WORDS[(i + offset) % len(WORDS)] for i in range(n))


def test_words_are_single_tokens() -> None:
    tok = InstantClipTokenizer()
    assert all(len(tok.encode(w)) == 1 for w in WORDS)
    assert len(tok.encode(_words(200))) == 200


def test_long_prompt_is_three_chunks_each_encoded_alone(sd1: TextEncoder) -> None:
    assert isinstance(sd1, TextEncoder) and sd1.dim == 768 and sd1.max_length == 77
    long = sd1.encode([_words(200)])
    assert long.tokens.shape == (1, 3 * 77, 768) and long.mask is not None and long.mask.all()
    for k, n in enumerate([75, 75, 50]):
        alone = sd1.encode([_words(n, offset=75 * k)])
        assert alone.tokens.shape == (1, 77, 768)
        torch.testing.assert_close(long.tokens[:, 77 * k : 77 * (k + 1)], alone.tokens, rtol=1e-5, atol=1e-5)
    first = sd1.encode([_words(75)])
    torch.testing.assert_close(long.pooled, first.pooled)  # pooled comes from the first chunk
    # the chunks really differ (a wrong slice would not be caught otherwise)
    assert not torch.allclose(long.tokens[:, :77], long.tokens[:, 77:154])


def test_batch_with_different_chunk_counts_is_padded_with_empty_chunks(sd1: TextEncoder) -> None:
    both = sd1.encode(["a red apple", _words(100)])
    assert both.tokens.shape == (2, 154, 768)
    short, empty = sd1.encode(["a red apple"]), sd1.encode([""])
    torch.testing.assert_close(both.tokens[0, :77], short.tokens[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(both.tokens[0, 77:], empty.tokens[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(both.pooled[0], short.pooled[0], rtol=1e-5, atol=1e-5)


def test_weights_move_only_the_weighted_token_comfyui_style(sd1: TextEncoder) -> None:
    plain = sd1.encode(["a red apple"]).tokens[0]  # (77, 768)
    weighted = sd1.encode(["a (red:1.5) apple"])
    empty = sd1.encode([""]).tokens[0]
    # position 2 is "red" (BOS, a, red, apple, EOS)
    torch.testing.assert_close(
        weighted.tokens[0, 2], empty[2] + 1.5 * (plain[2] - empty[2]), rtol=1e-5, atol=1e-5
    )
    others = [i for i in range(77) if i != 2]
    torch.testing.assert_close(weighted.tokens[0, others], plain[others], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(weighted.tokens[0, 2], plain[2])
    torch.testing.assert_close(weighted.pooled, sd1.encode(["a red apple"]).pooled)  # pooled is unweighted
    torch.testing.assert_close(sd1.encode(["a (red:1.0) apple"]).tokens[0], plain)


def test_sd1_reads_the_final_normed_last_layer(clip_l: dict[str, torch.Tensor], sd1: TextEncoder) -> None:
    tok = InstantClipTokenizer()
    ids = torch.tensor([[tok.bos_id, *tok.encode("a red apple"), tok.eos_id] + [tok.eos_id] * 72])
    model = build_clip(clip_l)
    out = clip_encode(model, ids)
    torch.testing.assert_close(sd1.encode(["a red apple"]).tokens, out.hidden)
    penultimate = clip_encode(model, ids, layer=-2, final_norm=False).hidden
    assert not torch.allclose(out.hidden, penultimate, atol=1e-3)


def test_sdxl_empty_prompt_is_zeros_and_bigg_half_is_the_refiner(
    clip_l: dict[str, torch.Tensor], clip_g: dict[str, torch.Tensor]
) -> None:
    sdxl = make_prompt_encoder(families.get("sdxl").text, {"clip_l": clip_l, "clip_g": clip_g})
    refiner = make_prompt_encoder(families.get("sdxl-refiner").text, {"clip_g": clip_g})
    assert (sdxl.dim, refiner.dim) == (2048, 1280)
    out = sdxl.encode(["", "a red apple"])
    assert out.tokens.shape == (2, 77, 2048) and out.pooled is not None and out.pooled.shape == (2, 1280)
    assert not out.tokens[0].any() and not out.pooled[0].any()
    alone = sdxl.encode(["a red apple"])
    torch.testing.assert_close(out.tokens[1], alone.tokens[0])
    ref = refiner.encode(["a red apple", ""])
    torch.testing.assert_close(alone.tokens[..., 768:], ref.tokens[:1])
    torch.testing.assert_close(alone.pooled, ref.pooled[:1])
    assert ref.tokens[1].abs().sum() > 0  # the refiner encodes "" (diffusers' refiner does not zero)
    only_empty = sdxl.encode([""])
    assert only_empty.tokens.shape == (1, 77, 2048) and not only_empty.tokens.any()
    comfy = make_prompt_encoder(
        families.get("sdxl").text, {"clip_l": clip_l, "clip_g": clip_g}, zero_empty_prompt=False
    )
    torch.testing.assert_close(comfy.encode([""]).tokens[..., 768:], ref.tokens[1:])


def test_sd3_without_t5_and_long_prompt(
    clip_l: dict[str, torch.Tensor], clip_g: dict[str, torch.Tensor]
) -> None:
    clip_l_proj = _clip(768, projection=True, seed=2)
    sd3 = make_prompt_encoder(families.get("sd3").text, {"clip_l": clip_l_proj, "clip_g": clip_g})
    assert (sd3.dim, sd3.max_length) == (4096, 77 + 256)
    out = sd3.encode([_words(80)])
    assert (
        out.tokens.shape == (1, 154 + 256, 4096) and out.pooled is not None and out.pooled.shape == (1, 2048)
    )
    assert not out.tokens[:, 154:].any() and not out.tokens[..., 2048:].any()
    assert out.tokens[:, :154, :2048].abs().amin(dim=-1).gt(0).any()


def _t5_tokenizer(path: Path) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, "a": 3, "red": 4, "apple": 5}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    path.mkdir(parents=True)
    tok.save(str(path / "tokenizer.json"))
    return path


def test_flux_t5_tokens_clip_pooled_and_missing_tokenizer(
    tmp_path: Path, clip_l: dict[str, torch.Tensor]
) -> None:
    t5 = _t5()
    no_tok = make_prompt_encoder(families.get("flux").text, {"clip_l": clip_l, "t5xxl": t5})
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        no_tok.encode(["a red apple"])
    _t5_tokenizer(tmp_path / "tokenizer_2")
    schnell = make_prompt_encoder(
        families.get("flux-schnell").text, {"clip_l": clip_l, "t5xxl": t5}, tokenizer_dir=tmp_path
    )
    assert (schnell.dim, schnell.max_length) == (64, 256)
    assert set(schnell.modules()) == {"clip_l", "t5xxl"}  # type: ignore[attr-defined]
    out = schnell.encode(["a (red:1.5) apple"])
    assert out.tokens.shape == (1, 256, 64) and out.pooled is not None and out.pooled.shape == (1, 768)
    plain = schnell.encode(["a red apple"])
    torch.testing.assert_close(out.tokens, plain.tokens)  # T5 ignores weights (syntax stripped)
    torch.testing.assert_close(
        out.pooled,
        make_prompt_encoder(families.get("sd1").text, {"clip_l": clip_l}).encode(["a red apple"]).pooled,
    )


def test_errors_say_what_to_do(clip_l: dict[str, torch.Tensor], sd1: TextEncoder) -> None:
    with pytest.raises(ValueError, match="unknown model family 'sd4'"):
        families.get("sd4")
    with pytest.raises(TypeError, match="takes a TextRecipe"):
        make_prompt_encoder("sd1", {"clip_l": clip_l})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="holds a clip_l state dict"):
        make_prompt_encoder(families.get("sdxl-refiner").text, {"clip_g": clip_l})
    with pytest.raises(ValueError, match=r"missing \['t5xxl'\]"):
        make_prompt_encoder(families.get("flux-dev").text, {"clip_l": clip_l})
    with pytest.raises(TypeError, match="list of prompts"):
        sd1.encode("a red apple")  # type: ignore[arg-type]


def test_low_precision_follows_float32(clip_l: dict[str, torch.Tensor], sd1: TextEncoder) -> None:
    ref = sd1.encode(["a (red:1.2) apple"])
    half = make_prompt_encoder(families.get("sd1").text, {"clip_l": clip_l}, dtype=torch.bfloat16).encode(
        ["a (red:1.2) apple"]
    )
    assert (
        half.tokens.dtype == torch.bfloat16
        and half.pooled is not None
        and half.pooled.dtype == torch.bfloat16
    )
    err = ((half.tokens.float() - ref.tokens).abs().max() / ref.tokens.abs().max()).item()
    assert err < 0.05, err  # bf16 has 8 bits of mantissa: errors of a few 1e-2 relative, not 1e-1
