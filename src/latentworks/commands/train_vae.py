"""``latentworks train-vae``: stage 1, train a KL autoencoder."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("train-vae", help="stage 1: train a KL autoencoder on an image dataset")
    p.add_argument("--data", type=Path, required=True, help=".npz from 'latentworks data' or an image folder")
    p.add_argument("--out", type=Path, required=True, help="run folder")
    p.add_argument("--preset", default="emoji-f4c4", help="autoencoder preset (models.autoencoder.PRESETS)")
    p.add_argument(
        "--resolution",
        type=int,
        default=None,
        help="image size (default: 64, or the resolution of --finetune-decoder's run or model)",
    )
    p.add_argument("--steps", type=int, default=20_000)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--kl-weight", type=float, default=1e-6)
    p.add_argument("--perceptual-weight", type=float, default=1.0, help="0 disables the Inception loss")
    p.add_argument("--disc-start", type=int, default=5_000, help="step the GAN loss switches on (-1: never)")
    p.add_argument("--disc-weight", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-every", type=int, default=500)
    p.add_argument("--sample-every", type=int, default=500)
    p.add_argument(
        "--max-seconds", type=float, default=None, help="stop (after a checkpoint) after this long"
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/last.safetensors")
    p.add_argument(
        "--finetune-decoder",
        type=Path,
        default=None,
        metavar="FROM",
        help="fine-tune only the decoder of FROM (a train-vae run, a model folder or 'default'), encoder "
        "frozen, so models trained on its latents keep working; --preset is then ignored. Swap the result "
        "into a model with 'latentworks convert MODEL --decoder-from OUT --out NEW'",
    )
    return p


def run(args: argparse.Namespace) -> int:
    from latentworks.cli import UserError
    from latentworks.training.vae import VAETrainConfig, train_vae

    resolution = args.resolution
    if resolution is None:
        resolution = 64
        if args.finetune_decoder is not None and (
            args.finetune_decoder.exists() or str(args.finetune_decoder) == "default"
        ):
            from latentworks.pipelines.latents import vae_run_resolution

            resolution = vae_run_resolution(args.finetune_decoder)
    cfg = VAETrainConfig(
        data=args.data,
        out=args.out,
        preset=args.preset,
        resolution=resolution,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        kl_weight=args.kl_weight,
        perceptual_weight=args.perceptual_weight,
        disc_start=args.disc_start,
        disc_weight=args.disc_weight,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
        sample_every=args.sample_every,
        max_seconds=args.max_seconds,
        device=args.device,
        resume=args.resume,
        finetune_decoder=args.finetune_decoder,
    )
    try:
        r = train_vae(cfg)
    except (FloatingPointError, FileNotFoundError) as e:
        raise UserError(str(e)) from None
    m = r.metrics
    if m:
        print(
            f"step {r.step}: held-out PSNR {m['psnr']:.2f} dB, SSIM {m['ssim']:.4f} (N={m['n']}); run in {r.run_dir}"
        )
    return 0
