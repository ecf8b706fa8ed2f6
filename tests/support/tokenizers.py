"""Small tokenizers written to disk for oracle tests (no hub): a CLIP BPE folder that diffusers' pipelines and
our prompt encoders both read, and a word-level T5 ``tokenizer.json``.

The CLIP vocabulary holds the 512 byte tokens in the real vocabulary's order plus merges for ``words``, so
prompts made of those words tokenize to a handful of ids on both sides.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

WORDS = ("a", "red", "apple", "photo", "of", "cat", "the", "on", "table", "fox", "in", "snow")


def byte_chars() -> list[str]:
    """The 256 byte symbols of byte-level BPE, in CLIP's vocabulary order."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    codes, extra = printable[:], 0
    for b in range(256):
        if b not in printable:
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def write_clip_tokenizer(folder: Path, pad_token: str = "<|endoftext|>", words: Sequence[str] = WORDS) -> int:
    """Write a CLIP tokenizer folder (vocab.json, merges.txt, configs); returns the vocabulary size."""
    from transformers import CLIPTokenizer

    chars = byte_chars()
    vocab = chars + [c + "</w>" for c in chars]
    merges: list[tuple[str, str]] = []
    for word in words:
        parts = [*word[:-1], word[-1] + "</w>"]
        cur = parts[0]
        for part in parts[1:]:
            if (cur, part) not in merges:
                merges.append((cur, part))
                if cur + part not in vocab:
                    vocab.append(cur + part)
            cur += part
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    tok = CLIPTokenizer(
        str(folder / "vocab.json"), str(folder / "merges.txt"), pad_token=pad_token, model_max_length=77
    )
    tok.save_pretrained(str(folder))
    return len(vocab)


def write_t5_tokenizer(folder: Path, words: Sequence[str] = WORDS) -> Path:
    """Write a word-level T5-style ``tokenizer.json`` (pad 0, eos 1, unk 2); returns its path."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2} | {w: i + 3 for i, w in enumerate(words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    return folder / "tokenizer.json"


def t5_tokenizer_for_diffusers(path: Path):  # noqa: ANN201 - a transformers fast tokenizer
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_file=str(path), pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )
