"""Conditioning lists: several prompts, each over an area or mask of the latent and a range of noise levels.

ComfyUI's CONDITIONING is a list of entries (ConditioningCombine concatenates lists; ConditioningSetArea,
ConditioningSetMask and ConditioningSetTimestepRange set options on every entry). At each step every active
entry denoises its crop of the latent, and the predictions are blended per pixel by the entries' weights:

    x0(p) = sum_e w_e(p) * D(x[area_e], sigma, cond_e)(p) / sum_e w_e(p)

where ``w_e`` is the entry's strength times its mask (or, for an area without a mask, a linear feather over
up to 8 latent cells on the sides that do not touch the latent's border). Pixels no active entry covers get
0, as in ComfyUI. This is the behaviour of ComfyUI's ``calc_cond_batch`` (``comfy/samplers.py``), written
here from its documented behaviour. Entries of equal crop shape and compatible conditioning go through the
network in one batched call.

:class:`~latentworks.diffusion.guidance.CFGDenoiser` takes a tuple of :class:`CondEntry` in place of a
``Conditioning`` for cond and/or uncond; a plain ``Conditioning`` keeps the one-call path unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from latentworks.diffusion.conditioning import Conditioning
from latentworks.diffusion.denoisers import Denoiser

FEATHER = 8
"""Latent cells over which an area without a mask fades in from each inner edge (ComfyUI's ``fuzz``)."""

MIN_BOUNDS_AREA = 8
"""Smallest side (latent cells) of an area taken from a mask's bounds (ComfyUI's ``set_area_to_bounds``)."""


@dataclass(frozen=True)
class CondEntry:
    """One entry of a conditioning list, resolved for a latent of a known size.

    Attributes:
        cond: what the inner denoiser takes (a ``Conditioning`` with x's batch size).
        area: ``(height, width, y, x)`` in latent cells; None = the whole latent. Clipped to the latent.
        mask: per-cell weights (1 or B, H, W) over the WHOLE latent (mask strength already applied); None = 1.
        strength: scales the entry's weight.
        sigma_range: ``(sigma_lo, sigma_hi)``: the entry is used only while ``sigma_lo <= sigma <= sigma_hi``
            (the first sample's sigma decides); None = always.
    """

    cond: Any
    area: tuple[int, int, int, int] | None = None
    mask: Tensor | None = None
    strength: float = 1.0
    sigma_range: tuple[float, float] | None = None

    def active(self, sigma: float) -> bool:
        if self.sigma_range is None:
            return True
        lo, hi = self.sigma_range
        return lo <= sigma <= hi


ConditionList = tuple[CondEntry, ...]


def as_entries(cond: Any) -> ConditionList | None:
    """A conditioning list from a list (returned as a tuple), None (None) or one conditioning (one entry)."""
    if cond is None:
        return None
    if isinstance(cond, (tuple, list)) and all(isinstance(e, CondEntry) for e in cond):
        return tuple(cond)
    return (CondEntry(cond),)


def is_entry_list(cond: Any) -> bool:
    return isinstance(cond, (tuple, list)) and len(cond) > 0 and all(isinstance(e, CondEntry) for e in cond)


# --------------------------------------------------------------------------------------------------------
# Resolving node options for a latent size
# --------------------------------------------------------------------------------------------------------


def percent_to_sigma(model_sampling: Any, percent: float) -> float:
    """The noise level at ``percent`` of the way through sampling (0 = the start, 1 = the end).

    Discrete models: the sigma of training step ``(1 - percent) * (N - 1)``; flow models: the shifted level
    ``time_shift(1 - percent)``; others (EDM): log-linear between sigma_max and sigma_min. ``percent <= 0``
    gives +inf for discrete/EDM models and 1 for flow models, ``percent >= 1`` gives 0 (ComfyUI's rule).
    """
    flow = hasattr(model_sampling, "time_shift")
    if percent <= 0.0:
        return 1.0 if flow else math.inf
    if percent >= 1.0:
        return 0.0
    if flow:
        return float(model_sampling.time_shift(torch.tensor(1.0 - percent, dtype=torch.float64)))
    n = getattr(model_sampling, "num_timesteps", None)
    if n is not None:
        return float(model_sampling.sigma(torch.tensor((1.0 - percent) * (n - 1), dtype=torch.float64)))
    lo, hi = math.log(model_sampling.sigma_min), math.log(model_sampling.sigma_max)
    return math.exp(lo + (hi - lo) * (1.0 - percent))


def sigma_range_of(
    model_sampling: Any, start_percent: float, end_percent: float
) -> tuple[float, float] | None:
    """``(sigma_lo, sigma_hi)`` for ConditioningSetTimestepRange's ``start``/``end``; None for (0, 1)."""
    if start_percent <= 0.0 and end_percent >= 1.0:
        return None
    return percent_to_sigma(model_sampling, end_percent), percent_to_sigma(model_sampling, start_percent)


def area_from_fractions(
    fractions: tuple[float, float, float, float], latent_hw: tuple[int, int]
) -> tuple[int, int, int, int]:
    """ConditioningSetAreaPercentage's ``(height, width, y, x)`` fractions -> latent cells (sizes at least 1)."""
    fh, fw, fy, fx = fractions
    h, w = latent_hw
    return max(1, round(fh * h)), max(1, round(fw * w)), round(fy * h), round(fx * w)


def resize_mask(mask: Tensor, latent_hw: tuple[int, int]) -> Tensor:
    """A (H, W) or (B, H, W) mask -> (B, h, w) at the latent size (bilinear, half-pixel centres)."""
    m = mask.float()
    m = m[None] if m.ndim == 2 else m
    if m.ndim != 3:
        raise ValueError(f"a conditioning mask must be (H, W) or (B, H, W), got shape {tuple(mask.shape)}")
    if tuple(m.shape[1:]) != tuple(latent_hw):
        m = F.interpolate(m[:, None], size=latent_hw, mode="bilinear", align_corners=False)[:, 0]
    return m


def mask_bounds(mask: Tensor) -> tuple[int, int, int, int]:
    """The area ``(height, width, y, x)`` bounding the non-zero cells of a (B, h, w) mask over the batch,
    each side at least ``MIN_BOUNDS_AREA``; an all-zero mask gives ``(8, 8, 0, 0)``."""
    nz = mask.abs().amax(dim=0) != 0  # (h, w)
    if not bool(nz.any()):
        return MIN_BOUNDS_AREA, MIN_BOUNDS_AREA, 0, 0
    ys, xs = torch.where(nz)
    y0, y1, x0, x1 = int(ys.min()), int(ys.max()), int(xs.min()), int(xs.max())
    return max(MIN_BOUNDS_AREA, y1 - y0 + 1), max(MIN_BOUNDS_AREA, x1 - x0 + 1), y0, x0


def match_areas(lists: list[ConditionList | None]) -> list[ConditionList | None]:
    """For every area entry of one list, give each other list an entry over the same area (ComfyUI's
    "opposite area"): a copy of the entry whose ``cond`` is that list's smallest entry containing the area
    (an entry without an area contains every area). So cond and uncond are blended with equal weights and
    guidance inside an area compares like with like. Lists with an entry of exactly that area are left alone.
    """
    out = [None if entries is None else list(entries) for entries in lists]
    for k, entries in enumerate(lists):
        for e in entries or ():
            if e.area is None:
                continue
            for kk, other in enumerate(out):
                if kk == k or other is None:
                    continue
                inside = [o for o in other if o.area is None or _inside(e.area, o.area)]
                with_area = [o for o in inside if o.area is not None]
                smallest = min(with_area, key=lambda o: _size(o.area)) if with_area else None  # type: ignore[arg-type]
                smallest = smallest or (inside[0] if inside else None)
                if smallest is None or smallest.area == e.area:
                    continue
                other.append(replace(e, cond=smallest.cond))
    return [None if entries is None else tuple(entries) for entries in out]


def _inside(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    """Area ``a`` lies within area ``b`` (both (h, w, y, x))."""
    return a[2] >= b[2] and a[3] >= b[3] and a[0] + a[2] <= b[0] + b[2] and a[1] + a[3] <= b[1] + b[3]


def _size(a: tuple[int, int, int, int]) -> int:
    return a[0] * a[1]


# --------------------------------------------------------------------------------------------------------
# Composition
# --------------------------------------------------------------------------------------------------------


def entry_weight(entry: CondEntry, x: Tensor) -> tuple[tuple[slice, slice], Tensor] | None:
    """Where an entry acts on ``x`` (B, C, H, W) and with what weight: ``(rows, cols)`` slices of its crop
    and weights (B or 1, 1, h, w) over the crop; None when the crop is empty (an area outside the latent)."""
    big_h, big_w = x.shape[-2:]
    if entry.area is None:
        h, w, y, x0 = big_h, big_w, 0, 0
    else:
        h, w, y, x0 = entry.area
        h, w = min(big_h - y, h), min(big_w - x0, w)  # clipped to the latent (ComfyUI's rule)
    if h <= 0 or w <= 0:
        return None
    rows, cols = slice(y, y + h), slice(x0, x0 + w)
    if entry.mask is not None:
        m = entry.mask.to(device=x.device, dtype=x.dtype)
        if tuple(m.shape[-2:]) != (big_h, big_w):
            raise ValueError(
                f"conditioning mask is {tuple(m.shape[-2:])} but the latent is {(big_h, big_w)}; "
                "resize it with resize_mask first"
            )
        weight = m[:, None, rows, cols] * entry.strength  # (B|1, 1, h, w)
        return (rows, cols), weight
    weight = torch.full((1, 1, h, w), float(entry.strength), dtype=x.dtype, device=x.device)
    if entry.area is not None:  # feather the inner edges
        for axis, (start, size, full) in enumerate(((y, h, big_h), (x0, w, big_w))):
            n = min(FEATHER, size // 4)
            ramp = torch.ones(size, dtype=x.dtype, device=x.device)
            steps = (torch.arange(n, dtype=x.dtype, device=x.device) + 1) / max(n, 1)  # 1/n .. 1
            if n and start != 0:
                ramp[:n] *= steps
            if n and start + size < full:
                ramp[size - n :] *= steps.flip(0)
            shape = (1, 1, size, 1) if axis == 0 else (1, 1, 1, size)
            weight = weight * ramp.reshape(shape)
    return (rows, cols), weight


def _batchable(a: Any, b: Any) -> bool:
    """Two conditionings the network can take in one batch without padding."""
    if a is b:
        return True
    if isinstance(a, Conditioning) and isinstance(b, Conditioning):
        same = a.tokens.shape[1:] == b.tokens.shape[1:] and (a.mask is None) == (b.mask is None)
        same = same and (a.pooled is None) == (b.pooled is None)
        if same and a.pooled is not None and b.pooled is not None:
            same = a.pooled.shape[1:] == b.pooled.shape[1:]
        return (
            same
            and a.extra.keys() == b.extra.keys()
            and all(a.extra[k].shape[1:] == b.extra[k].shape[1:] for k in a.extra)
        )
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        return a.shape[1:] == b.shape[1:]
    return a is None and b is None


def _cat(items: list[Any]) -> Any:
    if items[0] is None:
        return None
    if isinstance(items[0], Conditioning):
        return Conditioning.cat(items)
    return torch.cat(items, 0)


def _window(start: int, size: int, full: int, multiple: int) -> tuple[int, int, int, int]:
    """The stretch of one axis the network sees for a crop ``[start, start + size)`` of a ``full``-long axis
    when it needs sizes divisible by ``multiple``: ``(window start, window size, crop offset in the window,
    replicate padding after the window)``. The window grows (and shifts back from the border) over real
    latent cells; only a latent shorter than the rounded size gets padding."""
    need = -(-size // multiple) * multiple
    if need <= full:
        w0 = min(start, full - need)
        return w0, need, start - w0, 0
    return 0, full, start, need - full


def compose(
    denoiser: Denoiser, x: Tensor, sigma: Tensor, lists: Sequence[ConditionList | None], *, multiple: int = 1
) -> list[Tensor]:
    """Each list's blended x0 prediction for ``x`` (B, C, H, W) at ``sigma`` (B,): ComfyUI's calc_cond_batch.

    Entries of all lists whose crops have the same shape and whose conditionings batch without padding share
    one network call. A list with no active entry (or None) gives zeros. ``multiple``: the network takes only
    sizes divisible by it (a DiT's patch size); a crop is then evaluated in a slightly larger window of the
    latent (:func:`_window`) and its part of the prediction used.
    """
    level = float(sigma[0])
    big_h, big_w = x.shape[-2:]
    # (list index, crop, weight, cond, window rows, window cols, offset in window, padding)
    jobs: list[
        tuple[int, tuple[slice, slice], Tensor, Any, tuple[int, int, int, int], tuple[int, int, int, int]]
    ] = []
    for i, entries in enumerate(lists):
        for e in entries or ():
            if not e.active(level):
                continue
            where = entry_weight(e, x)
            if where is None:
                continue
            (rows, cols), weight = where
            wy = _window(rows.start, rows.stop - rows.start, big_h, multiple)
            wx = _window(cols.start, cols.stop - cols.start, big_w, multiple)
            jobs.append((i, (rows, cols), weight, e.cond, wy, wx))
    out = [torch.zeros_like(x) for _ in lists]
    total = [torch.zeros_like(x) for _ in lists]
    while jobs:
        first = jobs[0]

        def shape(j: Any) -> tuple[int, int]:
            return j[4][1] + j[4][3], j[5][1] + j[5][3]

        group = [j for j in jobs if shape(j) == shape(first) and _batchable(j[3], first[3])]
        jobs = [j for j in jobs if not any(j is g for g in group)]
        crops = []
        for _, _, _, _, (y0, h, _, pad_y), (x0, w, _, pad_x) in group:
            crop = x[:, :, y0 : y0 + h, x0 : x0 + w]
            crops.append(F.pad(crop, (0, pad_x, 0, pad_y), mode="replicate") if pad_x or pad_y else crop)
        x0_pred = denoiser(torch.cat(crops), sigma.repeat(len(group)), _cat([j[3] for j in group]))
        for k, (i, (rows, cols), weight, _, wy, wx) in enumerate(group):
            oy, ox = wy[2], wx[2]
            h, w = rows.stop - rows.start, cols.stop - cols.start
            part = x0_pred[k * x.shape[0] : (k + 1) * x.shape[0], :, oy : oy + h, ox : ox + w]
            out[i][:, :, rows, cols] += part * weight
            total[i][:, :, rows, cols] += weight.expand_as(part)
    # Cells no active entry covers stay 0 (ComfyUI divides by a 1e-37 floor).
    return [torch.where(t > 0, o / torch.where(t > 0, t, torch.ones_like(t)), o) for o, t in zip(out, total)]
