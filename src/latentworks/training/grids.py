"""Image grids and loss-curve plots drawn with PIL (no matplotlib)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor


def to_uint8(images: Tensor) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] -> (B, H, W, 3) uint8."""
    x = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def make_grid(images: Tensor | np.ndarray, nrow: int | None = None, pad: int = 2) -> Image.Image:
    """Tile images ((B,3,H,W) in [-1,1] or uint8 (B,H,W,3)) into one PIL image, white padding."""
    arr = to_uint8(images) if isinstance(images, Tensor) else np.asarray(images, dtype=np.uint8)
    b, h, w, _ = arr.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(b)))
    rows = math.ceil(b / nrow)
    canvas = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, 3), 255, np.uint8)
    for i in range(b):
        r, c = divmod(i, nrow)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        canvas[y : y + h, x : x + w] = arr[i]
    return Image.fromarray(canvas)


def plot_loss_curve(
    steps: Sequence[int],
    losses: Sequence[float],
    path: str | Path,
    title: str = "loss",
    size: tuple[int, int] = (640, 360),
    smooth: int = 0,
) -> None:
    """Draw a loss curve (log-scale y when all values are positive) into a PNG at ``path``."""
    w, h = size
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    ml, mr, mt, mb = 60, 15, 25, 30
    d.rectangle([ml, mt, w - mr, h - mb], outline="black")
    d.text((ml, 5), title, fill="black")
    ys = np.asarray(losses, dtype=np.float64)
    xs = np.asarray(steps, dtype=np.float64)
    ok = np.isfinite(ys)
    xs, ys = xs[ok], ys[ok]
    if len(ys) >= 2:
        if smooth > 1 and len(ys) > smooth:
            kernel = np.ones(smooth) / smooth
            ys = np.convolve(ys, kernel, mode="valid")
            xs = xs[smooth - 1 :]
        log = bool((ys > 0).all())
        yv = np.log10(ys) if log else ys
        y0, y1 = float(yv.min()), float(yv.max())
        if y1 - y0 < 1e-12:
            y1 = y0 + 1
        x0, x1 = float(xs.min()), float(xs.max()) if xs.max() > xs.min() else float(xs.min()) + 1
        px = ml + (xs - x0) / (x1 - x0) * (w - ml - mr)
        py = h - mb - (yv - y0) / (y1 - y0) * (h - mt - mb)
        d.line(list(zip(px.tolist(), py.tolist())), fill=(200, 30, 30), width=2)
        fmt = (lambda v: f"{10**v:.3g}") if log else (lambda v: f"{v:.3g}")
        d.text((2, mt), fmt(y1), fill="black")
        d.text((2, h - mb - 10), fmt(y0), fill="black")
        d.text((ml, h - mb + 5), f"{int(x0)}", fill="black")
        d.text((w - mr - 50, h - mb + 5), f"{int(x1)}", fill="black")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
