"""``latentworks train-unclip``: our own unCLIP on the emoji data, three stages and a model folder.

Stages (``--stages``, in this order; each writes its run folder under ``--out``):

- ``encoder``: the contrastive image encoder (``OUT/encoder``), training.unclip.train_image_encoder;
- ``prior``: the flow-matching embedding prior (``OUT/prior``), on the one training loop;
- ``decoder``: ``--init-from`` (default: the embedded default model) fine-tuned with image-embedding
  conditioning (``OUT/decoder``, a ``latentworks train --task unclip`` run on ``OUT/latents.safetensors``);
- ``export``: the model folder ``OUT/model``: the decoder, its autoencoder, the encoder and (when trained) the
  prior, for ``latentworks unclip`` and ``latentworks variations``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

STAGES = ("encoder", "prior", "decoder", "export")


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "train-unclip",
        help="our own unCLIP on the emoji data: image encoder, prior, decoder",
        description="Train our own unCLIP on an emoji dataset: a small CLIP-like image encoder (contrastive "
        "against MiniLM captions), a diffusion prior from the caption to the image embedding, and the default "
        "model fine-tuned to take the image embedding; then write a model folder OUT/model.",
        epilog="example:\n  latentworks train-unclip --data data/emoji-32.npz --out runs/unclip "
        "--encoder-steps 600 --prior-steps 2000 --decoder-steps 1500",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", type=Path, required=True, help="dataset file from 'latentworks data emoji'")
    p.add_argument("--out", type=Path, required=True, help="folder for the stage runs and OUT/model")
    p.add_argument(
        "--stages", default=",".join(STAGES), help=f"comma-separated subset of {', '.join(STAGES)}"
    )
    p.add_argument(
        "--init-from", default="default", metavar="MODEL", help="the text-to-image model to extend"
    )
    p.add_argument("--embed-dim", type=int, default=128, help="image embedding width D")
    p.add_argument("--encoder-steps", type=int, default=600, help="encoder: training steps")
    p.add_argument(
        "--encoder-batch-size", type=int, default=128, help="encoder: images per contrastive batch"
    )
    p.add_argument("--encoder-lr", type=float, default=1e-3, help="encoder: AdamW learning rate")
    p.add_argument("--prior-steps", type=int, default=2000, help="prior: training steps")
    p.add_argument("--prior-batch-size", type=int, default=128, help="prior: examples per step")
    p.add_argument("--prior-lr", type=float, default=3e-4, help="prior: AdamW learning rate")
    p.add_argument(
        "--prior-text-embedding",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="prior: also read the image encoder's text embedding of the caption, as DALL-E 2's prior reads "
        "CLIP's",
    )
    p.add_argument("--decoder-steps", type=int, default=1500, help="decoder: training steps")
    p.add_argument("--decoder-batch-size", type=int, default=32, help="decoder: examples per step")
    p.add_argument("--decoder-lr", type=float, default=5e-5, help="decoder: AdamW learning rate")
    p.add_argument("--decoder-ema-decay", type=float, default=0.999, help="decoder: EMA decay")
    p.add_argument(
        "--embed-lr-scale",
        type=float,
        default=10.0,
        help="decoder: the new image-embedding path learns at --decoder-lr x this",
    )
    p.add_argument(
        "--caption-dropout",
        type=float,
        default=0.5,
        help="decoder: share of examples shown without their caption, so that the image embedding alone "
        "must carry the image (DALL-E 2 drops the caption 50%% of the time)",
    )
    p.add_argument(
        "--image-dropout",
        type=float,
        default=0.1,
        help="decoder: share of examples shown without their image",
    )
    p.add_argument(
        "--noise-aug-max",
        type=float,
        default=0.5,
        help="decoder: embedding noise levels are uniform in [0, this]",
    )
    p.add_argument(
        "--max-seconds", type=float, default=None, help="wall-clock limit per stage (default: none)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of every stage")
    p.add_argument("--device", default="cpu", help="torch device")
    p.add_argument("--name", default="emoji-unclip", help="the model folder's name")
    return p


def run(args: argparse.Namespace) -> int:
    from latentworks.cli import UserError

    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = [s for s in stages if s not in STAGES]
    if unknown or not stages:
        raise UserError(f"--stages: unknown {unknown or 'nothing'}; choose from {', '.join(STAGES)}")
    if not args.data.is_file():
        raise UserError(f"--data {args.data}: no such dataset file (make it with 'latentworks data emoji')")
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, str] = {}
    text_encoder = None  # one frozen MiniLM for every stage
    if any(s in stages for s in ("encoder", "prior", "decoder")):
        from latentworks.models.text.minilm import MiniLMTextEncoder

        text_encoder = MiniLMTextEncoder(device=args.device)

    if "encoder" in stages:
        from latentworks.models.image_encoder import ImageEncoderConfig
        from latentworks.training.unclip import EncoderTrainConfig, train_image_encoder

        r = train_image_encoder(
            EncoderTrainConfig(
                data=args.data,
                out=out / "encoder",
                model=ImageEncoderConfig(embed_dim=args.embed_dim),
                steps=args.encoder_steps,
                batch_size=args.encoder_batch_size,
                lr=args.encoder_lr,
                seed=args.seed,
                device=args.device,
                max_seconds=args.max_seconds,
            ),
            text_encoder,
        )
        timings["encoder"] = _timing(r.step, r.seconds_per_step, args.encoder_batch_size, r.losses)
        print(f"encoder: {timings['encoder']}; run in {r.run_dir}")

    if "prior" in stages:
        from latentworks.training.unclip import PriorTrainConfig, train_prior

        _need(out / "encoder", "encoder")
        r = train_prior(
            PriorTrainConfig(
                data=args.data,
                encoder_run=out / "encoder",
                out=out / "prior",
                steps=args.prior_steps,
                batch_size=args.prior_batch_size,
                lr=args.prior_lr,
                text_embedding=args.prior_text_embedding,
                seed=args.seed,
                device=args.device,
                max_seconds=args.max_seconds,
            ),
            text_encoder,
        )
        timings["prior"] = _timing(r.step, r.seconds_per_step, args.prior_batch_size, r.losses)
        print(f"prior: {timings['prior']}; run in {r.run_dir}")

    if "decoder" in stages:
        from latentworks.pipelines.latents import cache_latents
        from latentworks.training.diffusion import DiffusionTrainConfig, train_diffusion

        _need(out / "encoder", "encoder")
        latents = out / "latents.safetensors"
        if not latents.is_file():
            cache_latents(args.init_from, args.data, latents, split="train", device=args.device)
        t0 = time.perf_counter()
        d = train_diffusion(
            DiffusionTrainConfig(
                latents=latents,
                out=out / "decoder",
                task="unclip",
                image_encoder=out / "encoder",
                image_data=args.data,
                image_dropout=args.image_dropout,
                embed_lr_scale=args.embed_lr_scale,
                caption_dropout=args.caption_dropout,
                noise_aug_max=args.noise_aug_max,
                init_from=Path(args.init_from),
                vae_run=Path(args.init_from),
                prediction="flow",
                steps=args.decoder_steps,
                batch_size=args.decoder_batch_size,
                lr=args.decoder_lr,
                ema_decay=args.decoder_ema_decay,
                seed=args.seed,
                device=args.device,
                max_seconds=args.max_seconds,
                checkpoint_every=max(1, min(500, args.decoder_steps)),
                sample_every=max(1, args.decoder_steps),
            ),
            text_encoder,
        )
        per = (time.perf_counter() - t0) / max(1, d.step)  # includes loading, embedding and the preview
        timings["decoder"] = _timing(d.step, per, args.decoder_batch_size, d.losses)
        print(f"decoder: {timings['decoder']}; run in {d.run_dir}")

    if "export" in stages:
        _export(args, out)
    return 0


def _timing(steps: int, per_step: float, batch: int, losses: list[float]) -> str:
    tail = losses[-50:] or [float("nan")]
    return (
        f"{steps} steps, {per_step:.3f} s/step ({batch / max(per_step, 1e-9):.1f} examples/s), "
        f"loss (last {len(tail)}) {sum(tail) / len(tail):.4f}"
    )


def _need(run: Path, stage: str) -> None:
    from latentworks.cli import UserError

    if not (run / "config.json").is_file():
        raise UserError(f"{run}: the {stage} stage has not run yet; add it to --stages")


def _export(args: argparse.Namespace, out: Path) -> None:
    import shutil

    from latentworks.cli import UserError
    from latentworks.pipelines.export import export_run
    from latentworks.pipelines.loading import load_model_folder
    from latentworks.pipelines.own_unclip import add_own_unclip_stages
    from latentworks.training.unclip import load_encoder_run, load_prior_run

    _need(out / "encoder", "encoder")
    _need(out / "decoder", "decoder")
    target = out / "model"
    if target.exists():
        shutil.rmtree(target)
    base = load_model_folder(args.init_from)
    card = dict(base.meta.get("card", {}))
    card["training"] = (
        f"our own unCLIP (latentworks train-unclip) on {args.data}: image encoder, prior and decoder; the decoder "
        f"is {base.meta.get('name', args.init_from)} fine-tuned with image-embedding conditioning "
        "(see OUT/*/config.json for the settings). " + str(card.get("training", ""))
    ).strip()
    export_run(
        out / "decoder",
        target,
        name=args.name,
        data=args.data,
        defaults=dict(base.defaults),
        card=card,
    )
    prior, sampling = None, None
    if (out / "prior" / "prior.safetensors").is_file():
        prior, meta = load_prior_run(out / "prior")
        sampling = meta.get("sampling")
    encoder = load_encoder_run(out / "encoder")
    try:
        add_own_unclip_stages(target, encoder, prior, prior_sampling=sampling)
    except ValueError as e:
        raise UserError(str(e)) from None
    print(f"model folder: {target} (stages: image encoder{', prior' if prior is not None else ''}, decoder)")
