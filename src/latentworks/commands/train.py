"""``latentworks train``: stage 2, train a latent diffusion model (U-Net or DiT) on cached latents."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("train", help="stage 2: train a latent diffusion model")
    p.add_argument("--out", type=Path, required=True, help="run folder")
    p.add_argument(
        "--latents", type=Path, default=None, help="latent cache (default OUT/latents.safetensors)"
    )
    p.add_argument(
        "--vae",
        type=Path,
        default=None,
        help="train-vae run folder, model folder or 'default' (to build the cache / decode samples)",
    )
    p.add_argument("--data", type=Path, default=None, help="dataset to encode when the cache does not exist")
    p.add_argument("--family", choices=("unet", "dit"), default="unet")
    p.add_argument("--preset", default=None, help="model preset (default emoji-s / emoji-dit-s)")
    p.add_argument(
        "--init-from",
        type=Path,
        default=None,
        metavar="MODEL",
        help="fine-tune: start from the denoiser of a model folder, 'default' or a train run (its EMA "
        "weights; the model config comes from it, the optimizer starts fresh). Encode the data with the "
        "same autoencoder: --vae MODEL",
    )
    p.add_argument("--prediction", choices=("eps", "v", "flow"), default="flow")
    p.add_argument("--steps", type=int, default=50_000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--caption-dropout", type=float, default=0.1)
    p.add_argument("--mixed-precision", choices=("no", "bf16", "fp16"), default="no")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-every", type=int, default=500)
    p.add_argument("--sample-every", type=int, default=1000)
    p.add_argument("--max-seconds", type=float, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--resume", action="store_true")
    return p


def run(args: argparse.Namespace) -> int:
    from latentworks.cli import UserError
    from latentworks.training.diffusion import DiffusionTrainConfig, train_diffusion

    latents = args.latents or args.out / "latents.safetensors"
    if not latents.is_file():
        if args.vae is None or args.data is None:
            raise UserError(
                f"latent cache {latents} does not exist; pass --vae RUN and --data DATASET to build it"
            )
        from latentworks.pipelines.latents import cache_latents

        cache_latents(args.vae, args.data, latents, split="train", device=args.device)
    preset = args.preset or ("emoji-s" if args.family == "unet" else "emoji-dit-s")
    cfg = DiffusionTrainConfig(
        latents=latents,
        out=args.out,
        family=args.family,
        preset=preset,
        prediction=args.prediction,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        ema_decay=args.ema_decay,
        caption_dropout=args.caption_dropout,
        mixed_precision=args.mixed_precision,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
        sample_every=args.sample_every,
        max_seconds=args.max_seconds,
        vae_run=args.vae,
        init_from=args.init_from,
        device=args.device,
        resume=args.resume,
    )
    try:
        r = train_diffusion(cfg)
    except FloatingPointError as e:
        raise UserError(str(e)) from None
    print(f"step {r.step}; run in {r.run_dir}")
    return 0
