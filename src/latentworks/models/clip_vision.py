"""CLIP vision encoders (OpenAI ViT-L/14, OpenCLIP ViT-H/14 and ViT-bigG/14) from transformers, configured from
the weights' shapes, plus CLIPImageProcessor's preprocessing in torch.

Layouts read (all normalised to transformers' ``CLIPVisionModelWithProjection`` names):

- **transformers / diffusers** (``image_encoder/`` folders): ``vision_model.embeddings.patch_embedding.weight``,
  ``vision_model.encoder.layers.{i}.self_attn.q_proj.weight`` ..., ``visual_projection.weight``;
- **ComfyUI** ``models/clip_vision/*.safetensors`` (clip_vision_h, clip_vision_g): the same names, sometimes
  without the ``vision_model.`` prefix;
- **open_clip** (the ``embedder.model.visual.`` tower of SD 2.1 unCLIP single files): ``conv1.weight``,
  ``transformer.resblocks.{i}.attn.in_proj_weight`` (q, k, v stacked), ``ln_pre``/``ln_post``, ``proj`` (W, P).

Preprocessing follows transformers' CLIPImageProcessor: resize the shortest side to ``image_size`` (bicubic),
center crop, scale to [0, 1] and normalise with CLIP's mean and std.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

# CLIPImageProcessor's defaults (OpenAI's training statistics), also used by OpenCLIP's ViT-H/bigG.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

_HF_TOP = ("embeddings.", "encoder.", "pre_layrnorm.", "post_layernorm.")
_OC_LAYER = re.compile(r"^transformer\.resblocks\.(\d+)\.(.+)$")
_OC_LAYER_RENAMES = {
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "attn.out_proj": "self_attn.out_proj",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
}
_OC_TOP_RENAMES = {
    "class_embedding": "vision_model.embeddings.class_embedding",
    "conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "ln_pre.weight": "vision_model.pre_layrnorm.weight",
    "ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "ln_post.weight": "vision_model.post_layernorm.weight",
    "ln_post.bias": "vision_model.post_layernorm.bias",
}
_IGNORED = ("vision_model.embeddings.position_ids", "logit_scale")


class ClipVisionKeyError(ValueError):
    """A CLIP vision state dict lacks the keys or shapes its layout requires."""


@dataclass(frozen=True)
class ClipVisionOutput:
    """What CLIPVisionEncode hands on (ComfyUI's CLIP_VISION_OUTPUT).

    Attributes:
        image_embeds: the projected image embedding, (B, projection_dim) (1024 for ViT-H, 1280 for bigG).
        last_hidden_state: the final layer's tokens before ``post_layernorm``, (B, 1 + patches, width).
        penultimate_hidden_states: the second-to-last layer's tokens, (B, 1 + patches, width).
    """

    image_embeds: Tensor
    last_hidden_state: Tensor
    penultimate_hidden_states: Tensor
    augmentor: Any = None  # an unCLIP checkpoint's ImageEmbeddingAugmentor when the encoder came with one


def open_clip_visual_to_hf(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Convert an open_clip visual tower (prefix removed: ``conv1.weight``...) to transformers' names. Strict."""
    out: dict[str, Tensor] = {}
    unknown: list[str] = []
    for key, value in state_dict.items():
        if key in _OC_TOP_RENAMES:
            out[_OC_TOP_RENAMES[key]] = value
        elif key == "proj":
            out["visual_projection.weight"] = value.t().contiguous()  # (W, P) -> (P, W)
        elif (m := _OC_LAYER.match(key)) is not None:
            prefix, suffix = f"vision_model.encoder.layers.{m.group(1)}.", m.group(2)
            if suffix in ("attn.in_proj_weight", "attn.in_proj_bias"):
                kind = suffix.rsplit("_", 1)[1]
                for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0), strict=True):
                    out[f"{prefix}self_attn.{name}.{kind}"] = part.contiguous()
            elif (base := suffix.rsplit(".", 1)[0]) in _OC_LAYER_RENAMES:
                out[prefix + _OC_LAYER_RENAMES[base] + "." + suffix.rsplit(".", 1)[1]] = value
            else:
                unknown.append(key)
        else:
            unknown.append(key)
    if unknown:
        raise ClipVisionKeyError(
            f"unexpected keys for an open_clip visual tower: {unknown[:5]} ({len(unknown)} in all); pass the "
            "visual tower only, with its prefix (e.g. 'embedder.model.visual.') removed"
        )
    return out


def normalize_clip_vision(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Any supported layout (see the module docstring) -> transformers' ``CLIPVisionModelWithProjection`` names."""
    sd = {k: v for k, v in state_dict.items() if k not in _IGNORED}
    if "conv1.weight" in sd:
        return open_clip_visual_to_hf(sd)
    out: dict[str, Tensor] = {}
    for key, value in sd.items():
        out["vision_model." + key if key.startswith(_HF_TOP) else key] = value
    if "vision_model.embeddings.patch_embedding.weight" not in out:
        raise ClipVisionKeyError(
            "this is not a CLIP vision model: no 'vision_model.embeddings.patch_embedding.weight' (transformers), "
            f"'embeddings.patch_embedding.weight' (ComfyUI) or 'conv1.weight' (open_clip); first keys: {list(sd)[:5]}"
        )
    return out


def clip_vision_config(state_dict: Mapping[str, Tensor]) -> CLIPVisionConfig:
    """The transformers config of a normalised state dict, read from its shapes.

    Head count is width / 64 (every released CLIP ViT); the activation is quick_gelu for OpenAI's ViT-L/14
    (width 1024, 24 layers) and gelu for OpenCLIP's towers (ViT-H/14 1280 x 32, ViT-bigG/14 1664 x 48).
    """
    patch = state_dict["vision_model.embeddings.patch_embedding.weight"]  # (W, C, P, P)
    width, channels, patch_size = int(patch.shape[0]), int(patch.shape[1]), int(patch.shape[2])
    positions = int(state_dict["vision_model.embeddings.position_embedding.weight"].shape[0])
    grid = math.isqrt(positions - 1)
    if grid * grid != positions - 1:
        raise ClipVisionKeyError(f"CLIP vision: {positions} positions is not 1 + a square grid of patches")
    layers = {
        int(m.group(1)) for k in state_dict if (m := re.match(r"vision_model\.encoder\.layers\.(\d+)\.", k))
    }
    if not layers or "vision_model.encoder.layers.0.mlp.fc1.weight" not in state_dict:
        raise ClipVisionKeyError("CLIP vision: no 'vision_model.encoder.layers.{i}.*' keys")
    proj = state_dict.get("visual_projection.weight")
    if proj is None:
        raise ClipVisionKeyError("CLIP vision: no 'visual_projection.weight': the image embedding needs it")
    num_layers = max(layers) + 1
    return CLIPVisionConfig(
        hidden_size=width,
        intermediate_size=int(state_dict["vision_model.encoder.layers.0.mlp.fc1.weight"].shape[0]),
        num_hidden_layers=num_layers,
        num_attention_heads=max(width // 64, 1),
        num_channels=channels,
        image_size=grid * patch_size,
        patch_size=patch_size,
        projection_dim=int(proj.shape[0]),
        hidden_act="quick_gelu" if (width, num_layers) == (1024, 24) else "gelu",
    )


class ClipVision:
    """A CLIP vision encoder with its preprocessing; ``encode(images)`` gives a :class:`ClipVisionOutput`."""

    def __init__(self, model: CLIPVisionModelWithProjection, augmentor: Any = None) -> None:
        self.model = model.eval()
        self.augmentor = augmentor  # set by unCLIPCheckpointLoader: the checkpoint's embedding statistics
        size = model.config.image_size
        self.image_size = size if isinstance(size, int) else int(size[0])  # type: ignore[index]

    @classmethod
    def from_state_dict(
        cls, state_dict: Mapping[str, Tensor], *, dtype: torch.dtype | None = None
    ) -> ClipVision:
        """Build from weights in any supported layout; the config comes from their shapes."""
        sd = normalize_clip_vision(state_dict)
        config = clip_vision_config(sd)
        with torch.device("meta"):
            model = CLIPVisionModelWithProjection(config)
        missing, unexpected = model.load_state_dict(sd, strict=False, assign=True)
        missing = [k for k in missing if k not in _IGNORED]
        if missing or unexpected:
            raise ClipVisionKeyError(
                f"CLIP vision weights do not fit the model read from their shapes: missing {missing[:5]}, "
                f"unexpected {unexpected[:5]}"
            )
        # position_ids is a non-persistent buffer left on meta: rebuild it
        emb = model.vision_model.embeddings
        emb.position_ids = torch.arange(emb.num_positions).expand((1, -1))
        if dtype is not None:
            nn.Module.to(model, dtype=dtype)
        return cls(model)

    @torch.no_grad()
    def encode(self, images: Tensor, *, crop: bool = True) -> ClipVisionOutput:
        """``images`` (B, H, W, 3) in [0, 1] (ComfyUI's IMAGE) -> embeddings; ``crop=False`` squashes the whole
        image to a square instead of center-cropping it."""
        param = next(self.model.parameters())
        pixels = preprocess(images, size=self.image_size, crop=crop).to(param.device, param.dtype)
        out = self.model(pixel_values=pixels, output_hidden_states=True)
        return ClipVisionOutput(
            image_embeds=out.image_embeds.float(),
            last_hidden_state=out.last_hidden_state.float(),
            penultimate_hidden_states=out.hidden_states[-2].float(),
            augmentor=self.augmentor,
        )


def preprocess(images: Tensor, *, size: int = 224, crop: bool = True) -> Tensor:
    """CLIPImageProcessor in torch: (B, H, W, 3) in [0, 1] -> (B, 3, size, size) normalised pixels.

    ``crop=True``: resize the shortest side to ``size`` (bicubic, antialiased; the long side as
    ``int(size * long / short)``), then take the centre ``size`` x ``size``; ``crop=False``: resize straight to
    ``size`` x ``size``.
    """
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"CLIP vision expects images (B, H, W, 3), got shape {tuple(images.shape)}")
    x = images.movedim(-1, 1).float()  # (B, 3, H, W)
    h, w = x.shape[-2:]
    if crop:
        new_h, new_w = (size, int(size * w / h)) if h <= w else (int(size * h / w), size)
    else:
        new_h, new_w = size, size
    x = F.interpolate(x, size=(new_h, new_w), mode="bicubic", antialias=True, align_corners=False)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    x = x[..., top : top + size, left : left + size].clamp(0, 1)
    # CLIPImageProcessor works on uint8 pixels after resizing: round the same way
    x = torch.round(x * 255) / 255
    mean = torch.tensor(CLIP_MEAN, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std
