"""``latentworks eval``: PSNR/SSIM/rFID or the FID floor of an autoencoder run, FID/KID of a model against
real images, or FID/KID between two image sets."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("eval", help="FID/KID of a model, or PSNR/SSIM/rFID of an autoencoder")
    sub = p.add_subparsers(dest="what", metavar="WHAT", required=True)
    a = sub.add_parser("autoencoder", help="PSNR, SSIM and rFID on the held-out split")
    a.add_argument("run", type=Path, help="train-vae run folder")
    a.add_argument("--data", type=Path, required=True)
    a.add_argument("--split", default="heldout", help="train, heldout or all")
    a.add_argument("--limit", type=int, default=None, help="use at most this many images (default: all)")
    a.add_argument("--no-fid", action="store_true")
    fl = sub.add_parser(
        "floor",
        help="the FID floor an autoencoder puts under a latent model: its reconstructions scored like "
        "generated images (same picks as 'eval model')",
        description="Reconstruct N real images of a split with a train-vae run and score them exactly as "
        "'eval model' scores generated images, against the same N picked images. A latent model trained on "
        "this autoencoder can hardly beat this FID; the gap to real-vs-real is the autoencoder's share. "
        "With a styles column, also per style (compare with 'eval model's per-style rows).",
    )
    fl.add_argument("run", type=Path, help="train-vae run folder")
    fl.add_argument(
        "--data", type=Path, required=True, help="captioned dataset (.npz from 'latentworks data')"
    )
    fl.add_argument("--split", default="train", help="train, heldout or all (default: %(default)s)")
    fl.add_argument("-n", type=int, default=1000, help="images (default: %(default)s)")
    fl.add_argument(
        "--seed", type=int, default=0, help="pick seed; 0 matches 'eval model' (default: %(default)s)"
    )
    fl.add_argument("--feature-cache", type=Path, default=None, help="as for 'eval model' (default: none)")
    u = sub.add_parser(
        "upscale",
        help="FID/KID of real images halved and upscaled 2x again (bicubic or a super-resolution stage)",
        description="Downscale N real images of a split by 2 (Lanczos, as 'latentworks data emoji' makes its "
        "smaller files), upscale them with STAGE and score them like 'eval model' scores generated images, "
        "beside real-vs-real at the same N: the reference a cascade's second stage is measured against.",
    )
    u.add_argument("stage", help="'bicubic' or a 'latentworks train --task superres' run folder")
    u.add_argument("--data", type=Path, required=True, help="dataset at the stage's output size (.npz)")
    u.add_argument("--split", default="train", help="train, heldout or all (default: %(default)s)")
    u.add_argument("-n", type=int, default=1000, help="images (default: %(default)s)")
    u.add_argument(
        "--seed", type=int, default=0, help="pick seed; 0 matches 'eval model' (default: %(default)s)"
    )
    u.add_argument("--steps", type=int, default=None, help="the stage's sampling steps (default: its own)")
    u.add_argument(
        "--aug-level", type=float, default=None, help="the stage's augmentation level (default: its own)"
    )
    u.add_argument(
        "--denoise",
        type=float,
        default=None,
        help="the stage's strength in (0, 1]: start from the bicubic image noised to this level (default: its own, 1)",
    )
    u.add_argument("--feature-cache", type=Path, default=None, help="as for 'eval model' (default: none)")
    f = sub.add_parser("fid", help="FID and KID between two datasets (.npz or image folders)")
    f.add_argument("real", type=Path)
    f.add_argument("fake", type=Path)
    f.add_argument("--size", type=int, default=64, help="resize images to SIZE x SIZE before scoring")
    m = sub.add_parser(
        "model",
        help="FID/KID of a text-to-image model on prompts as people type them and on the training "
        "captions, beside real-vs-real at the same N",
        description="Generate one image per prompt for N real images of each split and report FID/KID beside "
        "real-vs-real at the same N and the model's resolution (the best any model of that resolution can "
        "score), then prompt following: how often each generated image's nearest real image (Inception "
        "features) is the one its prompt came from, or shares its emoji (hexcodes) or style, each beside "
        "its chance level, and a classifier's top-1 (a small CNN trained on the real images that are not "
        "scored, never seeing a prompt): does the image show the prompted subcategory and, where the prompt "
        "names one, the style; beside the same classifier on the real images. With a styles column, FID/KID "
        "are also given per style (read them on prompts that name the style). By default the prompts are in user form (the label alone, label + style, label + "
        "a tag or two, in turn), reported apart from the training captions: with one image per caption, "
        "training captions measure recall of the training images, not generation.",
    )
    m.add_argument("model", help="model folder or 'default'")
    m.add_argument(
        "--data", type=Path, required=True, help="captioned dataset (.npz from 'latentworks data')"
    )
    m.add_argument(
        "--split",
        action="append",
        default=None,
        help="train (seen prompts), heldout (held-out names) or all; repeatable (default: both)",
    )
    m.add_argument("-n", type=int, default=1000, help="images per split (default: %(default)s)")
    m.add_argument("--steps", type=int, default=20, help="sampling steps")
    m.add_argument("--cfg", type=float, default=None, help="guidance scale (default: the model's own)")
    m.add_argument("--sampler", default=None, help="sampler (default: the model's own)")
    m.add_argument(
        "--prompts",
        action="append",
        default=None,
        choices=("user", "training", "label", "label+style", "label+tags"),
        help="prompt set; repeatable (default: user and training)",
    )
    m.add_argument(
        "--seed",
        type=int,
        action="append",
        default=None,
        help="generation seed; repeatable, each seed scores the same picked images (default: 0 and 1)",
    )
    m.add_argument(
        "--no-classifier",
        action="store_true",
        help="skip the prompt-following classifier (training it takes about 15 minutes of one CPU thread per "
        "split and pick seed; --feature-cache keeps it)",
    )
    m.add_argument(
        "--upscale-stage",
        default=None,
        metavar="RUN",
        help="score a cascade: the model's images upscaled 2x by a 'train --task superres' run, or 'bicubic' "
        "(the baseline); --data must then hold images at twice the model's size (default: none)",
    )
    m.add_argument(
        "--upscale-steps", type=int, default=None, help="the stage's sampling steps (default: its own)"
    )
    m.add_argument(
        "--aug-level",
        type=float,
        default=None,
        help="the stage's noise augmentation level (default: its own)",
    )
    m.add_argument(
        "--upscale-denoise",
        type=float,
        default=None,
        help="the stage's strength in (0, 1]: start from the bicubic image noised to this level (default: its own, 1)",
    )
    m.add_argument(
        "--feature-cache",
        type=Path,
        default=None,
        help="folder that keeps the real images' Inception features and the prompt classifier between runs "
        "(they take minutes on a CPU; default: none)",
    )
    return p


def run(args: argparse.Namespace) -> int:
    from latentworks.data.folder import load_dataset

    if args.what == "autoencoder":
        from latentworks.pipelines.latents import load_autoencoder, vae_run_resolution
        from latentworks.training.vae import reconstruct, reconstruction_metrics

        ae = load_autoencoder(args.run)
        ds = load_dataset(args.data, size=vae_run_resolution(args.run), split=args.split)
        n = len(ds) if args.limit is None else min(args.limit, len(ds))
        x = ds.batch(range(n))[0]
        rec = reconstruct(ae, x)
        m = reconstruction_metrics(x, rec)
        line = f"PSNR {m['psnr']:.2f} dB, SSIM {m['ssim']:.4f}"
        if not args.no_fid:
            from latentworks.evaluation.fid import fid_kid

            rf = fid_kid(x, rec)
            line += f", rFID {rf.fid:.2f}, rKID {rf.kid_mean * 1e3:.2f}e-3"
        print(f"{line} (N={n} {args.split} images)")
        return 0
    if args.what == "floor":
        from latentworks.evaluation.generation import HEADER, evaluate_autoencoder_floor
        from latentworks.pipelines.latents import load_autoencoder, vae_run_resolution

        ae = load_autoencoder(args.run)
        ds = load_dataset(args.data, size=vae_run_resolution(args.run))
        r, psnr = evaluate_autoencoder_floor(
            ae, ds, split=args.split, n=args.n, seed=args.seed, feature_cache=args.feature_cache
        )
        print(HEADER.replace("| prompts |", "| reconstructions of |"))
        print(r.row())
        print(f"PSNR of the reconstructions: {psnr:.2f} dB")
        return 0
    if args.what == "upscale":
        from latentworks.evaluation.generation import HEADER, evaluate_upscaled_real
        from latentworks.pipelines.superres import load_stage

        ds = load_dataset(args.data)
        stage = load_stage(args.stage, low_size=ds.resolution // 2)
        if ds.resolution != stage.size:
            raise ValueError(f"--data holds {ds.resolution} px images; the stage outputs {stage.size} px")
        encoder = None
        if stage.uses_text:
            from latentworks.models.text.minilm import MiniLMTextEncoder

            encoder = MiniLMTextEncoder(
                max_length=int(getattr(stage, "text_encoder", {}).get("max_length", 32))
            )
        opts = (
            {"steps": args.steps, "aug_level": args.aug_level, "denoise": args.denoise}
            if stage.uses_text
            else {}
        )
        r = evaluate_upscaled_real(
            stage,
            ds,
            split=args.split,
            n=args.n,
            seed=args.seed,
            text_encoder=encoder,
            feature_cache=args.feature_cache,
            **opts,
        )
        print(HEADER.replace("| prompts |", "| real images upscaled |"))
        print(r.row())
        return 0
    if args.what == "model":
        from latentworks.evaluation.generation import HEADER, evaluate_generation, prompt_classifier
        from latentworks.pipelines import Pipeline

        pipe: Any = Pipeline.from_pretrained(args.model)
        h, _ = pipe.model.resolution
        if args.upscale_stage is not None:
            from latentworks.pipelines.superres import CascadePipeline, load_stage

            pipe = CascadePipeline(pipe, load_stage(args.upscale_stage, low_size=h))
            h, _ = pipe.resolution
            pipe = _with_stage_options(pipe, args.upscale_steps, args.aug_level, args.upscale_denoise)
        ds = load_dataset(args.data, size=h)
        if ds.resolution != h:
            raise ValueError(
                f"--data holds {ds.resolution} px images but the model draws {h} px ones; give a dataset at "
                f"{h} px ('latentworks data emoji --size {h}')"
            )
        print(HEADER)
        following: list[str] = []
        seeds = args.seed or [0, 1]
        for split in args.split or ["train", "heldout"]:
            classifier = (
                None
                if args.no_classifier
                else prompt_classifier(ds, split, args.n, seeds[0], cache_dir=args.feature_cache)
            )
            for prompts in args.prompts or ["user", "training"]:
                for seed in seeds:
                    r = evaluate_generation(
                        pipe,
                        ds,
                        split=split,
                        n=args.n,
                        seed=seed,
                        pick_seed=seeds[0],
                        steps=args.steps,
                        guidance=args.cfg,
                        sampler=args.sampler,
                        feature_cache=args.feature_cache,
                        prompts=prompts,
                        classifier=classifier,
                    )
                    r = dataclasses.replace(r, split=f"{r.split}, seed {seed}")
                    print(r.row(), flush=True)
                    if r.following is not None:
                        following.append(f"{r.split}: {r.following.line()}")
                    following += [f"{r.split}: classifier {c.line()}" for c in r.classified]
        if following:
            print("\n" + "\n".join(following))
        return 0
    from latentworks.evaluation.fid import fid_kid

    real = load_dataset(args.real, size=args.size).images
    fake = load_dataset(args.fake, size=args.size).images
    print(fid_kid(real, fake))
    return 0


def _with_stage_options(
    pipe: Any, steps: int | None, aug_level: float | None, denoise: float | None = None
) -> Any:
    """``pipe`` (a cascade) called with the stage-2 options of the command line."""
    if steps is None and aug_level is None and denoise is None:
        return pipe

    def call(*a: Any, **kw: Any) -> Any:
        return pipe(*a, upscale_steps=steps, aug_level=aug_level, upscale_denoise=denoise, **kw)

    call.resolution = pipe.resolution  # type: ignore[attr-defined]
    return call
