"""Draw the model-card grid: 64 prompts as people type them, from one model.

Rows 1-5: emoji the model was trained on, in the user forms `eval model --prompts user` scores (the name
alone, name + style, name + a tag or two, in turn); rows 6-8: held-out emoji names with a style.

.venv/bin/python scripts/default_grid.py [--model default] [--data data/emoji-32.npz] [-o docs/default_grid.png]
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import numpy as np
import torch

from latentworks.data.folder import load_dataset
from latentworks.evaluation.generation import prompt_texts
from latentworks.pipelines import Pipeline
from latentworks.pipelines.text_to_image import images_to_tensor
from latentworks.training.grids import make_grid


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--data", type=Path, default=Path("data/emoji-32.npz"))
    ap.add_argument("-o", "--out", type=Path, default=Path("docs/default_grid.png"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    pipe = Pipeline.from_pretrained(args.model)
    ds = load_dataset(args.data, size=pipe.model.resolution[0])
    rng = random.Random(args.seed)
    seen, held = ds.split("train"), ds.split("heldout")
    prompts = prompt_texts(seen, np.asarray(rng.sample(range(len(seen)), 40)), "user")  # rows 1-5
    prompts += prompt_texts(held, np.asarray(rng.sample(range(len(held)), 24)), "label+style")  # rows 6-8
    result = pipe(prompts, seed=args.seed)
    fake = images_to_tensor(result.images, pipe.model.resolution)
    grid = make_grid(torch.cat([fake]), nrow=8)
    grid = grid.resize((grid.width * 3, grid.height * 3), resample=0)
    grid.save(args.out)
    (args.out.with_suffix(".txt")).write_text("\n".join(prompts) + "\n")
    print(f"wrote {args.out} (rows 1-5: seen emoji in user forms, rows 6-8: held-out emoji names)")


if __name__ == "__main__":
    main()
