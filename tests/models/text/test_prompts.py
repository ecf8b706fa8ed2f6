"""Prompt weighting syntax, CLIP tokenization and 77-token chunking."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from latentworks.models.text.prompts import (
    CHUNK_TOKENS,
    CONTEXT_LENGTH,
    InstantClipTokenizer,
    apply_weights,
    chunk_tokens,
    parse_weights,
    tokenize_chunks,
    weighted_tokens,
)


@pytest.mark.parametrize(
    "prompt,expected",
    [
        ("a red apple", [("a red apple", 1.0)]),
        ("(x)", [("x", 1.1)]),
        ("((x))", [("x", 1.1 * 1.1)]),
        ("[x]", [("x", 1 / 1.1)]),
        ("[[x]]", [("x", 1 / 1.1 / 1.1)]),
        ("(x:1.5)", [("x", 1.5)]),
        ("(x: 0.25 )", [("x", 0.25)]),
        ("((x:2))", [("x", 2 * 1.1)]),
        ("(a (b:2) c)", [("a ", 1.1), ("b", 2.2), (" c", 1.1)]),
        (
            "a (red:1.2) [apple] \\(x\\)",
            [("a ", 1.0), ("red", 1.2), (" ", 1.0), ("apple", 1 / 1.1), (" (x)", 1.0)],
        ),
        ("\\[not weighted\\] \\\\", [("[not weighted] \\", 1.0)]),
        ("(unclosed", [("unclosed", 1.1)]),
        ("[unclosed", [("unclosed", 1 / 1.1)]),
        ("stray ) and ]", [("stray ) and ]", 1.0)]),
        ("time 12:30", [("time 12:30", 1.0)]),
        ("a:1.5)", [("a:1.5)", 1.0)]),  # a weight close with no open group is text
        ("(x)(y)", [("xy", 1.1)]),  # adjacent equal weights merge
        ("", [("", 1.0)]),
        ("()", [("", 1.0)]),
    ],
)
def test_parse_weights(prompt: str, expected: list[tuple[str, float]]) -> None:
    got = parse_weights(prompt)
    assert [t for t, _ in got] == [t for t, _ in expected]
    assert [w for _, w in got] == pytest.approx([w for _, w in expected])


@given(st.text(alphabet=st.characters(blacklist_characters="()[]\\:"), max_size=40))
def test_plain_text_is_one_piece_of_weight_one(text: str) -> None:
    got = parse_weights(text)
    assert got == [(text, 1.0)]


@given(st.text(alphabet="ab ", min_size=1, max_size=10), st.floats(1.01, 3.0))
def test_explicit_weight_applies_to_exactly_the_group(text: str, w: float) -> None:
    weight = float(f"{w:.3f}")
    got = parse_weights(f"x({text}:{weight})y")
    assert [t for t, _ in got] == ["x", text, "y"]
    assert [w for _, w in got] == pytest.approx([1.0, weight, 1.0])


@pytest.fixture(scope="module")
def tok() -> InstantClipTokenizer:
    return InstantClipTokenizer()


def test_instant_clip_tokenizer_specials_and_weights(tok: InstantClipTokenizer) -> None:
    assert (tok.bos_id, tok.eos_id) == (49406, 49407)
    plain = tok.encode("a red apple")
    assert len(plain) == 3
    # a weighted piece keeps the same ids and carries its weight on each of its tokens
    weighted = weighted_tokens(tok, "a (red:1.3) apple")
    assert [t for t, _ in weighted] == plain
    assert [w for _, w in weighted] == pytest.approx([1.0, 1.3, 1.0])


def test_chunking_a_200_token_prompt(tok: InstantClipTokenizer) -> None:
    word = tok.encode("apple")
    assert len(word) == 1
    prompt = " ".join(["apple"] * 200)
    chunks = tokenize_chunks(tok, [prompt, "a red apple"], pad_id=tok.eos_id)
    assert chunks.ids.shape == (2, 3, CONTEXT_LENGTH)
    ids = chunks.ids[0]
    assert (ids[:, 0] == tok.bos_id).all()
    # chunks 1 and 2 are full (75 tokens + EOS at 76); chunk 3 holds the remaining 50 then EOS and padding
    assert (ids[:2, 1:76] == word[0]).all() and (ids[:2, 76] == tok.eos_id).all()
    assert (ids[2, 1:51] == word[0]).all() and (ids[2, 51:] == tok.eos_id).all()
    # the short prompt gets its own chunk plus two empty ones (BOS, EOS, padding)
    short = chunks.ids[1]
    assert short[0, :5].tolist() == [tok.bos_id, *tok.encode("a red apple"), tok.eos_id]
    assert (short[1:, 0] == tok.bos_id).all() and (short[1:, 1:] == tok.eos_id).all()
    assert chunks.num_chunks == 3


def test_chunk_exact_boundary_and_padding_id() -> None:
    tokens = [(5, 1.0)] * CHUNK_TOKENS
    ids, weights = chunk_tokens(tokens, bos_id=1, eos_id=2, pad_id=0)
    assert len(ids) == 1 and ids[0] == [1] + [5] * 75 + [2]
    ids, _ = chunk_tokens(tokens + [(6, 2.0)], bos_id=1, eos_id=2, pad_id=0)
    assert len(ids) == 2 and ids[1][:4] == [1, 6, 2, 0] and len(ids[1]) == CONTEXT_LENGTH
    ids, weights = chunk_tokens([], bos_id=1, eos_id=2, pad_id=0)
    assert ids == [[1, 2] + [0] * 75] and weights == [[1.0] * 77]


def test_apply_weights_is_comfyui_interpolation() -> None:
    torch.manual_seed(0)
    z, z_empty = torch.randn(2, 77, 8), torch.randn(77, 8)
    w = torch.ones(2, 77)
    assert torch.equal(apply_weights(z, z_empty, w), z)
    w[0, 3] = 1.5
    out = apply_weights(z, z_empty, w)
    torch.testing.assert_close(out[0, 3], z_empty[3] + 1.5 * (z[0, 3] - z_empty[3]))
    assert torch.equal(out[1], z[1]) and torch.equal(out[0, :3], z[0, :3])
    w[0, 4] = 0.0
    torch.testing.assert_close(apply_weights(z, z_empty, w)[0, 4], z_empty[4])


@given(st.text(alphabet="ab ()[]\\", max_size=30))
def test_any_bracket_soup_parses_and_keeps_the_letters(text: str) -> None:
    got = parse_weights(text)
    joined = "".join(t for t, _ in got)
    # brackets are syntax (or escaped literals); letters and spaces all survive, in order
    assert [c for c in joined if c in "ab "] == [c for c in text if c in "ab "]
    assert all(w > 0 for _, w in got)


@pytest.fixture(scope="module")
def hf_ascii_clip_tokenizer(tmp_path_factory: pytest.TempPathFactory, tok: InstantClipTokenizer):
    """transformers' CLIPTokenizer (what diffusers uses) on the real CLIP vocabulary, restricted to ASCII.

    No CLIP vocab.json/merges.txt can be downloaded here, so they are rebuilt from instant-clip-tokenizer:
    CLIP's vocabulary is 512 byte tokens, then one token per BPE merge in merge order, so token ``512 + r`` is
    merge ``r``'s result, and its pair is what BPE with the earlier merges makes of its characters (exactly two
    symbols). Tokens that are not printable ASCII are left out; ASCII text never uses them, so on ASCII prompts
    this tokenizer must agree with the full one.
    """
    from transformers import CLIPTokenizer

    tokens: dict[int, str] = {}
    for i in range(tok.bos_id):
        text = tok.decode([i])
        end = text.endswith(" ")
        core = text[:-1] if end else text
        if core and all(33 <= ord(c) <= 126 for c in core):
            tokens[i] = core + ("</w>" if end else "")
    ranks: dict[tuple[str, str], int] = {}

    def bpe(symbols: list[str]) -> list[str]:
        while len(symbols) > 1:
            pairs = [(ranks.get((a, b)), j) for j, (a, b) in enumerate(zip(symbols, symbols[1:]))]
            known = [(r, j) for r, j in pairs if r is not None]
            if not known:
                break
            _, j = min(known)
            symbols = symbols[:j] + [symbols[j] + symbols[j + 1]] + symbols[j + 2 :]
        return symbols

    merges = []
    for i, text in tokens.items():
        if i < 512:
            continue
        word = text.removesuffix("</w>")
        symbols = [*word[:-1], word[-1] + ("</w>" if text.endswith("</w>") else "")]
        pair = bpe(symbols)
        assert len(pair) == 2, (i, text, pair)
        ranks[(pair[0], pair[1])] = i
        merges.append(pair)
    folder = tmp_path_factory.mktemp("clip_ascii")
    vocab = {t: i for i, t in tokens.items()} | {"<|startoftext|>": tok.bos_id, "<|endoftext|>": tok.eos_id}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), pad_token="<|endoftext|>")


ASCII_PROMPTS = [
    "a photograph of an astronaut riding a horse",
    "A Red   APPLE, on the table!!",
    "masterpiece, best quality, 1girl, highly detailed",
    "don't stop-me now... it's 3.14159 o'clock #hashtag @user",
    "  leading and trailing  ",
    "tabs\tand\nnewlines, e-mail me: x@y.z; ok?",
    "a" * 60,
]


@pytest.mark.parametrize("prompt", ASCII_PROMPTS)
def test_instant_clip_matches_transformers_clip_tokenizer(hf_ascii_clip_tokenizer, tok, prompt: str) -> None:
    assert tok.encode(prompt) == hf_ascii_clip_tokenizer(prompt, add_special_tokens=False)["input_ids"]


@settings(max_examples=40, deadline=None)
@given(st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=60))
def test_instant_clip_matches_transformers_on_any_ascii(hf_ascii_clip_tokenizer, tok, prompt: str) -> None:
    assert tok.encode(prompt) == hf_ascii_clip_tokenizer(prompt, add_special_tokens=False)["input_ids"]
