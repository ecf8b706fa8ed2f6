"""Read any supported checkpoint into one neutral form, :class:`CheckpointParts`, and write it back out.

Inputs (all local files, nothing fetched):

- a single ``.safetensors`` file in the original layouts: LDM/CompVis (SD 1.x/2.x/XL, with the VAE and
  text encoders embedded), SAI (SD3/3.5), BFL (FLUX, diffusion model only) or ComfyUI's all-in-one files;
- a diffusers folder (``model_index.json`` + component folders);
- component files given beside the main one: a VAE (``--vae``), text encoders (``--text-encoder``, CLIP or
  T5) and a T5 tokenizer (``--tokenizer``, a ``tokenizer.json`` or a diffusers folder).

``CheckpointParts`` holds our configs and our-layout state dicts, plus the text encoders' state dicts in the
layout they came in (the prompt encoders detect HF vs open_clip themselves). The pipeline builds models from
it (:func:`latentworks.pipelines.loading.model_from_parts`); :func:`write_single_file` and
:func:`write_diffusers` convert it. Pickled files are refused unless ``allow_pickle=True``.

Memory: safetensors inputs are read through :class:`~latentworks.checkpoints.io.LazyStateDict` with the
target dtype, so each tensor is read, cast and converted once; nothing holds a second full copy.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from latentworks.checkpoints.detect import detect_vae, find_vae_prefix, text_encoder_prefixes
from latentworks.checkpoints.formats import cast_to_fp8, fp8_file_tensors, open_storage
from latentworks.checkpoints.io import PICKLE_SUFFIXES, load_state_dict, save_file_atomic
from latentworks.checkpoints.keymaps.qwenimage_vae import (
    is_qwenimage_vae,
    qwenimage_vae_to_wan,
    read_qwenimage_vae,
)
from latentworks.checkpoints.keymaps.sd_diffusers import vae_from_diffusers
from latentworks.checkpoints.keymaps.sd_ldm import ours_to_vae_ldm, vae_ldm_to_ours
from latentworks.diffusion.latent_formats import LatentFormat
from latentworks.families import REGISTRY, with_prediction
from latentworks.families.architectures import DenoiserConfig
from latentworks.families.base import Architecture, ModelFamily
from latentworks.families.detect import detect_checkpoint
from latentworks.families.diffusers import read_diffusers_folder, write_diffusers_folder
from latentworks.models.autoencoder import Autoencoder
from latentworks.models.qwenimage_vae import QwenImageVAE, QwenImageVAEConfig
from latentworks.models.text.clip import clip_config_from_shapes
from latentworks.models.text.layouts import detect_text_encoder, hf_to_open_clip, open_clip_to_hf, to_hf_clip
from latentworks.models.text.qwen import qwen_for_diffusers
from latentworks.models.text.t5 import t5_config_from_shapes
from latentworks.nn.quant import QuantizedTensor

CHECKPOINT_SUFFIXES = (".safetensors", ".gguf", *PICKLE_SUFFIXES)


@dataclass
class CheckpointParts:
    """A checkpoint in neutral form.

    Attributes:
        source: where it came from (file or folder), for messages.
        family: the registered family (:mod:`latentworks.families`).
        variant: what detection saw (e.g. ``sd1-inpaint``, ``sd3.5-large``).
        denoiser_config / denoiser_state: our config and our-layout tensors.
        vae_config / vae_state: the same for the autoencoder; None when no VAE was found.
        latent_format: the family's latent scale/shift and preview factors.
        prediction / sampling: objective and model-sampling spec (see ``pipelines.loading.sampling_from_meta``).
        text_encoders: ``{"clip_l" | "clip_h" | "clip_g" | "t5xxl": state_dict}`` (HF or open_clip layout).
        tokenizer_dir: a folder (diffusers) or file holding tokenizers, or None (CLIP then uses the bundled
            tokenizer; T5 needs one).
    """

    source: Path
    family: ModelFamily
    variant: str
    denoiser_config: DenoiserConfig
    denoiser_state: Mapping[str, Tensor]
    vae_config: Any
    vae_state: Mapping[str, Tensor] | None
    latent_format: LatentFormat
    prediction: str
    sampling: dict[str, Any]
    text_encoders: dict[str, Mapping[str, Tensor]] = field(default_factory=dict)
    tokenizer_dir: Path | None = None

    @property
    def architecture(self) -> Architecture:
        assert self.family.architecture is not None  # checkpoint families always have one
        return self.family.architecture


class _Prefixed(Mapping[str, Tensor]):
    """A read-through view of the keys under ``prefix`` with the prefix removed (no tensor is read early)."""

    def __init__(self, base: Mapping[str, Tensor], prefix: str) -> None:
        self.base, self.prefix = base, prefix
        self._keys = [k[len(prefix) :] for k in base if k.startswith(prefix)]

    def __getitem__(self, key: str) -> Tensor:
        return self.base[self.prefix + key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and (self.prefix + key) in self.base


def gguf_architectures() -> dict[str, str]:
    """``{general.architecture: family titles}`` of the GGUF files the registered families run (ComfyUI-GGUF's
    names, ``ComfyNames.gguf_architecture``)."""
    out: dict[str, list[str]] = {}
    for family in REGISTRY:
        if family.comfy is not None and family.comfy.gguf_architecture is not None:
            out.setdefault(family.comfy.gguf_architecture, []).append(family.title)
    return {arch: " / ".join(titles) for arch, titles in out.items()}


def open_weights(
    path: str | Path, *, dtype: torch.dtype | None = None, allow_pickle: bool = False
) -> Mapping[str, Tensor]:
    """A lazy mapping over a safetensors or GGUF file (or, with ``allow_pickle``, a loaded pickle's tensors).

    fp8 tensors (plain or ComfyUI-scaled) and GGUF blocks stay in their storage format as
    :class:`~latentworks.nn.quant.QuantizedTensor` weights computing in ``dtype``
    (:func:`~latentworks.checkpoints.formats.open_storage`); other floating-point tensors are cast to ``dtype``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix.lower() in (".safetensors", ".gguf"):
        return open_storage(path, dtype=dtype, gguf_architectures=gguf_architectures())
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return load_state_dict(path, dtype=dtype, allow_pickle=allow_pickle)
    raise ValueError(
        f"{path}: unknown checkpoint type {path.suffix!r}; expected .safetensors or .gguf (or, with --allow-pickle, "
        f"one of {', '.join(PICKLE_SUFFIXES)})"
    )


def _shapes(weights: Mapping[str, Tensor]) -> dict[str, tuple[int, ...]]:
    """Every tensor's (logical) shape: from the header for lazy files (GGUF and fp8 ones included)."""
    shapes = getattr(weights, "shapes", None)
    if callable(shapes):
        return dict(shapes())
    return {k: tuple(v.shape) for k, v in weights.items()}


def read_vae(weights: Mapping[str, Tensor], *, source: str) -> tuple[Any, dict[str, Tensor]]:
    """The autoencoder in ``weights`` (LDM or diffusers layout, any known prefix; or the Qwen-Image VAE in
    diffusers' or ComfyUI's Wan layout) as (config, our state dict)."""
    shapes = _shapes(weights)
    for prefix in ("vae.", "first_stage_model.", ""):
        sub_shapes = {k[len(prefix) :]: v for k, v in shapes.items() if k.startswith(prefix)}
        if is_qwenimage_vae(sub_shapes):
            return read_qwenimage_vae(_Prefixed(weights, prefix), sub_shapes, source=source)
    config, layout = detect_vae(shapes, source=source)
    sub = _Prefixed(weights, find_vae_prefix(shapes) or "")
    if layout == "ldm":
        return config, vae_ldm_to_ours(sub, config)
    return config, vae_from_diffusers(sub, config)


def vae_network(config: Any) -> type[nn.Module]:
    """The autoencoder class for a VAE config read by :func:`read_vae` (KL autoencoder or Qwen-Image VAE)."""
    return QwenImageVAE if isinstance(config, QwenImageVAEConfig) else Autoencoder


def _text_encoder_kind(weights: Mapping[str, Tensor], source: str) -> tuple[str, Mapping[str, Tensor]]:
    """(component name, un-prefixed state dict) of a text-encoder-only file."""
    shapes = _shapes(weights)
    prefixes = text_encoder_prefixes(shapes)
    if len(prefixes) == 1:  # a text encoder saved with its all-in-one prefix
        ((_, prefix),) = prefixes.items()
        weights = _Prefixed(weights, prefix)
        shapes = _shapes(weights)
    try:
        kind, _ = detect_text_encoder(shapes)
    except ValueError as e:
        raise ValueError(f"{source}: not a CLIP or T5 (or Qwen3) text encoder ({e})") from None
    return kind, weights


def read_checkpoint(
    path: str | Path,
    *,
    vae: str | Path | None = None,
    text_encoders: Sequence[str | Path] = (),
    tokenizer: str | Path | None = None,
    prediction: str | None = None,
    dtype: torch.dtype | None = None,
    allow_pickle: bool = False,
    weight_dtype: str = "default",
) -> CheckpointParts:
    """Read a single file or a diffusers folder (plus optional component files) into :class:`CheckpointParts`.

    Args:
        path: a checkpoint file or a diffusers folder.
        vae: a separate autoencoder file (overrides one embedded in ``path``).
        text_encoders: separate CLIP / T5 files (override embedded ones of the same kind).
        tokenizer: T5's ``tokenizer.json`` (or a folder with one); CLIP tokenizers are bundled.
        prediction: override the detected objective (``eps`` | ``v`` | ``flow``), e.g. for SD 2.x v models.
        dtype: cast floating-point weights to this while reading (None keeps the file's).
        allow_pickle: accept ``.ckpt/.pt/.pth/.bin`` (loaded with ``torch.load(weights_only=True)``).
        weight_dtype: UNETLoader's choice: ``default`` keeps the file's storage (fp8 and GGUF weights stay
            quantized); ``fp8_e4m3fn`` / ``fp8_e4m3fn_fast`` / ``fp8_e5m2`` store the denoiser's weight matrices
            in that fp8 format as they are read (:func:`~latentworks.checkpoints.formats.cast_to_fp8`).
    """
    path = Path(path)
    if path.is_dir():
        parts = _read_folder(path, dtype=dtype, allow_pickle=allow_pickle, prediction=prediction)
        if weight_dtype != "default":
            parts.denoiser_state = cast_to_fp8(parts.denoiser_state, weight_dtype)
    else:
        parts = _read_file(
            path, dtype=dtype, allow_pickle=allow_pickle, prediction=prediction, weight_dtype=weight_dtype
        )
    if vae is not None:
        weights = open_weights(vae, dtype=dtype, allow_pickle=allow_pickle)
        parts.vae_config, parts.vae_state = read_vae(weights, source=str(vae))
    for file in text_encoders:
        weights = open_weights(file, dtype=dtype, allow_pickle=allow_pickle)
        kind, sd = _text_encoder_kind(weights, str(file))
        parts.text_encoders[kind] = sd
    if tokenizer is not None:
        if not Path(tokenizer).exists():
            raise FileNotFoundError(f"tokenizer not found: {tokenizer}")
        parts.tokenizer_dir = Path(tokenizer)
    return parts


def _read_file(
    path: Path,
    *,
    dtype: torch.dtype | None,
    allow_pickle: bool,
    prediction: str | None,
    weight_dtype: str = "default",
) -> CheckpointParts:
    weights = open_weights(path, dtype=dtype, allow_pickle=allow_pickle)
    shapes = _shapes(weights)
    found = detect_checkpoint(
        shapes, get_tensor=lambda k: weights[k], source=path.name, prediction=prediction
    )
    # cast over the file itself (read chunk by chunk into fp8), seen through the denoiser's prefix
    denoiser: Mapping[str, Tensor] = _Prefixed(cast_to_fp8(weights, weight_dtype), found.denoiser_prefix)
    assert found.architecture.from_original is not None  # detected architectures have an original layout
    state = found.architecture.from_original(denoiser, found.denoiser_config)
    vae_config, vae_state = None, None
    if found.vae_prefix is not None:
        vae_sub = _Prefixed(weights, found.vae_prefix)
        vae_config, vae_state = read_vae(vae_sub, source=path.name)
    tes = {name: _Prefixed(weights, prefix) for name, prefix in found.text_encoders.items()}
    assert found.family.latent_format is not None  # detected families have one
    return CheckpointParts(
        source=path,
        family=found.family,
        variant=found.variant,
        denoiser_config=found.denoiser_config,
        denoiser_state=state,
        vae_config=vae_config,
        vae_state=vae_state,
        latent_format=found.family.latent_format,
        prediction=found.prediction,
        sampling=found.family.sampling.to_dict(),
        text_encoders=dict(tes),
    )


def _read_folder(
    path: Path, *, dtype: torch.dtype | None, allow_pickle: bool, prediction: str | None
) -> CheckpointParts:
    if not (path / "model_index.json").is_file():
        raise ValueError(
            f"{path} is a folder without model_index.json: not a diffusers folder (a latentworks model folder "
            "has model.json; a single checkpoint is a file)"
        )
    folder = read_diffusers_folder(path, dtype=dtype, allow_pickle=allow_pickle)
    if folder.denoiser_config is None or folder.denoiser_state is None or folder.family is None:
        raise ValueError(f"{path}: the diffusers folder has no unet/ or transformer/ to generate with")
    pred = prediction or folder.prediction or folder.family.prediction
    family = with_prediction(folder.family, pred)  # an explicit prediction wins over the scheduler config
    if folder.latent_format is None:  # only when the family is unknown, which a denoiser always settles
        raise ValueError(f"{path}: cannot tell the latent format of this diffusers folder")
    return CheckpointParts(
        source=path,
        family=family,
        variant=family.name,
        denoiser_config=folder.denoiser_config,
        denoiser_state=folder.denoiser_state,
        vae_config=folder.vae_config,
        vae_state=folder.vae_state,
        latent_format=folder.latent_format,
        prediction=pred,
        sampling=dict(folder.sampling) if folder.sampling else family.sampling.to_dict(),
        text_encoders={name: entry[0] for name, entry in folder.text_encoders.items()},
        tokenizer_dir=path,
    )


# -- writing ---------------------------------------------------------------------------------------------

# ComfyUI's all-in-one files (SD3, FLUX) keep every text encoder as text_encoders.<name>.transformer. (HF).
_ALL_IN_ONE_TEXT = {
    name: (f"text_encoders.{name}.transformer.", "hf") for name in ("clip_l", "clip_g", "t5xxl")
}


def _text_state(sd: Mapping[str, Tensor], layout: str) -> dict[str, Tensor]:
    kind, have = detect_text_encoder({k: tuple(v.shape) for k, v in sd.items()})
    if kind in ("t5xxl", "qwen3_4b", "qwen25vl_7b"):
        return dict(sd)
    hf = open_clip_to_hf(sd) if have == "open_clip" else to_hf_clip(sd)
    return hf_to_open_clip(hf) if layout == "open_clip" else hf


def single_file_state(parts: CheckpointParts) -> dict[str, Tensor]:
    """``parts`` as one original-layout state dict (LDM for U-Nets, SAI for SD3, ComfyUI-style for FLUX)."""
    out: dict[str, Tensor] = {}
    family, arch = parts.family, parts.architecture
    if arch.to_original is None:
        raise ValueError(
            f"{family.title} has no original single-file layout; write a diffusers folder instead"
        )
    theirs = arch.to_original(parts.denoiser_state, parts.denoiser_config)
    out |= {f"model.diffusion_model.{k}": v for k, v in theirs.items()}
    if parts.vae_state is not None and isinstance(parts.vae_config, QwenImageVAEConfig):
        vae = qwenimage_vae_to_wan(parts.vae_state, parts.vae_config)  # ComfyUI's qwen_image_vae names
        out |= {f"{family.single_file_vae_prefix}{k}": v for k, v in vae.items()}
    elif parts.vae_state is not None:
        vae = ours_to_vae_ldm(parts.vae_state, parts.vae_config)
        out |= {f"{family.single_file_vae_prefix}{k}": v for k, v in vae.items()}
    places = family.single_file_text or _ALL_IN_ONE_TEXT
    for name, sd in parts.text_encoders.items():
        if name not in places:
            raise ValueError(f"{family.name} single files have no place for a {name} text encoder")
        prefix, layout = places[name]
        out |= {f"{prefix}{k}": v for k, v in _text_state(sd, layout).items()}
    for key, make in family.single_file_markers.items():
        out[key] = make()
    return out


def write_single_file(
    parts: CheckpointParts,
    path: str | Path,
    *,
    dtype: torch.dtype | None = None,
    weight_dtype: str | None = None,
) -> Path:
    """Write ``parts`` as one ``.safetensors`` file in the original layout (atomically).

    ``dtype`` casts floating-point tensors; ``weight_dtype`` (``fp8_e4m3fn``, ``fp8_e4m3fn_scaled``,
    ``fp8_e5m2``) then stores the denoiser's weight matrices in fp8 the way ComfyUI's fp8 files do
    (:func:`~latentworks.checkpoints.formats.fp8_file_tensors`). Weights read quantized (fp8, GGUF) are
    dequantized first.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"single-file output must end in .safetensors, got {path}")
    tensors = {
        k: (v.dequantize() if isinstance(v, QuantizedTensor) else v)
        for k, v in single_file_state(parts).items()
    }
    tensors = {
        k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).contiguous()
        for k, v in tensors.items()
    }
    if weight_dtype is not None:
        tensors = fp8_file_tensors(tensors, "model.diffusion_model.", weight_dtype)
    save_file_atomic(tensors, path, metadata={"latentworks.family": parts.family.name})
    return path


def write_diffusers(parts: CheckpointParts, path: str | Path) -> Path:
    """Write ``parts`` as a diffusers folder that diffusers' ``from_pretrained`` loads."""

    if parts.vae_state is None:
        raise ValueError(f"{parts.source}: no VAE to write; pass one with --vae")
    encoders: dict[str, tuple[dict[str, Tensor], dict[str, Any]]] = {}
    for name, sd in parts.text_encoders.items():
        hf = _text_state(sd, "hf")
        shapes = {k: tuple(v.shape) for k, v in hf.items()}
        kind, _ = detect_text_encoder(shapes)
        config: Any
        if kind in ("qwen3_4b", "qwen25vl_7b"):
            encoders[name] = qwen_for_diffusers(hf, kind)
            continue
        if kind == "t5xxl":
            config = t5_config_from_shapes(shapes)
        else:
            config = clip_config_from_shapes(shapes)
        encoders[name] = (hf, config.to_dict())
    tokenizers: dict[str, Path] = {}
    if parts.tokenizer_dir is not None and parts.tokenizer_dir.is_dir():
        for folder in sorted(parts.tokenizer_dir.glob("tokenizer*")):
            is_bpe = (folder / "merges.txt").is_file()  # CLIP's BPE; T5's is a sentencepiece/unigram file
            name = "t5xxl" if not is_bpe else ("clip_l" if folder.name == "tokenizer" else "clip_g")
            if name in parts.text_encoders and folder.is_dir():
                tokenizers[name] = folder
    write_diffusers_folder(
        path,
        family=parts.family,
        denoiser_config=parts.denoiser_config,
        denoiser_state=dict(parts.denoiser_state),
        vae_config=parts.vae_config,
        vae_state=dict(parts.vae_state),
        latent_format=parts.latent_format,
        prediction=parts.prediction,
        sampling=parts.sampling,
        text_encoders=encoders,
        tokenizers=tokenizers,
    )
    return Path(path)
