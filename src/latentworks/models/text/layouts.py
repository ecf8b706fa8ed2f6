"""Key maps for text encoders: open_clip text tower <-> Hugging Face CLIP, prefix normalisation, detection.

Text encoders run as transformers' own classes (see :mod:`latentworks.models.text.clip`), so the target
layout here is transformers' (``text_model.encoder.layers.{i}.self_attn.q_proj.weight`` ...). Checkpoints in
the wild come in two CLIP layouts:

- **HF** (OpenAI CLIP-L in SD1 files, SDXL's first encoder, SD3/FLUX ``clip_l``/``clip_g`` files). Old SD1
  files lack the ``text_model.`` prefix; :func:`normalize_hf_clip` adds it and drops the ``position_ids``
  buffer.
- **open_clip** (SD2's OpenCLIP-H and SDXL's OpenCLIP-bigG in LDM single files):
  ``transformer.resblocks.{i}.attn.in_proj_weight`` (q, k, v stacked along dim 0), ``ln_1``/``ln_2``,
  ``mlp.c_fc``/``mlp.c_proj``, ``token_embedding.weight``, ``positional_embedding`` (a bare parameter),
  ``ln_final`` and ``text_projection`` stored as ``(width, proj)`` and used as ``x @ P``, i.e. the
  *transpose* of HF's ``text_projection.weight`` ``(proj, width)``. ``logit_scale`` belongs to the
  contrastive head, not the text tower; it is dropped on the way to HF and listed in :data:`OPEN_CLIP_IGNORED`.

Both directions are strict: an unknown key, a missing key or an inconsistent shape raises an error naming the
key. State dicts passed in are *un-prefixed* component dicts (``transformer.resblocks.0...`` or
``text_model.embeddings...``), i.e. with ``conditioner.embedders.1.model.`` / ``cond_stage_model.`` removed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Literal

import torch
from torch import Tensor

TextEncoderKind = Literal["clip_l", "clip_h", "clip_g", "t5xxl", "qwen3_4b", "qwen25vl_7b"]
TextEncoderLayout = Literal["hf", "open_clip", "t5", "qwen"]

# Width of the CLIP text tower -> which encoder it is (OpenAI ViT-L/14, OpenCLIP ViT-H/14, ViT-bigG/14).
CLIP_KIND_BY_WIDTH: dict[int, TextEncoderKind] = {768: "clip_l", 1024: "clip_h", 1280: "clip_g"}

# Width of a Qwen3 decoder (HF names, QK-norm attention) -> which model it is (Qwen3-4B: Z-Image's encoder).
QWEN3_KIND_BY_WIDTH: dict[int, TextEncoderKind] = {2560: "qwen3_4b"}
# Width of a Qwen2.5 decoder (q/k/v biases, no QK-norm) -> which model (Qwen2.5-VL-7B: Qwen-Image's encoder).
QWEN25_KIND_BY_WIDTH: dict[int, TextEncoderKind] = {3584: "qwen25vl_7b"}
# What each Qwen kind is, for messages that say which file belongs to which model.
QWEN_KIND_TITLES: dict[str, str] = {
    "qwen3_4b": "Qwen3-4B, Z-Image's text encoder (e.g. qwen_3_4b.safetensors)",
    "qwen25vl_7b": "Qwen2.5-VL-7B, Qwen-Image's text encoder (e.g. qwen_2.5_vl_7b.safetensors)",
}
_QWEN_LM_PREFIXES = ("model.language_model.", "language_model.", "model.")  # as models.text.qwen
_QWEN_NOT_LM = ("visual.", "model.visual.", "lm_head.")

# open_clip tensors that are not part of the text tower and are dropped when converting to HF.
OPEN_CLIP_IGNORED = ("logit_scale",)
# HF buffers (not parameters) found in older files; dropped on normalisation.
HF_IGNORED = ("text_model.embeddings.position_ids",)

# Per-layer renames, open_clip suffix -> HF suffix (in_proj is handled separately: it splits in three).
_LAYER_RENAMES: dict[str, str] = {
    "ln_1.weight": "layer_norm1.weight",
    "ln_1.bias": "layer_norm1.bias",
    "ln_2.weight": "layer_norm2.weight",
    "ln_2.bias": "layer_norm2.bias",
    "attn.out_proj.weight": "self_attn.out_proj.weight",
    "attn.out_proj.bias": "self_attn.out_proj.bias",
    "mlp.c_fc.weight": "mlp.fc1.weight",
    "mlp.c_fc.bias": "mlp.fc1.bias",
    "mlp.c_proj.weight": "mlp.fc2.weight",
    "mlp.c_proj.bias": "mlp.fc2.bias",
}
_TOP_RENAMES: dict[str, str] = {
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
}
_OC_LAYER = re.compile(r"^transformer\.resblocks\.(\d+)\.(.+)$")
_HF_LAYER = re.compile(r"^text_model\.encoder\.layers\.(\d+)\.(.+)$")


class TextEncoderKeyError(ValueError):
    """A text-encoder state dict does not have the keys or shapes its layout requires."""


def open_clip_to_hf(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Convert an open_clip text tower (un-prefixed) to transformers' CLIP layout. Strict.

    ``in_proj_weight`` (3W, W) splits into q/k/v (W, W) each; ``text_projection`` (W, P) is transposed to
    HF's ``text_projection.weight`` (P, W).
    """
    out: dict[str, Tensor] = {}
    unknown: list[str] = []
    for key, value in state_dict.items():
        if key in OPEN_CLIP_IGNORED:
            continue
        if key in _TOP_RENAMES:
            out[_TOP_RENAMES[key]] = value
            continue
        if key == "text_projection":
            out["text_projection.weight"] = value.t().contiguous()  # (W, P) -> (P, W)
            continue
        m = _OC_LAYER.match(key)
        if m is None:
            unknown.append(key)
            continue
        i, suffix = m.group(1), m.group(2)
        prefix = f"text_model.encoder.layers.{i}."
        if suffix in ("attn.in_proj_weight", "attn.in_proj_bias"):
            if value.shape[0] % 3 != 0:
                raise TextEncoderKeyError(
                    f"open_clip key {key!r} has shape {tuple(value.shape)}; dim 0 must stack q, k, v (3 x width)"
                )
            kind = "weight" if suffix.endswith("weight") else "bias"
            for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0), strict=True):
                out[f"{prefix}self_attn.{name}.{kind}"] = part.contiguous()
        elif suffix in _LAYER_RENAMES:
            out[prefix + _LAYER_RENAMES[suffix]] = value
        else:
            unknown.append(key)
    if unknown:
        raise TextEncoderKeyError(
            f"unexpected keys for an open_clip text tower: {unknown[:5]} ({len(unknown)} in all); "
            "pass the text tower only, with its prefix (e.g. 'conditioner.embedders.1.model.') removed"
        )
    _check_complete_hf(out, source="open_clip")
    return out


def hf_to_open_clip(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Convert transformers' CLIP layout to the open_clip text tower (the inverse of :func:`open_clip_to_hf`)."""
    sd = normalize_hf_clip(state_dict)
    _check_complete_hf(sd, source="hf")
    inverse_top = {v: k for k, v in _TOP_RENAMES.items()}
    inverse_layer = {v: k for k, v in _LAYER_RENAMES.items()}
    out: dict[str, Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, Tensor]] = {}
    unknown: list[str] = []
    for key, value in sd.items():
        if key in inverse_top:
            out[inverse_top[key]] = value
            continue
        if key == "text_projection.weight":
            out["text_projection"] = value.t().contiguous()  # (P, W) -> (W, P)
            continue
        m = _HF_LAYER.match(key)
        if m is None:
            unknown.append(key)
            continue
        i, suffix = m.group(1), m.group(2)
        qm = re.match(r"^self_attn\.([qkv])_proj\.(weight|bias)$", suffix)
        if qm is not None:
            qkv.setdefault((i, qm.group(2)), {})[qm.group(1)] = value
        elif suffix in inverse_layer:
            out[f"transformer.resblocks.{i}.{inverse_layer[suffix]}"] = value
        else:
            unknown.append(key)
    if unknown:
        raise TextEncoderKeyError(
            f"unexpected keys for a HF CLIP text model: {unknown[:5]} ({len(unknown)} in all)"
        )
    for (i, kind), parts in qkv.items():
        out[f"transformer.resblocks.{i}.attn.in_proj_{kind}"] = torch.cat(
            [parts["q"], parts["k"], parts["v"]], 0
        )
    return out


def normalize_hf_clip(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Add the ``text_model.`` prefix old SD1 files lack; drop the ``position_ids`` buffer."""
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if key.startswith(("embeddings.", "encoder.", "final_layer_norm.")):
            key = "text_model." + key
        if key in HF_IGNORED:
            continue
        out[key] = value
    return out


def _check_complete_hf(sd: Mapping[str, Tensor], *, source: str) -> None:
    """Every layer present has all 16 tensors; the top-level tensors are there; widths agree."""
    required_top = (
        "text_model.embeddings.token_embedding.weight",
        "text_model.embeddings.position_embedding.weight",
        "text_model.final_layer_norm.weight",
        "text_model.final_layer_norm.bias",
    )
    missing = [k for k in required_top if k not in sd]
    layers = sorted({int(m.group(1)) for k in sd if (m := _HF_LAYER.match(k))})
    if layers != list(range(len(layers))) or not layers:
        raise TextEncoderKeyError(f"{source} CLIP text tower: layer indices {layers[:8]}... are not 0..N-1")
    suffixes = [f"self_attn.{p}_proj.{w}" for p in ("q", "k", "v", "out") for w in ("weight", "bias")] + [
        f"{n}.{w}" for n in ("layer_norm1", "layer_norm2", "mlp.fc1", "mlp.fc2") for w in ("weight", "bias")
    ]
    for i in layers:
        missing += [
            f"text_model.encoder.layers.{i}.{s}"
            for s in suffixes
            if f"text_model.encoder.layers.{i}.{s}" not in sd
        ]
    if missing:
        raise TextEncoderKeyError(
            f"{source} CLIP text tower is incomplete: missing {missing[:5]} ({len(missing)} in all); "
            "is the file truncated or only part of a checkpoint?"
        )
    width = sd["text_model.embeddings.token_embedding.weight"].shape[1]
    for key in (
        "text_model.embeddings.position_embedding.weight",
        "text_model.encoder.layers.0.self_attn.q_proj.weight",
    ):
        if sd[key].shape[-1] != width:
            raise TextEncoderKeyError(f"{key} has shape {tuple(sd[key].shape)}; expected last dim {width}")


def detect_text_encoder(shapes: Mapping[str, tuple[int, ...]]) -> tuple[TextEncoderKind, TextEncoderLayout]:
    """Which text encoder a state dict holds, and in which layout, from key names and shapes alone.

    ``shapes`` maps un-prefixed keys to tensor shapes (``{k: tuple(v.shape)}``). CLIP towers are told apart by
    width (768 -> ``clip_l``, 1024 -> ``clip_h``, 1280 -> ``clip_g``); any T5 encoder (``encoder.block.*``)
    is ``t5xxl``; a Qwen3 decoder (``[model.]embed_tokens`` + ``layers.0.self_attn.q_norm``, HF names) is told
    apart by width (2560 -> ``qwen3_4b``); a Qwen2.5 decoder (q_proj bias, no QK-norm; ``model.``,
    ``model.language_model.`` or bare, with or without the VL vision tower) too (3584 -> ``qwen25vl_7b``).
    """
    keys = set(shapes)
    if any(k.startswith("encoder.block.") for k in keys):
        return "t5xxl", "t5"
    bare: dict[str, tuple[int, ...]] = {}
    for k, v in shapes.items():
        if k.startswith(_QWEN_NOT_LM):
            continue
        bare[next((k[len(p) :] for p in _QWEN_LM_PREFIXES if k.startswith(p)), k)] = v
    if (
        "embed_tokens.weight" in bare
        and "layers.0.self_attn.q_proj.bias" in bare
        and not any(".q_norm." in k for k in bare)
    ):
        width25 = bare["embed_tokens.weight"][1]
        if width25 not in QWEN25_KIND_BY_WIDTH:
            raise TextEncoderKeyError(
                f"Qwen2.5 text model of width {width25} is not one of the known encoders {QWEN25_KIND_BY_WIDTH} "
                "(3584 Qwen2.5-VL-7B, Qwen-Image's text encoder)"
            )
        return QWEN25_KIND_BY_WIDTH[width25], "qwen"
    if "embed_tokens.weight" in bare and "layers.0.self_attn.q_norm.weight" in bare:
        qwen_width = bare["embed_tokens.weight"][1]
        if qwen_width not in QWEN3_KIND_BY_WIDTH:
            raise TextEncoderKeyError(
                f"Qwen3 text model of width {qwen_width} is not one of the known encoders {QWEN3_KIND_BY_WIDTH} "
                "(2560 Qwen3-4B, Z-Image's text encoder)"
            )
        return QWEN3_KIND_BY_WIDTH[qwen_width], "qwen"
    if "token_embedding.weight" in keys and any(k.startswith("transformer.resblocks.") for k in keys):
        width = shapes["token_embedding.weight"][1]
        layout: TextEncoderLayout = "open_clip"
    else:
        emb = next(
            (
                k
                for k in ("text_model.embeddings.token_embedding.weight", "embeddings.token_embedding.weight")
                if k in keys
            ),
            None,
        )
        if emb is None:
            sample = sorted(keys)[:3]
            raise TextEncoderKeyError(
                f"not a CLIP or T5 (or Qwen3) text encoder state dict (first keys: {sample}); expected "
                "'text_model.embeddings.token_embedding.weight' (HF CLIP), 'token_embedding.weight' + "
                "'transformer.resblocks.*' (open_clip), 'encoder.block.*' (T5) or 'model.embed_tokens.weight' + "
                "'model.layers.*' (Qwen3). Strip the checkpoint prefix first."
            )
        width = shapes[emb][1]
        layout = "hf"
    if width not in CLIP_KIND_BY_WIDTH:
        raise TextEncoderKeyError(
            f"CLIP text tower of width {width} is not one of the known encoders {CLIP_KIND_BY_WIDTH} "
            "(768 CLIP-L, 1024 OpenCLIP-H, 1280 OpenCLIP-bigG)"
        )
    return CLIP_KIND_BY_WIDTH[width], layout


def to_hf_clip(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Any supported CLIP layout -> normalised HF layout (detects the layout first)."""
    _, layout = detect_text_encoder({k: tuple(v.shape) for k, v in state_dict.items()})
    if layout == "open_clip":
        return open_clip_to_hf(state_dict)
    if layout == "hf":
        sd = normalize_hf_clip(state_dict)
        _check_complete_hf(sd, source="hf")
        return sd
    raise TextEncoderKeyError(f"expected a CLIP text encoder, got a {layout} encoder state dict")
