"""Coloured shapes: a tiny captioned image folder and a pixel classifier that scores generated images.

The folder (``make_shapes_folder``) holds circles, squares and triangles in four colours at varied sizes and
positions on white, captioned "red circle" and so on: a dataset small enough to train on in minutes whose
content can be checked by pixels alone. ``classify`` reads an image's colour (the dominant hue of its
non-background pixels) and shape (how much of the foreground's bounding box the foreground fills: circle
pi/4, square 1, triangle 1/2) without seeing any prompt; ``make_shapes_folder``'s own images are the check
that it reads real shapes right (tests/training/test_train_quick.py).
"""

from __future__ import annotations

import colorsys
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle")
# RGB and the hue (degrees) the classifier compares with; far apart on the colour wheel.
COLOURS: dict[str, tuple[tuple[int, int, int], float]] = {
    "red": ((220, 30, 30), 0.0),
    "yellow": ((235, 200, 20), 52.0),
    "green": ((30, 170, 50), 128.0),
    "blue": ((30, 70, 220), 226.0),
}
# Fill ratio of the bounding box: triangle 0.5, circle pi/4 = 0.785, square 1. Boundaries halfway.
_TRIANGLE_BELOW = (0.5 + math.pi / 4) / 2
_SQUARE_ABOVE = (math.pi / 4 + 1.0) / 2


def draw_shape(shape: str, colour: str, *, size: int, extent: float, cx: float, cy: float) -> Image.Image:
    """A ``size`` x ``size`` RGB image: one ``shape`` of ``colour`` on white, ``extent`` (0-1) of the image
    wide, centred at (cx, cy) in image fractions. Drawn at 4x and downsampled (anti-aliased edges)."""
    s = 4 * size
    img = Image.new("RGB", (s, s), (255, 255, 255))
    d = ImageDraw.Draw(img)
    half = extent * s / 2
    x, y = cx * s, cy * s
    rgb = COLOURS[colour][0]
    if shape == "circle":
        d.ellipse([x - half, y - half, x + half, y + half], fill=rgb)
    elif shape == "square":
        d.rectangle([x - half, y - half, x + half, y + half], fill=rgb)
    elif shape == "triangle":  # apex up, base at the bottom of the box
        d.polygon([(x, y - half), (x + half, y + half), (x - half, y + half)], fill=rgb)
    else:
        raise ValueError(f"unknown shape {shape!r}; choose from {', '.join(SHAPES)}")
    return img.resize((size, size), Image.Resampling.LANCZOS)


def shape_specs(n: int = 64, seed: int = 0) -> list[tuple[str, str, float, float, float]]:
    """``n`` (shape, colour, extent, cx, cy): every shape x colour pair in turn, sizes 40-75% of the image,
    positions that keep the shape inside it."""
    rng = np.random.default_rng(seed)
    pairs = [(s, c) for s in SHAPES for c in COLOURS]
    out = []
    for i in range(n):
        shape, colour = pairs[i % len(pairs)]
        extent = float(rng.uniform(0.4, 0.75))
        margin = extent / 2 + 0.04
        cx, cy = (float(v) for v in rng.uniform(margin, 1 - margin, size=2))
        out.append((shape, colour, extent, cx, cy))
    return out


def make_shapes_folder(folder: str | Path, n: int = 64, size: int = 64, seed: int = 0) -> Path:
    """Write ``n`` images ``shape_000.png`` with captions ``shape_000.txt`` ("red circle") into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i, (shape, colour, extent, cx, cy) in enumerate(shape_specs(n, seed)):
        draw_shape(shape, colour, size=size, extent=extent, cx=cx, cy=cy).save(folder / f"shape_{i:03d}.png")
        (folder / f"shape_{i:03d}.txt").write_text(f"{colour} {shape}\n")
    return folder


def classify(image: Image.Image | np.ndarray) -> tuple[str | None, str | None]:
    """(colour, shape) read from an RGB image's pixels; None where there is no clear foreground.

    Foreground: pixels with saturation > 0.35 and value > 0.25 (the white background and grey smudges are
    not). Colour: the named hue nearest the circular mean hue of the foreground. Shape: the foreground's
    share of its bounding box (rows/columns holding >= 10% of the foreground's largest row/column count,
    so stray pixels do not stretch the box)."""
    rgb = (
        np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.float64) / 255
    )
    mx, mn = rgb.max(axis=2), rgb.min(axis=2)
    sat = np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-9), 0.0)
    fg = (sat > 0.35) & (mx > 0.25)
    if fg.sum() < max(4, fg.size // 200):
        return None, None
    hues = np.array([colorsys.rgb_to_hsv(*px)[0] * 2 * math.pi for px in rgb[fg]])
    mean_hue = math.degrees(math.atan2(np.sin(hues).mean(), np.cos(hues).mean())) % 360

    def hue_distance(a: float, b: float) -> float:
        return min(abs(a - b), 360 - abs(a - b))

    colour = min(COLOURS, key=lambda c: hue_distance(mean_hue, COLOURS[c][1]))
    rows, cols = fg.sum(axis=1), fg.sum(axis=0)
    r = np.nonzero(rows >= 0.1 * rows.max())[0]
    c = np.nonzero(cols >= 0.1 * cols.max())[0]
    box = (r[-1] - r[0] + 1) * (c[-1] - c[0] + 1)
    fill = fg[r[0] : r[-1] + 1, c[0] : c[-1] + 1].sum() / box
    shape = "triangle" if fill < _TRIANGLE_BELOW else "square" if fill > _SQUARE_ABOVE else "circle"
    return colour, shape


def prompts() -> list[str]:
    """One prompt per shape x colour pair: "red circle", ..."""
    return [f"{c} {s}" for s in SHAPES for c in COLOURS]


def score_pipeline(
    pipe: object, seeds: tuple[int, ...] = (0, 1, 2), steps: int | None = None
) -> dict[str, float]:
    """Generate every ``prompts()`` prompt with each seed through ``pipe`` (a ``Pipeline``) and score the
    images with ``classify``: the share whose colour, shape, and both, match the prompt."""
    ps = prompts()
    hits = {"colour": 0, "shape": 0, "both": 0}
    n = 0
    for seed in seeds:
        images = pipe(ps, seed=seed, steps=steps).images  # type: ignore[operator]
        for p, im in zip(ps, images):
            colour, shape = p.split()
            got_c, got_s = classify(im)
            hits["colour"] += got_c == colour
            hits["shape"] += got_s == shape
            hits["both"] += got_c == colour and got_s == shape
            n += 1
    return {k: v / n for k, v in hits.items()} | {"n": n}
