"""``latentworks train-quick DATA --out DIR``: a small model of your own within a time budget.

Runs the three ordinary commands in turn with the settings of ``training.quick.QUICK``, each stage with
its share of ``--minutes`` as ``--max-seconds`` (or, with ``--vae-steps`` / ``--steps``, exactly that many
steps and no time limit, for a result that does not depend on the machine's speed):

1. ``train-vae --data DATA --out DIR/runs/vae``      the autoencoder
2. ``train --vae DIR/runs/vae --out DIR/runs/ldm``   the diffusion model on its latents
3. ``convert --from-run DIR/runs/ldm --out DIR``     the model folder ``generate --model DIR`` loads

The stage commands do the work (their loops, checks, progress bars, checkpoints and clean-up); this module
only chooses their options, times them and says what is left when something stops them.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

from latentworks.cli import UserError
from latentworks.commands.outputs import refuse_non_empty, tidy_run_folder


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from latentworks.training.quick import QUICK

    p = subparsers.add_parser(
        "train-quick",
        help="train a small model of your own (autoencoder, diffusion model, model folder) in minutes",
        description="Train both stages on a small dataset and write a model folder that 'latentworks generate "
        "--model OUT' loads, within --minutes of wall time on a CPU: train-vae, then train, then convert "
        "--from-run, with small presets (training/quick.py). The training runs are kept in OUT/runs. "
        "Steps are sized for a 2-core CPU; each stage also stops on its share of the time.",
        epilog="example:\n"
        "  latentworks train-quick my-images/ --out models/checkpoints/mine      # my-images/cat.png + cat.txt\n"
        '  latentworks generate "a red circle" --model models/checkpoints/mine --seed 1\n'
        "Time per stage and what to expect: docs/training.md (train-quick).",
    )
    p.add_argument(
        "data",
        type=Path,
        metavar="DATA",
        help="a folder of images with captions (cat.png + cat.txt) or a .npz from 'latentworks data'",
    )
    p.add_argument(
        "--out", type=Path, required=True, help="the model folder to write (the runs go to OUT/runs)"
    )
    p.add_argument(
        "--minutes",
        type=float,
        default=15.0,
        help="wall-time budget for everything; the autoencoder gets "
        f"{QUICK.vae_share * 100:.0f}%% of the training time, the diffusion model the rest",
    )
    p.add_argument(
        "--vae-steps",
        type=int,
        default=None,
        metavar="N",
        help="run the autoencoder for exactly N steps, with no time limit, instead of the steps its share of "
        "--minutes buys (the same result on any machine; default: sized from --minutes)",
    )
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        metavar="N",
        help="run the diffusion model for exactly N steps, with no time limit (default: sized from what the "
        "autoencoder left of --minutes)",
    )
    p.add_argument(
        "--resolution",
        type=int,
        default=QUICK.resolution,
        help="image size the model works at (images are centre-cropped and resized to it)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of both stages (data order, noise, init)")
    p.add_argument("--device", default="cpu", help="torch device to train on")
    p.add_argument("--name", default=None, help="model name (default: the --out folder's name)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="write into an --out folder that is not empty (its runs start over; files of the same name are "
        "replaced, others kept). Without it a non-empty --out is refused",
    )
    return p


def _stage(command: str, argv: list[str]) -> int:
    """Run ``latentworks COMMAND ARGV`` through that command's own parser and ``run``."""
    from latentworks.cli import build_parser

    args = build_parser(only=command).parse_args([command, *argv])
    return int(args._run(args) or 0)


def _cmd(command: str, argv: list[str]) -> str:
    return " ".join(["latentworks", command, *(shlex.quote(a) for a in argv)])


def run(args: argparse.Namespace) -> int:
    from latentworks.training.quick import QUICK

    recipe = QUICK
    if args.minutes <= 0:
        raise UserError(f"--minutes must be > 0, got {args.minutes}")
    for flag, value in (("--vae-steps", args.vae_steps), ("--steps", args.steps)):
        if value is not None and value < 1:
            raise UserError(f"{flag} must be >= 1, got {value}")
    if not args.data.exists():
        raise UserError(
            f"no such dataset {args.data}: give a folder of images with captions (cat.png + cat.txt)"
        )
    out: Path = args.out
    refuse_non_empty(out, args.overwrite)

    budget = 60.0 * args.minutes
    deadline = time.monotonic() + budget
    plan = recipe.plan(budget)
    vae_steps, vae_limit = _budget(args.vae_steps, plan.vae_steps, plan.vae_seconds)
    vae_run, ldm_run = out / "runs" / "vae", out / "runs" / "ldm"
    common = ["--seed", str(args.seed), "--device", args.device]
    overwrite = ["--overwrite"] if args.overwrite else []
    vae_argv = [
        "--data", str(args.data), "--out", str(vae_run), "--preset", recipe.vae_preset,
        "--resolution", str(args.resolution), "--steps", str(vae_steps),
        "--batch-size", str(recipe.vae_batch_size), "--lr", str(recipe.vae_lr),
        "--perceptual-weight", "0", "--disc-start", "-1",
        *vae_limit, "--checkpoint-every", str(max(100, vae_steps // 4)),
        "--sample-every", "1000000", *common, *overwrite,
    ]  # fmt: skip
    ldm_base = [
        "--out", str(ldm_run), "--vae", str(vae_run), "--data", str(args.data), "--architecture", "unet",
        "--preset", recipe.unet_preset, "--prediction", "flow", "--batch-size", str(recipe.batch_size),
        "--lr", str(recipe.lr), "--ema-decay", str(recipe.ema_decay), "--caption-augment", "auto",
        "--sample-every", "1000000", *common, *overwrite,
    ]  # fmt: skip
    defaults = {
        "steps": recipe.sample_steps,
        "guidance": recipe.guidance,
        "sampler": "euler",
        "scheduler": "normal",
    }
    convert_argv = [
        "--from-run", str(ldm_run), "--out", str(out), "--name", args.name or out.resolve().name,
        "--data", str(args.data), "--defaults", json.dumps(defaults), "--overwrite",
    ]  # fmt: skip
    t0 = time.monotonic()
    stage = "autoencoder"
    print(
        f"train-quick: {budget / 60:.1f} min budget; stage 1 of 3: autoencoder ({recipe.vae_preset}, "
        f"{args.resolution} px, {vae_steps} steps{_at_most(vae_limit, plan.vae_seconds)}) -> {vae_run}",
        flush=True,
    )
    ldm_argv = ldm_base
    try:
        with tidy_run_folder(out, vae_run / "checkpoints" / "last.safetensors"):
            _stage("train-vae", vae_argv)
        _say_if_cut_short("autoencoder", vae_run, vae_steps)
        t_vae = time.monotonic() - t0
        stage = "diffusion"
        # What the autoencoder left of the budget, less the tail (text encoder, latents, convert).
        seconds = max(0.1 * budget, deadline - time.monotonic() - 0.6 * recipe.overhead_seconds)
        steps, limit = _budget(args.steps, max(1, round(seconds * recipe.steps_per_second)), seconds)
        ldm_argv = [*ldm_base, "--steps", str(steps), *limit, "--checkpoint-every", str(max(100, steps // 4))]
        if args.overwrite:  # a latent cache from an earlier run holds another autoencoder's latents
            (ldm_run / "latents.safetensors").unlink(missing_ok=True)
        print(
            f"train-quick: stage 2 of 3: diffusion model ({recipe.unet_preset}, {steps} steps"
            f"{_at_most(limit, seconds)}) -> {ldm_run}",
            flush=True,
        )
        t1 = time.monotonic()
        _stage("train", ldm_argv)
        _say_if_cut_short("diffusion model", ldm_run, steps)
        t_ldm = time.monotonic() - t1
        stage = "convert"
        print(f"train-quick: stage 3 of 3: model folder -> {out}", flush=True)
        t2 = time.monotonic()
        _stage("convert", convert_argv)
        t_convert = time.monotonic() - t2
    except (KeyboardInterrupt, UserError, ValueError, OSError):  # the stage printed what went wrong
        _what_is_left(stage, out, vae_run, ldm_run, vae_argv, ldm_argv, convert_argv)
        raise
    total = time.monotonic() - t0
    print(
        f"train-quick: done in {total / 60:.1f} min (autoencoder {t_vae:.0f} s, diffusion model {t_ldm:.0f} s, "
        f"model folder {t_convert:.0f} s). The training runs are in {out / 'runs'}."
    )
    print("try it:")
    prompt = _example_prompt(args.data)
    print(f"  latentworks generate {shlex.quote(prompt)} --model {shlex.quote(str(out))} --seed 1")
    return 0


def _budget(fixed: int | None, planned: int, seconds: float) -> tuple[int, list[str]]:
    """A stage's step count and time-limit options: ``fixed`` steps and no limit when given, else the
    ``planned`` steps within ``seconds``."""
    if fixed is not None:
        return fixed, []
    return planned, ["--max-seconds", f"{seconds:.0f}"]


def _at_most(limit: list[str], seconds: float) -> str:
    return f", at most {seconds / 60:.1f} min" if limit else ""


def _say_if_cut_short(what: str, run: Path, steps: int) -> None:
    """After a stage that its time share stopped early (it printed how to resume it): say that the recipe
    goes on with what the stage has."""
    from safetensors import safe_open

    try:  # the step the stage's weights were saved at
        with safe_open(str(run / "model.safetensors"), "pt") as f:
            done = int((f.metadata() or {})["step"])
    except (OSError, ValueError, KeyError):
        return
    if done < steps:
        print(
            f"train-quick: the {what} used its share of --minutes at step {done} of {steps}; going on with it "
            "as it is (a slower machine than the 2-core CPU the steps were sized on)",
            flush=True,
        )


def _example_prompt(data: Path) -> str:
    """The first caption of an image folder (a prompt the model has seen), else a neutral example."""
    if data.is_dir():
        for txt in sorted(data.glob("*.txt")):
            text = txt.read_text(encoding="utf-8", errors="replace").strip()
            if text:
                return text.splitlines()[0]
    return "a red circle"


def _what_is_left(
    stage: str,
    out: Path,
    vae_run: Path,
    ldm_run: Path,
    vae_argv: list[str],
    ldm_argv: list[str],
    convert_argv: list[str],
) -> None:
    """After an interrupt or error in ``stage``: what was kept and the commands that finish the recipe."""
    err = sys.stderr
    vae_done = (vae_run / "model.safetensors").is_file()
    if not out.exists():
        return  # tidy_run_folder removed everything: nothing was kept
    todo: list[str] = []
    if stage == "autoencoder":
        if (vae_run / "checkpoints" / "last.safetensors").is_file():
            todo.append(f"latentworks train-vae --out {shlex.quote(str(vae_run))} --resume")
        else:
            todo.append(_cmd("train-vae", vae_argv))
    if stage in ("autoencoder", "diffusion"):
        if stage == "diffusion" and (ldm_run / "checkpoints" / "last.safetensors").is_file():
            todo.append(f"latentworks train --out {shlex.quote(str(ldm_run))} --resume")
        else:
            todo.append(_cmd("train", ldm_argv if "--steps" in ldm_argv else [*ldm_argv, "--steps", "3000"]))
    todo.append(_cmd("convert", convert_argv))
    kept = [str(p) for p in (vae_run, ldm_run) if p.exists()]
    print(
        f"train-quick stopped in the {stage} stage"
        + (f"; kept {', '.join(kept)}" if kept else "")
        + (" (the autoencoder is trained)" if vae_done and stage != "autoencoder" else ""),
        file=err,
    )
    print("to finish by hand, run in turn:", file=err)
    for line in todo:
        print(f"  {line}", file=err)
