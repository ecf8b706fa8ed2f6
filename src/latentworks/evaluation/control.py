"""How well generated images follow an edge control: edge F1 against the control's edge map.

For each held-out image: its Canny edges are the control (the hint a ControlNet gets); the image is generated
from its caption and seed with the ControlNet and, as the baseline, with the same caption and seed without it.
The Canny edges of each generated image (same detector and thresholds, ``data.edges``) are scored against the
control edges by :func:`edge_f1`, which forgives a misplacement of ``tolerance`` pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from latentworks.data.edges import canny_hints
from latentworks.pipelines.control import Control


@dataclass(frozen=True)
class EdgeScores:
    """Per-image edge precision, recall and F1 (each (N,) float64), see :func:`edge_f1`."""

    precision: Tensor
    recall: Tensor
    f1: Tensor


def _dilate(edges: Tensor, tolerance: int) -> Tensor:
    """(N, H, W) bool -> (N, H, W) bool: True within Chebyshev distance ``tolerance`` of an edge pixel
    (a (2 t + 1) x (2 t + 1) square; outside the image counts as no edge)."""
    if tolerance == 0:
        return edges
    k = 2 * tolerance + 1
    return F.max_pool2d(edges.float().unsqueeze(1), k, stride=1, padding=tolerance).squeeze(1) > 0


def edge_f1(predicted: Tensor, target: Tensor, tolerance: int = 1) -> EdgeScores:
    """Edge precision, recall and F1 of edge maps ``predicted`` against ``target``, per image.

    Args:
        predicted, target: (N, H, W) or (H, W) bool edge maps (True = edge pixel).
        tolerance: pixels of slack: an edge pixel counts as matched when an edge pixel of the other map lies
            within this Chebyshev distance (a 1 px dilation for 1: the 3 x 3 square around it).

    Definition, per image::

        precision = #{predicted edge pixels within tolerance of a target edge pixel} / #{predicted edge pixels}
        recall    = #{target edge pixels within tolerance of a predicted edge pixel} / #{target edge pixels}
        F1        = 2 P R / (P + R)            (0 when P + R = 0)

    An empty map matches only an empty map: both empty -> P = R = F1 = 1; only one empty -> F1 = 0 (the
    precision or recall of the empty side is taken as 1, the other is 0).
    """
    if predicted.shape != target.shape:
        raise ValueError(
            f"edge maps must have the same shape, got {tuple(predicted.shape)} and {tuple(target.shape)}"
        )
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0 pixels, got {tolerance}")
    pred, tgt = predicted.bool(), target.bool()
    if pred.ndim == 2:
        pred, tgt = pred.unsqueeze(0), tgt.unsqueeze(0)
    if pred.ndim != 3:
        raise ValueError(f"edge maps must be (N, H, W) or (H, W), got {tuple(predicted.shape)}")
    n_pred = pred.flatten(1).sum(1).double()
    n_tgt = tgt.flatten(1).sum(1).double()
    pred_hit = (pred & _dilate(tgt, tolerance)).flatten(1).sum(1).double()
    tgt_hit = (tgt & _dilate(pred, tolerance)).flatten(1).sum(1).double()
    precision = torch.where(n_pred > 0, pred_hit / n_pred.clamp(min=1), torch.ones_like(n_pred))
    recall = torch.where(n_tgt > 0, tgt_hit / n_tgt.clamp(min=1), torch.ones_like(n_tgt))
    both = precision + recall
    f1 = torch.where(both > 0, 2 * precision * recall / both.clamp(min=1e-12), torch.zeros_like(both))
    return EdgeScores(precision, recall, f1)


@dataclass(frozen=True)
class ControlFollowing:
    """Mean edge scores of images generated with and without a ControlNet (same captions and seeds)."""

    n: int
    tolerance: int
    with_control: EdgeScores
    without_control: EdgeScores

    def rows(self) -> list[tuple[str, float, float, float]]:
        """(name, mean precision, mean recall, mean F1) for each arm."""
        return [
            (name, float(s.precision.mean()), float(s.recall.mean()), float(s.f1.mean()))
            for name, s in (("with ControlNet", self.with_control), ("without", self.without_control))
        ]

    def table(self) -> str:
        lines = [
            f"edge following on {self.n} held-out images (Canny, {self.tolerance} px tolerance; mean per image)",
            "| generation | edge precision | edge recall | edge F1 |",
            "|---|---|---|---|",
        ]
        lines += [f"| {name} | {p:.3f} | {r:.3f} | {f:.3f} |" for name, p, r, f in self.rows()]
        return "\n".join(lines)


def evaluate_control_following(
    pipe: Any,
    controlnet: Any,
    images: np.ndarray,
    captions: list[str],
    *,
    low_threshold: float,
    high_threshold: float,
    seed: int = 0,
    steps: int | None = None,
    guidance: float | None = None,
    batch: int = 32,
    tolerance: int = 1,
    progress: bool = True,
) -> ControlFollowing:
    """Generate one image per caption (seed + index) with ``controlnet`` fed the Canny edges of the matching
    real image (``images`` (N, H, W, 3) uint8) and once without it, and score both against those edges."""
    if len(images) != len(captions):
        raise ValueError(f"{len(captions)} captions for {len(images)} images")
    hints = canny_hints(images, low_threshold, high_threshold)  # (N, 3, H, W)
    target = hints[:, 0] > 0.5
    height, width = images.shape[1:3]
    out: dict[bool, list[Tensor]] = {True: [], False: []}
    starts = range(0, len(captions), batch)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="generate", unit="batch")
    for i in starts:
        chunk = captions[i : i + batch]
        for controlled in (True, False):
            control = [Control(hints[i : i + len(chunk)], controlnet)] if controlled else None
            r = pipe(
                chunk,
                steps=steps,
                guidance=guidance,
                seed=seed + i,
                width=width,
                height=height,
                control=control,
            )
            generated = torch.from_numpy(np.stack([np.asarray(im.convert("RGB")) for im in r.images]))
            edges = canny_hints(generated.numpy(), low_threshold, high_threshold)[:, 0] > 0.5
            out[controlled].append(edges)
    scores = {c: edge_f1(torch.cat(out[c]), target, tolerance) for c in (True, False)}
    return ControlFollowing(len(captions), tolerance, scores[True], scores[False])
