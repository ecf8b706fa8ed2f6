"""diffusers folders (``model_index.json`` + one folder per component): read them into our models, write
our models as them.

A diffusers folder looks like::

    model_index.json                     pipeline class and the class of each component ([null, null] = absent)
    unet/ | transformer/                 config.json + diffusion_pytorch_model.safetensors[.index.json + shards]
    vae/                                 config.json (scaling_factor, shift_factor) + weights
    scheduler/scheduler_config.json      beta schedule and prediction type, or flow-matching shift
    text_encoder{,_2,_3}/                transformers' config.json + model.safetensors[.index.json + shards]
    tokenizer{,_2,_3}/                   tokenizer files (handed on as paths)

Reading is data-driven: each component's ``config.json`` is mapped field by field to our config dataclass
(:mod:`latentworks.checkpoints.keymaps.diffusers_configs`: :func:`unet_config_from_diffusers`, :func:`vae_config_from_diffusers`, :func:`mmdit_config_from_diffusers`,
:func:`flux_config_from_diffusers`); a field we cannot express is an error naming it. Weights go through the
key maps in :mod:`latentworks.checkpoints.keymaps`. Writing inverts every step, so diffusers'
``<Component>.from_pretrained(path, subfolder=...)`` (and the pipeline, given text encoders and tokenizers)
loads what we write. Text encoders are passed through in transformers' own layout.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from latentworks.checkpoints.io import (
    CheckpointError,
    ShardedStateDict,
    build_on_meta,
    load_state_dict,
    save_file_atomic,
)
from latentworks.checkpoints.keymaps.diffusers_configs import (  # noqa: F401 - also re-exported
    flux_config_from_diffusers,
    flux_config_to_diffusers,
    mmdit_config_from_diffusers,
    mmdit_config_to_diffusers,
    scheduler_from_diffusers,
    scheduler_to_diffusers,
    unet_config_from_diffusers,
    unet_config_to_diffusers,
    vae_config_from_diffusers,
    vae_config_to_diffusers,
)
from latentworks.checkpoints.keymaps.flux_diffusers import flux_from_diffusers, flux_to_diffusers
from latentworks.checkpoints.keymaps.sd3_diffusers import sd3_from_diffusers, sd3_to_diffusers
from latentworks.checkpoints.keymaps.sd_diffusers import (
    unet_from_diffusers,
    unet_to_diffusers,
    vae_from_diffusers,
    vae_to_diffusers,
)
from latentworks.diffusion.latent_formats import LATENT_FORMATS, LatentFormat
from latentworks.models.autoencoder import Autoencoder, AutoencoderConfig
from latentworks.models.flux import Flux, FluxConfig
from latentworks.models.mmdit import MMDiT, MMDiTConfig
from latentworks.models.unet import UNet, UNetConfig

DenoiserConfig = UNetConfig | MMDiTConfig | FluxConfig
TextEncoderEntry = tuple[dict[str, Tensor], dict[str, Any]]

FAMILIES = ("sd1", "sd2", "sdxl", "sdxl-refiner", "sd3", "flux")
# diffusers pipeline classes per family; the first is what the writer names in model_index.json.
PIPELINE_CLASSES = {
    "sd1": ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline"),
    "sd2": ("StableDiffusionPipeline",),
    "sdxl": (
        "StableDiffusionXLPipeline",
        "StableDiffusionXLImg2ImgPipeline",
        "StableDiffusionXLInpaintPipeline",
    ),
    "sdxl-refiner": ("StableDiffusionXLImg2ImgPipeline",),
    "sd3": ("StableDiffusion3Pipeline", "StableDiffusion3Img2ImgPipeline"),
    "flux": ("FluxPipeline", "FluxImg2ImgPipeline"),
}
PIPELINE_CLASS = {family: classes[0] for family, classes in PIPELINE_CLASSES.items()}
DENOISER_KIND = {
    "sd1": "unet",
    "sd2": "unet",
    "sdxl": "unet",
    "sdxl-refiner": "unet",
    "sd3": "mmdit",
    "flux": "flux",
}
LATENT_FORMAT_OF = {
    "sd1": "sd15",
    "sd2": "sd2",
    "sdxl": "sdxl",
    "sdxl-refiner": "sdxl",
    "sd3": "sd3",
    "flux": "flux",
}
# Which text encoder sits in which folder, per family (used to write, and to read when the config's width
# is not one of the released encoders').
TEXT_SLOTS: dict[str, dict[str, str]] = {
    "sd1": {"text_encoder": "clip_l"},
    "sd2": {"text_encoder": "clip_h"},
    "sdxl": {"text_encoder": "clip_l", "text_encoder_2": "clip_g"},
    "sdxl-refiner": {"text_encoder_2": "clip_g"},
    "sd3": {"text_encoder": "clip_l", "text_encoder_2": "clip_g", "text_encoder_3": "t5xxl"},
    "flux": {"text_encoder": "clip_l", "text_encoder_2": "t5xxl"},
}
CLIP_BY_WIDTH = {768: "clip_l", 1024: "clip_h", 1280: "clip_g"}
TEXT_ENCODER_CLASS = {"clip_l": "CLIPTextModel", "clip_h": "CLIPTextModel", "clip_g": "CLIPTextModelWithProjection",
                      "t5xxl": "T5EncoderModel"}  # fmt: skip
TOKENIZER_CLASS = {"clip_l": "CLIPTokenizer", "clip_h": "CLIPTokenizer", "clip_g": "CLIPTokenizer",
                   "t5xxl": "T5TokenizerFast"}  # fmt: skip
DIFFUSERS_WEIGHTS = "diffusion_pytorch_model"
TRANSFORMERS_WEIGHTS = "model"


# --------------------------------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------------------------------


def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path.parent}: expected {what} at {path}, but the file does not exist")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def read_weights(
    folder: Path,
    stem: str = DIFFUSERS_WEIGHTS,
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    allow_pickle: bool = False,
    variant: str | None = None,
) -> Mapping[str, Tensor]:
    """A component's weights: ``<stem>.safetensors``, or shards listed in ``<stem>.safetensors.index.json``
    (safetensors are read lazily, see :class:`~latentworks.checkpoints.io.ShardedStateDict`); ``<stem>.bin`` (and its index) only with
    ``allow_pickle=True``. ``variant="fp16"`` reads ``<stem>.fp16.safetensors`` (diffusers' naming)."""
    v = f".{variant}" if variant else ""
    single, index = folder / f"{stem}{v}.safetensors", folder / f"{stem}.safetensors.index{v}.json"
    if single.is_file():
        return ShardedStateDict([single], dtype=dtype, device=device)
    if index.is_file():
        files = _shard_files(index)
        weights = ShardedStateDict(files, dtype=dtype, device=device)
        missing = sorted(set(_read_json(index, "a shard index")["weight_map"]) - set(weights))
        if missing:
            raise CheckpointError(f"{index}: tensors {missing[:5]} are listed but not in their shards")
        return weights
    pickled, pickled_index = folder / f"{stem}{v}.bin", folder / f"{stem}.bin.index{v}.json"
    if pickled.is_file() or pickled_index.is_file():
        if not allow_pickle:
            raise CheckpointError(
                f"{folder}: only pickled weights ({stem}{v}.bin) were found; pickles can run code, so they are "
                f"refused. Convert them to {stem}{v}.safetensors, or pass allow_pickle=True (CLI: --allow-pickle) "
                "if you trust them."
            )
        files = [pickled] if pickled.is_file() else _shard_files(pickled_index)
        out: dict[str, Tensor] = {}
        for path in files:
            out |= load_state_dict(path, allow_pickle=True, dtype=dtype, device=device)
        return out
    others = sorted(p.name for p in folder.glob(f"{stem}*") if p.suffix in (".safetensors", ".bin", ".json"))
    hint = (
        f"; the folder has {others} (a variant? pass variant='fp16' for {stem}.fp16.safetensors)"
        if others
        else ""
    )
    raise FileNotFoundError(
        f"{folder}: no weights found; expected {single.name} (or {index.name} with its shards){hint}"
    )


def _shard_files(index: Path) -> list[Path]:
    weight_map = _read_json(index, "a shard index").get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index}: has no 'weight_map' of tensor name -> shard file")
    files = [index.parent / shard for shard in sorted(set(weight_map.values()))]
    for path in files:
        if not path.is_file():
            raise FileNotFoundError(f"{index}: lists shard {path.name}, which is missing from {index.parent}")
    return files


def write_weights(
    tensors: dict[str, Tensor], folder: Path, stem: str, *, max_shard_bytes: int | None = None
) -> None:
    """Write ``<stem>.safetensors``, or shards ``<stem>-0000i-of-0000n.safetensors`` + index when the tensors
    exceed ``max_shard_bytes``. Weights of an earlier write in another layout are removed first (a stale
    single file would otherwise shadow new shards for every reader)."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in (folder / f"{stem}.safetensors", folder / f"{stem}.safetensors.index.json"):
        old.unlink(missing_ok=True)
    for old in folder.glob(f"{stem}-*-of-*.safetensors"):
        old.unlink()
    meta = {"format": "pt"}
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    if max_shard_bytes is None or total <= max_shard_bytes:
        save_file_atomic(tensors, folder / f"{stem}.safetensors", metadata=meta)
        return
    shards: list[dict[str, Tensor]] = [{}]
    size = 0
    for key, t in tensors.items():
        n = t.numel() * t.element_size()
        if shards[-1] and size + n > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = t
        size += n
    weight_map: dict[str, str] = {}
    for i, shard in enumerate(shards):
        name = f"{stem}-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file_atomic(shard, folder / name, metadata=meta)
        weight_map |= dict.fromkeys(shard, name)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / f"{stem}.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


# --------------------------------------------------------------------------------------------------
# Reading a folder
# --------------------------------------------------------------------------------------------------


@dataclass
class DiffusersFolder:
    """What a diffusers folder holds, in our terms. Components the folder lacks are ``None`` / empty.

    ``denoiser_state`` and ``vae_state`` are in our parameter layout (load with ``strict=True``);
    ``text_encoders`` maps ``"clip_l"|"clip_h"|"clip_g"|"t5xxl"`` to (transformers state dict, config.json dict);
    ``tokenizers`` maps the same names to tokenizer folders.
    """

    path: Path
    family: str | None
    denoiser_kind: str | None
    denoiser_config: DenoiserConfig | None
    denoiser_state: dict[str, Tensor] | None
    vae_config: AutoencoderConfig | None
    vae_state: dict[str, Tensor] | None
    latent_format: LatentFormat | None
    prediction: str | None
    sampling: dict[str, Any] | None
    text_encoders: dict[str, TextEncoderEntry] = field(default_factory=dict)
    tokenizers: dict[str, Path] = field(default_factory=dict)

    @property
    def behaviour_family(self) -> str | None:
        """The key of :data:`latentworks.pipelines.families.FAMILY_BEHAVIOUR` for this model: ``sd2-v`` for
        v-prediction SD 2.x, ``flux-dev`` / ``flux-schnell`` by the guidance embedding, else ``family``."""
        if self.family == "sd2" and self.prediction == "v":
            return "sd2-v"
        if self.family == "flux" and isinstance(self.denoiser_config, FluxConfig):
            return "flux-dev" if self.denoiser_config.guidance_embed else "flux-schnell"
        return self.family

    def build_denoiser(self) -> nn.Module:
        """Our denoising network with the folder's weights (the state dict's tensors, not copies)."""
        if self.denoiser_config is None or self.denoiser_state is None:
            raise ValueError(f"{self.path}: this diffusers folder has no unet/ or transformer/ to build")
        cls = {"unet": UNet, "mmdit": MMDiT, "flux": Flux}[self.denoiser_kind or ""]
        return build_on_meta(cls, self.denoiser_config, self.denoiser_state)

    def build_vae(self) -> Autoencoder:
        """Our autoencoder with the folder's weights."""
        if self.vae_config is None or self.vae_state is None:
            raise ValueError(f"{self.path}: this diffusers folder has no vae/ to build")
        return build_on_meta(Autoencoder, self.vae_config, self.vae_state)


def _listed(index: dict[str, Any], name: str, path: Path) -> bool:
    """True when model_index.json lists ``name`` as present, or (no index) its folder exists."""
    if not index:
        return (path / name).is_dir()
    entry = index.get(name)
    return isinstance(entry, list | tuple) and len(entry) == 2 and entry[1] is not None


def text_encoder_key(config: dict[str, Any], *, family: str | None, slot: str) -> str:
    """``"clip_l"|"clip_h"|"clip_g"|"t5xxl"`` for the text encoder in folder ``slot``.

    Decided from its config (T5 by model_type; CLIP by hidden_size 768/1024/1280); for other widths (tests,
    fine-tunes) from the family's usual folder layout (:data:`TEXT_SLOTS`).
    """
    model_type = str(config.get("model_type", ""))
    if model_type.startswith(("t5", "umt5")):
        return "t5xxl"
    if model_type.startswith("clip"):
        width = config.get("hidden_size") or config.get("text_config", {}).get("hidden_size")
        if width in CLIP_BY_WIDTH:
            return CLIP_BY_WIDTH[width]
    if family is not None and slot in TEXT_SLOTS.get(family, {}):
        return TEXT_SLOTS[family][slot]
    raise ValueError(
        f"{slot}/config.json: cannot tell which text encoder this is (model_type={model_type!r}, "
        f"hidden_size={config.get('hidden_size')!r}); expected a CLIP text model of width 768/1024/1280 or a T5"
    )


# class -> the first family listing it (sd2 and the SDXL refiner share classes with sd1 and sdxl; the
# refiner is told apart below, sd2 by its weights when there are any).
_PIPELINE_FAMILY = {cls: family for family, classes in reversed(PIPELINE_CLASSES.items()) for cls in classes}


def _family_from_pipeline(index: dict[str, Any]) -> str | None:
    """The family a pipeline class implies (used only when the folder has no denoiser to decide from)."""
    family = _PIPELINE_FAMILY.get(index.get("_class_name", ""))
    if family == "sdxl" and index.get("requires_aesthetics_score"):
        return "sdxl-refiner"
    return family


def read_diffusers_folder(
    path: str | Path,
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    allow_pickle: bool = False,
    variant: str | None = None,
) -> DiffusersFolder:
    """Read a diffusers folder (see the module docstring) into our configs and state dicts.

    ``model_index.json`` says which components exist (``[null, null]`` = absent); without it, every
    component folder present is read. A component it lists whose folder or files are missing is an error
    naming the folder and the file expected. ``dtype`` casts floating-point weights as they are read;
    ``variant="fp16"`` reads diffusers' ``*.fp16.safetensors`` weight files.
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"diffusers folder not found: {root}")
    index = (
        _read_json(root / "model_index.json", "model_index.json")
        if (root / "model_index.json").is_file()
        else {}
    )
    if not index and not any((root / c).is_dir() for c in ("unet", "transformer", "vae")):
        raise FileNotFoundError(
            f"{root}: not a diffusers folder; expected model_index.json and component folders "
            "(unet/ or transformer/, vae/, scheduler/, text_encoder/, tokenizer/)"
        )
    family = _family_from_pipeline(index)
    num_time_ids = 5 if index.get("requires_aesthetics_score") else 6

    def component(name: str) -> Path:
        folder = root / name
        if not folder.is_dir():
            raise FileNotFoundError(
                f"{root}: model_index.json lists the component {name!r} but the folder {folder} is missing; "
                f"expected {folder / 'config.json'} and its weights"
            )
        return folder

    def weights(folder: Path, stem: str = DIFFUSERS_WEIGHTS) -> Mapping[str, Tensor]:
        return read_weights(
            folder, stem, dtype=dtype, device=device, allow_pickle=allow_pickle, variant=variant
        )

    kind: str | None = None
    denoiser_config: DenoiserConfig | None = None
    denoiser_state = None
    if _listed(index, "unet", root):
        folder = component("unet")
        cfg = _read_json(folder / "config.json", "the U-Net config")
        unet_cfg = unet_config_from_diffusers(
            cfg, num_time_ids=num_time_ids, source=str(folder / "config.json")
        )
        denoiser_state = unet_from_diffusers(weights(folder), unet_cfg)
        kind, denoiser_config = "unet", unet_cfg
        if unet_cfg.has_added_conditioning:
            family = "sdxl-refiner" if unet_cfg.num_time_ids == 5 else "sdxl"
        else:
            family = "sd2" if unet_cfg.context_dim == 1024 else "sd1"
    elif _listed(index, "transformer", root):
        folder = component("transformer")
        cfg = _read_json(folder / "config.json", "the transformer config")
        source = str(folder / "config.json")
        name = cfg.get("_class_name")
        if name == "SD3Transformer2DModel":
            mm = mmdit_config_from_diffusers(cfg, source=source)
            denoiser_state = sd3_from_diffusers(weights(folder), mm)
            kind, denoiser_config, family = "mmdit", mm, "sd3"
        elif name == "FluxTransformer2DModel":
            fx = flux_config_from_diffusers(cfg, source=source)
            denoiser_state = flux_from_diffusers(weights(folder), fx)
            kind, denoiser_config, family = "flux", fx, "flux"
        else:
            raise ValueError(
                f"{source}: transformer class {name!r} is not supported; expected SD3Transformer2DModel or "
                "FluxTransformer2DModel"
            )

    vae_config = vae_state = None
    latent_format = LATENT_FORMATS[LATENT_FORMAT_OF[family]] if family else None
    if _listed(index, "vae", root):
        folder = component("vae")
        vae_config, scale, shift = vae_config_from_diffusers(
            _read_json(folder / "config.json", "the VAE config"), source=str(folder / "config.json")
        )
        vae_state = vae_from_diffusers(weights(folder), vae_config)
        if latent_format is not None and latent_format.channels == vae_config.latent_channels:
            latent_format = replace(latent_format, scale_factor=scale, shift_factor=shift)
        else:
            latent_format = LatentFormat(
                channels=vae_config.latent_channels, scale_factor=scale, shift_factor=shift
            )

    prediction: str | None = None
    sampling: dict[str, Any] | None = None
    if _listed(index, "scheduler", root):
        folder = component("scheduler")
        prediction, sampling = scheduler_from_diffusers(
            _read_json(folder / "scheduler_config.json", "the scheduler config"),
            source=str(folder / "scheduler_config.json"),
        )
    elif family in ("sd3", "flux"):  # no scheduler: the families' released defaults
        prediction = "flow"
        sampling = {"kind": "flow", "shift": 3.0, "multiplier": 1000.0}
        if family == "flux":
            sampling = {"kind": "flow", "shift": 1.0, "multiplier": 1000.0,
                        "dynamic_shift": {"base_seq_len": 256, "max_seq_len": 4096, "base_shift": 0.5, "max_shift": 1.15}}  # fmt: skip

    text_encoders: dict[str, TextEncoderEntry] = {}
    tokenizers: dict[str, Path] = {}
    for suffix in ("", "_2", "_3"):
        slot = f"text_encoder{suffix}"
        if not _listed(index, slot, root):
            continue
        folder = component(slot)
        cfg = _read_json(folder / "config.json", "the text encoder config")
        key = text_encoder_key(cfg, family=family, slot=slot)
        if key in text_encoders:
            raise ValueError(f"{root}: two text encoders resolve to {key!r}; the second is {folder}")
        text_encoders[key] = (dict(weights(folder, TRANSFORMERS_WEIGHTS)), cfg)
        tokenizer = root / f"tokenizer{suffix}"
        if _listed(index, f"tokenizer{suffix}", root):
            tokenizers[key] = component(f"tokenizer{suffix}")
        elif tokenizer.is_dir():
            tokenizers[key] = tokenizer
    return DiffusersFolder(
        path=root,
        family=family,
        denoiser_kind=kind,
        denoiser_config=denoiser_config,
        denoiser_state=denoiser_state,
        vae_config=vae_config,
        vae_state=vae_state,
        latent_format=latent_format,
        prediction=prediction,
        sampling=sampling,
        text_encoders=text_encoders,
        tokenizers=tokenizers,
    )


# --------------------------------------------------------------------------------------------------
# Writing a folder
# --------------------------------------------------------------------------------------------------


def _write_json(data: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


def write_diffusers_folder(
    path: str | Path,
    *,
    family: str,
    denoiser_config: DenoiserConfig,
    denoiser_state: dict[str, Tensor],
    vae_config: AutoencoderConfig | None,
    vae_state: dict[str, Tensor] | None,
    latent_format: LatentFormat,
    prediction: str,
    sampling: dict[str, Any],
    text_encoders: dict[str, TextEncoderEntry] | None = None,
    tokenizers: dict[str, Path] | None = None,
    max_shard_bytes: int | None = None,
) -> Path:
    """Write our model as a diffusers folder that diffusers' ``from_pretrained`` loads.

    ``text_encoders`` / ``tokenizers`` (keyed ``clip_l``...) go to the family's usual folders
    (:data:`TEXT_SLOTS`); tokenizer folders are copied. Weights larger than ``max_shard_bytes`` are sharded.
    Components not given are written as ``[null, null]`` in ``model_index.json``.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose one of {', '.join(FAMILIES)}")
    expected = {"unet": UNetConfig, "mmdit": MMDiTConfig, "flux": FluxConfig}[DENOISER_KIND[family]]
    if not isinstance(denoiser_config, expected):
        raise TypeError(
            f"family {family!r} needs a {expected.__name__} denoiser_config, got {type(denoiser_config).__name__}"
        )
    text_encoders, tokenizers = text_encoders or {}, tokenizers or {}
    slots = TEXT_SLOTS[family]
    unknown = sorted((set(text_encoders) | set(tokenizers)) - set(slots.values()))
    if unknown:
        raise ValueError(
            f"family {family!r} has no text encoder slot for {unknown}; it uses {sorted(slots.values())}"
        )
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    index: dict[str, Any] = {
        "_class_name": PIPELINE_CLASS[family],
        "_diffusers_version": _diffusers_version(),
    }

    if isinstance(denoiser_config, UNetConfig):
        sample = 128 if family.startswith("sdxl") else (96 if prediction == "v" else 64)
        cfg, theirs, name = (
            unet_config_to_diffusers(denoiser_config, sample_size=sample),
            unet_to_diffusers(denoiser_state, denoiser_config),
            "unet",
        )
    elif isinstance(denoiser_config, MMDiTConfig):
        cfg, theirs, name = (
            mmdit_config_to_diffusers(denoiser_config),
            sd3_to_diffusers(denoiser_state, denoiser_config),
            "transformer",
        )
    elif isinstance(denoiser_config, FluxConfig):
        cfg, theirs, name = (
            flux_config_to_diffusers(denoiser_config),
            flux_to_diffusers(denoiser_state, denoiser_config),
            "transformer",
        )
    else:  # unreachable: checked against the family above
        raise AssertionError(type(denoiser_config).__name__)
    _write_json(cfg, root / name / "config.json")
    write_weights(theirs, root / name, DIFFUSERS_WEIGHTS, max_shard_bytes=max_shard_bytes)
    index[name] = ["diffusers", cfg["_class_name"]]

    if vae_config is not None and vae_state is not None:
        if vae_config.latent_channels != latent_format.channels:
            raise ValueError(
                f"the VAE has {vae_config.latent_channels} latent channels but the latent format {latent_format.channels}"
            )
        _write_json(vae_config_to_diffusers(vae_config, latent_format), root / "vae" / "config.json")
        write_weights(
            vae_to_diffusers(vae_state, vae_config),
            root / "vae",
            DIFFUSERS_WEIGHTS,
            max_shard_bytes=max_shard_bytes,
        )
        index["vae"] = ["diffusers", "AutoencoderKL"]
    else:
        index["vae"] = [None, None]

    scheduler = scheduler_to_diffusers(prediction, sampling)
    _write_json(scheduler, root / "scheduler" / "scheduler_config.json")
    index["scheduler"] = ["diffusers", scheduler["_class_name"]]

    for slot, key in slots.items():
        suffix = slot.removeprefix("text_encoder")
        if key in text_encoders:
            state, config = text_encoders[key]
            config = {**config}
            if not config.get("architectures"):  # transformers' to_dict() gives None when unset
                config["architectures"] = [TEXT_ENCODER_CLASS[key]]
            _write_json(config, root / slot / "config.json")
            write_weights(dict(state), root / slot, TRANSFORMERS_WEIGHTS, max_shard_bytes=max_shard_bytes)
            index[slot] = ["transformers", config["architectures"][0]]
        else:
            index[slot] = [None, None]
        if key in tokenizers:
            target = root / f"tokenizer{suffix}"
            if target.exists():
                shutil.rmtree(target)
            shutil.copytree(tokenizers[key], target)
            index[f"tokenizer{suffix}"] = ["transformers", TOKENIZER_CLASS[key]]
        else:
            index[f"tokenizer{suffix}"] = [None, None]
    if family in ("sd1", "sd2"):
        index |= {
            "safety_checker": [None, None],
            "feature_extractor": [None, None],
            "requires_safety_checker": False,
        }
        index.setdefault("image_encoder", [None, None])
    elif family == "sdxl":
        index |= {"force_zeros_for_empty_prompt": True}
    elif family == "sdxl-refiner":
        index |= {"requires_aesthetics_score": True, "force_zeros_for_empty_prompt": False}
        index |= {"text_encoder": [None, None], "tokenizer": [None, None]}  # the refiner has bigG only
    _write_json(index, root / "model_index.json")
    return root


def _diffusers_version() -> str:
    try:
        from importlib.metadata import version

        return version("diffusers")
    except Exception:  # noqa: BLE001 - diffusers is optional; the field is informational
        return "0.30.0"
