"""Prompt handling for CLIP encoders: attention weighting syntax, tokenization, 77-token chunks.

**Weighting syntax** (A1111's, which ComfyUI also reads): ``(x)`` multiplies the weight of ``x`` by 1.1,
``((x))`` by 1.21, ``[x]`` divides it by 1.1, ``(x:1.5)`` multiplies it by 1.5; groups nest and multiply;
``\\(``, ``\\)``, ``\\[``, ``\\]`` and ``\\\\`` are literal characters; an unclosed ``(`` or ``[`` applies to the
rest of the prompt (as A1111 does). :func:`parse_weights` returns ``[(text, weight), ...]`` with adjacent
equal weights merged.

**Tokens**: each weighted piece is tokenized on its own (as A1111/ComfyUI do) and its weight given to each of
its tokens. CLIP tokenization uses the PyPI ``instant-clip-tokenizer`` (the OpenAI BPE vocabulary, bundled), or
a diffusers folder's own ``tokenizer``/``tokenizer_2`` files when given (:class:`HFClipTokenizer`). The two give
the same ids on ASCII text (tested against transformers' ``CLIPTokenizer`` on the real vocabulary rebuilt from
instant-clip's); one known difference: a prompt that spells ``<|endoftext|>`` literally is plain text to
instant-clip but the special token to transformers.

**Chunks**: CLIP sees 77 positions (BOS + 75 tokens + EOS). Longer prompts are cut into chunks of 75 tokens,
each wrapped as ``BOS + tokens + EOS + padding`` and encoded separately; the per-chunk states are then
concatenated along the sequence (ComfyUI/A1111 behaviour; we cut every 75 tokens, without A1111's
look-back for a comma). A batch of prompts with different chunk counts is evened out with empty chunks
(``BOS EOS pad...``), as A1111 does.

**Applying weights** (ComfyUI's rule, not A1111's): ``z = z_empty + w * (z - z_empty)``, where ``z_empty`` is
the encoding of the empty chunk at the same position. A1111 instead scales ``z`` by ``w`` and restores the
original mean; ComfyUI's rule leaves unweighted prompts unchanged and moves weighted tokens away from (or
toward) the unconditional embedding, which is what people tuned their weights for in ComfyUI workflows.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor

CHUNK_TOKENS = 75  # tokens per chunk, between BOS and EOS
CONTEXT_LENGTH = CHUNK_TOKENS + 2  # CLIP's 77 positions

_ATTENTION = re.compile(
    r"""
    \\\( | \\\) | \\\[ | \\\] | \\\\ |   # escaped brackets and backslash
    \\ |                                 # a lone backslash
    \( | \[ |
    :\s*([+-]?(?:\d+\.?\d*|\.\d+))\s*\) | # ':1.2)' closes a group with an explicit weight
    \) | \] |
    [^\\()\[\]:]+ |
    :
    """,
    re.VERBOSE,
)
ROUND_MULTIPLIER = 1.1
SQUARE_MULTIPLIER = 1 / 1.1


def parse_weights(prompt: str) -> list[tuple[str, float]]:
    """Split ``prompt`` into ``(text, weight)`` pieces; see the module docstring for the syntax.

    >>> parse_weights("a (red:1.2) [apple] \\\\(x\\\\)")
    [('a ', 1.0), ('red', 1.2), (' ', 1.0), ('apple', 0.9090909090909091), (' (x)', 1.0)]
    """
    pieces: list[list] = []  # [text, weight]
    round_open: list[int] = []  # index into pieces where each open '(' began
    square_open: list[int] = []

    def scale(start: int, factor: float) -> None:
        for piece in pieces[start:]:
            piece[1] *= factor

    for m in _ATTENTION.finditer(prompt):
        tok, weight = m.group(0), m.group(1)
        if tok.startswith("\\") and len(tok) == 2:
            pieces.append([tok[1], 1.0])
        elif tok == "(":
            round_open.append(len(pieces))
        elif tok == "[":
            square_open.append(len(pieces))
        elif weight is not None and round_open:
            scale(round_open.pop(), float(weight))
        elif tok == ")" and round_open:
            scale(round_open.pop(), ROUND_MULTIPLIER)
        elif tok == "]" and square_open:
            scale(square_open.pop(), SQUARE_MULTIPLIER)
        else:
            pieces.append([tok, 1.0])
    for start in round_open:
        scale(start, ROUND_MULTIPLIER)
    for start in square_open:
        scale(start, SQUARE_MULTIPLIER)

    merged: list[tuple[str, float]] = []
    for text, w in pieces:
        if merged and merged[-1][1] == w:
            merged[-1] = (merged[-1][0] + text, w)
        elif text:
            merged.append((text, w))
    return merged or [("", 1.0)]


class ClipTokenizer(Protocol):
    """What chunking needs from a CLIP BPE tokenizer."""

    bos_id: int
    eos_id: int
    pad_id: int | None  # None: the encoder's own convention (EOS for CLIP-L, 0 for OpenCLIP)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without BOS/EOS."""
        ...


class InstantClipTokenizer:
    """OpenAI's CLIP BPE (49408 tokens) via the PyPI ``instant-clip-tokenizer``. Lowercases its input."""

    pad_id: int | None = None

    def __init__(self) -> None:
        import instant_clip_tokenizer

        self._tok = instant_clip_tokenizer.Tokenizer()
        self.bos_id = int(self._tok.start_of_text())
        self.eos_id = int(self._tok.end_of_text())

    def encode(self, text: str) -> list[int]:
        return [int(i) for i in self._tok.encode(text)]

    def decode(self, ids: list[int]) -> str:
        """Text of ``ids`` (end-of-word marks become spaces; lossy for partial UTF-8 byte tokens)."""
        return str(self._tok.decode(ids))


class HFClipTokenizer:
    """A diffusers folder's CLIP tokenizer (``vocab.json`` + ``merges.txt``, or the ``tokenizer.json`` newer
    transformers save instead), read with transformers, offline."""

    def __init__(self, folder: str | Path) -> None:
        from transformers import CLIPTokenizer

        folder = Path(folder)
        if not has_clip_tokenizer(folder):
            raise FileNotFoundError(
                f"no CLIP tokenizer at {folder}: expected vocab.json and merges.txt, or tokenizer.json, there"
            )
        self._tok = CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
        self.bos_id = int(self._tok.bos_token_id)
        self.eos_id = int(self._tok.eos_token_id)
        self.pad_id = None if self._tok.pad_token_id is None else int(self._tok.pad_token_id)

    def encode(self, text: str) -> list[int]:
        return list(self._tok(text, add_special_tokens=False)["input_ids"])


def has_clip_tokenizer(folder: Path) -> bool:
    """True when ``folder`` holds a CLIP tokenizer transformers can read (slow or fast files)."""
    return (folder / "vocab.json").is_file() or (folder / "tokenizer.json").is_file()


def weighted_tokens(tokenizer: ClipTokenizer, prompt: str) -> list[tuple[int, float]]:
    """Token ids of ``prompt`` (no BOS/EOS), each with the weight of the piece it came from."""
    out: list[tuple[int, float]] = []
    for text, weight in parse_weights(prompt):
        out += [(t, weight) for t in tokenizer.encode(text)]
    return out


@dataclass(frozen=True)
class Chunks:
    """Token ids and weights for one or more prompts, in 77-position chunks.

    ``ids`` and ``weights`` are (B, N, 77): B prompts, N chunks each (shorter prompts padded with empty chunks).
    """

    ids: Tensor
    weights: Tensor

    @property
    def num_chunks(self) -> int:
        return int(self.ids.shape[1])


def chunk_tokens(
    tokens: list[tuple[int, float]], *, bos_id: int, eos_id: int, pad_id: int, min_chunks: int = 1
) -> tuple[list[list[int]], list[list[float]]]:
    """Cut weighted tokens into chunks of ``BOS + 75 tokens + EOS + pad`` (77 ids each)."""
    pieces = [tokens[i : i + CHUNK_TOKENS] for i in range(0, len(tokens), CHUNK_TOKENS)] or [[]]
    pieces += [[] for _ in range(min_chunks - len(pieces))]
    ids, weights = [], []
    for piece in pieces:
        pad = CHUNK_TOKENS - len(piece)
        ids.append([bos_id] + [t for t, _ in piece] + [eos_id] + [pad_id] * pad)
        weights.append([1.0] + [w for _, w in piece] + [1.0] + [1.0] * pad)
    return ids, weights


def tokenize_chunks(tokenizer: ClipTokenizer, prompts: list[str], *, pad_id: int) -> Chunks:
    """Tokenize a batch of prompts with weights into :class:`Chunks` (all prompts get the same chunk count)."""
    toks = [weighted_tokens(tokenizer, p) for p in prompts]
    n = max(max(1, -(-len(t) // CHUNK_TOKENS)) for t in toks)
    ids, weights = [], []
    for t in toks:
        i, w = chunk_tokens(t, bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id, pad_id=pad_id, min_chunks=n)
        ids.append(i)
        weights.append(w)
    return Chunks(ids=torch.tensor(ids, dtype=torch.long), weights=torch.tensor(weights, dtype=torch.float32))


def apply_weights(z: Tensor, z_empty: Tensor, weights: Tensor) -> Tensor:
    """ComfyUI's weighting: ``z_empty + w * (z - z_empty)``. z (..., 77, D), z_empty (77, D), weights (..., 77)."""
    w = weights.to(z.dtype).unsqueeze(-1)  # (..., 77, 1)
    # tokens of weight 1 are returned exactly (z_empty + 1 * (z - z_empty) is only z up to rounding)
    return torch.where(w == 1.0, z, z_empty + w * (z - z_empty))
