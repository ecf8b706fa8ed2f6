"""Karlo (unCLIP) in ``latentworks generate`` and ``latentworks info``: the per-stage options and the run.

``generate`` hands a model that is an ``UnCLIPPipeline`` folder here; ``--steps`` and ``--cfg`` are the
decoder's (the stage that draws the picture), ``--prior-steps``, ``--prior-cfg`` and ``--super-res-steps`` the
other stages' (diffusers' ``prior_num_inference_steps``, ``prior_guidance_scale``,
``super_res_num_inference_steps``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from latentworks.cli import UserError


def add_stage_arguments(p: argparse.ArgumentParser) -> None:
    """The cascade's per-stage options (Karlo: prior -> 64 px decoder -> 256 px super-resolution)."""
    g = p.add_argument_group("cascade stages (Karlo / unCLIP folders; --steps and --cfg are the decoder's)")
    g.add_argument("--prior-steps", type=int, default=None, metavar="N", help="prior steps (default: 25)")
    g.add_argument("--prior-cfg", type=float, default=None, metavar="X", help="prior guidance (default: 4)")
    g.add_argument(
        "--super-res-steps", type=int, default=None, metavar="N", help="super-resolution steps (default: 7)"
    )


def is_karlo_model(model: str | Path) -> bool:
    """Is ``model`` a diffusers ``UnCLIPPipeline`` folder (Karlo)?"""
    from latentworks.pipelines.karlo import is_karlo_folder

    return Path(model).is_dir() and is_karlo_folder(model)


# generate options that mean nothing to Karlo's cascade: (flag, is it set?)
def _unsupported(args: argparse.Namespace) -> list[str]:
    flags = [
        ("--init", args.init is not None),
        ("--image", args.image is not None),
        ("--mask / --outpaint", args.mask is not None or args.outpaint is not None),
        ("--lora", bool(args.lora)),
        ("--controlnet", bool(args.controlnet)),
        ("--hires-scale", args.hires_scale != 1.0),
        ("--sampler", args.sampler is not None),
        ("--scheduler", args.scheduler is not None),
        ("--cfg-interval", args.cfg_interval is not None),
        ("--vae", args.vae is not None),
        ("--text-encoder", bool(args.text_encoder)),
        ("--tokenizer", args.tokenizer is not None),
        ("--prediction", args.prediction is not None),
        ("--memory-budget", args.memory_budget is not None),
    ]
    return [flag for flag, on in flags if on]


def run_generate(args: argparse.Namespace) -> int:
    """``latentworks generate PROMPT --model KARLO_FOLDER``."""
    import torch
    from tqdm import tqdm

    from latentworks.commands.image_outputs import save_images
    from latentworks.pipelines.karlo import KarloPipeline, read_karlo_folder

    bad = _unsupported(args)
    if bad:
        raise UserError(
            f"--model {args.model} is a Karlo (unCLIP) cascade, which takes a prompt only; remove {', '.join(bad)}"
        )
    for name in ("steps", "prior_steps", "super_res_steps"):
        value = getattr(args, name)
        if value is not None and not 2 <= value <= 1000:
            raise UserError(f"--{name.replace('_', '-')} must be between 2 and 1000 for Karlo, got {value}")
    if args.prior_cfg is not None and not 0 <= args.prior_cfg <= 100:
        raise UserError(f"--prior-cfg must be between 0 and 100, got {args.prior_cfg}")
    try:
        size = read_karlo_folder(args.model).super_res_size
    except (FileNotFoundError, ValueError) as e:
        raise UserError(f"--model {args.model}: {e}") from None
    for name in ("width", "height"):
        value = getattr(args, name)
        if value is not None and value != size:
            raise UserError(f"--{name}: Karlo draws {size}x{size} images only; leave --{name} out")
    try:
        pipe = KarloPipeline.from_pretrained(args.model, device=args.device, allow_pickle=args.allow_pickle)
    except (FileNotFoundError, ValueError, KeyError) as e:
        raise UserError(f"--model {args.model}: {e}") from None
    bars: dict[str, tqdm] = {}
    titles = {"prior": "prior", "decoder": "decoder", "super_res": "super-resolution"}

    def on_step(stage: str, step) -> None:  # noqa: ANN001 - a StepInfo
        if stage not in bars:
            for bar in bars.values():
                bar.close()
            bars[stage] = tqdm(
                total=step.total, desc=titles[stage], unit="step", disable=args.quiet, file=sys.stderr
            )
        bars[stage].update(1)

    with torch.inference_mode():
        try:
            result = pipe(
                args.prompt,
                args.negative,
                seed=args.seed,
                batch=args.batch,
                prior_steps=args.prior_steps,
                decoder_steps=args.steps,
                super_res_steps=args.super_res_steps,
                prior_guidance=args.prior_cfg,
                decoder_guidance=args.cfg,
                callback=on_step,
            )
        except ValueError as e:
            raise UserError(str(e)) from None
    for bar in bars.values():
        bar.close()
    save_images(result.images, result.seeds, result.parameters, args.output)
    return 0


def describe(model: str | Path) -> str | None:
    """``latentworks info --model``'s text for a Karlo folder, or None for any other model."""
    if not is_karlo_model(model):
        return None
    from latentworks.pipelines.karlo import describe_karlo_folder

    try:
        return describe_karlo_folder(model)
    except (FileNotFoundError, ValueError) as e:
        raise UserError(f"--model {model}: {e}") from None
