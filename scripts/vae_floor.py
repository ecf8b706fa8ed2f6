"""The FID floor an autoencoder puts under a latent model: score its reconstructions like generated images.

A perfect latent model would sample latents of the data distribution, so its images could be no better than
the autoencoder's reconstructions of unseen-by-the-metric real images. This takes N training images
(picked exactly as ``latentworks eval model`` picks them, seed 0), reconstructs N *other* training images,
and prints FID/KID of the reconstructions against the picked images beside the real-vs-real figure:

    .venv/bin/python scripts/vae_floor.py runs/default/vae [-n 1000] [--feature-cache runs/featcache]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from latentworks.data.folder import load_dataset
from latentworks.data.latents import load_autoencoder
from latentworks.evaluation.fid import (
    InceptionFeatures,
    extract_features,
    fid_from_features,
    kid_from_features,
)
from latentworks.evaluation.generation import cached_features


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("vae_run", type=Path, help="a 'latentworks train-vae' run folder")
    ap.add_argument("--data", type=Path, default=Path("data/emoji-32.npz"))
    ap.add_argument("-n", type=int, default=1000)
    ap.add_argument("--feature-cache", type=Path, default=None)
    args = ap.parse_args()
    ds = load_dataset(args.data, size=32).split("train")
    order = np.random.default_rng(0).permutation(len(ds))
    pick, other = order[: args.n], order[args.n : 2 * args.n]
    model = InceptionFeatures(device="cpu")
    fr = cached_features(ds.images[pick], model, args.feature_cache)
    fo = cached_features(ds.images[other], model, args.feature_cache)
    ae = load_autoencoder(args.vae_run)
    x = torch.from_numpy(ds.images[other]).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        rec = torch.cat(
            [ae.decode(ae.encode(x[i : i + 100]).mode()).clamp(-1, 1) for i in range(0, len(x), 100)]
        )
    psnr = (10 * torch.log10(4 / ((rec - x) ** 2).mean(dim=(1, 2, 3)))).mean()
    fx = extract_features(rec, model)
    print(
        f"N={args.n} real-vs-real: FID {fid_from_features(fr, fo):.2f}, KID {kid_from_features(fr, fo)[0]:.4f}"
    )
    print(
        f"{args.vae_run} reconstructions vs real: FID {fid_from_features(fr, fx):.2f}, "
        f"KID {kid_from_features(fr, fx)[0]:.4f}, PSNR {psnr:.2f} dB"
    )


if __name__ == "__main__":
    main()
