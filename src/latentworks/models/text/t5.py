"""T5 encoders (T5 v1.1 XXL for SD3 and FLUX) from checkpoint state dicts, and the T5 tokenizer.

As for CLIP (see :mod:`latentworks.models.text.clip`), the network is transformers' ``T5EncoderModel``: the
reference implementation, exact and maintained. Its config is derived from the state dict's shapes:
``d_model`` and vocabulary from the token embedding, ``num_heads`` from the relative-attention bias
``(num_buckets, num_heads)``, ``d_kv`` = q rows / heads, ``d_ff`` from the feed-forward input, layers from the
highest ``encoder.block.{i}``; a gated feed-forward (``wi_0``/``wi_1``) means T5 v1.1 (``gated-gelu``), a single
``wi`` the original T5 (``relu``).

The tokenizer is a SentencePiece model that no PyPI package ships, so the user provides it: a
``tokenizer.json`` (the ``tokenizers`` format, as in diffusers' ``tokenizer_2``/``tokenizer_3`` folders), or
such a folder. A missing file is a clear error naming what to put where.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor
from transformers import T5Config, T5EncoderModel

from latentworks.models.text.layouts import TextEncoderKeyError

T5_TOKENIZER_HELP = (
    "SD3 and FLUX need the T5 tokenizer, which cannot be downloaded here. Provide a 'tokenizer.json' for "
    "T5 v1.1 (google/t5-v1_1-xxl): either the file itself, or a diffusers model folder's 'tokenizer_2' "
    "(FLUX) / 'tokenizer_3' (SD3) folder containing it, e.g. "
    "'<model>/tokenizer_3/tokenizer.json'."
)


def _normalize_t5(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Fill in the tied embedding under both names (files carry ``shared.weight``, ``encoder.embed_tokens.weight`` or both)."""
    sd = dict(state_dict)
    if "shared.weight" not in sd and "encoder.embed_tokens.weight" in sd:
        sd["shared.weight"] = sd["encoder.embed_tokens.weight"]
    if "shared.weight" not in sd:
        raise TextEncoderKeyError(
            "T5 state dict has neither 'shared.weight' nor 'encoder.embed_tokens.weight' (the token embedding); "
            "is the file truncated or not a T5 encoder?"
        )
    sd.pop("encoder.embed_tokens.weight", None)
    return sd


def t5_config_from_shapes(shapes: Mapping[str, tuple[int, ...]]) -> T5Config:
    """Build a ``T5Config`` (encoder only) from a T5 state dict's shapes."""
    vocab, d_model = shapes["shared.weight"]
    blocks = [int(m.group(1)) for k in shapes if (m := re.match(r"encoder\.block\.(\d+)\.", k))]
    if not blocks:
        raise TextEncoderKeyError("T5 state dict has no 'encoder.block.*' tensors")
    bias_key = "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
    if bias_key not in shapes:
        raise TextEncoderKeyError(f"T5 state dict lacks {bias_key!r}, which gives the number of heads")
    num_buckets, num_heads = shapes[bias_key]
    inner = shapes["encoder.block.0.layer.0.SelfAttention.q.weight"][0]
    gated = "encoder.block.0.layer.1.DenseReluDense.wi_0.weight" in shapes
    wi = "wi_0" if gated else "wi"
    d_ff = shapes[f"encoder.block.0.layer.1.DenseReluDense.{wi}.weight"][0]
    return T5Config(
        vocab_size=vocab,
        d_model=d_model,
        d_kv=inner // num_heads,
        d_ff=d_ff,
        num_layers=max(blocks) + 1,
        num_heads=num_heads,
        relative_attention_num_buckets=num_buckets,
        relative_attention_max_distance=128,
        feed_forward_proj="gated-gelu" if gated else "relu",
        is_encoder_decoder=False,
        use_cache=False,
        dropout_rate=0.0,
    )


def build_t5(
    state_dict: Mapping[str, Tensor],
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> T5EncoderModel:
    """A transformers ``T5EncoderModel`` holding ``state_dict`` (un-prefixed), config derived from its shapes."""
    sd = _normalize_t5(state_dict)
    config = t5_config_from_shapes({k: tuple(v.shape) for k, v in sd.items()})
    with torch.device("meta"):
        model = T5EncoderModel(config)
    sd = {k: v.to(device=device, dtype=dtype) for k, v in sd.items()}
    sd["encoder.embed_tokens.weight"] = sd["shared.weight"]
    result = model.load_state_dict(sd, strict=False, assign=True)
    if result.missing_keys or result.unexpected_keys:
        raise TextEncoderKeyError(
            f"T5 state dict does not fit the derived config: missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
        )
    model.encoder.embed_tokens = model.shared  # keep them tied after assign
    return model.eval().requires_grad_(False)


class T5Tokenizer:
    """A T5 SentencePiece tokenizer read from a local ``tokenizer.json``; appends ``</s>``, pads with ``<pad>``."""

    def __init__(self, path: str | Path) -> None:
        from tokenizers import Tokenizer

        self.path = find_t5_tokenizer(path)
        self._tok = Tokenizer.from_file(str(self.path))
        pad = self._tok.token_to_id("<pad>")
        self.pad_id = 0 if pad is None else pad

    def __call__(self, prompts: list[str], max_length: int) -> Tensor:
        """Token ids (B, max_length): truncated to ``max_length`` (keeping ``</s>``), padded with ``<pad>``."""
        tok = self._tok
        tok.enable_truncation(max_length)
        tok.enable_padding(length=max_length, pad_id=self.pad_id, pad_token="<pad>")
        try:
            encodings = tok.encode_batch(prompts, add_special_tokens=True)
        finally:
            tok.no_truncation()
            tok.no_padding()
        return torch.tensor([e.ids for e in encodings], dtype=torch.long)


def find_t5_tokenizer(path: str | Path | None) -> Path:
    """Resolve ``path`` (a tokenizer.json, a tokenizer folder or a diffusers model folder) to a tokenizer.json."""
    if path is None:
        raise FileNotFoundError(f"no T5 tokenizer given. {T5_TOKENIZER_HELP}")
    p = Path(path)
    candidates = (
        [p]
        if p.is_file()
        else [
            p / "tokenizer.json",
            p / "tokenizer_3" / "tokenizer.json",
            p / "tokenizer_2" / "tokenizer.json",
        ]
    )
    for c in candidates:
        # SD3's tokenizer_2 is CLIP-G's BPE tokenizer (vocab.json + merges.txt), which may carry a tokenizer.json too
        if c.is_file() and not (c.parent != p and (c.parent / "merges.txt").is_file()):
            return c
    raise FileNotFoundError(
        f"no T5 tokenizer.json found at {p} (looked for {[str(c) for c in candidates]}). {T5_TOKENIZER_HELP}"
    )


@torch.no_grad()
def t5_encode(model: T5EncoderModel, input_ids: Tensor) -> Tensor:
    """Last hidden states (B, L, d_model), attending to every position (as SD3 and FLUX do: no mask)."""
    return model(input_ids=input_ids).last_hidden_state
