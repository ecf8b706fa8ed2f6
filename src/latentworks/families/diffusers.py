"""diffusers folders (``model_index.json`` + one folder per component) as family models: read them into our
configs and state dicts, write our models as them.

A diffusers folder looks like::

    model_index.json                     pipeline class and the class of each component ([null, null] = absent)
    unet/ | transformer/                 config.json + diffusion_pytorch_model.safetensors[.index.json + shards]
    vae/                                 config.json (scaling_factor, shift_factor) + weights
    scheduler/scheduler_config.json      beta schedule and prediction type, or flow-matching shift
    text_encoder{,_2,_3}/                transformers' config.json + model.safetensors[.index.json + shards]
    tokenizer{,_2,_3}/                   tokenizer files (handed on as paths)

Reading is data-driven: the denoiser folder's ``_class_name`` picks the architecture
(:mod:`latentworks.families.architectures`), whose config map turns ``config.json`` into our config dataclass
(a field we cannot express is an error naming it); the registry then names the family from that config (or,
when no family claims it, from the pipeline class). Weights go through the architecture's key maps. Writing
inverts every step using the family's :class:`~latentworks.families.base.DiffusersNames`, so diffusers'
``<Component>.from_pretrained(path, subfolder=...)`` (and the pipeline, given text encoders and tokenizers)
loads what we write. Text encoders are passed through in transformers' own layout.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from latentworks.checkpoints.diffusers_folder import (
    CLIP_BY_WIDTH,
    DIFFUSERS_WEIGHTS,
    TEXT_ENCODER_CLASS,
    TOKENIZER_CLASS,
    TRANSFORMERS_WEIGHTS,
    diffusers_version,
    read_json,
    read_weights,
    write_json,
    write_weights,
)
from latentworks.checkpoints.io import build_on_meta
from latentworks.checkpoints.keymaps.diffusers_configs import (
    scheduler_from_diffusers,
    scheduler_to_diffusers,
    vae_config_from_diffusers,
    vae_config_to_diffusers,
)
from latentworks.checkpoints.keymaps.qwenimage_vae import DIFFUSERS_CLASS as QWEN_VAE_CLASS
from latentworks.checkpoints.keymaps.qwenimage_vae import (
    qwenimage_vae_config_to_diffusers,
    qwenimage_vae_stats_from_diffusers,
    read_qwenimage_vae,
)
from latentworks.checkpoints.keymaps.sd_diffusers import vae_from_diffusers, vae_to_diffusers
from latentworks.diffusion.denoisers import FlowSamplingSpec
from latentworks.diffusion.latent_formats import LatentFormat
from latentworks.families import REGISTRY, by_config, by_pipeline_class, get, with_prediction
from latentworks.families.architectures import ARCHITECTURES, DenoiserConfig, architecture_of
from latentworks.families.base import Architecture, ModelFamily
from latentworks.families.sd_upscaler import SD_X4_UPSCALER
from latentworks.models.autoencoder import Autoencoder, AutoencoderConfig
from latentworks.models.qwenimage_vae import QwenImageVAE, QwenImageVAEConfig

TextEncoderEntry = tuple[dict[str, Tensor], dict[str, Any]]


# --------------------------------------------------------------------------------------------------
# Reading a folder
# --------------------------------------------------------------------------------------------------


@dataclass
class DiffusersFolder:
    """What a diffusers folder holds, in our terms. Components the folder lacks are ``None`` / empty.

    ``family`` is the registered family (SD 2.x v models are ``sd2-v`` when the scheduler says v);
    ``denoiser_state`` and ``vae_state`` are in our parameter layout (load with ``strict=True``);
    ``text_encoders`` maps ``"clip_l"|"clip_h"|"clip_g"|"t5xxl"`` to (transformers state dict, config.json dict);
    ``tokenizers`` maps the same names to tokenizer folders.
    """

    path: Path
    family: ModelFamily | None
    denoiser_config: DenoiserConfig | None
    denoiser_state: dict[str, Tensor] | None
    vae_config: AutoencoderConfig | QwenImageVAEConfig | None
    vae_state: dict[str, Tensor] | None
    latent_format: LatentFormat | None
    prediction: str | None
    sampling: dict[str, Any] | None
    text_encoders: dict[str, TextEncoderEntry] = field(default_factory=dict)
    tokenizers: dict[str, Path] = field(default_factory=dict)

    @property
    def architecture(self) -> Architecture | None:
        return None if self.denoiser_config is None else architecture_of(self.denoiser_config)

    def build_denoiser(self) -> nn.Module:
        """Our denoising network with the folder's weights (the state dict's tensors, not copies)."""
        arch = self.architecture
        if arch is None or self.denoiser_state is None:
            raise ValueError(f"{self.path}: this diffusers folder has no unet/ or transformer/ to build")
        return build_on_meta(arch.network, self.denoiser_config, self.denoiser_state)

    def build_vae(self) -> Autoencoder | QwenImageVAE:
        """Our autoencoder with the folder's weights."""
        if self.vae_config is None or self.vae_state is None:
            raise ValueError(f"{self.path}: this diffusers folder has no vae/ to build")
        cls = QwenImageVAE if isinstance(self.vae_config, QwenImageVAEConfig) else Autoencoder
        return build_on_meta(cls, self.vae_config, self.vae_state)


def _listed(index: dict[str, Any], name: str, path: Path) -> bool:
    """True when model_index.json lists ``name`` as present, or (no index) its folder exists."""
    if not index:
        return (path / name).is_dir()
    entry = index.get(name)
    return isinstance(entry, list | tuple) and len(entry) == 2 and entry[1] is not None


def text_encoder_key(config: dict[str, Any], *, family: ModelFamily | None, slot: str) -> str:
    """``"clip_l"|"clip_h"|"clip_g"|"t5xxl"`` for the text encoder in folder ``slot``.

    Decided from its config (T5 by model_type; CLIP by hidden_size 768/1024/1280); for other widths (tests,
    fine-tunes) from the family's usual folder layout (its ``diffusers.text_slots``).
    """
    model_type = str(config.get("model_type", ""))
    if model_type.startswith(("t5", "umt5")):
        return "t5xxl"
    if model_type.startswith("clip"):
        width = config.get("hidden_size") or config.get("text_config", {}).get("hidden_size")
        if width in CLIP_BY_WIDTH:
            return CLIP_BY_WIDTH[width]
    slots = family.diffusers.text_slots if family is not None and family.diffusers is not None else {}
    if slot in slots:
        return slots[slot]
    raise ValueError(
        f"{slot}/config.json: cannot tell which text encoder this is (model_type={model_type!r}, "
        f"hidden_size={config.get('hidden_size')!r}); expected a CLIP text model of width 768/1024/1280 or a T5"
    )


def _denoiser_architecture(folder: Path, cfg: dict[str, Any], default: str) -> Architecture:
    name = cfg.get("_class_name", default)
    for arch in ARCHITECTURES:
        if arch.diffusers_folder == folder.name and arch.diffusers_class == name:
            return arch
    known = [a.diffusers_class for a in ARCHITECTURES if a.diffusers_folder == folder.name]
    raise ValueError(
        f"{folder / 'config.json'}: {folder.name} class {name!r} is not supported; expected one of {known}"
    )


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
        read_json(root / "model_index.json", "model_index.json")
        if (root / "model_index.json").is_file()
        else {}
    )
    if not index and not any((root / c).is_dir() for c in ("unet", "transformer", "vae")):
        raise FileNotFoundError(
            f"{root}: not a diffusers folder; expected model_index.json and component folders "
            "(unet/ or transformer/, vae/, scheduler/, text_encoder/, tokenizer/)"
        )
    family = by_pipeline_class(index)
    if family is not None and family.name == "karlo":  # Karlo: a cascade with its own pipeline
        raise ValueError(
            f"{root} is a {family.title} folder: a cascade of several networks, not one denoiser; run it with "
            f"'latentworks generate PROMPT --model {root}'"
        )
    if (
        family is not None and family.name == SD_X4_UPSCALER.name
    ):  # an image-to-image upscaler: its own pipeline
        raise ValueError(
            f"{root} is the {family.title}: it enlarges an image rather than generating one; run it with "
            f"'latentworks upscale IMAGE --model {root} --prompt TEXT', as DeepFloyd IF's stage III "
            "('latentworks generate PROMPT --model IF-I --upscaler IF-II --latent-upscaler THIS') or from Python "
            "with latentworks.pipelines.x4_upscale.X4Upscaler.from_pretrained"
        )
    if family is not None and family.architecture is None:  # a cascade stage (DeepFloyd IF): its own pipeline
        raise ValueError(
            f"{root} is {family.title}, a stage of a pixel cascade: run it with latentworks.pipelines.cascade."
            "CascadePipeline.from_pretrained(stage_1, upscaler=stage_2) or 'latentworks generate PROMPT --model "
            "STAGE-I-FOLDER --upscaler STAGE-II-FOLDER'"
        )

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

    denoiser_config: Any = None
    denoiser_state = None
    for name, default in (("unet", "UNet2DConditionModel"), ("transformer", "")):
        if not _listed(index, name, root):
            continue
        folder = component(name)
        cfg = read_json(folder / "config.json", f"the {name} config")
        arch = _denoiser_architecture(folder, cfg, default)
        assert arch.config_from_diffusers is not None and arch.from_diffusers is not None
        denoiser_config = arch.config_from_diffusers(cfg, index=index, source=str(folder / "config.json"))
        denoiser_state = arch.from_diffusers(weights(folder), denoiser_config)
        # the network decides; a config no family claims (tests, research widths) keeps the pipeline's
        claimed = by_config(denoiser_config)
        if claimed is not None:
            family = claimed
        elif family is None or family.architecture is not arch:
            family = next((f for f in REGISTRY if f.architecture is arch), None)
        break

    vae_config: AutoencoderConfig | QwenImageVAEConfig | None = None
    vae_state: dict[str, Tensor] | None = None
    latent_format = family.latent_format if family is not None else None
    vae_cfg = (
        read_json(component("vae") / "config.json", "the VAE config") if _listed(index, "vae", root) else {}
    )
    if vae_cfg.get("_class_name") == QWEN_VAE_CLASS:  # Qwen-Image: per-channel statistics, no scale/shift
        folder = component("vae")
        vae_weights = weights(folder)
        shapes = {k: tuple(v.shape) for k, v in vae_weights.items()}
        qwen_config, vae_state = read_qwenimage_vae(vae_weights, shapes, source=str(folder))
        vae_config = qwen_config
        mean, std = qwenimage_vae_stats_from_diffusers(vae_cfg, str(folder / "config.json"))
        base = latent_format or LatentFormat(channels=qwen_config.z_dim, scale_factor=1.0)
        latent_format = replace(base, scale_factor=1.0, shift_factor=0.0, channel_mean=mean, channel_std=std)
    elif vae_cfg:
        folder = component("vae")
        kl_config, scale, shift = vae_config_from_diffusers(vae_cfg, source=str(folder / "config.json"))
        vae_config, vae_state = kl_config, vae_from_diffusers(weights(folder), kl_config)
        if latent_format is not None and latent_format.channels == kl_config.latent_channels:
            latent_format = replace(latent_format, scale_factor=scale, shift_factor=shift)
        else:
            latent_format = LatentFormat(
                channels=kl_config.latent_channels, scale_factor=scale, shift_factor=shift
            )

    prediction: str | None = None
    sampling: dict[str, Any] | None = None
    if _listed(index, "scheduler", root):
        folder = component("scheduler")
        prediction, sampling = scheduler_from_diffusers(
            read_json(folder / "scheduler_config.json", "the scheduler config"),
            source=str(folder / "scheduler_config.json"),
        )
        if (
            sampling.get("kind") == "flow"
            and family is not None
            and isinstance(family.sampling, FlowSamplingSpec)
        ):
            # the timestep scale is the network's convention, not the scheduler's (Z-Image takes t = sigma)
            sampling["multiplier"] = float(family.sampling.model_sampling().multiplier)
    elif family is not None and family.prediction == "flow":  # no scheduler: the family's released defaults
        prediction, sampling = family.prediction, family.sampling.to_dict()
    if family is not None and prediction is not None:
        family = with_prediction(family, prediction)

    text_encoders: dict[str, TextEncoderEntry] = {}
    tokenizers: dict[str, Path] = {}
    for suffix in ("", "_2", "_3"):
        slot = f"text_encoder{suffix}"
        if not _listed(index, slot, root):
            continue
        folder = component(slot)
        cfg = read_json(folder / "config.json", "the text encoder config")
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


def write_diffusers_folder(
    path: str | Path,
    *,
    family: str | ModelFamily,
    denoiser_config: DenoiserConfig,
    denoiser_state: dict[str, Tensor],
    vae_config: AutoencoderConfig | QwenImageVAEConfig | None,
    vae_state: dict[str, Tensor] | None,
    latent_format: LatentFormat,
    prediction: str,
    sampling: Mapping[str, Any],
    text_encoders: dict[str, TextEncoderEntry] | None = None,
    tokenizers: dict[str, Path] | None = None,
    max_shard_bytes: int | None = None,
) -> Path:
    """Write our model as a diffusers folder that diffusers' ``from_pretrained`` loads.

    ``text_encoders`` / ``tokenizers`` (keyed ``clip_l``...) go to the family's usual folders
    (``family.diffusers.text_slots``); tokenizer folders are copied. Weights larger than ``max_shard_bytes``
    are sharded. Components not given are written as ``[null, null]`` in ``model_index.json``.
    """
    fam = get(family)
    names = fam.diffusers
    arch = fam.architecture
    if names is None or arch is None:
        with_names = [f.name for f in REGISTRY if f.diffusers is not None]
        raise ValueError(f"family {fam.name!r} has no diffusers form; choose one of {', '.join(with_names)}")
    if not isinstance(denoiser_config, arch.config):
        raise TypeError(
            f"family {fam.name!r} needs a {arch.config.__name__} denoiser_config, got {type(denoiser_config).__name__}"
        )
    assert arch.config_to_diffusers is not None and arch.to_diffusers is not None
    assert arch.diffusers_folder is not None
    text_encoders, tokenizers = text_encoders or {}, tokenizers or {}
    slots = names.text_slots
    unknown = sorted((set(text_encoders) | set(tokenizers)) - set(slots.values()))
    if unknown:
        raise ValueError(
            f"family {fam.name!r} has no text encoder slot for {unknown}; it uses {sorted(slots.values())}"
        )
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    index: dict[str, Any] = {
        "_class_name": names.pipeline_classes[0],
        "_diffusers_version": diffusers_version(),
    }

    extra = {"sample_size": names.sample_size} if names.sample_size is not None else {}
    cfg = arch.config_to_diffusers(denoiser_config, **extra)
    name = arch.diffusers_folder
    write_json(cfg, root / name / "config.json")
    write_weights(
        arch.to_diffusers(denoiser_state, denoiser_config), root / name, DIFFUSERS_WEIGHTS,
        max_shard_bytes=max_shard_bytes,
    )  # fmt: skip
    index[name] = ["diffusers", cfg["_class_name"]]

    if isinstance(vae_config, QwenImageVAEConfig) and vae_state is not None:
        if not latent_format.channel_mean:
            raise ValueError("a Qwen-Image VAE needs a latent format with per-channel statistics")
        write_json(
            qwenimage_vae_config_to_diffusers(
                vae_config, latent_format.channel_mean, latent_format.channel_std
            ),
            root / "vae" / "config.json",
        )
        write_weights(dict(vae_state), root / "vae", DIFFUSERS_WEIGHTS, max_shard_bytes=max_shard_bytes)
        index["vae"] = ["diffusers", QWEN_VAE_CLASS]
    elif isinstance(vae_config, AutoencoderConfig) and vae_state is not None:
        if vae_config.latent_channels != latent_format.channels:
            raise ValueError(
                f"the VAE has {vae_config.latent_channels} latent channels but the latent format {latent_format.channels}"
            )
        write_json(vae_config_to_diffusers(vae_config, latent_format), root / "vae" / "config.json")
        write_weights(
            vae_to_diffusers(vae_state, vae_config),
            root / "vae",
            DIFFUSERS_WEIGHTS,
            max_shard_bytes=max_shard_bytes,
        )
        index["vae"] = ["diffusers", "AutoencoderKL"]
    else:
        index["vae"] = [None, None]

    scheduler = scheduler_to_diffusers(prediction, dict(sampling))
    write_json(scheduler, root / "scheduler" / "scheduler_config.json")
    index["scheduler"] = ["diffusers", scheduler["_class_name"]]

    for slot, key in slots.items():
        suffix = slot.removeprefix("text_encoder")
        if key in text_encoders:
            state, config = text_encoders[key]
            config = {**config}
            if not config.get("architectures"):  # transformers' to_dict() gives None when unset
                config["architectures"] = [TEXT_ENCODER_CLASS[key]]
            write_json(config, root / slot / "config.json")
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
    index |= dict(names.index_extra)
    write_json(index, root / "model_index.json")
    return root
