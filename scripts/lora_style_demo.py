"""The LoRA style demo (docs/training.md, "Training a LoRA"): teach the default model a third emoji style.

Two steps, both offline once the npm package is unpacked:

``prepare``: rasterise Fluent flat emoji (npm ``@iconify-json/fluent-emoji-flat``, MIT, SVGs; needs
``pip install cairosvg``) at the dataset's resolution, matched by code points to the google/twitter emoji
dataset (``latentworks data emoji``). Writes

- ``OUT/train/``: 48 Fluent images of emoji that are *not* held out, each with ``<label>, fluent style``;
- ``OUT/real.npz``: real google / twitter / fluent images for the style classifier (train: non-held-out
  emoji outside the LoRA's 48; test: the held-out emoji), and the held-out labels used for generation.

``evaluate``: a style classifier (logistic regression on pixels, scikit-learn) trained on the real images
only (it never sees prompts or generated images) labels images the default model generates for
``<label>, fluent style`` of the held-out emoji, with and without the LoRA; prints the fraction called
fluent, and the classifier's accuracy on real held-out images as a sanity check.
"""

from __future__ import annotations

import argparse
import io
import json
import random
from pathlib import Path

import numpy as np


def _fluent_index(pkg: Path) -> tuple[dict[str, str], dict[str, str]]:
    icons = json.loads((pkg / "icons.json").read_text())
    chars = json.loads((pkg / "chars.json").read_text())  # "1f600" -> slug (no FE0F)
    bodies = {slug: v["body"] for slug, v in icons["icons"].items()}
    size = icons.get("width", 32)
    svgs = {
        slug: f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {size} {size}">{body}</svg>'
        for slug, body in bodies.items()
    }
    return chars, svgs


def _raster(svg: str, size: int) -> np.ndarray:
    import cairosvg
    from PIL import Image

    from latentworks.data.folder import to_rgb_square

    png = cairosvg.svg2png(bytestring=svg.encode(), output_width=4 * size, output_height=4 * size)
    with Image.open(io.BytesIO(png)) as im:
        return to_rgb_square(im, size)


def prepare(args: argparse.Namespace) -> None:
    from PIL import Image

    d = np.load(args.data)
    size = int(d["images"].shape[1])
    chars, svgs = _fluent_index(args.fluent)
    hexes, labels, styles, held = (
        d["extra_hexcodes"],
        d["extra_labels"],
        d["extra_styles"],
        d["extra_heldout"],
    )
    tones = ("1F3FB", "1F3FC", "1F3FD", "1F3FE", "1F3FF")
    rows: dict[str, dict[str, int]] = {}  # hexcode -> style -> row
    for i, h in enumerate(hexes):
        if not any(t in h for t in tones):
            rows.setdefault(str(h), {})[str(styles[i])] = i
    usable = sorted(h for h, st in rows.items() if {"google", "twitter"} <= set(st) and h.lower() in chars)
    rng = random.Random(args.seed)
    seen = [h for h in usable if not held[rows[h]["google"]]]
    heldout = [h for h in usable if held[rows[h]["google"]]]
    rng.shuffle(seen)
    train, rest = seen[: args.count], seen[args.count :]
    out = args.out
    (out / "train").mkdir(parents=True, exist_ok=True)
    for h in train:
        label = str(labels[rows[h]["google"]])
        Image.fromarray(_raster(svgs[chars[h.lower()]], size)).save(out / "train" / f"{h}.png")
        (out / "train" / f"{h}.txt").write_text(f"{label}, fluent style\n")

    def real(hs: list[str]) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for h in hs:
            xs += [
                d["images"][rows[h]["google"]],
                d["images"][rows[h]["twitter"]],
                _raster(svgs[chars[h.lower()]], size),
            ]
            ys += [0, 1, 2]
        return np.stack(xs), np.array(ys)

    cls_train = rest[: args.classifier_count]
    xtr, ytr = real(cls_train)
    xte, yte = real(heldout)
    eval_labels = [str(labels[rows[h]["google"]]) for h in heldout]
    np.savez_compressed(
        out / "real.npz", x_train=xtr, y_train=ytr, x_test=xte, y_test=yte, eval_labels=np.array(eval_labels)
    )
    print(
        f"{len(train)} LoRA images in {out / 'train'}; classifier: {len(xtr)} train / {len(xte)} test real "
        f"images; {len(eval_labels)} held-out labels"
    )


def _features(x: np.ndarray) -> np.ndarray:
    return x.reshape(len(x), -1).astype(np.float32) / 255.0


def evaluate(args: argparse.Namespace) -> None:
    import torch
    from sklearn.linear_model import LogisticRegression

    from latentworks.pipelines.text_to_image import Pipeline

    torch.set_num_threads(max(1, torch.get_num_threads()))
    r = np.load(args.out / "real.npz")
    clf = LogisticRegression(max_iter=2000, C=args.C).fit(_features(r["x_train"]), r["y_train"])
    acc = float((clf.predict(_features(r["x_test"])) == r["y_test"]).mean())
    labels = [str(s) for s in r["eval_labels"]][: args.num_labels]
    prompts = [f"{label}, fluent style" for label in labels]
    result: dict[str, object] = {"classifier_accuracy_real_heldout": acc, "num_prompts": len(prompts)}
    for name, lora in (("base", None), ("lora", args.lora)):
        pipe = Pipeline.from_pretrained("default")
        if lora is not None:
            pipe.load_lora(lora, strength=args.strength)
        imgs = []
        for i in range(0, len(prompts), 16):
            res = pipe(prompts[i : i + 16], seed=args.seed + i)
            imgs += [np.asarray(im.convert("RGB")) for im in res.images]
        x = np.stack(imgs)
        pred = clf.predict(_features(x))
        result[name] = {s: float((pred == k).mean()) for k, s in enumerate(("google", "twitter", "fluent"))}
        if args.save_grid:
            from PIL import Image

            n = min(16, len(x))
            Image.fromarray(np.concatenate(list(x[:n]), axis=1)).save(args.out / f"generated_{name}.png")
    print(json.dumps(result, indent=2))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("prepare")
    a.add_argument(
        "--data", type=Path, default=Path("data/emoji-32.npz"), help="latentworks data emoji output"
    )
    a.add_argument("--fluent", type=Path, required=True, help="the unpacked npm package folder (package/)")
    a.add_argument("--out", type=Path, required=True)
    a.add_argument("--count", type=int, default=48)
    a.add_argument(
        "--classifier-count", type=int, default=300, help="emoji per style to train the classifier"
    )
    a.add_argument("--seed", type=int, default=0)
    a.set_defaults(run=prepare)
    b = sub.add_parser("evaluate")
    b.add_argument("--out", type=Path, required=True, help="the prepare output folder")
    b.add_argument("--lora", type=Path, required=True)
    b.add_argument("--strength", type=float, default=1.0)
    b.add_argument("--num-labels", type=int, default=64)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--C", type=float, default=0.1, help="inverse regularisation of the logistic regression")
    b.add_argument("--save-grid", action="store_true")
    b.set_defaults(run=evaluate)
    args = p.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
