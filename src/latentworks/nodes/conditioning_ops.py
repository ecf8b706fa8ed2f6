"""Conditioning nodes with ComfyUI's schemas that our single-prompt CONDITIONING represents exactly:
ConditioningZeroOut, ConditioningConcat and ConditioningAverage (ComfyUI ``nodes.py``).

Left out on purpose: ConditioningCombine (ComfyUI keeps a list of conditionings and the sampler runs the
model once per entry and averages the predictions) and ConditioningSetTimestepRange (the sampler applies
an entry only within a range of steps). Both need sampler support that ``ConditioningPayload`` (one
``Conditioning``) does not have; a node that pretended would give different images.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from latentworks.graph.types import InputSpec, NodeSpec, OutputSpec
from latentworks.nodes.payloads import ConditioningPayload


def _zero_out(ctx: Any, conditioning: ConditioningPayload) -> tuple[Any, ...]:
    c = conditioning.cond
    pooled = None if c.pooled is None else torch.zeros_like(c.pooled)
    return (ConditioningPayload(replace(c, tokens=torch.zeros_like(c.tokens), pooled=pooled)),)


def _concat(
    ctx: Any, conditioning_to: ConditioningPayload, conditioning_from: ConditioningPayload
) -> tuple[Any, ...]:
    """Append conditioning_from's tokens after conditioning_to's (B, L1 + L2, D); the rest is conditioning_to's."""
    to, fr = conditioning_to.cond, conditioning_from.cond
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
    return (ConditioningPayload(replace(to, tokens=torch.cat([to.tokens, frt], dim=1), mask=mask)),)


def _average(
    ctx: Any,
    conditioning_to: ConditioningPayload,
    conditioning_from: ConditioningPayload,
    conditioning_to_strength: float,
) -> tuple[Any, ...]:
    """s * to + (1 - s) * from on the tokens (from cut or zero-padded to to's length) and on the pooled
    vectors (from's pooled alone if to has none); the mask and extras are conditioning_to's."""
    to, fr = conditioning_to.cond, conditioning_from.cond
    s = float(conditioning_to_strength)
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
    return (ConditioningPayload(replace(to, tokens=tokens, pooled=pooled)),)


def conditioning_ops_nodes() -> list[NodeSpec]:
    def I(name: str, type_: str, **kw: Any) -> InputSpec:  # noqa: E743, N802
        return InputSpec(name=name, type=type_, **kw)

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
    ]
