"""``latentworks train-controlnet``: train an edge ControlNet for one of our own models (e.g. the default one).

The base model (a model folder, ``default``, or a ``latentworks train`` run) stays frozen; a ControlNet learns to
steer it from the Canny edges of each training image (``training.controlnet``). It runs the same training loop
and objective as ``latentworks train`` (``training.diffusion.train_diffusion``), on a latent cache encoded with
the base model's autoencoder (built from ``--data`` on the first run). The result, ``OUT/controlnet.safetensors``
(EMA weights, diffusers ``ControlNetModel`` layout), works wherever a ControlNet does:
``latentworks generate --model default --controlnet OUT/controlnet.safetensors --control-image EDGES.png``.

``--resume`` and ``--overwrite`` behave as for ``latentworks train``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from latentworks.commands.outputs import print_continue_hints, refuse_non_empty, tidy_run_folder
from latentworks.commands.resume_options import add_option, given_options, option_values
from latentworks.commands.train_options import add_diffusion_loop_options, loop_fields

COMMAND = "train-controlnet"
_FIELDS = {"base": "init_from"}  # command-line dest -> DiffusionTrainConfig field, where they differ
_NO_CACHE = (
    "latent cache {latents} does not exist; pass --data DATASET to build it with the base model's autoencoder"
)
_SPEC = ("hint", "low_threshold", "high_threshold")  # options that make up the ControlNetTrainSpec


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        COMMAND,
        help="train a ControlNet (Canny edges) for one of our own models",
        description="Train an edge ControlNet for a frozen base model (default: the embedded one) with the "
        "training loop of 'latentworks train': the control of each training image is its Canny edge map. "
        "Writes OUT/controlnet.safetensors, for 'latentworks generate --controlnet'. With --resume, the run "
        "continues with the settings saved in OUT/config.json; only --steps, --max-seconds, "
        "--checkpoint-every, --sample-every, --device and --lr may change (see docs/training.md).",
    )
    p.add_argument("--out", type=Path, required=True, help="run folder")
    add_option(
        p,
        "--base",
        type=Path,
        default=Path("default"),
        metavar="MODEL",
        help="the model to control: a model folder, 'default' (the embedded model) or a 'latentworks train' "
        "run; it stays frozen",
    )
    p.add_argument(
        "--data",
        type=Path,
        default=None,
        help="dataset (.npz from 'latentworks data emoji') to encode when the latent cache does not exist; "
        "its images give the edge maps (default: none; the cache's own dataset when it exists)",
    )
    add_option(
        p,
        "--latents",
        type=Path,
        default=None,
        show_default=False,
        help="latent cache (default OUT/latents.safetensors), encoded with the base model's autoencoder",
    )
    add_option(
        p, "--hint", choices=("canny",), default="canny", help="the control image of each training image"
    )
    add_option(
        p, "--low-threshold", type=float, default=0.4, help="Canny low threshold, [0, 1] as the Canny node"
    )
    add_option(
        p, "--high-threshold", type=float, default=0.8, help="Canny high threshold, [0, 1] as the Canny node"
    )
    add_diffusion_loop_options(
        p,
        steps=2_000,
        lr=2e-4,
        ema_decay=0.99,
        caption_dropout=0.5,
        caption_dropout_help="share of captions replaced by '' (Zhang et al. 2023 drop half, so the ControlNet "
        "reads the edges without the prompt's help)",
        caption_augment_help="as for 'latentworks train'",
        sample_every=500,
    )
    return p


def _vae_of(base: Path) -> Path:
    """The autoencoder that goes with ``base``: the model folder itself, or a train run's ``vae_run``."""
    from latentworks.cli import UserError
    from latentworks.pipelines.loading import is_model_folder, resolve_model_path
    from latentworks.training.resume import DIFFUSION_RESUME, read_run_config

    if is_model_folder(base):
        return resolve_model_path(base)
    saved = read_run_config(base, DIFFUSION_RESUME)
    vae = (saved or {}).get("vae_run")
    if not vae:
        raise UserError(
            f"--base {base}: neither a model folder (model.json) nor a 'latentworks train' run that names its "
            "autoencoder (config.json vae_run)"
        )
    return Path(vae)


def run(args: argparse.Namespace) -> int:
    from latentworks.cli import UserError
    from latentworks.training.controlnet import CONTROLNET_RESUME, ControlNetTrainSpec
    from latentworks.training.diffusion import DiffusionTrainConfig, load_init_source, train_diffusion
    from latentworks.training.resume import config_from_saved, merge_for_resume, read_run_config

    saved = read_run_config(args.out, CONTROLNET_RESUME) if args.resume else None
    if saved is not None:  # the saved settings, with the given options checked and applied
        given = {_FIELDS.get(d, d): v for d, v in given_options(args).items() if d not in _SPEC}
        spec_given = {d: v for d, v in given_options(args).items() if d in _SPEC}
        spec_saved = dict(saved["train"].get("controlnet") or {})
        if spec_given:
            given["controlnet"] = spec_saved | spec_given  # refused below when it differs
        merged, _ = merge_for_resume(saved["train"], given, CONTROLNET_RESUME, run=args.out)
        cfg = config_from_saved(DiffusionTrainConfig, merged, out=args.out, resume=True, progress=True)
    else:
        o = option_values(args)
        latents = o["latents"] or args.out / "latents.safetensors"
        # Cheap checks first: the base model is loaded only for a start that can go ahead.
        refuse_non_empty(
            args.out, args.overwrite, keep=[latents], advice="; to continue its run, add --resume"
        )
        if not latents.is_file() and args.data is None:
            raise UserError(_NO_CACHE.format(latents=latents))
        data = args.data.resolve() if args.data is not None else None
        try:
            spec = ControlNetTrainSpec(
                hint=o["hint"],
                low_threshold=o["low_threshold"],
                high_threshold=o["high_threshold"],
                data=data,
            )
            init = load_init_source(o["base"])  # fails early on a base it cannot train for
        except (ValueError, FileNotFoundError) as e:
            raise UserError(str(e)) from None
        cfg = DiffusionTrainConfig(
            latents=latents,
            out=args.out,
            architecture=init.architecture,
            prediction=init.prediction,
            **loop_fields(o),
            vae_run=_vae_of(o["base"]),
            init_from=o["base"],
            resume=args.resume,
            controlnet=spec,
        )
        if init.architecture != "unet":
            raise UserError(
                f"--base {o['base']}: a {init.architecture} model; ControlNets here are for U-Nets"
            )
    ckpt = args.out / "checkpoints" / "last.safetensors"
    try:
        with tidy_run_folder(args.out, ckpt):
            if not cfg.latents.is_file():
                if args.data is None or cfg.vae_run is None:
                    raise UserError(_NO_CACHE.format(latents=cfg.latents))
                from latentworks.pipelines.latents import cache_latents

                cache_latents(cfg.vae_run, args.data.resolve(), cfg.latents, split="train", device=cfg.device)
            r = train_diffusion(cfg)
    except FloatingPointError as e:
        raise UserError(str(e)) from None
    except KeyboardInterrupt:
        if ckpt.is_file():
            print("interrupted; the run keeps its last checkpoint", file=sys.stderr)
            print_continue_hints(COMMAND, args.out, _next_steps(args.out, cfg), file=sys.stderr)
        raise
    print(f"step {r.step}; ControlNet in {args.out / 'controlnet.safetensors'}")
    if r.step < cfg.steps:
        print(f"stopped early (--max-seconds) at step {r.step} of {cfg.steps}")
        print_continue_hints(COMMAND, args.out, _next_steps(args.out, cfg))
    return 0


def _next_steps(out: Path, cfg: Any) -> list[str]:
    import shlex

    q = shlex.quote
    return [
        "to use it as it is:                   "
        f"latentworks generate --model {q(str(cfg.init_from))} --controlnet {q(str(out / 'controlnet.safetensors'))} "
        "--control-image EDGES.png PROMPT"
    ]
