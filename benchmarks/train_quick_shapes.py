"""The coloured-shapes check of ``latentworks train-quick`` at its full budget (issue 21).

Writes 64 coloured shapes (circle/square/triangle x red/yellow/green/blue, sizes and positions varied)
with captions ("red circle"), runs ``latentworks train-quick`` on them, then generates every shape x colour
prompt with several seeds and scores each image with the pixel classifier of ``tests/support/shapes.py``
(which does not see the prompt). Prints the accuracies beside chance and beside the same model folder
with an untrained denoiser (the baseline run in the same process), and the wall time per stage.

    nice -n 10 python benchmarks/train_quick_shapes.py --minutes 15 --work /tmp/quick-shapes

The CI version (fixed step counts) is tests/training/test_train_quick.py.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from support.shapes import make_shapes_folder, prompts, score_pipeline  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=15.0, help="train-quick budget (default: 15)")
    ap.add_argument("--vae-steps", type=int, default=None, help="fixed autoencoder steps (no time limit)")
    ap.add_argument("--steps", type=int, default=None, help="fixed diffusion steps (no time limit)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/quick-shapes"), help="scratch folder (replaced)")
    ap.add_argument("--seeds", type=int, default=5, help="seeds per prompt (default: 5)")
    ap.add_argument("--grid", type=Path, default=None, help="also save the seed-0 images as one PNG")
    a = ap.parse_args()

    import torch

    from latentworks.cli import main as cli
    from latentworks.pipelines import Pipeline

    shutil.rmtree(a.work, ignore_errors=True)
    data = make_shapes_folder(a.work / "shapes")
    out = a.work / "model"
    t0 = time.monotonic()
    fixed = [f"--{k.replace('_', '-')}={v}" for k, v in (("vae_steps", a.vae_steps), ("steps", a.steps)) if v]
    code = cli(["train-quick", str(data), "--out", str(out), "--minutes", str(a.minutes), *fixed])
    took = time.monotonic() - t0
    if code != 0:
        return code
    seeds = tuple(range(a.seeds))
    pipe = Pipeline.from_pretrained(out)
    t1 = time.monotonic()
    trained = score_pipeline(pipe, seeds)
    gen_s = (time.monotonic() - t1) / trained["n"]
    if a.grid is not None:
        from PIL import Image

        images = pipe(prompts(), seed=0).images
        w, h = images[0].size
        grid = Image.new("RGB", (w * len(images), h), "white")
        for i, im in enumerate(images):
            grid.paste(im, (i * w, 0))
        grid.save(a.grid)
    net = pipe.model.denoiser_net
    torch.manual_seed(0)
    net.load_state_dict(type(net)(net.config).state_dict())
    untrained = score_pipeline(pipe, seeds)
    print(
        f"train-quick --minutes {a.minutes} {' '.join(fixed)}: {took:.0f} s wall; generation {gen_s:.2f} s per image"
    )
    print(
        f"{'':12} {'colour':>7} {'shape':>7} {'both':>7}   (N={trained['n']}: 12 prompts x {len(seeds)} seeds)"
    )
    print(f"{'chance':12} {0.25:7.2f} {1 / 3:7.2f} {1 / 12:7.2f}")
    for name, r in (("untrained", untrained), ("trained", trained)):
        print(f"{name:12} {r['colour']:7.2f} {r['shape']:7.2f} {r['both']:7.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
