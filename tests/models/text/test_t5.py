"""T5 encoders from state dicts (full T5-XXL width, one block) and the local T5 tokenizer."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
import torch
from transformers import T5Config, T5EncoderModel

from latentworks.models.text.layouts import TextEncoderKeyError
from latentworks.models.text.t5 import (
    T5Tokenizer,
    build_t5,
    find_t5_tokenizer,
    t5_config_from_shapes,
    t5_encode,
)

TOLERANCE = 1e-4


def _t5(*, d_model: int, d_ff: int, heads: int, d_kv: int, layers: int, vocab: int, gated: bool = True):
    torch.manual_seed(0)
    cfg = T5Config(
        vocab_size=vocab, d_model=d_model, d_kv=d_kv, d_ff=d_ff, num_layers=layers, num_heads=heads,
        feed_forward_proj="gated-gelu" if gated else "relu", is_encoder_decoder=False, use_cache=False,
        dropout_rate=0.0,
    )  # fmt: skip
    model = T5EncoderModel(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" in name:
                p.normal_(1.0, 0.3)
    return model


@pytest.mark.slow
def test_full_width_t5_xxl_matches_transformers() -> None:
    """T5 v1.1 XXL: d_model 4096, 64 heads of 64, gated-GELU 10240, vocab 32128; one block instead of 24."""
    ref = _t5(d_model=4096, d_ff=10240, heads=64, d_kv=64, layers=1, vocab=32128)
    sd = ref.state_dict()
    # ComfyUI-style T5 files carry only one of the tied embedding names
    sd = {k: v for k, v in sd.items() if k != "shared.weight"}
    ours = build_t5(sd)
    assert ours.config.feed_forward_proj == "gated-gelu" and ours.config.num_heads == 64
    ids = torch.randint(0, 32128, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = ref(input_ids=ids).last_hidden_state
    got = t5_encode(ours, ids)
    err = ((got - expected).abs().max() / expected.abs().max()).item()
    assert err < TOLERANCE, err
    assert ours.encoder.embed_tokens is ours.shared
    del ref, ours, sd
    gc.collect()


def test_config_from_shapes_original_t5_and_errors() -> None:
    ref = _t5(d_model=64, d_ff=96, heads=4, d_kv=8, layers=3, vocab=50, gated=False)
    shapes = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    cfg = t5_config_from_shapes(shapes)
    assert (cfg.d_model, cfg.d_ff, cfg.num_heads, cfg.d_kv, cfg.num_layers) == (64, 96, 4, 8, 3)
    assert cfg.feed_forward_proj == "relu" and cfg.vocab_size == 50
    ids = torch.randint(0, 50, (1, 7))
    with torch.no_grad():
        torch.testing.assert_close(
            t5_encode(build_t5(ref.state_dict()), ids), ref(input_ids=ids).last_hidden_state
        )
    with pytest.raises(TextEncoderKeyError, match="token embedding"):
        build_t5({k: v for k, v in ref.state_dict().items() if "embed" not in k and "shared" not in k})
    broken = dict(ref.state_dict())
    del broken["encoder.block.2.layer.1.DenseReluDense.wo.weight"]
    with pytest.raises(TextEncoderKeyError, match=r"block\.2\.layer\.1\.DenseReluDense\.wo"):
        build_t5(broken)


def _write_tokenizer(path: Path) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, "a": 3, "red": 4, "apple": 5}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))
    return path


def test_tokenizer_pads_truncates_and_keeps_eos(tmp_path: Path) -> None:
    tok = T5Tokenizer(_write_tokenizer(tmp_path / "tokenizer.json"))
    ids = tok(["a red apple", "apple " * 20], max_length=8)
    assert ids.tolist()[0] == [3, 4, 5, 1, 0, 0, 0, 0]
    assert ids.tolist()[1] == [5] * 7 + [1]  # truncated, still ends in </s>
    # truncation/padding settings do not leak into the next call
    assert tok(["a"], max_length=4).tolist() == [[3, 1, 0, 0]]


def test_tokenizer_is_found_in_diffusers_folders_and_missing_is_explained(tmp_path: Path) -> None:
    sd3 = tmp_path / "sd3"
    _write_tokenizer(sd3 / "tokenizer_3" / "tokenizer.json")
    (sd3 / "tokenizer_2").mkdir()
    (sd3 / "tokenizer_2" / "merges.txt").write_text("#version: 0.2\n")  # SD3's tokenizer_2 is CLIP-G's
    (sd3 / "tokenizer_2" / "tokenizer.json").write_text("{}")
    assert find_t5_tokenizer(sd3) == sd3 / "tokenizer_3" / "tokenizer.json"
    flux = tmp_path / "flux"
    _write_tokenizer(flux / "tokenizer_2" / "tokenizer.json")
    assert find_t5_tokenizer(flux) == flux / "tokenizer_2" / "tokenizer.json"
    assert find_t5_tokenizer(flux / "tokenizer_2") == flux / "tokenizer_2" / "tokenizer.json"
    with pytest.raises(FileNotFoundError, match="tokenizer_3/tokenizer.json"):
        find_t5_tokenizer(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        find_t5_tokenizer(None)
