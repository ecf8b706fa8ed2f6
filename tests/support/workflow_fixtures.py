"""Tiny random-weight model files for running real workflows (ComfyUI templates) in seconds on CPU.

A workflow names its model files in its loader widgets (``CheckpointLoaderSimple.ckpt_name``,
``UNETLoader.unet_name``, ``CLIPLoader.clip_name`` + ``type``, ``VAELoader.vae_name``...). :func:`plan_models`
reads those names from an editor (UI) or API workflow, decides from each name (and the CLIP ``type``) which
family and role the file plays, and :func:`write_models` writes a tiny random model of that family in the
family's *released* layout under exactly that name in ComfyUI's folders:

===========================  ===========================================================================
role                         layout written
===========================  ===========================================================================
``checkpoint:sd1``           LDM single file: U-Net 768-wide cross-attention, CLIP-L (HF), 4-channel VAE
``checkpoint:sd2[-v]``       LDM single file: U-Net 1024-wide context, OpenCLIP-H (open_clip), A1111 v marker
``checkpoint:sdxl``          LDM single file: U-Net 2048-wide context + 6 size ids, CLIP-L + OpenCLIP-bigG
``checkpoint:sdxl-refiner``  the same with 1280-wide context, 5 ids and OpenCLIP-bigG alone
``checkpoint:sd3``           SAI single file: MM-DiT, ``text_encoders.{clip_l,clip_g,t5xxl}``, 16-ch VAE
``checkpoint:flux-*``        ComfyUI all-in-one FLUX.1 file: BFL transformer, CLIP-L + T5, 16-ch VAE
``diffusion:flux-*``         BFL FLUX.1 transformer alone (``diffusion_models/``)
``diffusion:zimage``         the released Z-Image file (``diffusion_models/``)
``diffusion:qwenimage``      a Qwen-Image (or -Edit) transformer in ComfyUI's names (:mod:`support.qwenimage`)
``text:clip_l|clip_g``       HF CLIP text towers at the real widths (768 / 1280) and vocabulary (49408)
``text:t5xxl``               a T5 encoder, 4096 wide as T5-XXL, one thin layer, with ``<name>.tokenizer.json``
``text:qwen3_4b``            a 64-wide Qwen3 (see :data:`QWEN_WIDTH`: the caller maps that width to Qwen3-4B)
``text:qwen25vl_7b``         a 128-wide Qwen2.5-VL with its vision tower, ComfyUI's names (read as Qwen2.5-VL-7B)
``vae:flux``/``vae:sd``      16-channel (FLUX ``ae.safetensors``, also Z-Image's) / 4-channel LDM VAEs
``vae:qwenimage``            the Qwen-Image VAE in ComfyUI's Wan names (``qwen_image_vae.safetensors``)
``lora:<family>``            a rank-2 LoRA on one attention projection of that family's tiny model
===========================  ===========================================================================

Widths that family detection reads (CLIP 768/1280, U-Net context dims, T5 4096) are real; depths and
everything else are tiny. Each distinct role is built once into a cache folder and hard-linked (or copied)
under every name that asks for it. Names no rule recognises (Wan, LTX, HiDream...) raise
:class:`UnsupportedModel`, which tells a caller the template is outside the families latentworks supports.

Use from Python (``plan_models`` + ``write_models``) or as a script::

    python tests/support/workflow_fixtures.py WORKFLOW.json --models-dir models --input-dir input
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

# Qwen3 detection is by width (2560 = Qwen3-4B); the tiny one is 64 wide, mapped to qwen3_4b while a
# workflow runs (see :func:`tiny_qwen_is_qwen3_4b`).
QWEN_WIDTH = 64
T5_WIDTH = 4096  # SD3 pads CLIP features to T5's width; FLUX reads T5 tokens; both need the real 4096
T5_VOCAB = ["<pad>", "</s>", "<unk>", "a", "the", "of", "and", "photo", "red", "apple", "cat", "dog"]

# Loader node -> (input names holding model files, folder the file goes into).
MODEL_INPUTS: dict[str, tuple[tuple[str, ...], str]] = {
    "CheckpointLoaderSimple": (("ckpt_name",), "checkpoints"),
    "UNETLoader": (("unet_name",), "diffusion_models"),
    "CLIPLoader": (("clip_name",), "text_encoders"),
    "DualCLIPLoader": (("clip_name1", "clip_name2"), "text_encoders"),
    "TripleCLIPLoader": (("clip_name1", "clip_name2", "clip_name3"), "text_encoders"),
    "VAELoader": (("vae_name",), "vae"),
    "LoraLoader": (("lora_name",), "loras"),
    "LoraLoaderModelOnly": (("lora_name",), "loras"),
}
# Loader kinds latentworks has no model support for (their templates are outside the supported families).
UNSUPPORTED_LOADERS = frozenset(
    {
        "ControlNetLoader", "DiffControlNetLoader", "CLIPVisionLoader", "StyleModelLoader", "ModelPatchLoader",
        "ImageOnlyCheckpointLoader", "unCLIPCheckpointLoader", "GLIGENLoader", "HypernetworkLoader",
        "UpscaleModelLoader", "PhotoMakerLoader", "LatentUpscaleModelLoader", "LTXVAudioVAELoader",
        "LTXAVTextEncoderLoader", "AudioEncoderLoader", "DiffusersLoader",
    }
)  # fmt: skip


class UnsupportedModel(ValueError):
    """A workflow file whose family or kind has no tiny builder (latentworks does not support it)."""


@dataclass(frozen=True)
class ModelFile:
    folder: str  # ComfyUI folder under models/: checkpoints, diffusion_models, text_encoders, vae, loras
    name: str  # the file name the workflow asks for
    role: str  # "checkpoint:sdxl", "text:t5xxl", ... (see the module docstring)


# -- which family a file name is -------------------------------------------------------------------------

_CHECKPOINT_RULES = [
    (r"sd_xl_refiner|sdxl.*refiner", "sdxl-refiner"),
    (r"sd_xl|sdxl|juggernaut|dreamshaperxl", "sdxl"),
    (r"sd3", "sd3"),
    (r"v2-1_768|sd21-768|768-v-ema", "sd2-v"),
    (r"v2-1|sd21|512-base-ema", "sd2"),
    (r"flux1?[-_.].*schnell", "flux-schnell"),
    (r"flux1?[-_.]", "flux-dev"),
    (r"v1-5|sd15|sd_1\.5|v1_5|dreamshaper_8|realisticvision|anything|counterfeit|512-inpainting|v1-5-pruned",
     "sd1"),
]  # fmt: skip
# FLUX.1 tools and Kontext take image conditioning (extra input channels, reference latents) that
# latentworks does not build yet; their files are recognised so the reason is named.
_FLUX_TOOLS = r"^flux1?[-_.].*(fill|canny|depth|kontext|redux)|^flux\.1-fill"
_DIFFUSION_RULES = [
    (_FLUX_TOOLS, "unsupported"),
    (r"^flux1[-_.].*schnell", "flux-schnell"),
    (r"^flux1[-_.]|^flux\.1", "flux-dev"),
    (r"^z[-_]image", "zimage"),
    (r"^qwen[-_]image", "qwenimage"),
]
_TEXT_RULES = [
    (r"^clip_l|clip-vit-large", "clip_l"),
    (r"^clip_g", "clip_g"),
    (r"^t5xxl|^t5-v1_1-xxl|^google_t5", "t5xxl"),
    (r"^qwen_3_4b", "qwen3_4b"),
    (r"^qwen_2\.5_vl_7b", "qwen25vl_7b"),
]
_VAE_RULES = [
    (r"^ae\.|^flux_vae|^z_image_vae", "flux"),
    (r"sdxl_vae|sdxl-vae", "sdxl"),
    (r"vae-ft-mse|vae-ft-ema|kl-f8|sd-vae", "sd"),
    (r"^qwen_image_vae", "qwenimage"),
]
_CLIP_TYPES = {"stable_diffusion", "sdxl", "sd3", "flux", "lumina2", "qwen_image"}


def _match(rules: list[tuple[str, str]], name: str) -> str | None:
    low = Path(name).name.lower()
    return next((kind for pattern, kind in rules if re.search(pattern, low)), None)


def role_of(node_type: str, input_name: str, file_name: str, clip_type: str | None = None) -> str:
    """The role of ``file_name`` for ``node_type.input_name``; :class:`UnsupportedModel` when none fits."""
    where = f"{node_type}.{input_name}={file_name!r}"
    if node_type == "CheckpointLoaderSimple":
        kind = _match(_CHECKPOINT_RULES, file_name)
        if kind is None or kind == "unsupported":
            raise UnsupportedModel(
                f"{where}: no tiny builder for this checkpoint (family unknown or unsupported)"
            )
        return f"checkpoint:{kind}"
    if node_type == "UNETLoader":
        kind = _match(_DIFFUSION_RULES, file_name)
        if kind == "unsupported":
            raise UnsupportedModel(f"{where}: FLUX.1 Fill/Canny/Depth/Kontext models are not supported yet")
        if kind is None:
            raise UnsupportedModel(f"{where}: not a diffusion model of a supported family")
        return f"diffusion:{kind}"
    if node_type in ("CLIPLoader", "DualCLIPLoader", "TripleCLIPLoader"):
        kind = _match(_TEXT_RULES, file_name)
        if kind is None or (clip_type is not None and clip_type not in _CLIP_TYPES):
            raise UnsupportedModel(f"{where} (type {clip_type!r}): not a text encoder of a supported family")
        return f"text:{kind}"
    if node_type == "VAELoader":
        kind = _match(_VAE_RULES, file_name)
        if kind is None:
            raise UnsupportedModel(f"{where}: not a VAE of a supported family")
        return f"vae:{kind}"
    if node_type in ("LoraLoader", "LoraLoaderModelOnly"):
        if re.search(r"(canny|depth)[-_.]?(dev[-_.])?lora", Path(file_name).name.lower()):
            raise UnsupportedModel(f"{where}: control LoRAs (extra input channels) are not supported yet")
        return "lora"  # decided by the model it patches, in plan_models
    raise UnsupportedModel(f"{where}: no tiny builder for {node_type}")


# -- reading the loaders of a workflow --------------------------------------------------------------------


def _ui_nodes(workflow: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    yield from workflow.get("nodes") or []
    for sub in (workflow.get("definitions") or {}).get("subgraphs") or []:
        yield from sub.get("nodes") or []


def loader_inputs(workflow: Mapping[str, Any], registry: Any) -> list[tuple[str, dict[str, Any]]]:
    """``[(node type, {input: value})]`` for every active node of ``workflow`` (UI or API format), with widget
    values read by name through ``registry``'s schemas. Muted (2) and bypassed (4) UI nodes are skipped."""
    from latentworks.graph.ui_workflow import is_ui_workflow, widget_values_by_name

    out: list[tuple[str, dict[str, Any]]] = []
    if not is_ui_workflow(workflow):
        return [(str(n.get("class_type")), dict(n.get("inputs") or {})) for n in workflow.values()]
    for node in _ui_nodes(workflow):
        ntype = str(node.get("type"))
        if node.get("mode") in (2, 4):
            continue
        spec = registry.get(ntype)
        widgets = node.get("widgets_values")
        values = widget_values_by_name(spec, widgets) if spec is not None and widgets is not None else {}
        out.append((ntype, values))
    return out


# Partner (cloud) API nodes: a template using them needs a paid service, not local models.
_API_NODE = re.compile(
    r"^(Gemini|Kling|OpenAI|Tripo|Luma|Runway|Pika|Pixverse|Vidu|Veo|Recraft|Ideogram|Stability|ByteDance|"
    r"Minimax|Moonvalley|Rodin|Grok|Sora|Topaz|Bria|Wan.*Api|Flux.*(Pro|Ultra|Max)|BFL|Nano|Hunyuan3D.*Api)"
)


def plan_models(workflow: Mapping[str, Any], registry: Any) -> list[ModelFile]:
    """The model files ``workflow`` loads, each with its role. Raises :class:`UnsupportedModel` for a loader of
    a kind latentworks lacks, a file of an unsupported family, or a partner (cloud) API node."""
    files: list[ModelFile] = []
    families: list[str] = []
    loras: list[tuple[str, str]] = []
    for ntype, values in loader_inputs(workflow, registry):
        if _API_NODE.match(ntype) and ntype not in registry:
            raise UnsupportedModel(f"{ntype}: a partner API node (a cloud service, not a local model)")
        if ntype in UNSUPPORTED_LOADERS or (ntype.endswith("Loader") and ntype not in MODEL_INPUTS):
            raise UnsupportedModel(f"{ntype}: latentworks has no models of this kind")
        if ntype not in MODEL_INPUTS:
            continue
        names, folder = MODEL_INPUTS[ntype]
        for input_name in names:
            value = values.get(input_name)
            if not isinstance(value, str) or not value:
                continue
            role = role_of(ntype, input_name, value, values.get("type"))
            if role == "lora":
                loras.append((folder, value))
                continue
            files.append(ModelFile(folder, value, role))
            if role.startswith(("checkpoint:", "diffusion:")):
                families.append(role.split(":", 1)[1])
    for folder, name in loras:
        if not families:
            raise UnsupportedModel(f"LoRA {name!r}: no model of a supported family to patch")
        files.append(ModelFile(folder, name, f"lora:{families[0]}"))
    return files


def input_images(workflow: Mapping[str, Any], registry: Any) -> list[str]:
    """Image file names that LoadImage / LoadImageMask nodes read from the input folder."""
    return sorted(
        {
            str(values["image"])
            for ntype, values in loader_inputs(workflow, registry)
            if ntype in ("LoadImage", "LoadImageMask") and isinstance(values.get("image"), str)
        }
    )


# -- builders ---------------------------------------------------------------------------------------------


def _random_state(module: torch.nn.Module, seed: int, scale: float = 0.02) -> dict[str, torch.Tensor]:
    """Random tensors with ``module``'s state-dict shapes (norm weights near 1): no slow default init."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in module.state_dict().items():
        if not v.is_floating_point():
            out[k] = torch.zeros(v.shape, dtype=v.dtype)
        elif "norm" in k and k.endswith("weight") or k.endswith(".scale"):
            out[k] = 1.0 + 0.1 * torch.randn(v.shape, generator=g)
        else:
            out[k] = scale * torch.randn(v.shape, generator=g)
    return out


def _meta(cls: Any, *args: Any) -> Any:
    with torch.device("meta"):
        return cls(*args)


def tiny_clip(width: int, seed: int, *, projection: bool) -> dict[str, torch.Tensor]:
    """An HF CLIP text tower of the real ``width`` (768 CLIP-L, 1280 bigG) and vocabulary, one thin layer."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from latentworks.models.text.layouts import normalize_hf_clip

    cfg = CLIPTextConfig(
        vocab_size=49408, hidden_size=width, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=width // 64, max_position_embeddings=77, projection_dim=width,
        hidden_act="quick_gelu" if width == 768 else "gelu", bos_token_id=49406, eos_token_id=49407,
    )  # fmt: skip
    model = _meta(CLIPTextModelWithProjection if projection else CLIPTextModel, cfg)
    # float16 as released files are: half the bytes of the 49408-token embedding; loaders upcast
    return {k: v.half() for k, v in normalize_hf_clip(_random_state(model, seed)).items()}


def tiny_t5(seed: int = 5) -> dict[str, torch.Tensor]:
    """A T5 encoder 4096 wide (T5-XXL's width, which SD3 and FLUX read) with one thin layer, on :data:`T5_VOCAB`."""
    from transformers import T5Config, T5EncoderModel

    cfg = T5Config(
        vocab_size=len(T5_VOCAB), d_model=T5_WIDTH, d_kv=8, d_ff=16, num_layers=1, num_heads=2,
        feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False, dropout_rate=0.0,
    )  # fmt: skip
    sd = _random_state(_meta(T5EncoderModel, cfg), seed)
    sd["encoder.embed_tokens.weight"] = sd["shared.weight"].clone()  # tied in T5; stored twice in files
    return sd


def write_t5_tokenizer(path: Path) -> Path:
    """A word-level stand-in for T5's tokenizer.json over :data:`T5_VOCAB` (appends ``</s>``, pads ``<pad>``)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(T5_VOCAB)}, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tok.save(str(path))
    return path


def tiny_qwen3_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A Qwen3 decoder :data:`QWEN_WIDTH` wide with the real head_dim and vocabulary, in ComfyUI's layout."""
    from support.qwen import tiny_qwen3

    return {f"model.{k}": v for k, v in tiny_qwen3(seed, width=QWEN_WIDTH).state_dict().items()}


def tiny_vae(latent_channels: int, seed: int) -> tuple[Any, dict[str, torch.Tensor]]:
    """(config, our-layout state) of a tiny KL autoencoder: 8x downsampling as the released ones."""
    from latentworks.models.autoencoder import Autoencoder, AutoencoderConfig

    flux = latent_channels == 16
    cfg = AutoencoderConfig(
        latent_channels=latent_channels, channels=(32, 32, 32, 32), layers_per_block=1,
        use_quant_conv=not flux, use_post_quant_conv=not flux,
    )  # fmt: skip
    return cfg, _random_state(_meta(Autoencoder, cfg), seed)


def _vae_ldm(latent_channels: int, seed: int) -> dict[str, torch.Tensor]:
    from latentworks.checkpoints.keymaps.sd_ldm import ours_to_vae_ldm

    cfg, state = tiny_vae(latent_channels, seed)
    return ours_to_vae_ldm(state, cfg)


def _unet(family: str) -> tuple[Any, dict[str, torch.Tensor]]:
    from latentworks.models.unet import UNet, UNetConfig

    xl, sd2 = family.startswith("sdxl"), family.startswith("sd2")
    refiner = family == "sdxl-refiner"  # bigG tokens only (1280 wide), 5 size/aesthetic ids
    # SD 2.x and SDXL files store no head count: detection assumes 64-wide heads, so the widths are multiples
    cfg = UNetConfig(
        channels=(64, 128) if xl or sd2 else (32, 64), layers_per_block=1, transformer_depth=(0, 1),
        mid_transformer_depth=1, num_heads=None if xl or sd2 else 8, head_dim=64 if xl or sd2 else None,
        context_dim=1280 if refiner else 2048 if xl else 1024 if sd2 else 768,
        use_linear_projection=xl or sd2, pooled_dim=1280 if xl else 0, num_time_ids=5 if refiner else 6,
    )  # fmt: skip
    return cfg, _random_state(_meta(UNet, cfg), 1)


def _flux_config(family: str) -> Any:
    from latentworks.models.flux import FluxConfig

    return FluxConfig(
        in_channels=16, width=64, num_heads=2, double_depth=1, single_depth=1, context_dim=T5_WIDTH,
        pooled_dim=768, axes_dim=(8, 12, 12), guidance_embed=family == "flux-dev",
    )  # fmt: skip


def _flux_bfl(family: str) -> dict[str, torch.Tensor]:
    from latentworks.checkpoints.keymaps.flux_bfl import ours_to_flux_bfl
    from latentworks.models.flux import Flux

    cfg = _flux_config(family)
    return ours_to_flux_bfl(_random_state(_meta(Flux, cfg), 2), cfg)


def _zimage_comfy() -> dict[str, torch.Tensor]:
    from latentworks.checkpoints.keymaps.zimage_comfy import ours_to_zimage_comfy
    from latentworks.models.zimage import PRESETS, ZImage

    cfg = replace(PRESETS["tiny"], in_channels=16, context_dim=QWEN_WIDTH)
    return ours_to_zimage_comfy(_random_state(_meta(ZImage, cfg), 3, scale=0.05), cfg)


def _checkpoint(family: str, path: Path) -> None:
    from latentworks import families
    from latentworks.families.load import CheckpointParts, write_single_file
    from latentworks.models.mmdit import MMDiT, MMDiTConfig

    fam = families.get(family)
    texts: dict[str, Any]
    if family in ("sd2", "sd2-v"):
        dcfg, dstate = _unet(family)
        vae_channels = 4
        texts = {"clip_h": tiny_clip(1024, 12, projection=False)}  # OpenCLIP-H, written in open_clip layout
    elif family == "sdxl-refiner":
        dcfg, dstate = _unet(family)
        vae_channels = 4
        texts = {"clip_g": tiny_clip(1280, 11, projection=True)}
    elif family in ("sd1", "sdxl"):
        dcfg, dstate = _unet(family)
        vae_channels = 4
        texts = {"clip_l": tiny_clip(768, 10, projection=False)}
        if family == "sdxl":
            texts["clip_g"] = tiny_clip(1280, 11, projection=True)
    elif family == "sd3":
        dcfg = MMDiTConfig(
            # SD3 files store no head count: detection reads depth and takes width = 64 * depth heads
            in_channels=16, sample_size=16, patch_size=2, width=128, depth=2, num_heads=2, context_dim=T5_WIDTH,
            pooled_dim=2048, pos_embed_max_size=16, qk_norm="rms_norm",
        )  # fmt: skip
        dstate = _random_state(_meta(MMDiT, dcfg), 4)
        vae_channels = 16
        texts = {
            "clip_l": tiny_clip(768, 10, projection=True),
            "clip_g": tiny_clip(1280, 11, projection=True),
            "t5xxl": tiny_t5(),
        }
    elif family.startswith("flux"):
        from latentworks.models.flux import Flux

        dcfg = _flux_config(family)
        dstate = _random_state(_meta(Flux, dcfg), 2)
        vae_channels = 16
        texts = {"clip_l": tiny_clip(768, 10, projection=False), "t5xxl": tiny_t5()}
    else:
        raise UnsupportedModel(f"no tiny single-file builder for {family}")
    vcfg, vstate = tiny_vae(vae_channels, 6)
    parts = CheckpointParts(
        source=path, family=fam, variant=family, denoiser_config=dcfg, denoiser_state=dstate,
        vae_config=vcfg, vae_state=vstate, latent_format=fam.latent_format, prediction=fam.prediction,
        sampling=fam.sampling.to_dict() if hasattr(fam.sampling, "to_dict") else {}, text_encoders=texts,
    )  # fmt: skip
    write_single_file(parts, path)
    if "t5xxl" in texts:
        write_t5_tokenizer(path.with_name(path.stem + ".tokenizer.json"))


def _lora(family: str) -> dict[str, torch.Tensor]:
    """A rank-2 LoRA on one attention projection of the tiny model of ``family`` (ComfyUI/kohya key names)."""
    g = torch.Generator().manual_seed(9)
    if family in ("sd1", "sdxl"):
        # the first transformer of the second level: input_blocks.3.1 in LDM (768 / 2048 wide context)
        key = "lora_unet_input_blocks_3_1_transformer_blocks_0_attn2_to_k"
        width, ctx = (128, 2048) if family == "sdxl" else (64, 768)
        return {
            f"{key}.lora_down.weight": 0.1 * torch.randn(2, ctx, generator=g),
            f"{key}.lora_up.weight": 0.1 * torch.randn(width, 2, generator=g),
            f"{key}.alpha": torch.tensor(2.0),
        }
    if family == "zimage":
        key = "diffusion_model.layers.0.attention.out"
        return {
            f"{key}.lora_A.weight": 0.1 * torch.randn(2, 64, generator=g),
            f"{key}.lora_B.weight": 0.1 * torch.randn(64, 2, generator=g),
        }
    if family.startswith("flux"):
        key = "diffusion_model.double_blocks.0.img_attn.proj"
        return {
            f"{key}.lora_A.weight": 0.1 * torch.randn(2, 64, generator=g),
            f"{key}.lora_B.weight": 0.1 * torch.randn(64, 2, generator=g),
        }
    if family == "qwenimage":  # diffusers names (ComfyUI's Qwen-Image LoRAs, e.g. Lightning, use them too)
        from support.qwenimage import TRANSFORMER as QWEN_TRANSFORMER

        key = "diffusion_model.transformer_blocks.0.attn.to_out.0"
        width = QWEN_TRANSFORMER.width
        return {
            f"{key}.lora_A.weight": 0.1 * torch.randn(2, width, generator=g),
            f"{key}.lora_B.weight": 0.1 * torch.randn(width, 2, generator=g),
        }
    raise UnsupportedModel(f"no tiny LoRA builder for {family}")


def build(role: str, path: Path) -> None:
    """Write the tiny file for ``role`` at ``path`` (and a T5 tokenizer next to T5 files)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    kind, _, family = role.partition(":")
    tensors: dict[str, torch.Tensor]
    if kind == "checkpoint":
        _checkpoint(family, path)
        return
    if kind == "diffusion":
        if family == "qwenimage":
            from support.qwenimage import tiny_states

            tensors = tiny_states()[0]
        else:
            tensors = _zimage_comfy() if family == "zimage" else _flux_bfl(family)
    elif kind == "text":
        if family == "t5xxl":
            tensors = tiny_t5()
            write_t5_tokenizer(path.with_name(path.stem + ".tokenizer.json"))
        elif family == "qwen3_4b":
            tensors = tiny_qwen3_state()
        elif family == "qwen25vl_7b":
            from support.qwenimage import comfy_text_encoder_state, tiny_states

            tensors = comfy_text_encoder_state(tiny_states()[2])
        else:
            tensors = tiny_clip(768 if family == "clip_l" else 1280, 10, projection=family == "clip_g")
    elif kind == "vae" and family == "qwenimage":
        from latentworks.checkpoints.keymaps.qwenimage_vae import qwenimage_vae_to_wan
        from support.qwenimage import VAE, tiny_states

        tensors = qwenimage_vae_to_wan(tiny_states()[1], VAE)
    elif kind == "vae":
        tensors = _vae_ldm(16 if family == "flux" else 4, 6)
    elif kind == "lora":
        tensors = _lora(family)
    else:
        raise UnsupportedModel(f"unknown role {role!r}")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))


def _place(src: Path, dst: Path) -> None:
    if dst.exists():
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def write_models(files: list[ModelFile], models_dir: Path, cache_dir: Path) -> list[Path]:
    """Write each of ``files`` under ``models_dir/<folder>/<name>``, building each role once in ``cache_dir``."""
    written = []
    for f in files:
        cached = cache_dir / f"{f.role.replace(':', '_')}.safetensors"
        if not cached.exists():
            build(f.role, cached)
        dst = models_dir / f.folder / f.name
        _place(cached, dst)
        tokenizer = cached.with_name(cached.stem + ".tokenizer.json")
        if tokenizer.exists():
            _place(tokenizer, dst.with_name(dst.stem + ".tokenizer.json"))
        written.append(dst)
    return written


def write_input_images(names: list[str], input_dir: Path, size: int = 64) -> list[Path]:
    """A small RGBA test picture (with a transparent corner, so masks are not empty) under each name."""
    import numpy as np
    from PIL import Image

    out = []
    yy, xx = np.mgrid[0:size, 0:size]
    rgba = np.stack([xx * 4 % 256, yy * 4 % 256, (xx + yy) * 2 % 256, np.full_like(xx, 255)], -1)
    rgba[: size // 4, : size // 4, 3] = 0
    for name in names:
        path = input_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        picture = Image.fromarray(rgba.astype("uint8"), "RGBA")
        if path.suffix.lower() in (".jpg", ".jpeg"):
            picture.convert("RGB").save(path, format="JPEG")
        elif path.suffix.lower() == ".webp":
            picture.save(path, format="WEBP")
        else:
            picture.save(path, format="PNG")  # whatever the name says, LoadImage reads the content
        out.append(path)
    return out


@contextmanager
def tiny_qwen_is_qwen3_4b() -> Iterator[None]:
    """While active, a :data:`QWEN_WIDTH`-wide Qwen3 file is read as Qwen3-4B (Z-Image's text encoder), and the
    tiny Qwen2.5-VL of :mod:`support.qwenimage` as Qwen2.5-VL-7B (Qwen-Image's)."""
    from latentworks.models.text import layouts
    from support.qwenimage import TEXT_WIDTH as QWEN25_WIDTH

    had = QWEN_WIDTH in layouts.QWEN3_KIND_BY_WIDTH
    had25 = QWEN25_WIDTH in layouts.QWEN25_KIND_BY_WIDTH
    layouts.QWEN3_KIND_BY_WIDTH[QWEN_WIDTH] = "qwen3_4b"
    layouts.QWEN25_KIND_BY_WIDTH[QWEN25_WIDTH] = "qwen25vl_7b"  # and the tiny Qwen2.5-VL as Qwen-Image's
    try:
        yield
    finally:
        if not had:
            layouts.QWEN3_KIND_BY_WIDTH.pop(QWEN_WIDTH, None)
        if not had25:
            layouts.QWEN25_KIND_BY_WIDTH.pop(QWEN25_WIDTH, None)


def main(argv: list[str] | None = None) -> int:
    import json

    from latentworks.nodes import default_registry

    p = argparse.ArgumentParser(description="write tiny random model files for the loaders of a workflow")
    p.add_argument("workflow", type=Path)
    p.add_argument("--models-dir", type=Path, default=Path("models"))
    p.add_argument("--input-dir", type=Path, default=Path("input"))
    p.add_argument("--cache-dir", type=Path, default=None, help="where each role is built once")
    args = p.parse_args(argv)
    workflow = json.loads(args.workflow.read_text(encoding="utf-8"))
    registry = default_registry()
    try:
        files = plan_models(workflow, registry)
    except UnsupportedModel as e:
        print(f"cannot write fixtures: {e}", file=sys.stderr)
        return 2
    for path in write_models(files, args.models_dir, args.cache_dir or args.models_dir / ".tiny-cache"):
        print(path)
    for path in write_input_images(input_images(workflow, registry), args.input_dir):
        print(path)
    return 0


if __name__ == "__main__":
    # run as a script, sys.path[0] is tests/support, whose tokenizers.py would shadow the `tokenizers`
    # package; tests/ instead (for `support.qwen`)
    sys.path[0] = str(Path(__file__).resolve().parents[1])
    sys.exit(main())
