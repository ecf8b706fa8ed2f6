"""``latentworks train``: stage 2, train a latent diffusion model (U-Net or DiT) on cached latents.

With ``--resume`` the run continues with the settings saved in ``OUT/config.json``; options given on the
command line override them only where a resume may change them (``training.resume.DIFFUSION_RESUME``:
steps, wall time, intervals, device, learning rate); any other differing option is refused.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

from latentworks.commands.outputs import print_continue_hints, refuse_non_empty, tidy_run_folder
from latentworks.commands.resume_options import add_option, given_options, option_values
from latentworks.commands.train_options import add_diffusion_loop_options, loop_fields

# command-line dest -> DiffusionTrainConfig field, where they differ
_FIELDS = {"vae": "vae_run"}


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "train",
        help="stage 2: train a latent diffusion model",
        description="Train a latent diffusion model. With --resume, the run continues with the settings "
        "saved in OUT/config.json; only --steps, --max-seconds, --checkpoint-every, --sample-every, --device "
        "and --lr may be given to change them (see docs/training.md).",
    )
    p.add_argument("--out", type=Path, required=True, help="run folder")
    add_option(
        p,
        "--latents",
        type=Path,
        default=None,
        show_default=False,
        help="latent cache (default OUT/latents.safetensors)",
    )
    add_option(
        p,
        "--vae",
        type=Path,
        default=None,
        show_default=False,
        help="train-vae run folder, model folder or 'default' (to build the cache / decode samples)",
    )
    p.add_argument(
        "--data",
        type=Path,
        default=None,
        help="dataset to encode when the cache does not exist; with --task superres, the high-resolution "
        "dataset to train on (default: none)",
    )
    add_option(
        p,
        "--task",
        choices=("text2image", "superres", "unclip"),
        default="text2image",
        help="superres: a pixel-space 2x super-resolution stage (32 -> 64 px on emoji-64.npz) with "
        "noise-conditioning augmentation, for 'generate --upscale-stage'; unclip: the --init-from model "
        "given image-embedding conditioning from --image-encoder (our own unCLIP's decoder; see "
        "docs/training.md)",
    )
    add_option(
        p,
        "--image-encoder",
        type=Path,
        default=None,
        show_default=False,
        metavar="RUN",
        help="unclip: the image encoder run (latentworks train-unclip --stages encoder) (default: none)",
    )
    add_option(
        p,
        "--image-dropout",
        type=float,
        default=0.1,
        help="unclip: share of examples shown without their image embedding",
    )
    add_option(
        p,
        "--noise-aug-max",
        type=float,
        default=0.5,
        help="superres: training augmentation levels are uniform in [0, this]; unclip: the same for the image embedding (x 999 DDPM steps)",
    )
    add_option(
        p,
        "--crop",
        type=int,
        default=None,
        show_default=False,
        help="superres: train on random crops of this many pixels a side (default: whole images)",
    )
    add_option(
        p,
        "--residual",
        action="store_true",
        default=False,
        help="superres: learn the residual over the bicubic upsample, scaled to unit variance (SRDiff); "
        "the stage adds the bicubic image back, so its errors shrink by the same scale",
    )
    add_option(
        p,
        "--aug-level",
        type=float,
        default=0.1,
        help="superres: the level the stage samples with by default",
    )
    add_option(
        p,
        "--architecture",
        "--family",  # the name before the family registry: kept so old command lines still work
        choices=("unet", "dit"),
        default="unet",
        help="the denoising network (--family is an old name for this option)",
    )
    add_option(
        p,
        "--preset",
        default=None,
        show_default=False,
        help="model preset (default emoji-s / emoji-dit-s; emoji-sr-xs for --task superres)",
    )
    add_option(
        p,
        "--init-from",
        type=Path,
        default=None,
        show_default=False,
        metavar="MODEL",
        help="fine-tune: start from the denoiser of a model folder, 'default' or a train run (its EMA "
        "weights; the model config comes from it, the optimizer starts fresh). Encode the data with the "
        "same autoencoder: --vae MODEL",
    )
    add_option(p, "--prediction", choices=("eps", "v", "flow"), default="flow")
    add_diffusion_loop_options(
        p, steps=50_000, lr=1e-4, ema_decay=0.999, caption_dropout=0.1, sample_every=1000
    )
    return p


def run(args: argparse.Namespace) -> int:
    from latentworks.cli import UserError
    from latentworks.training.diffusion import DiffusionTrainConfig, train_diffusion
    from latentworks.training.resume import (
        DIFFUSION_RESUME,
        config_from_saved,
        merge_for_resume,
        read_run_config,
    )

    saved = read_run_config(args.out, DIFFUSION_RESUME) if args.resume else None
    if saved is not None:  # the saved settings, with the given options checked and applied
        given = {_FIELDS.get(d, d): v for d, v in given_options(args).items()}
        merged, _ = merge_for_resume(saved["train"], given, DIFFUSION_RESUME, run=args.out)
        model: Any = None  # a preset: the library takes the run's saved model config
        if isinstance(merged.get("model"), dict):  # a run started with an explicit model config (API)
            from latentworks.models.configs import config_from_dict
            from latentworks.training.diffusion import model_config_class

            model = config_from_dict(model_config_class(merged["architecture"]), merged["model"])
        cfg = config_from_saved(
            DiffusionTrainConfig, merged, out=args.out, model=model, resume=True, progress=True
        )
    else:
        o = option_values(args)
        superres = o["task"] == "superres"
        preset = o["preset"] or ("emoji-s" if o["architecture"] == "unet" else "emoji-dit-s")
        if superres:
            if args.data is None:
                raise UserError("--task superres trains on a dataset of high-resolution images: pass --data")
            preset = o["preset"] or "emoji-sr-xs"
        cfg = DiffusionTrainConfig(
            latents=args.data if superres else o["latents"] or args.out / "latents.safetensors",
            task=o["task"],
            noise_aug_max=o["noise_aug_max"],
            aug_level=o["aug_level"],
            crop=o["crop"],
            residual=o["residual"],
            out=args.out,
            architecture=o["architecture"],
            preset=preset,
            prediction=o["prediction"],
            **loop_fields(o),
            vae_run=o["vae"],
            init_from=o["init_from"],
            image_encoder=o["image_encoder"],
            image_data=args.data if o["task"] == "unclip" else None,
            image_dropout=o["image_dropout"],
            resume=args.resume,
        )
    if not args.resume:
        refuse_non_empty(
            args.out, args.overwrite, keep=[cfg.latents], advice="; to continue its run, add --resume"
        )
        if cfg.init_from is None:
            cfg.model_config()  # an unknown preset fails here, before a latent cache is built for it
    ckpt = args.out / "checkpoints" / "last.safetensors"
    try:
        with tidy_run_folder(args.out, ckpt):
            if not cfg.latents.is_file() and cfg.task == "superres":
                raise UserError(f"--data {cfg.latents}: no such dataset file")
            if not cfg.latents.is_file():
                vae = cfg.vae_run
                if vae is None or args.data is None:
                    raise UserError(
                        f"latent cache {cfg.latents} does not exist; pass --vae RUN and --data DATASET to build it"
                    )
                from latentworks.pipelines.latents import cache_latents

                cache_latents(vae, args.data, cfg.latents, split="train", device=cfg.device)
            r = train_diffusion(cfg)
    except FloatingPointError as e:
        raise UserError(str(e)) from None
    except KeyboardInterrupt:
        if ckpt.is_file():
            print("interrupted; the run keeps its last checkpoint", file=sys.stderr)
            print_continue_hints("train", args.out, _next_steps(args.out), file=sys.stderr)
        raise
    print(f"step {r.step}; run in {r.run_dir}")
    if r.step < cfg.steps:
        print(f"stopped early (--max-seconds) at step {r.step} of {cfg.steps}")
        print_continue_hints("train", args.out, _next_steps(args.out))
    return 0


def _next_steps(out: Path) -> list[str]:
    q = shlex.quote
    return [
        "to use it as it is:                   "
        f"latentworks convert --from-run {q(str(out))} --out {q(f'models/checkpoints/{out.resolve().name}')}"
    ]
