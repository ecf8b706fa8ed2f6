"""The model-family registry: one :class:`ModelFamily` per family, each defined in its own module.

Adding a family = its network in ``models/`` (or an existing one), its module here, its tests, and one entry
in :data:`REGISTRY`. Everything else asks this module: detection walks the registry in order, loaders read
the family's key maps and text recipe, pipelines its generation behaviour, nodes and the CLI its names.

>>> from latentworks import families
>>> families.get("sd15").name
'sd1'
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from latentworks.families.base import (
    Architecture,
    ComfyNames,
    DiffusersNames,
    Generation,
    ModelFamily,
)
from latentworks.families.deepfloyd_if import IF_I, IF_II
from latentworks.families.flux import FLUX_DEV, FLUX_SCHNELL
from latentworks.families.karlo import KARLO
from latentworks.families.latentworks import LATENTWORKS
from latentworks.families.qwenimage import QWEN_IMAGE
from latentworks.families.sd1 import SD1
from latentworks.families.sd2 import SD2, SD2_V
from latentworks.families.sd2_unclip import SD2_UNCLIP_H, SD2_UNCLIP_L
from latentworks.families.sd3 import SD3
from latentworks.families.sd_upscaler import SD_X4_UPSCALER
from latentworks.families.sdxl import SDXL, SDXL_REFINER
from latentworks.families.zimage import Z_IMAGE

__all__ = [
    "REGISTRY",
    "Architecture",
    "ComfyNames",
    "DiffusersNames",
    "Generation",
    "ModelFamily",
    "by_config",
    "by_pipeline_class",
    "get",
    "names",
    "with_prediction",
]

# Detection asks families in this order; the first whose ``matches`` accepts a config wins.
REGISTRY: tuple[ModelFamily, ...] = (
    SD1,
    SD2,
    SD2_V,
    SDXL,
    SDXL_REFINER,
    SD2_UNCLIP_H,
    SD2_UNCLIP_L,
    SD3,
    FLUX_DEV,
    FLUX_SCHNELL,
    Z_IMAGE,
    QWEN_IMAGE,
    KARLO,
    IF_I,
    IF_II,
    SD_X4_UPSCALER,
    LATENTWORKS,
)


def _check_registry(registry: tuple[ModelFamily, ...]) -> dict[str, ModelFamily]:
    by_name: dict[str, ModelFamily] = {}
    for family in registry:
        for name in (family.name, *family.aliases):
            if name.lower() in by_name:
                raise ValueError(
                    f"family name {name!r} is used twice ({by_name[name.lower()]!r}, {family!r})"
                )
            by_name[name.lower()] = family
    for family in registry:
        for other in family.by_prediction.values():
            if other not in by_name:
                raise ValueError(f"{family!r}.by_prediction names {other!r}, which is not registered")
    return by_name


_BY_NAME = _check_registry(REGISTRY)


def names() -> list[str]:
    """The canonical names, in registry order."""
    return [f.name for f in REGISTRY]


def get(name: str | ModelFamily | None) -> ModelFamily:
    """The family called ``name`` (canonical or alias, any case); None means our own model folders.

    Raises:
        ValueError: an unknown name; the message lists the known ones.
    """
    if isinstance(name, ModelFamily):
        return name
    if name is None:
        return LATENTWORKS
    family = _BY_NAME.get(str(name).lower())
    if family is None:
        raise ValueError(f"unknown model family {name!r}; known: {', '.join(names())}")
    return family


def with_prediction(family: ModelFamily, prediction: str) -> ModelFamily:
    """``family``, or the registered family that is the same model with another objective (SD 2.x eps <-> v)."""
    other = family.by_prediction.get(prediction)
    return get(other) if other is not None else family


def by_config(config: Any) -> ModelFamily | None:
    """The first registered family whose detector accepts a network of ``config``, or None."""
    for family in REGISTRY:
        if family.matches is not None and family.matches(config):
            return family
    return None


def by_pipeline_class(index: Mapping[str, Any]) -> ModelFamily | None:
    """The family a diffusers ``model_index.json`` names by its pipeline class (the first registered family
    listing the class, told apart by ``requires_aesthetics_score`` where two share it), or None."""
    cls = index.get("_class_name", "")
    candidates = [f for f in REGISTRY if f.diffusers is not None and cls in f.diffusers.pipeline_classes]
    aesthetic = bool(index.get("requires_aesthetics_score", False))
    for family in candidates:
        flag = family.diffusers.requires_aesthetics_score if family.diffusers else None
        if flag is None or flag == aesthetic:
            return family
    return candidates[0] if candidates else None
