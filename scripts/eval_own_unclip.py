"""FID/KID of our own unCLIP (text -> prior -> decoder) on the emoji data, beside the same folder's decoder
without an image embedding (text only), with the prompts, seeds and real images of ``latentworks eval model``.

    python scripts/eval_own_unclip.py runs/unclip/model --data data/emoji-32.npz -n 1000 --prompts user \
        --feature-cache fc [--noise-augmentation 0.0] [--prior-guidance 2] [--text-only]

Prints the rows of docs/results.md's table (``evaluation.generation.HEADER``). ``--embeddings-only`` instead
measures the two embedding stages on N images of the split, without the decoder: the encoder's caption -> image
retrieval (top-1 among the N images, training captions and user forms) and the prior's cosine similarity to the
true image embedding (against the mean cosine of unrelated pairs). ``--variations`` measures whether the
decoder carries an image: N images of the split are encoded, decoded with the empty prompt (image i, seed
``seed + i``), and the outputs encoded again with the same encoder; it prints each output's cosine to its own
source against the other sources, and how often its source is the nearest of the N (top-1; chance 1/N), beside
the same decoder given no embedding (the baseline in the same process).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from latentworks.data.folder import load_dataset
from latentworks.evaluation.generation import HEADER, evaluate_generation
from latentworks.pipelines import Pipeline
from latentworks.pipelines.own_unclip import UnclipTextToImage, load_own_unclip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", type=Path)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("-n", type=int, default=1000)
    p.add_argument("--split", default="train")
    p.add_argument("--prompts", default="user")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance", type=float, default=None)
    p.add_argument("--noise-augmentation", type=float, default=None)
    p.add_argument("--prior-steps", type=int, default=None)
    p.add_argument("--prior-guidance", type=float, default=None)
    p.add_argument("--feature-cache", type=Path, default=None)
    p.add_argument(
        "--text-only", action="store_true", help="also score the decoder without an image embedding"
    )
    p.add_argument("--embeddings-only", action="store_true", help="measure the encoder and prior only")
    p.add_argument("--variations", action="store_true", help="measure image -> embedding -> decoder only")
    args = p.parse_args()
    if args.embeddings_only:
        embedding_metrics(args)
        return
    if args.variations:
        variation_metrics(args)
        return
    pipe = Pipeline.from_pretrained(args.model)
    unclip = UnclipTextToImage(
        pipe, load_own_unclip(args.model), args.noise_augmentation, args.prior_steps, args.prior_guidance
    )
    ds = load_dataset(args.data, split="all")
    kw = dict(split=args.split, n=args.n, seed=args.seed, steps=args.steps, guidance=args.guidance,
              prompts=args.prompts, feature_cache=args.feature_cache)  # fmt: skip
    print(HEADER)
    runs = [("unCLIP (prior + decoder)", unclip)] + ([("decoder, text only", pipe)] if args.text_only else [])
    for name, gen in runs:
        r = evaluate_generation(gen, ds, **kw)
        print(r.row().replace(f"| {r.split} |", f"| {r.split}, {name} |", 1), flush=True)


def embedding_metrics(args: argparse.Namespace) -> None:
    import numpy as np
    import torch

    from latentworks.data.arrays import images_to_tensor
    from latentworks.evaluation.generation import pick_real, prompt_texts
    from latentworks.models.text.minilm import MiniLMTextEncoder

    parts = load_own_unclip(args.model)
    te = MiniLMTextEncoder()
    ds, pick, _ = pick_real(load_dataset(args.data, split="all"), args.split, args.n, args.seed)
    img = parts.embed_images(images_to_tensor(ds.images[pick]))  # (N, D)
    for form in ("training", "user"):
        captions = prompt_texts(ds, pick, form)
        with torch.no_grad():
            txt = torch.cat([parts.encoder.encode_text(te.encode(captions[i : i + 64]).pooled)
                             for i in range(0, len(captions), 64)])  # fmt: skip
        sim = txt @ img.T  # (N, N)
        # an image counts as found when it has the same caption as the best match (duplicates: two styles)
        same = np.asarray(captions)[sim.argmax(1).numpy()] == np.asarray(captions)
        print(f"encoder retrieval top-1 ({form} prompts, among {len(pick)} images): {same.mean():.3f}")
        if parts.prior is not None:
            e = torch.cat([parts.embed_text(te, captions[i : i + 64], args.seed + i)
                           for i in range(0, len(captions), 64)])  # fmt: skip
            cos = (e * img).sum(1)
            base = (e * img.roll(1, 0)).sum(1)
            print(
                f"prior cosine to the true image embedding ({form}): {cos.mean():.3f} (unrelated pairs {base.mean():.3f})"
            )


def variation_metrics(args: argparse.Namespace) -> None:
    import torch

    from latentworks.data.arrays import images_to_tensor
    from latentworks.evaluation.generation import pick_real
    from latentworks.pipelines.own_unclip import decode_embeddings

    pipe = Pipeline.from_pretrained(args.model)
    parts = load_own_unclip(args.model)
    ds, pick, _ = pick_real(load_dataset(args.data, split="all"), args.split, args.n, args.seed)
    src = parts.embed_images(images_to_tensor(ds.images[pick]))  # (N, D), unit length
    kw: dict = {"steps": args.steps}
    if args.guidance is not None:
        kw["guidance"] = args.guidance
    n, chunk = len(pick), 32
    with_embed, without = [], []
    for i in range(0, n, chunk):
        e = src[i : i + chunk]
        with_embed += decode_embeddings(
            pipe, parts, e, "", seed=args.seed + i, noise_augmentation=args.noise_augmentation, **kw
        )
        without += list(pipe([""], seed=args.seed + i, batch=len(e), **kw).images)

    def report(name: str, images: list) -> None:
        import numpy as np

        arr = np.stack([np.asarray(im.convert("RGB")) for im in images])
        out = parts.embed_images(images_to_tensor(arr))
        sim = out @ src.T  # (N, N): output i against source j
        own = sim.diagonal()
        others = (sim.sum(1) - own) / (n - 1)
        top1 = (sim.argmax(1) == torch.arange(n)).float().mean()
        print(
            f"variations, {name}: cosine to own source {own.mean():.3f}, to other sources {others.mean():.3f}, "
            f"source retrieved top-1 {top1:.3f} (chance {1 / n:.3f}), N={n}",
            flush=True,
        )

    report("with the image embedding", with_embed)
    report("no embedding (baseline)", without)


if __name__ == "__main__":
    main()
