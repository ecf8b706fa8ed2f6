"""The denoising networks families are built on, and their weight layouts (data, no family knowledge).

SD 1.x, 2.x and XL share the U-Net; SD3 is an MM-DiT; FLUX a double/single-stream transformer; our own
research models may also be a plain DiT. Each :class:`~latentworks.families.base.Architecture` names the
network, how to read its config from an original single file's shapes, and the key/config maps to and
from diffusers' layout.
"""

from __future__ import annotations

from typing import Any

from latentworks.checkpoints import detect
from latentworks.checkpoints import detect_qwenimage as dq
from latentworks.checkpoints.detect_zimage import ZIMAGE_MARKER, ZIMAGE_MARKER_2, zimage_config_from_comfy
from latentworks.checkpoints.keymaps import diffusers_configs as dc
from latentworks.checkpoints.keymaps.flux_bfl import flux_bfl_to_ours, ours_to_flux_bfl
from latentworks.checkpoints.keymaps.flux_diffusers import flux_from_diffusers, flux_to_diffusers
from latentworks.checkpoints.keymaps.qwenimage_diffusers import (
    qwenimage_from_diffusers,
    qwenimage_to_diffusers,
)
from latentworks.checkpoints.keymaps.sd3_diffusers import sd3_from_diffusers, sd3_to_diffusers
from latentworks.checkpoints.keymaps.sd3_sai import mmdit_sai_to_ours, ours_to_mmdit_sai
from latentworks.checkpoints.keymaps.sd_diffusers import unet_from_diffusers, unet_to_diffusers
from latentworks.checkpoints.keymaps.sd_ldm import ours_to_unet_ldm, unet_ldm_to_ours
from latentworks.checkpoints.keymaps.zimage_comfy import ours_to_zimage_comfy, zimage_comfy_to_ours
from latentworks.checkpoints.keymaps.zimage_diffusers import (
    zimage_config_from_diffusers,
    zimage_config_to_diffusers,
    zimage_from_diffusers,
    zimage_to_diffusers,
)
from latentworks.families.base import Architecture
from latentworks.models.dit import DiT, DiTConfig
from latentworks.models.flux import Flux, FluxConfig
from latentworks.models.mmdit import MMDiT, MMDiTConfig
from latentworks.models.qwenimage import QwenImage, QwenImageConfig
from latentworks.models.unet import UNet, UNetConfig
from latentworks.models.zimage import ZImage, ZImageConfig


def _unet_config_from_diffusers(cfg: dict[str, Any], *, index: dict[str, Any], source: str) -> UNetConfig:
    # the refiner's 5 time ids are not in the U-Net config; model_index.json's flag says so
    num_time_ids = 5 if index.get("requires_aesthetics_score") else 6
    return dc.unet_config_from_diffusers(cfg, num_time_ids=num_time_ids, source=source)


def _mmdit_config_from_diffusers(cfg: dict[str, Any], *, index: dict[str, Any], source: str) -> MMDiTConfig:
    return dc.mmdit_config_from_diffusers(cfg, source=source)


def _flux_config_from_diffusers(cfg: dict[str, Any], *, index: dict[str, Any], source: str) -> FluxConfig:
    return dc.flux_config_from_diffusers(cfg, source=source)


# The config of any network a family can have.
DenoiserConfig = UNetConfig | DiTConfig | MMDiTConfig | FluxConfig | ZImageConfig | QwenImageConfig

UNET = Architecture(
    name="unet",
    network=UNet,
    config=UNetConfig,
    markers=(detect.UNET_MARKER,),
    config_from_original=detect.unet_config_from_ldm,
    original_layout="ldm",
    from_original=unet_ldm_to_ours,
    to_original=ours_to_unet_ldm,
    diffusers_folder="unet",
    diffusers_class="UNet2DConditionModel",
    config_from_diffusers=_unet_config_from_diffusers,
    config_to_diffusers=dc.unet_config_to_diffusers,
    from_diffusers=unet_from_diffusers,
    to_diffusers=unet_to_diffusers,
)
MMDIT = Architecture(
    name="mmdit",
    network=MMDiT,
    config=MMDiTConfig,
    markers=(detect.MMDIT_MARKER,),
    config_from_original=detect.mmdit_config_from_sai,
    original_layout="sai",
    from_original=mmdit_sai_to_ours,
    to_original=ours_to_mmdit_sai,
    diffusers_folder="transformer",
    diffusers_class="SD3Transformer2DModel",
    config_from_diffusers=_mmdit_config_from_diffusers,
    config_to_diffusers=lambda config, **_: dc.mmdit_config_to_diffusers(config),
    from_diffusers=sd3_from_diffusers,
    to_diffusers=sd3_to_diffusers,
)
FLUX = Architecture(
    name="flux",
    network=Flux,
    config=FluxConfig,
    markers=(detect.FLUX_MARKER, detect.FLUX_MARKER_2),
    config_from_original=detect.flux_config_from_bfl,
    original_layout="bfl",
    from_original=flux_bfl_to_ours,
    to_original=ours_to_flux_bfl,
    diffusers_folder="transformer",
    diffusers_class="FluxTransformer2DModel",
    config_from_diffusers=_flux_config_from_diffusers,
    config_to_diffusers=lambda config, **_: dc.flux_config_to_diffusers(config),
    from_diffusers=flux_from_diffusers,
    to_diffusers=flux_to_diffusers,
)
DIT = Architecture(name="dit", network=DiT, config=DiTConfig)  # ours only: no released layout
# Z-Image's S3-DiT: released single files in the layout ComfyUI loads ("comfy"), diffusers folders
ZIMAGE = Architecture(
    name="zimage",
    network=ZImage,
    config=ZImageConfig,
    markers=(ZIMAGE_MARKER, ZIMAGE_MARKER_2),
    config_from_original=zimage_config_from_comfy,
    original_layout="comfy",
    from_original=zimage_comfy_to_ours,
    to_original=ours_to_zimage_comfy,
    diffusers_folder="transformer",
    diffusers_class="ZImageTransformer2DModel",
    config_from_diffusers=lambda cfg, *, index, source: zimage_config_from_diffusers(cfg, source=source),
    config_to_diffusers=lambda config, **_: zimage_config_to_diffusers(config),
    from_diffusers=zimage_from_diffusers,
    to_diffusers=zimage_to_diffusers,
)

# ComfyUI's single files (qwen_image_bf16 / _fp8_e4m3fn.safetensors) use diffusers' tensor names, so the
# "original" layout's key maps are the diffusers ones (see keymaps/qwenimage_diffusers.py for the sources).
QWENIMAGE = Architecture(
    name="qwenimage",
    network=QwenImage,
    config=QwenImageConfig,
    markers=dq.QWENIMAGE_MARKERS,
    config_from_original=dq.qwenimage_config_from_shapes,
    original_layout="comfy",
    from_original=qwenimage_from_diffusers,
    to_original=qwenimage_to_diffusers,
    diffusers_folder="transformer",
    diffusers_class="QwenImageTransformer2DModel",
    config_from_diffusers=lambda cfg, *, index, source: dq.qwenimage_config_from_diffusers(
        cfg, source=source
    ),
    config_to_diffusers=lambda config, **_: dq.qwenimage_config_to_diffusers(config),
    from_diffusers=qwenimage_from_diffusers,
    to_diffusers=qwenimage_to_diffusers,
)

ARCHITECTURES: tuple[Architecture, ...] = (UNET, MMDIT, FLUX, DIT, ZIMAGE, QWENIMAGE)


def architecture(name: str, *, source: str = "model.json") -> Architecture:
    """The architecture called ``name``; the error lists the known ones."""
    for arch in ARCHITECTURES:
        if arch.name == name:
            return arch
    raise ValueError(
        f"{source}: unknown denoiser architecture {name!r}; known: {', '.join(a.name for a in ARCHITECTURES)}"
    )


def architecture_of(config: Any) -> Architecture:
    """The architecture whose config class ``config`` is an instance of."""
    for arch in ARCHITECTURES:
        if isinstance(config, arch.config):
            return arch
    raise TypeError(f"no architecture takes a {type(config).__name__}")
