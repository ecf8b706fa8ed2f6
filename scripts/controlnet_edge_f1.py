"""Edge F1 of images generated with an edge ControlNet vs the same prompts and seeds without it (docs/results.md).

For the first N held-out images of the dataset: the Canny edges of the image are the control, its caption the
prompt, seed + index the seed; the generated images' Canny edges are scored against the control edges
(``latentworks.evaluation.control.edge_f1``, 1 px tolerance by default).

.venv/bin/python scripts/controlnet_edge_f1.py --controlnet RUN/controlnet.safetensors \
    [--model default] [--data data/emoji-32.npz] [-n 256] [--seed 0] [--steps 20]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from latentworks.checkpoints.io import read_metadata
from latentworks.data.folder import load_dataset
from latentworks.evaluation.control import ControlFollowing, EdgeScores, evaluate_control_following
from latentworks.families.controlnet import load_controlnet
from latentworks.pipelines import Pipeline


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--controlnet", type=Path, required=True)
    ap.add_argument("--model", default="default")
    ap.add_argument("--data", type=Path, default=Path("data/emoji-32.npz"))
    ap.add_argument("-n", type=int, default=256, help="held-out images to score (default: 256)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's)")
    ap.add_argument("--guidance", type=float, default=None, help="CFG scale (default: the model's)")
    ap.add_argument("--tolerance", type=int, default=1, help="pixels of slack in the edge match (default: 1)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--json", type=Path, default=None, help="also write the per-arm means here")
    args = ap.parse_args()

    torch.set_grad_enabled(False)
    pipe = Pipeline.from_pretrained(args.model)
    net = load_controlnet(args.controlnet)
    meta = read_metadata(args.controlnet)
    low, high = (float(v) for v in meta.get("canny_thresholds", "0.4,0.8").split(","))
    ds = load_dataset(args.data, size=pipe.model.resolution[0], split="heldout")
    n = min(args.n, len(ds))
    t0 = time.perf_counter()
    parts: list[ControlFollowing] = []
    for start in range(
        0, n, args.batch
    ):  # one batch at a time, printing the running means (same seeds as in one call)
        end = min(start + args.batch, n)
        parts.append(
            evaluate_control_following(
                pipe, net, ds.images[start:end], ds.captions[start:end], low_threshold=low, high_threshold=high,
                seed=args.seed + start, steps=args.steps, guidance=args.guidance, batch=args.batch,
                tolerance=args.tolerance, progress=False,
            )
        )  # fmt: skip
        result = _merge(parts)
        print(result.table())
        print(
            f"({time.perf_counter() - t0:.0f} s; ControlNet step {meta.get('step', '?')}, Canny {low}/{high})"
        )
        if args.json is not None:
            rows = [dict(zip(("arm", "precision", "recall", "f1"), r, strict=True)) for r in result.rows()]
            args.json.write_text(
                json.dumps({"n": result.n, "tolerance": args.tolerance, "rows": rows}, indent=2) + "\n"
            )


def _merge(parts: list[ControlFollowing]) -> ControlFollowing:
    def cat(scores: list[EdgeScores]) -> EdgeScores:
        return EdgeScores(
            *(torch.cat([getattr(s, f) for s in scores]) for f in ("precision", "recall", "f1"))
        )

    return ControlFollowing(
        sum(p.n for p in parts),
        parts[0].tolerance,
        cat([p.with_control for p in parts]),
        cat([p.without_control for p in parts]),
    )


if __name__ == "__main__":
    main()
