"""Tiny random Qwen-Image files in ComfyUI's exact split-file layouts and names, for loader, CLI, node and
workflow tests.

ComfyUI keeps Qwen-Image as three files (the names of its Qwen-Image template and model pages)::

    models/diffusion_models/qwen_image_bf16.safetensors    the transformer, diffusers' tensor names, bare
    models/text_encoders/qwen_2.5_vl_7b.safetensors        Qwen2.5-VL-7B: ``model.layers.*``, ``model.norm``,
                                                           ``model.embed_tokens``, ``visual.*``
    models/vae/qwen_image_vae.safetensors                  the VAE in the original Wan 2.1 names

The tiny models keep every structural feature (16 latent channels, 8x VAE with its temporal resamplers, 128-wide
RoPE heads with the released (16, 56, 56) split, Qwen2.5-VL's head_dim 128 and real vocabulary, so the offline
tokenizer applies) at small widths. Their widths are not the released ones, so detection must be told about
them: call :func:`use_tiny_widths` (a pytest ``monkeypatch``) before loading the files in-process.

>>> files = write_comfy_files(tmp_path)  # doctest: +SKIP
>>> use_tiny_widths(monkeypatch)  # doctest: +SKIP
>>> Pipeline.from_pretrained(files.model, vae=files.vae, text_encoders=[files.text_encoder])  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import Tensor

from latentworks.checkpoints.keymaps.qwenimage_diffusers import qwenimage_to_diffusers
from latentworks.checkpoints.keymaps.qwenimage_vae import qwenimage_vae_to_wan
from latentworks.models.qwenimage import PRESETS, QwenImage, QwenImageConfig
from latentworks.models.qwenimage_vae import QwenImageVAE, QwenImageVAEConfig
from latentworks.models.text import layouts
from support.qwen import tiny_qwen25vl

TEXT_WIDTH = 128  # one 128-wide head, as Qwen2.5-VL-7B's heads (3584 = 28 x 128)
# the released transformer's structure (16 channels, 128-wide heads, RoPE split) at one head and two blocks
TRANSFORMER = replace(PRESETS["qwen-image"], width=128, num_heads=1, depth=2, context_dim=TEXT_WIDTH)
VAE = QwenImageVAEConfig(base_dim=16, num_res_blocks=1)  # 8x, 16 channels, temporal resamplers present
MODEL_NAME = "qwen_image_bf16.safetensors"
TEXT_ENCODER_NAME = "qwen_2.5_vl_7b.safetensors"
VAE_NAME = "qwen_image_vae.safetensors"


@dataclass(frozen=True)
class QwenImageFiles:
    """Paths of the three files, and the states written (diffusers / transformers names, for oracles)."""

    model: Path
    text_encoder: Path
    vae: Path
    transformer_state: dict[str, Tensor]  # diffusers QwenImageTransformer2DModel names
    vae_state: dict[str, Tensor]  # diffusers AutoencoderKLQwenImage names (= ours)
    text_encoder_model: torch.nn.Module  # transformers Qwen2_5_VLForConditionalGeneration


def use_tiny_widths(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let detection take the tiny text width for Qwen2.5-VL-7B's 3584 (text encoder and transformer)."""
    monkeypatch.setitem(layouts.QWEN25_KIND_BY_WIDTH, TEXT_WIDTH, "qwen25vl_7b")


def _perturbed(module: torch.nn.Module, scale: float, seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # zero-initialised layers (adaLN, final layer) and unit norms would hide mistakes
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return module.eval()


def tiny_states(
    seed: int = 0, transformer: QwenImageConfig = TRANSFORMER
) -> tuple[dict[str, Tensor], dict[str, Tensor], torch.nn.Module]:
    """(transformer state in diffusers names, VAE state in diffusers names, transformers Qwen2.5-VL model)."""
    torch.manual_seed(seed)
    net = _perturbed(QwenImage(transformer), 0.05, seed + 1)
    vae = _perturbed(QwenImageVAE(VAE), 0.02, seed + 2)
    text = tiny_qwen25vl(seed, width=TEXT_WIDTH)
    return qwenimage_to_diffusers(net.state_dict(), transformer), dict(vae.state_dict()), text


def comfy_text_encoder_state(model: torch.nn.Module) -> dict[str, Tensor]:
    """A transformers Qwen2.5-VL state in ComfyUI's / the original release's names (``model.layers.*``,
    ``visual.*``; the tiny model's LM head is tied to the embeddings and left out, the released files have an
    untied ``lm_head.weight``, which loading drops either way)."""
    out = {}
    for k, v in model.state_dict().items():
        if k == "lm_head.weight":
            continue
        k = k.replace("model.language_model.", "model.").replace("model.visual.", "visual.")
        out[k] = v.contiguous()
    return out


def write_comfy_files(
    models_dir: Path, *, seed: int = 0, dtype: torch.dtype = torch.bfloat16
) -> QwenImageFiles:
    """Write the three files under ``models_dir/{diffusion_models,text_encoders,vae}/`` in ``dtype`` (ComfyUI's
    bf16 files; pass float32 for oracle tests, which compare against the written states)."""
    transformer, vae, text = tiny_states(seed)
    paths = {
        "model": Path(models_dir) / "diffusion_models" / MODEL_NAME,
        "text_encoder": Path(models_dir) / "text_encoders" / TEXT_ENCODER_NAME,
        "vae": Path(models_dir) / "vae" / VAE_NAME,
    }
    states = {
        "model": transformer,
        "text_encoder": comfy_text_encoder_state(text),
        "vae": qwenimage_vae_to_wan(vae, VAE),
    }
    for name, path in paths.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.to(dtype).contiguous() for k, v in states[name].items()}, str(path))
    if dtype != torch.float32:  # the states handed back are what the files hold
        transformer = {k: v.to(dtype).float() for k, v in transformer.items()}
        vae = {k: v.to(dtype).float() for k, v in vae.items()}
        text = text.to(dtype).float()
    return QwenImageFiles(
        model=paths["model"],
        text_encoder=paths["text_encoder"],
        vae=paths["vae"],
        transformer_state=transformer,
        vae_state=vae,
        text_encoder_model=text,
    )
