"""``latentworks generate --model IF-I-FOLDER --upscaler IF-II-FOLDER``: DeepFloyd IF's pixel cascade.

The options of this mode (added to ``generate``'s parser): ``--upscaler`` (the stage II folder), per-stage
steps and guidance (``--steps``/``--cfg`` for stage I, ``--upscaler-steps``/``--upscaler-cfg`` for stage II) and
stage II's ``--noise-level``. Options of the latent pipelines that a pixel cascade has no use for (init images,
masks, LoRAs, ControlNets, hires fix, sampler and scheduler choice, sizes) are refused with a message.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from latentworks.cli import UserError

# (dest, value meaning "not given", option name) of generate's options that the cascade does not take
_NOT_FOR_CASCADE: tuple[tuple[str, Any, str], ...] = (
    ("init", None, "--init"), ("image", None, "--image"), ("mask", None, "--mask"), ("outpaint", None, "--outpaint"),
    ("lora", [], "--lora"), ("controlnet", [], "--controlnet"), ("hires_scale", 1.0, "--hires-scale"),
    ("sampler", None, "--sampler"), ("scheduler", None, "--scheduler"), ("width", None, "--width"),
    ("height", None, "--height"), ("vae", None, "--vae"), ("cfg_interval", None, "--cfg-interval"),
    ("prediction", None, "--prediction"),
)  # fmt: skip


def add_cascade_arguments(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group("pixel cascade: DeepFloyd IF (docs/models.md)")
    group.add_argument(
        "--upscaler",
        type=Path,
        default=None,
        metavar="FOLDER",
        help="a super-resolution stage run after --model: DeepFloyd IF stage II (IFSuperResolutionPipeline "
        "folder, e.g. IF-II-L-v1.0) after an IF stage I --model (default: none: stage I alone, 64 px)",
    )
    group.add_argument(
        "--upscaler-steps", type=int, default=None, metavar="N", help="stage II sampling steps (default: 50)"
    )
    group.add_argument(
        "--upscaler-cfg", type=float, default=None, metavar="X", help="stage II guidance scale (default: 4.0)"
    )
    group.add_argument(
        "--noise-level",
        type=int,
        default=None,
        metavar="T",
        help="stage II's noise augmentation of the upsampled stage I image, a DDPM step 0..999 (default: 250)",
    )


def wants_cascade(args: argparse.Namespace) -> bool:
    """True when ``generate`` runs a cascade: ``--upscaler`` given, or ``--model`` is a cascade stage folder."""
    from latentworks.pipelines.cascade import is_cascade_folder

    return args.upscaler is not None or is_cascade_folder(args.model)


def generate_cascade(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from latentworks.pipelines.cascade import CascadePipeline
    from latentworks.pipelines.metadata import save_png

    for dest, unset, option in _NOT_FOR_CASCADE:
        if getattr(args, dest, unset) not in (unset, None):
            raise UserError(f"{option} is not available with a DeepFloyd IF cascade (--model {args.model})")
    for option, value in (("--upscaler-steps", args.upscaler_steps), ("--steps", args.steps)):
        if value is not None and not 1 <= value <= 1000:
            raise UserError(f"{option} must be between 1 and 1000, got {value}")
    if args.noise_level is not None and not 0 <= args.noise_level <= 999:
        raise UserError(f"--noise-level must be a DDPM step in 0..999, got {args.noise_level}")
    if len(args.text_encoder) > 1:
        raise UserError("--text-encoder: DeepFloyd IF takes one text encoder (T5-XXL), got several")
    try:
        pipe = CascadePipeline.from_pretrained(
            args.model, upscaler=args.upscaler, text_encoder=args.text_encoder[0] if args.text_encoder else None,
            tokenizer=args.tokenizer, device=args.device,
        )  # fmt: skip
    except (FileNotFoundError, ValueError, KeyError) as e:
        raise UserError(str(e)) from None
    bar: Any = None
    stage = 0

    def on_step(step: Any) -> None:
        nonlocal bar, stage
        if step.i == 0:
            if bar is not None:
                bar.close()
            stage += 1
            desc = "stage I" if stage == 1 else "stage II"
            bar = tqdm(total=step.total, desc=desc, unit="step", disable=args.quiet, file=sys.stderr)
        bar.update(1)

    try:
        result = pipe(
            args.prompt, args.negative, seed=args.seed, batch=args.batch, steps=args.steps, guidance=args.cfg,
            upscaler_steps=args.upscaler_steps, upscaler_guidance=args.upscaler_cfg, noise_level=args.noise_level,
            callback=on_step,
        )  # fmt: skip
    except ValueError as e:
        raise UserError(str(e)) from None
    finally:
        if bar is not None:
            bar.close()
    out: Path = args.output
    images = result.images
    paths = (
        [out]
        if len(images) == 1
        else [out.with_name(f"{out.stem}-{i + 1}{out.suffix}") for i in range(len(images))]
    )
    for img, path, seed in zip(images, paths, result.seeds, strict=True):
        save_png(img, path, {**result.parameters, "seed": seed, "batch": 1})
        print(f"{path}  seed={seed}")
    return 0
