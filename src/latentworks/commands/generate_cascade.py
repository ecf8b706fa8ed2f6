"""``latentworks generate --model IF-I-FOLDER --upscaler IF-II-FOLDER [--latent-upscaler X4-FOLDER]``: DeepFloyd
IF's cascade.

The options of this mode (added to ``generate``'s parser): ``--upscaler`` (the stage II folder), per-stage
steps and guidance (``--steps``/``--cfg`` for stage I, ``--upscaler-steps``/``--upscaler-cfg`` for stage II) and
stage II's ``--noise-level``; ``--latent-upscaler`` (stage III, Stable Diffusion's x4 upscaler folder) with its
``--latent-upscaler-steps``, ``--latent-upscaler-cfg`` and ``--latent-upscaler-noise-level``. Options of the latent pipelines that a pixel cascade has no use for (init images,
masks, LoRAs, ControlNets, hires fix, sampler and scheduler choice, sizes) are refused with a message.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from latentworks.cli import UserError

# stage III's defaults for --help, written out because the CLI does not import torch to parse its options
# (the family modules do); tests/test_cli_x4_upscaler.py checks them against the families' values
X4_DEFAULTS = {"steps": 75, "guidance": 9.0}
STAGE_III_NOISE_LEVEL = 100

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
    group.add_argument(
        "--latent-upscaler",
        type=Path,
        default=None,
        metavar="FOLDER",
        help="DeepFloyd IF's optional stage III, run after --upscaler: a Stable Diffusion x4 upscaler folder "
        "(StableDiffusionUpscalePipeline, e.g. stable-diffusion-x4-upscaler), 256 -> 1024 px on the same prompt "
        "(default: none)",
    )
    group.add_argument(
        "--latent-upscaler-steps",
        type=int,
        default=None,
        metavar="N",
        help=f"stage III sampling steps (default: {X4_DEFAULTS['steps']})",
    )
    group.add_argument(
        "--latent-upscaler-cfg",
        type=float,
        default=None,
        metavar="X",
        help=f"stage III guidance scale (default: {X4_DEFAULTS['guidance']})",
    )
    group.add_argument(
        "--latent-upscaler-noise-level",
        type=int,
        default=None,
        metavar="T",
        help="stage III's noise augmentation of the stage II image, a step 0..max_noise_level (350) of its "
        f"low_res_scheduler (default: {STAGE_III_NOISE_LEVEL}, as DeepFloyd's examples)",
    )


def wants_cascade(args: argparse.Namespace) -> bool:
    """True when ``generate`` runs a cascade: ``--upscaler`` or ``--latent-upscaler`` given, or ``--model`` is a
    cascade stage folder."""
    from latentworks.pipelines.cascade import is_cascade_folder

    return args.upscaler is not None or args.latent_upscaler is not None or is_cascade_folder(args.model)


def generate_cascade(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from latentworks.commands.image_outputs import save_images
    from latentworks.pipelines.cascade import CascadePipeline

    for dest, unset, option in _NOT_FOR_CASCADE:
        if getattr(args, dest, unset) not in (unset, None):
            raise UserError(f"{option} is not available with a DeepFloyd IF cascade (--model {args.model})")
    steps_options = (
        ("--upscaler-steps", args.upscaler_steps), ("--steps", args.steps),
        ("--latent-upscaler-steps", args.latent_upscaler_steps),
    )  # fmt: skip
    for option, value in steps_options:
        if value is not None and not 1 <= value <= 1000:
            raise UserError(f"{option} must be between 1 and 1000, got {value}")
    if args.noise_level is not None and not 0 <= args.noise_level <= 999:
        raise UserError(f"--noise-level must be a DDPM step in 0..999, got {args.noise_level}")
    stage3_options = (args.latent_upscaler_steps, args.latent_upscaler_cfg, args.latent_upscaler_noise_level)
    if args.latent_upscaler is None and any(v is not None for v in stage3_options):
        raise UserError(
            "--latent-upscaler-steps/-cfg/-noise-level need --latent-upscaler (the stage III folder)"
        )
    if args.latent_upscaler is not None and args.upscaler is None:
        raise UserError(
            f"--latent-upscaler {args.latent_upscaler}: stage III runs after stage II; pass the stage II folder "
            "(IFSuperResolutionPipeline, e.g. IF-II-L-v1.0) as --upscaler too"
        )
    if len(args.text_encoder) > 1:
        raise UserError("--text-encoder: DeepFloyd IF takes one text encoder (T5-XXL), got several")
    try:
        pipe = CascadePipeline.from_pretrained(
            args.model, upscaler=args.upscaler, text_encoder=args.text_encoder[0] if args.text_encoder else None,
            tokenizer=args.tokenizer, latent_upscaler=args.latent_upscaler, device=args.device,
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
            desc = ("stage I", "stage II", "stage III")[min(stage, 3) - 1]
            bar = tqdm(total=step.total, desc=desc, unit="step", disable=args.quiet, file=sys.stderr)
        bar.update(1)

    try:
        result = pipe(
            args.prompt, args.negative, seed=args.seed, batch=args.batch, steps=args.steps, guidance=args.cfg,
            upscaler_steps=args.upscaler_steps, upscaler_guidance=args.upscaler_cfg, noise_level=args.noise_level,
            latent_upscaler_steps=args.latent_upscaler_steps, latent_upscaler_guidance=args.latent_upscaler_cfg,
            latent_upscaler_noise_level=args.latent_upscaler_noise_level, callback=on_step,
        )  # fmt: skip
    except ValueError as e:
        raise UserError(str(e)) from None
    finally:
        if bar is not None:
            bar.close()
    save_images(result.images, result.seeds, result.parameters, args.output)
    return 0
