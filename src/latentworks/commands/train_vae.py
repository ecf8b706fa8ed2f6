"""``latentworks train-vae``: stage 1, train a KL autoencoder.

With ``--resume`` the run continues with the settings saved in ``OUT/config.json``; options given on the
command line override them only where a resume may change them (``training.resume.VAE_RESUME``: steps,
wall time, intervals, device, learning rate); any other differing option is refused.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

from latentworks.commands.outputs import print_continue_hints, refuse_non_empty, tidy_run_folder
from latentworks.commands.resume_options import add_option, add_run_options, given_options, option_values


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "train-vae",
        help="stage 1: train a KL autoencoder on an image dataset",
        description="Train a KL autoencoder. With --resume, the run continues with the settings saved in "
        "OUT/config.json; only --steps, --max-seconds, --checkpoint-every, --sample-every, --device and --lr "
        "may be given to change them (see docs/training.md).",
    )
    add_option(
        p,
        "--data",
        type=Path,
        default=None,
        show_default=False,
        help=".npz from 'latentworks data' or an image folder (no default: required, except with --resume)",
    )
    p.add_argument("--out", type=Path, required=True, help="run folder")
    add_option(p, "--preset", default="emoji-f4c4", help="autoencoder preset (models.autoencoder.PRESETS)")
    add_option(
        p,
        "--resolution",
        type=int,
        default=None,
        show_default=False,
        help="image size (default: 64, or the resolution of --finetune-decoder's run or model)",
    )
    add_option(p, "--steps", type=int, default=20_000)
    add_option(p, "--batch-size", type=int, default=16)
    add_option(p, "--lr", type=float, default=2e-4)
    add_option(p, "--kl-weight", type=float, default=1e-6)
    add_option(p, "--perceptual-weight", type=float, default=1.0, help="0 disables the Inception loss")
    add_option(p, "--disc-start", type=int, default=5_000, help="step the GAN loss switches on (-1: never)")
    add_option(p, "--disc-weight", type=float, default=0.5)
    add_run_options(p, sample_every=500)
    add_option(
        p,
        "--finetune-decoder",
        type=Path,
        default=None,
        show_default=False,
        metavar="FROM",
        help="fine-tune only the decoder of FROM (a train-vae run, a model folder or 'default'), encoder "
        "frozen, so models trained on its latents keep working; --preset is then ignored. Swap the result "
        "into a model with 'latentworks convert MODEL --decoder-from OUT --out NEW'",
    )
    return p


def run(args: argparse.Namespace) -> int:
    from latentworks.cli import UserError
    from latentworks.training.resume import VAE_RESUME, config_from_saved, merge_for_resume, read_run_config
    from latentworks.training.vae import VAETrainConfig, train_vae

    saved = read_run_config(args.out, VAE_RESUME) if args.resume else None
    if saved is not None:  # the saved settings, with the given options checked and applied
        merged, _ = merge_for_resume(saved["train"], given_options(args), VAE_RESUME, run=args.out)
        cfg = config_from_saved(VAETrainConfig, merged, out=args.out, resume=True, progress=True)
    else:
        o = option_values(args)
        if o["data"] is None:
            raise UserError("--data is required (a .npz from 'latentworks data' or an image folder)")
        resolution = o["resolution"]
        if resolution is None:
            resolution = 64
            ft = o["finetune_decoder"]
            if ft is not None and (ft.exists() or str(ft) == "default"):
                from latentworks.pipelines.latents import vae_run_resolution

                resolution = vae_run_resolution(ft)
        cfg = VAETrainConfig(
            data=o["data"],
            out=args.out,
            preset=o["preset"],
            resolution=resolution,
            steps=o["steps"],
            batch_size=o["batch_size"],
            lr=o["lr"],
            kl_weight=o["kl_weight"],
            perceptual_weight=o["perceptual_weight"],
            disc_start=o["disc_start"],
            disc_weight=o["disc_weight"],
            seed=o["seed"],
            checkpoint_every=o["checkpoint_every"],
            sample_every=o["sample_every"],
            max_seconds=o["max_seconds"],
            device=o["device"],
            resume=args.resume,
            finetune_decoder=o["finetune_decoder"],
        )
    if not args.resume:
        refuse_non_empty(args.out, args.overwrite, advice="; to continue its run, add --resume")
    ckpt = args.out / "checkpoints" / "last.safetensors"
    try:
        with tidy_run_folder(args.out, ckpt):
            r = train_vae(cfg)
    except (FloatingPointError, FileNotFoundError) as e:
        raise UserError(str(e)) from None
    except KeyboardInterrupt:
        if ckpt.is_file():
            print("interrupted; the run keeps its last checkpoint", file=sys.stderr)
            print_continue_hints("train-vae", args.out, _next_steps(args.out, cfg), file=sys.stderr)
        raise
    m = r.metrics
    if m:
        print(
            f"step {r.step}: held-out PSNR {m['psnr']:.2f} dB, SSIM {m['ssim']:.4f} (N={m['n']}); run in {r.run_dir}"
        )
    if r.step < cfg.steps:
        print(f"stopped early (--max-seconds) at step {r.step} of {cfg.steps}")
        print_continue_hints("train-vae", args.out, _next_steps(args.out, cfg))
    return 0


def _next_steps(out: Path, cfg: Any) -> list[str]:
    """What to do with the autoencoder as it is: swap a fine-tuned decoder in, or train on its latents."""

    def q(p: object) -> str:
        return shlex.quote(str(p))

    if cfg.finetune_decoder is not None:
        new = f"models/checkpoints/{Path(str(cfg.finetune_decoder)).name}-decoder"
        return [
            "to use its decoder as it is:          "
            f"latentworks convert {q(cfg.finetune_decoder)} --decoder-from {q(out)} --out {q(new)}"
        ]
    return [
        "to use it as it is:                   "
        f"latentworks train --out runs/ldm --vae {q(out)} --data {q(cfg.data)}  (then convert --from-run)"
    ]
