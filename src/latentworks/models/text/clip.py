"""CLIP text encoders (OpenAI CLIP-L/14, OpenCLIP ViT-H/14, ViT-bigG/14) from checkpoint state dicts.

Decision: these run as transformers' ``CLIPTextModel`` / ``CLIPTextModelWithProjection``, not our own modules.
They are the reference implementation every SD pipeline was trained against (diffusers uses them), exact to the
bit, maintained upstream, and they already load fp16/bf16 weights correctly; a copy of ours would add code to
keep in sync and a source of silent drift, for no speed-up worth having (text encoding is a few ms per prompt
next to the denoising loop). What we own is the part transformers does not do offline: the config is
*derived from the state dict's shapes* (no config download), and the key maps live in
:mod:`latentworks.models.text.layouts`.

Shapes -> config: width from the token embedding, layers from the highest ``layers.{i}``, heads = width / 64
(true of all three encoders), intermediate from ``fc1``, vocabulary and positions from the embeddings,
projection from ``text_projection.weight``. The activation is ``quick_gelu`` for OpenAI's CLIP-L (width 768)
and ``gelu`` for OpenCLIP H and bigG, as in the original towers.

Token ids: the CLIP BPE vocabulary puts ``<|startoftext|>`` and ``<|endoftext|>`` last (49406, 49407 of
49408); the config uses ``vocab_size - 2`` / ``vocab_size - 1`` unless told otherwise, and the pooled output
is taken at the first end-of-text token (transformers' rule when ``eos_token_id`` is set).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from latentworks.models.text.layouts import TextEncoderKeyError, to_hf_clip

CLIPModel = CLIPTextModel | CLIPTextModelWithProjection
HEAD_DIM = 64  # every CLIP text tower SD uses has 64-wide heads


def clip_config_from_shapes(
    shapes: Mapping[str, tuple[int, ...]],
    *,
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
    pad_token_id: int = 0,
) -> CLIPTextConfig:
    """Build a ``CLIPTextConfig`` from a normalised HF CLIP state dict's shapes."""
    vocab, width = shapes["text_model.embeddings.token_embedding.weight"]
    positions = shapes["text_model.embeddings.position_embedding.weight"][0]
    layer_ids = [
        int(m.group(1)) for k in shapes if (m := re.match(r"text_model\.encoder\.layers\.(\d+)\.", k))
    ]
    if not layer_ids:
        raise TextEncoderKeyError("CLIP state dict has no 'text_model.encoder.layers.*' tensors")
    intermediate = shapes["text_model.encoder.layers.0.mlp.fc1.weight"][0]
    if width % HEAD_DIM != 0:
        raise TextEncoderKeyError(f"CLIP width {width} is not a multiple of the head size {HEAD_DIM}")
    projection = shapes.get("text_projection.weight")
    return CLIPTextConfig(
        vocab_size=vocab,
        hidden_size=width,
        intermediate_size=intermediate,
        num_hidden_layers=max(layer_ids) + 1,
        num_attention_heads=width // HEAD_DIM,
        max_position_embeddings=positions,
        hidden_act="quick_gelu" if width == 768 else "gelu",
        layer_norm_eps=1e-5,
        projection_dim=projection[0] if projection is not None else width,
        bos_token_id=vocab - 2 if bos_token_id is None else bos_token_id,
        eos_token_id=vocab - 1 if eos_token_id is None else eos_token_id,
        pad_token_id=pad_token_id,
    )


def build_clip(
    state_dict: Mapping[str, Tensor],
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    eos_token_id: int | None = None,
) -> CLIPModel:
    """A transformers CLIP text model holding ``state_dict`` (HF or open_clip layout, un-prefixed).

    Returns ``CLIPTextModelWithProjection`` when the state dict has a text projection, else ``CLIPTextModel``.
    The model is built on the meta device and the tensors are assigned (no second copy of the weights),
    strictly: missing or unexpected keys raise.
    """
    sd = to_hf_clip(state_dict)
    config = clip_config_from_shapes({k: tuple(v.shape) for k, v in sd.items()}, eos_token_id=eos_token_id)
    cls = CLIPTextModelWithProjection if "text_projection.weight" in sd else CLIPTextModel
    with torch.device("meta"):
        model = cls(config)
    sd = {k: v.to(device=device, dtype=dtype) for k, v in sd.items()}
    if "text_model.embeddings.token_embedding.weight" not in model.state_dict():
        # transformers 5's CLIPTextModel is the text transformer itself (files keep the 'text_model.' prefix)
        sd = {k.removeprefix("text_model."): v for k, v in sd.items()}
    # transformers keeps position_ids as a non-persistent buffer; it is not in state dicts.
    result = model.load_state_dict(sd, strict=False, assign=True)
    if result.missing_keys or result.unexpected_keys:
        raise TextEncoderKeyError(
            f"CLIP state dict does not fit the derived config: missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
        )
    emb = _text_transformer(model).embeddings
    emb.register_buffer(
        "position_ids",
        torch.arange(config.max_position_embeddings, device=device).unsqueeze(0),
        persistent=False,
    )
    return model.eval().requires_grad_(False)


def _text_transformer(model: CLIPModel) -> Any:
    """The module holding embeddings, encoder and final LN (``model.text_model`` except in transformers 5's CLIPTextModel)."""
    return getattr(model, "text_model", model)


@dataclass(frozen=True)
class ClipOutput:
    """``hidden``: (B, L, D) states of the chosen layer; ``pooled``: (B, P) at the end-of-text token."""

    hidden: Tensor
    pooled: Tensor


@torch.no_grad()
def clip_encode(
    model: CLIPModel,
    input_ids: Tensor,
    *,
    layer: int = -1,
    final_norm: bool = True,
    project_pooled: bool = False,
) -> ClipOutput:
    """Run a CLIP text model on token ids (B, L).

    Args:
        layer: which transformer layer's output to return, Python-style: ``-1`` the last, ``-2`` the
            penultimate ("clip skip 2").
        final_norm: apply the final LayerNorm to that layer's output (SD1 last layer and SD2 penultimate do;
            SDXL and SD3 use the raw penultimate states).
        project_pooled: return the pooled state through ``text_projection`` (SDXL/SD3 pooled vectors);
            a model without a projection uses the identity (as ComfyUI does for CLIP-L files without one).
    """
    text_model = _text_transformer(model)
    out = text_model(input_ids=input_ids, output_hidden_states=True)
    hidden = out.hidden_states[layer] if layer != -1 or not final_norm else out.last_hidden_state  # (B, L, D)
    if final_norm and layer != -1:
        hidden = text_model.final_layer_norm(hidden)
    pooled = out.pooler_output  # (B, D), final-normed state at the first EOS
    if project_pooled and isinstance(model, CLIPTextModelWithProjection):
        pooled = model.text_projection(pooled)  # (B, P)
    return ClipOutput(hidden=hidden, pooled=pooled)
