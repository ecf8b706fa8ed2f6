"""Which family a checkpoint file is, from its tensor names and shapes alone: :func:`detect_checkpoint`.

It takes ``{key: shape}`` (what a safetensors header gives without reading any tensor data) and recognises
full single files (the denoiser under ``model.diffusion_model.``, the VAE under ``first_stage_model.`` or
``vae.``, text encoders under their usual prefixes) and component files (a bare LDM U-Net, SAI MM-DiT or BFL
FLUX transformer). It walks the registry: for each architecture whose marker keys are present it reads the
config from shapes (:mod:`latentworks.checkpoints.detect`), then asks each registered family of that
architecture whether the config is one of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from latentworks.checkpoints.detect import (
    DENOISER_PREFIXES,
    Shapes,
    detect_vae,
    find_vae_prefix,
    key_starts,
    strip_prefix,
    text_encoder_prefixes,
)
from latentworks.checkpoints.keymaps.qwenimage_vae import is_qwenimage_vae, qwenimage_vae_config
from latentworks.families import REGISTRY, with_prediction
from latentworks.families.architectures import ARCHITECTURES, DenoiserConfig
from latentworks.families.base import Architecture, ModelFamily
from latentworks.models.autoencoder import AutoencoderConfig
from latentworks.models.qwenimage_vae import QwenImageVAEConfig

PREDICTIONS = ("eps", "v", "flow")


@dataclass(frozen=True)
class DetectedCheckpoint:
    """What a checkpoint holds and how to build its parts."""

    family: ModelFamily
    variant: str  # e.g. "sd1-inpaint", "sd3.5-large", "flux-dev-fill"
    denoiser_config: DenoiserConfig  # the architecture's config, read from shapes
    denoiser_prefix: str  # "model.diffusion_model." in full single files, "" for a bare component
    vae_config: AutoencoderConfig | QwenImageVAEConfig | None
    vae_prefix: str | None  # "first_stage_model." / "vae." / None when the file has no VAE
    text_encoders: dict[str, str]  # component ("clip_l", "clip_h", "clip_g", "t5xxl") -> key prefix
    prediction: str  # "eps" | "v" | "flow"

    @property
    def architecture(self) -> Architecture:
        assert self.family.architecture is not None  # detected families always have one
        return self.family.architecture


def _families_of(arch: Architecture) -> list[ModelFamily]:
    return [f for f in REGISTRY if f.architecture is arch and f.matches is not None]


def detect_checkpoint(
    shapes: Shapes,
    *,
    get_tensor: Callable[[str], Tensor] | None = None,
    source: str = "checkpoint",
    prediction: str | None = None,
) -> DetectedCheckpoint:
    """Recognise the model family, variant and configs in a checkpoint from ``{key: shape}``.

    Args:
        shapes: every tensor's name and shape (e.g. from a safetensors header).
        get_tensor: reads one tensor by name; only used where shapes cannot decide (SD 2.x eps/v).
        source: the file name, used in error messages.
        prediction: override the detected parameterisation ("eps" | "v" | "flow"); a family that exists
            with that objective under another name (SD 2.x v -> ``sd2-v``) is switched to.
    Raises:
        ValueError: no known denoiser in the file (the message lists what was looked for and how the
            file's keys start), or a recognised layout with missing or inconsistent keys.
    """
    if prediction is not None and prediction not in PREDICTIONS:
        raise ValueError(f"prediction must be 'eps', 'v' or 'flow', got {prediction!r}")
    for prefix in DENOISER_PREFIXES:
        for arch in ARCHITECTURES:
            if not arch.markers or not all(f"{prefix}{m}" in shapes for m in arch.markers):
                continue
            assert arch.config_from_original is not None
            config = arch.config_from_original(strip_prefix(shapes, prefix), source)
            candidates = _families_of(arch)
            family = next((f for f in candidates if f.matches is not None and f.matches(config)), None)
            if family is None:
                raise ValueError(
                    f"{source}: a {arch.name} network whose config matches no known family "
                    f"({', '.join(f.title for f in candidates)}); read from its shapes: {config}"
                )
            variant, found_prediction = (
                family.inspect(config, shapes, prefix, get_tensor)
                if family.inspect is not None
                else (family.name, family.prediction)
            )
            chosen = with_prediction(family, prediction or found_prediction)
            if chosen is not with_prediction(family, found_prediction):
                variant = chosen.name  # an explicit objective moved it to another family (sd2 <-> sd2-v)
            vae_prefix = find_vae_prefix(shapes) if prefix else None  # a bare component holds nothing else
            return DetectedCheckpoint(
                family=chosen,
                variant=variant,
                denoiser_config=config,
                denoiser_prefix=prefix,
                vae_config=_vae_config(shapes, vae_prefix, source) if vae_prefix is not None else None,
                vae_prefix=vae_prefix,
                text_encoders=text_encoder_prefixes(shapes),
                prediction=prediction or found_prediction,
            )
    markers = [f"{a.name}: {', '.join(map(repr, a.markers))}" for a in ARCHITECTURES if a.markers]
    raise ValueError(
        f"{source}: no denoiser keys found (looked for {'; '.join(markers)}, bare or under "
        f"{DENOISER_PREFIXES[0]!r}); keys start with {key_starts(shapes)}. "
        "A VAE or text encoder alone is loaded with its own loader (see detect_vae)."
    )


def _vae_config(shapes: Shapes, prefix: str, source: str) -> AutoencoderConfig | QwenImageVAEConfig:
    """The config of the VAE under ``prefix``: a KL autoencoder's, or the Qwen-Image VAE's."""
    sub = {k[len(prefix) :]: tuple(v) for k, v in shapes.items() if k.startswith(prefix)}
    if is_qwenimage_vae(sub):
        return qwenimage_vae_config(sub, source)
    return detect_vae(shapes, source=source)[0]
