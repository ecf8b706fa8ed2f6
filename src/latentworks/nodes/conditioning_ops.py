"""Conditioning nodes with ComfyUI's schemas (``nodes.py``): ConditioningZeroOut, ConditioningConcat,
ConditioningAverage, ConditioningCombine, ConditioningSetArea, ConditioningSetAreaPercentage,
ConditioningSetAreaStrength, ConditioningSetMask and ConditioningSetTimestepRange.

A CONDITIONING is a list of entries (``ConditioningPayload.entries``), as in ComfyUI: ConditioningCombine
joins two lists, and the Set* nodes set an option on every entry. The sampler blends the entries' predictions
by area, mask and strength, each within its timestep range (:mod:`latentworks.diffusion.regions`). As in
ComfyUI, Concat and Average apply the FIRST entry of ``conditioning_from`` to every entry of
``conditioning_to``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from latentworks.diffusion.conditioning import Conditioning
from latentworks.graph.types import NodeSpec, OutputSpec, input_spec
from latentworks.nodes.image_ops import MAX_RESOLUTION
from latentworks.nodes.payloads import ConditioningPayload


def _zero_out(ctx: Any, conditioning: ConditioningPayload) -> tuple[Any, ...]:
    def zero(c: Conditioning) -> Conditioning:
        pooled = None if c.pooled is None else torch.zeros_like(c.pooled)
        return replace(c, tokens=torch.zeros_like(c.tokens), pooled=pooled)

    return (conditioning.map_conds(zero),)


def _concat(
    ctx: Any, conditioning_to: ConditioningPayload, conditioning_from: ConditioningPayload
) -> tuple[Any, ...]:
    """Append conditioning_from's tokens after conditioning_to's (B, L1 + L2, D); the rest is conditioning_to's."""
    fr = conditioning_from.cond
    return (conditioning_to.map_conds(lambda to: _concat_one(to, fr)),)


def _concat_one(to: Conditioning, fr: Conditioning) -> Conditioning:
    if to.tokens.shape[2] != fr.tokens.shape[2]:
        raise ValueError(
            f"ConditioningConcat: token widths differ ({to.tokens.shape[2]} vs {fr.tokens.shape[2]}); "
            "concatenate conditionings from the same text encoder"
        )
    frt = fr.tokens.to(to.tokens)
    if frt.shape[0] != to.tokens.shape[0]:
        frt = frt[:1].expand(to.tokens.shape[0], -1, -1)
    mask = None
    if to.mask is not None or fr.mask is not None:

        def real(m: Any, n: int) -> torch.Tensor:
            return (
                torch.ones(to.tokens.shape[0], n, dtype=torch.bool)
                if m is None
                else m.bool()[:1].expand(to.tokens.shape[0], -1)
            )

        mask = torch.cat([real(to.mask, to.tokens.shape[1]), real(fr.mask, fr.tokens.shape[1])], dim=1)
    return replace(to, tokens=torch.cat([to.tokens, frt], dim=1), mask=mask)


def _average(
    ctx: Any,
    conditioning_to: ConditioningPayload,
    conditioning_from: ConditioningPayload,
    conditioning_to_strength: float,
) -> tuple[Any, ...]:
    """s * to + (1 - s) * from on the tokens (from cut or zero-padded to to's length) and on the pooled
    vectors (from's pooled alone if to has none); the mask and extras are conditioning_to's."""
    fr, s = conditioning_from.cond, float(conditioning_to_strength)
    return (conditioning_to.map_conds(lambda to: _average_one(to, fr, s)),)


def _average_one(to: Conditioning, fr: Conditioning, s: float) -> Conditioning:
    t1 = to.tokens
    if t1.shape[2] != fr.tokens.shape[2]:
        raise ValueError(
            f"ConditioningAverage: token widths differ ({t1.shape[2]} vs {fr.tokens.shape[2]}); "
            "average conditionings from the same text encoder"
        )
    t0 = fr.tokens[:, : t1.shape[1]].to(t1)
    if t0.shape[1] < t1.shape[1]:
        t0 = torch.cat([t0, t0.new_zeros(t0.shape[0], t1.shape[1] - t0.shape[1], t0.shape[2])], dim=1)
    tokens = t1 * s + t0 * (1.0 - s)
    pooled = to.pooled
    if fr.pooled is not None and to.pooled is not None:
        pooled = to.pooled * s + fr.pooled.to(to.pooled) * (1.0 - s)
    elif fr.pooled is not None:
        pooled = fr.pooled
    return replace(to, tokens=tokens, pooled=pooled)


def _combine(
    ctx: Any, conditioning_1: ConditioningPayload, conditioning_2: ConditioningPayload
) -> tuple[Any, ...]:
    """conditioning_1's entries followed by conditioning_2's: the sampler runs the model for each and
    blends the predictions (equal weights where both cover the image)."""
    return (ConditioningPayload.from_entries([conditioning_1, conditioning_2]),)


def _set_area(
    ctx: Any, conditioning: ConditioningPayload, width: int, height: int, x: int, y: int, strength: float
) -> tuple[Any, ...]:
    area = (int(height), int(width), int(y), int(x))
    return (
        conditioning.map_entries(
            lambda e: replace(
                e, area=area, area_fraction=None, strength=float(strength), set_area_to_bounds=False
            )
        ),
    )


def _set_area_percentage(
    ctx: Any,
    conditioning: ConditioningPayload,
    width: float,
    height: float,
    x: float,
    y: float,
    strength: float,
) -> tuple[Any, ...]:
    frac = (float(height), float(width), float(y), float(x))
    return (
        conditioning.map_entries(
            lambda e: replace(
                e, area=None, area_fraction=frac, strength=float(strength), set_area_to_bounds=False
            )
        ),
    )


def _set_area_strength(ctx: Any, conditioning: ConditioningPayload, strength: float) -> tuple[Any, ...]:
    return (conditioning.map_entries(lambda e: replace(e, strength=float(strength))),)


def _set_mask(
    ctx: Any, conditioning: ConditioningPayload, mask: torch.Tensor, strength: float, set_cond_area: str
) -> tuple[Any, ...]:
    m = mask.float()
    m = m[None] if m.ndim == 2 else m
    if m.ndim != 3:
        raise ValueError(
            f"ConditioningSetMask: mask must be (H, W) or (B, H, W), got shape {tuple(mask.shape)}"
        )
    bounds = set_cond_area != "default"
    return (
        conditioning.map_entries(
            lambda e: replace(e, mask=m, mask_strength=float(strength), set_area_to_bounds=bounds)
        ),
    )


def _set_timestep_range(
    ctx: Any, conditioning: ConditioningPayload, start: float, end: float
) -> tuple[Any, ...]:
    return (
        conditioning.map_entries(lambda e: replace(e, start_percent=float(start), end_percent=float(end))),
    )


def conditioning_ops_nodes() -> list[NodeSpec]:
    I = input_spec  # noqa: E741, N806

    return [
        NodeSpec(
            name="ConditioningZeroOut",
            category="advanced/conditioning",
            execute=_zero_out,
            description="Zero the token states and pooled vector (keeps guidance and other extras).",
            inputs=(I("conditioning", "CONDITIONING"),),
            outputs=(OutputSpec(type="CONDITIONING"),),
        ),
        NodeSpec(
            name="ConditioningConcat",
            display_name="Conditioning (Concat)",
            category="conditioning",
            execute=_concat,
            inputs=(I("conditioning_to", "CONDITIONING"), I("conditioning_from", "CONDITIONING")),
            outputs=(OutputSpec(type="CONDITIONING"),),
        ),
        NodeSpec(
            name="ConditioningAverage",
            category="conditioning",
            execute=_average,
            inputs=(
                I("conditioning_to", "CONDITIONING"),
                I("conditioning_from", "CONDITIONING"),
                I("conditioning_to_strength", "FLOAT", default=1.0, min=0.0, max=1.0, step=0.01),
            ),
            outputs=(OutputSpec(type="CONDITIONING"),),
        ),
        NodeSpec(
            name="ConditioningCombine",
            display_name="Conditioning (Combine)",
            category="conditioning",
            execute=_combine,
            description="Use both prompts: the sampler runs each and blends the predictions.",
            inputs=(I("conditioning_1", "CONDITIONING"), I("conditioning_2", "CONDITIONING")),
            outputs=(OutputSpec(type="CONDITIONING"),),
        ),
        NodeSpec(
            name="ConditioningSetArea",
            display_name="Conditioning (Set Area)",
            category="conditioning",
            execute=_set_area,
            description="Apply the prompt to a rectangle of the image (pixels), blended with the others.",
            inputs=(
                I("conditioning", "CONDITIONING"),
                I("width", "INT", default=64, min=64, max=MAX_RESOLUTION, step=8),
                I("height", "INT", default=64, min=64, max=MAX_RESOLUTION, step=8),
                I("x", "INT", default=0, min=0, max=MAX_RESOLUTION, step=8),
                I("y", "INT", default=0, min=0, max=MAX_RESOLUTION, step=8),
                I("strength", "FLOAT", default=1.0, min=0.0, max=10.0, step=0.01),
            ),
            outputs=(OutputSpec(type="CONDITIONING"),),
        ),
        NodeSpec(
            name="ConditioningSetAreaPercentage",
            display_name="Conditioning (Set Area with Percentage)",
            category="conditioning",
            execute=_set_area_percentage,
            description="Apply the prompt to a rectangle given as fractions of the image.",
            inputs=(
                I("conditioning", "CONDITIONING"),
                I("width", "FLOAT", default=1.0, min=0.0, max=1.0, step=0.01),
                I("height", "FLOAT", default=1.0, min=0.0, max=1.0, step=0.01),
                I("x", "FLOAT", default=0.0, min=0.0, max=1.0, step=0.01),
                I("y", "FLOAT", default=0.0, min=0.0, max=1.0, step=0.01),
                I("strength", "FLOAT", default=1.0, min=0.0, max=10.0, step=0.01),
            ),
            outputs=(OutputSpec(type="CONDITIONING"),),
        ),
        NodeSpec(
            name="ConditioningSetAreaStrength",
            category="conditioning",
            execute=_set_area_strength,
            description="Set the prompt's weight in the blend.",
            inputs=(
                I("conditioning", "CONDITIONING"),
                I("strength", "FLOAT", default=1.0, min=0.0, max=10.0, step=0.01),
            ),
            outputs=(OutputSpec(type="CONDITIONING"),),
        ),
        NodeSpec(
            name="ConditioningSetMask",
            display_name="Conditioning (Set Mask)",
            category="conditioning",
            execute=_set_mask,
            description="Apply the prompt where the mask is set, weighted by the mask times strength.",
            inputs=(
                I("conditioning", "CONDITIONING"),
                I("mask", "MASK"),
                I("strength", "FLOAT", default=1.0, min=0.0, max=10.0, step=0.01),
                I("set_cond_area", "COMBO", choices=("default", "mask bounds"), default="default"),
            ),
            outputs=(OutputSpec(type="CONDITIONING"),),
        ),
        NodeSpec(
            name="ConditioningSetTimestepRange",
            category="advanced/conditioning",
            execute=_set_timestep_range,
            description="Use the prompt only from start to end (fractions of the sampling).",
            inputs=(
                I("conditioning", "CONDITIONING"),
                I("start", "FLOAT", default=0.0, min=0.0, max=1.0, step=0.001),
                I("end", "FLOAT", default=1.0, min=0.0, max=1.0, step=0.001),
            ),
            outputs=(OutputSpec(type="CONDITIONING"),),
        ),
    ]
