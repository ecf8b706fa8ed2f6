"""latentworks model folders: save, load, describe.

A model folder holds everything a text-to-image pipeline needs except the text encoder's weights
(which come from their own package):

    model.json            configs, objective, latent format, defaults and the model card
    denoiser.safetensors  the diffusion network (fp16 or fp32)
    vae.safetensors       the autoencoder

``model.json`` (version 1)::

    {"format": "latentworks-model", "version": 1, "name": ...,
     "family": "latentworks" | a registered family name (latentworks.families),
     "denoiser": {"architecture": "unet"|"dit"|"mmdit"|"flux", "config": {...}, "prediction": "eps"|"v"|"flow",
                  "sampling": {"kind": "discrete", "betas": "cosine", ...} | {"kind": "flow", "shift": 1.0}},
     "vae": {"config": {...}},
     "latent_format": {"channels": 4, "scale_factor": ..., "shift_factor": ...},
     "text_encoder": {"kind": "minilm", "max_length": 32},
     "resolution": [64, 64],
     "defaults": {"steps": 20, "guidance": 5.0, "sampler": "euler", "scheduler": "normal"},
     "card": {...}}

Folders written before the family registry name the architecture ``denoiser.family`` and have no top-level
``family``; both are read as above. The name ``default`` resolves to the model embedded in the package (``latentworks/assets/default``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from latentworks import families
from latentworks.checkpoints.formats import describe_storage
from latentworks.checkpoints.io import build_on_meta, load_state_dict, save_file_atomic
from latentworks.checkpoints.lora import AppliedLora
from latentworks.diffusion.denoisers import (
    DiscreteModelSampling,
    DiscreteSamplingSpec,
    FlowModelSampling,
    FlowSamplingSpec,
    ModelSampling,
    SamplingSpec,
    sampling_spec_from_dict,
)
from latentworks.diffusion.guidance import GuidanceNorm
from latentworks.diffusion.latent_formats import LatentFormat
from latentworks.families.architectures import architecture
from latentworks.families.detect import detect_checkpoint
from latentworks.families.load import (
    CHECKPOINT_SUFFIXES,
    CheckpointParts,
    open_weights,
    read_checkpoint,
    vae_network,
)
from latentworks.models.autoencoder import Autoencoder, AutoencoderConfig
from latentworks.models.configs import config_from_dict, config_to_dict
from latentworks.models.qwenimage_vae import QwenImageVAE
from latentworks.models.text.base import TextEncoder
from latentworks.models.text.families import make_prompt_encoder
from latentworks.nn.quant import warn_if_fp8_upcast
from latentworks.pipelines.cascade import describe_cascade, is_cascade_folder

AnyAutoencoder = Autoencoder | QwenImageVAE
"""Either image autoencoder: same ``encode``/``decode``/``tiled_decode`` interface and ``config.downsample_factor``."""

FORMAT = "latentworks-model"
EMBEDDED = Path(__file__).resolve().parent.parent / "assets"


@dataclass(frozen=True)
class ModelFolder:
    """A loaded model folder: networks, sampling and metadata (see the module docstring).

    Frozen: adding a LoRA (``checkpoints.lora.add_lora``) gives a new ``ModelFolder`` sharing the networks,
    with the LoRA in ``loras``; the networks' weights are patched only while sampling. The networks themselves
    are ordinary (mutable) modules that a device manager may move.
    """

    path: Path
    meta: dict[str, Any]
    denoiser_net: nn.Module  # the architecture's network (families.architectures)
    vae: AnyAutoencoder | None  # None for a denoiser loaded alone (model_from_parts(..., without_vae=True))
    latent_format: LatentFormat
    model_sampling: ModelSampling
    loras: tuple[AppliedLora, ...] = ()  # LoRAs applied to denoiser_net while sampling
    guidance_norm: GuidanceNorm | None = None  # set by the CFGNorm node; the pipeline adds the family's

    @property
    def family(self) -> families.ModelFamily:
        """The registered family (our own folders: ``latentworks``)."""
        return families.get(self.meta.get("family"))

    @property
    def prediction(self) -> str:
        return str(self.meta["denoiser"]["prediction"])

    @property
    def resolution(self) -> tuple[int, int]:
        h, w = self.meta.get("resolution", [64, 64])
        return int(h), int(w)

    @property
    def defaults(self) -> dict[str, Any]:
        return dict(self.meta.get("defaults", {}))


def is_model_folder(path: str | Path) -> bool:
    """``default`` or a folder with a ``model.json`` (as opposed to a training run folder)."""
    return str(path) == "default" or (Path(path) / "model.json").is_file()


def resolve_model_path(name_or_path: str | Path, models_dir: str | Path | None = None) -> Path:
    """``default`` -> the embedded model; a folder path; or a folder name inside ``models_dir``."""
    s = str(name_or_path)
    candidates = []
    if s == "default":
        candidates.append(EMBEDDED / "default")
    candidates.append(Path(s).expanduser())
    if models_dir is not None:
        candidates.append(Path(models_dir) / s)
    for c in candidates:
        if (c / "model.json").is_file():
            return c
    if s == "default":
        raise FileNotFoundError(
            f"the embedded default model is missing from {EMBEDDED / 'default'}; reinstall latentworks "
            "or train one with docs/training.md"
        )
    for c in candidates:
        if (hint := _training_run_hint(c)) is not None:
            raise FileNotFoundError(hint)
    where = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(f"no latentworks model folder (with model.json) at {where}")


def _training_run_hint(path: Path) -> str | None:
    """What to do with a training run folder (config.json "kind": diffusion/autoencoder) given as a model."""
    try:
        kind = json.loads((path / "config.json").read_text()).get("kind")
    except (OSError, ValueError, AttributeError):
        return None
    if kind == "diffusion":
        return (
            f"{path} is a training run folder, not a model folder (it has config.json and checkpoints/, "
            f"no model.json); convert it first with: latentworks convert --from-run {path} "
            f"--out models/checkpoints/{path.resolve().name}"
        )
    if kind in ("autoencoder", "vae"):
        return (
            f"{path} is an autoencoder training run (train-vae), which cannot draw from a prompt by itself; "
            f"train a diffusion model on it with: latentworks train --vae {path} --out runs/ldm ..."
        )
    return None


def sampling_from_meta(spec: SamplingSpec | Mapping[str, Any]) -> DiscreteModelSampling | FlowModelSampling:
    """The model sampling of a ``denoiser.sampling`` entry: a spec dataclass or its model.json dict."""
    if not isinstance(spec, DiscreteSamplingSpec | FlowSamplingSpec):
        try:
            spec = sampling_spec_from_dict(spec)
        except ValueError as e:
            raise ValueError(f"model.json: {e}") from None
    return spec.model_sampling()


def _read_meta(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads((path / "model.json").read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path / 'model.json'} is not valid JSON: {e}") from None
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path / 'model.json'} is not a latentworks model (format={meta.get('format')!r})")
    families.get(meta.get("family"))  # an unknown family is an error listing the known ones
    return meta


def denoiser_architecture(meta: dict[str, Any]) -> str:
    """The architecture name in ``model.json`` (``denoiser.architecture``; older folders: ``denoiser.family``)."""
    dn = meta.get("denoiser", {})
    return str(dn.get("architecture", dn.get("family")))


def load_model_folder(
    name_or_path: str | Path,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    models_dir: str | Path | None = None,
) -> ModelFolder:
    """Load a model folder (see the module docstring) onto ``device`` in ``dtype``."""
    path = resolve_model_path(name_or_path, models_dir)
    meta = _read_meta(path)
    dn = meta["denoiser"]
    arch = architecture(denoiser_architecture(meta), source=str(path / "model.json"))
    net = arch.network(config_from_dict(arch.config, dn["config"]))
    net.load_state_dict(load_state_dict(path / "denoiser.safetensors"), strict=True)
    vae = Autoencoder(config_from_dict(AutoencoderConfig, meta["vae"]["config"]))
    vae.load_state_dict(load_state_dict(path / "vae.safetensors"), strict=True)
    for m in (net, vae):
        m.to(device=device, dtype=dtype).eval().requires_grad_(False)
    lf_meta = meta["latent_format"]
    lf = LatentFormat(
        channels=int(lf_meta["channels"]),
        scale_factor=float(lf_meta["scale_factor"]),
        shift_factor=float(lf_meta.get("shift_factor", 0.0)),
        rgb_factors=tuple(tuple(r) for r in lf_meta.get("rgb_factors", ())),
        rgb_bias=tuple(lf_meta.get("rgb_bias", (0.0, 0.0, 0.0))),
        channel_mean=tuple(lf_meta.get("channel_mean", ())),
        channel_std=tuple(lf_meta.get("channel_std", ())),
    )
    return ModelFolder(
        path=path,
        meta=meta,
        denoiser_net=net,
        vae=vae,
        latent_format=lf,
        model_sampling=sampling_from_meta(dn["sampling"]),
    )


def save_model_folder(
    path: str | Path,
    *,
    name: str,
    architecture: str,
    denoiser: nn.Module,
    prediction: str,
    sampling: dict[str, Any],
    vae: nn.Module,
    latent_format: LatentFormat,
    text_encoder: dict[str, Any],
    resolution: tuple[int, int],
    defaults: dict[str, Any] | None = None,
    card: dict[str, Any] | None = None,
    half: bool = False,
) -> Path:
    """Write a model folder. ``half`` stores the denoiser and VAE in float16 (loading casts back)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)

    def tensors(m: nn.Module) -> dict[str, torch.Tensor]:
        sd = {k: v.detach().cpu().contiguous() for k, v in m.state_dict().items()}
        return {k: (v.half() if half and v.is_floating_point() else v) for k, v in sd.items()}

    save_file_atomic(tensors(denoiser), path / "denoiser.safetensors")
    save_file_atomic(tensors(vae), path / "vae.safetensors")
    meta = {
        "format": FORMAT,
        "version": 1,
        "name": name,
        "family": families.get(None).name,
        "denoiser": {
            "architecture": architecture,
            "config": config_to_dict(denoiser.config),
            "prediction": prediction,
            "sampling": sampling,
        },
        "vae": {"config": config_to_dict(vae.config)},
        "latent_format": config_to_dict(latent_format),
        "text_encoder": text_encoder,
        "resolution": list(resolution),
        "defaults": defaults or {},
        "card": card or {},
    }
    tmp = path / "model.json.tmp"
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    tmp.replace(path / "model.json")
    return path


def model_resolution(name_or_path: str | Path) -> tuple[int, int]:
    """A model folder's native (height, width), from its model.json alone."""
    h, w = _read_meta(resolve_model_path(name_or_path)).get("resolution", [64, 64])
    return int(h), int(w)


def load_model_autoencoder(name_or_path: str | Path) -> nn.Module:
    """The autoencoder of a model folder in float32, in eval mode (trainable: nothing is frozen)."""
    path = resolve_model_path(name_or_path)
    vae = Autoencoder(config_from_dict(AutoencoderConfig, _read_meta(path)["vae"]["config"]))
    vae.load_state_dict(load_state_dict(path / "vae.safetensors"), strict=True)
    return vae.float().eval()


ENCODER_PREFIXES = ("encoder.", "quant_conv.")  # what maps images to latents; the denoiser depends on it


def replace_decoder(model: str | Path, autoencoder: nn.Module, out: str | Path) -> Path:
    """Copy model folder ``model`` to ``out`` with the decoder of ``autoencoder`` (e.g. a decoder fine-tune).

    Refused unless ``autoencoder``'s encoder equals the model's, bit for bit at the folder's precision:
    the denoiser was trained on that encoder's latents, so only the decoder may change. The new weights
    are stored at the folder's precision. ``out`` must not exist or be empty.
    """
    import shutil

    src = resolve_model_path(model)
    out = Path(out)
    if out.exists() and (out.is_file() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists; choose a new or empty folder (nothing is overwritten)")
    meta = _read_meta(src)
    old = load_state_dict(src / "vae.safetensors")
    new = {k: v.detach().cpu() for k, v in autoencoder.state_dict().items()}
    if set(old) != set(new) or any(new[k].shape != old[k].shape for k in old):
        raise ValueError(f"the autoencoder does not have the architecture of {src}'s (different tensors)")
    changed = [
        k for k in old if k.startswith(ENCODER_PREFIXES) and not torch.equal(new[k].to(old[k].dtype), old[k])
    ]
    if changed:
        raise ValueError(
            f"the autoencoder's encoder differs from {src}'s ({len(changed)} tensors, e.g. {changed[0]}); "
            "its latents would not be the ones the denoiser learned. Fine-tune only the decoder "
            "(latentworks train-vae --finetune-decoder)"
        )
    out.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and f.name not in ("vae.safetensors", "model.json"):
            shutil.copy2(f, out / f.name)
    save_file_atomic({k: v.to(old[k].dtype).contiguous() for k, v in new.items()}, out / "vae.safetensors")
    (out / "model.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out


def describe_checkpoint(path: Path) -> str:
    """Family, variant, components and parameter counts of a checkpoint file, from its header alone."""
    if path.is_dir():  # a diffusers folder: its configs say it all
        parts = read_checkpoint(path)
        family, variant, pred = parts.family, parts.variant, parts.prediction
        vae = "yes" if parts.vae_state is not None else "no (pass --vae)"
        tes = sorted(parts.text_encoders)
        count = sum(int(v.numel()) for v in parts.denoiser_state.values())
    else:
        if path.suffix.lower() not in (".safetensors", ".gguf"):
            raise ValueError(
                f"{path}: only .safetensors and .gguf files can be described without loading them"
            )
        lazy = open_weights(path)
        shapes = dict(lazy.shapes())  # type: ignore[attr-defined]  # logical shapes (GGUF, fp8 included)
        found = detect_checkpoint(shapes, get_tensor=lambda k: lazy[k], source=path.name)
        family, variant, pred = found.family, found.variant, found.prediction
        vae = "yes" if found.vae_prefix is not None else "no (pass --vae)"
        tes = sorted(found.text_encoders)
        prefix = found.denoiser_prefix  # "" = a bare denoiser file: every tensor is the denoiser's
        count = sum(int(torch.Size(v).numel()) for k, v in shapes.items() if k.startswith(prefix))
    b = family.generation
    kind = family.architecture.name if family.architecture is not None else "?"
    return "\n".join(
        [
            f"checkpoint  {path}",
            f"family      {family.name}  ({family.title}; variant {variant}, {kind}, prediction={pred})",
            f"parameters  denoiser {count:,}",
            f"storage     {describe_storage(path) if path.is_file() else 'diffusers folder (per component)'}",
            f"vae         {vae}",
            f"text        {', '.join(tes) if tes else 'none inside (pass --text-encoder FILE)'}",
            f"resolution  {list(b.resolution)}  defaults {dict(b.defaults)}",
        ]
    )


def describe_model(name_or_path: str | Path, models_dir: str | Path | None = None) -> str:
    """A human-readable description: family, parameters, objective, training data, licence."""
    if is_cascade_folder(name_or_path):  # a DeepFloyd IF stage: which stage, and what it runs with
        return describe_cascade(name_or_path)
    checkpoint = resolve_checkpoint(name_or_path, models_dir)
    if checkpoint is not None:
        return describe_checkpoint(checkpoint)
    path = resolve_model_path(name_or_path, models_dir)
    meta = _read_meta(path)
    from safetensors import safe_open

    def count(file: Path) -> int:
        with safe_open(str(file), framework="pt") as f:
            return sum(int(torch.Size(f.get_slice(k).get_shape()).numel()) for k in f.keys())

    dn, card = meta["denoiser"], meta.get("card", {})
    lines = [
        f"model       {meta.get('name', path.name)}  ({path})",
        f"family      {meta.get('family', families.get(None).name)}  architecture={denoiser_architecture(meta)}  "
        f"prediction={dn['prediction']}  sampling={dn['sampling']}",
        f"parameters  denoiser {count(path / 'denoiser.safetensors'):,}  vae {count(path / 'vae.safetensors'):,}",
        f"resolution  {meta.get('resolution')}  latent channels {meta['latent_format']['channels']}",
        f"text        {meta.get('text_encoder')}",
        f"defaults    {meta.get('defaults')}",
    ]
    if "unclip" in meta:  # our own unCLIP (pipelines.own_unclip): which stages the folder holds
        stages = ["image encoder"] + (["prior"] if "prior" in meta["unclip"] else []) + ["decoder"]
        missing = "" if "prior" in meta["unclip"] else " (no prior: variations only, no text -> image)"
        lines.append(f"stages      unCLIP: {' -> '.join(stages)}{missing}")
    for key in ("prompting", "training_data", "training", "licence", "credits"):
        if key in card:
            lines.append(f"{key:<11} {card[key]}")
    return "\n".join(lines)


# -- checkpoints from elsewhere (single files, diffusers folders) ----------------------------------------


def inpaint_input_channels(latent_channels: int, factor: int) -> tuple[int, ...]:
    """Input channels of the inpainting models latentworks runs, for ``latent_channels``-channel latents and a VAE
    of ``factor``: SD 1.x/2.x/XL inpainting U-Nets (latent + mask + masked-image latent, 9 for SD) and FLUX.1 Fill
    (latent + masked-image latent + the mask folded factor x factor, 96 for FLUX)."""
    c = latent_channels
    return (2 * c + 1, 2 * c + factor * factor)


def model_from_parts(
    parts: CheckpointParts,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    without_vae: bool = False,
) -> ModelFolder:
    """A :class:`ModelFolder` (networks, sampling, metadata) from :class:`~latentworks.families.load.CheckpointParts`.

    ``without_vae``: build only the denoiser (``vae`` is None; the UNETLoader node's MODEL, whose VAE comes
    from its own loader), whether or not ``parts`` holds a VAE.
    """
    if parts.vae_state is None and not without_vae:
        named = parts.family.comfy.vae_file if parts.family.comfy is not None else None
        example = (
            f"{parts.family.title}'s {named}"
            if named
            else "the family's ae.safetensors / sdxl_vae.safetensors"
        )
        raise ValueError(
            f"{parts.source} has no VAE: pass one (CLI: --vae FILE; API: vae=PATH), e.g. {example}"
        )
    arch, config = parts.architecture, parts.denoiser_config
    c = parts.latent_format.channels
    factor = (
        int(getattr(parts.vae_config, "downsample_factor", 8) or 8) if parts.vae_config is not None else 8
    )
    inpainting = inpaint_input_channels(c, factor)
    if config.in_channels not in (c, *inpainting):
        raise ValueError(
            f"{parts.source} is a control or other special model ({config.in_channels} input channels for "
            f"{c}-channel latents); latentworks runs regular models and inpainting models "
            f"({' or '.join(str(n) for n in inpainting)} input channels)"
        )
    net = build_on_meta(arch.network, config, parts.denoiser_state, device=device, dtype=dtype)
    warn_if_fp8_upcast(net, device)
    vae = (
        None
        if without_vae or parts.vae_state is None
        else build_on_meta(
            vae_network(parts.vae_config), parts.vae_config, parts.vae_state, device=device, dtype=dtype
        )
    )
    behaviour = parts.family.generation
    meta = {
        "format": FORMAT,
        "version": 1,
        "name": Path(parts.source).stem if Path(parts.source).is_file() else Path(parts.source).name,
        "family": parts.family.name,
        "variant": parts.variant,
        "source": str(parts.source),
        "denoiser": {
            "architecture": arch.name,
            "config": config_to_dict(config),
            "prediction": parts.prediction,
            "sampling": parts.sampling,
        },
        "vae": None if vae is None else {"config": config_to_dict(parts.vae_config)},
        "latent_format": config_to_dict(parts.latent_format),
        "text_encoder": {"kind": parts.family.name, "components": sorted(parts.text_encoders)},
        "resolution": list(behaviour.resolution),
        "defaults": dict(behaviour.defaults),
    }
    return ModelFolder(
        path=Path(parts.source),
        meta=meta,
        denoiser_net=net,
        vae=vae,
        latent_format=parts.latent_format,
        model_sampling=sampling_from_meta(parts.sampling),
    )


def text_encoder_from_parts(
    parts: CheckpointParts, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> TextEncoder:
    """The family's prompt encoder from the checkpoint's (or separately given) text encoders."""
    recipe = parts.family.text
    if recipe is None:
        raise ValueError(f"{parts.source}: {parts.family.title} has no text-encoder recipe")
    return make_prompt_encoder(
        recipe,
        {name: dict(sd) for name, sd in parts.text_encoders.items()},
        tokenizer_dir=parts.tokenizer_dir,
        device=device,
        dtype=dtype,
    )


def resolve_checkpoint(name_or_path: str | Path, models_dir: str | Path | None = None) -> Path | None:
    """A checkpoint file or diffusers folder for ``name_or_path`` (also looked up in ``models_dir`` and its
    ``checkpoints/`` subfolder), or None when it names a latentworks model folder or nothing."""
    s = str(name_or_path)
    candidates = [Path(s).expanduser()]
    if models_dir is not None:
        candidates += [Path(models_dir) / s, Path(models_dir) / "checkpoints" / s]
    for c in candidates:
        if c.is_file() and c.suffix.lower() in CHECKPOINT_SUFFIXES:
            return c
        if (c / "model_index.json").is_file():
            return c
    return None
