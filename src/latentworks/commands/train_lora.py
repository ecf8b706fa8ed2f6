"""``latentworks train-lora``: train a LoRA for a model on a folder of captioned images.

The base model stays frozen; low-rank adapters on its attention/feed-forward layers (and, with
``--conv-rank``, its 3x3 convs) are trained by the same loop and objective as ``latentworks train``
(``training.lora``). The result, ``OUT/lora.safetensors``, is in the kohya/ComfyUI layout: ``generate --lora``,
``Pipeline.load_lora`` and ComfyUI's LoraLoader read it. With ``--resume`` the run continues with the settings
saved in ``OUT/config.json``, as for ``train``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

from latentworks.commands.outputs import print_continue_hints, refuse_non_empty, tidy_run_folder
from latentworks.commands.resume_options import add_option, add_run_options, given_options, option_values

# command-line dest -> LoraTrainConfig field, where they differ
_FIELDS = {"model": "base", "text_encoder": "text_encoders"}


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "train-lora",
        help="train a LoRA for a model on a folder of captioned images",
        description="Train a LoRA (low-rank adapters on a frozen model) on images with captions: a folder of "
        "images with same-name .txt captions, or a .npz from 'latentworks data emoji'. Writes OUT/lora.safetensors "
        "in the kohya/ComfyUI layout (use it with 'latentworks generate --lora FILE[:STRENGTH]' or ComfyUI's "
        "LoraLoader). With --resume, the run continues with the settings saved in OUT/config.json; only --steps, "
        "--max-seconds, --checkpoint-every, --sample-every, --device and --lr may change (see docs/training.md).",
    )
    p.add_argument("--out", type=Path, required=True, help="run folder (the LoRA is OUT/lora.safetensors)")
    add_option(
        p,
        "--data",
        type=Path,
        default=None,
        show_default=False,
        help="image folder with same-name .txt captions, or a .npz dataset (no default: required for a new run)",
    )
    add_option(
        p,
        "--model",
        "--base",
        default="default",
        help="the base model: a model folder, 'default', a checkpoint file (SD 1.x/2.x/XL, SD3, FLUX; Z-Image and "
        "Qwen-Image diffusion-model files with --text-encoder and --vae) or a diffusers folder",
    )
    add_option(
        p,
        "--vae",
        type=Path,
        default=None,
        show_default=False,
        help="VAE file for checkpoints without one (default: the checkpoint's)",
    )
    add_option(
        p,
        "--text-encoder",
        type=Path,
        action="append",
        default=None,
        show_default=False,
        help="CLIP/T5/Qwen file for checkpoints without them; repeat for several (default: the checkpoint's)",
    )
    add_option(
        p,
        "--tokenizer",
        type=Path,
        default=None,
        show_default=False,
        help="T5's tokenizer.json (SD3, FLUX), which cannot be downloaded here (default: the model "
        "folder's own tokenizer, if it has one)",
    )
    add_option(
        p,
        "--resolution",
        type=int,
        default=None,
        show_default=False,
        help="square image size to train at (default: the model's resolution)",
    )
    add_option(p, "--rank", type=int, default=8, help="LoRA rank (kohya --network_dim)")
    add_option(p, "--alpha", type=float, default=8.0, help="LoRA alpha: the update is scaled by alpha/rank")
    add_option(
        p,
        "--conv-rank",
        type=int,
        default=0,
        help="rank of LoRA on the U-Net's 3x3 convs (kohya LoCon conv_dim); 0: attention layers only",
    )
    add_option(p, "--conv-alpha", type=float, default=1.0, help="alpha of the conv LoRA")
    add_option(p, "--steps", type=int, default=1000)
    add_option(p, "--batch-size", type=int, default=8)
    add_option(p, "--lr", type=float, default=1e-4)
    add_option(p, "--caption-dropout", type=float, default=0.0, help="fraction of captions replaced by ''")
    add_option(p, "--mixed-precision", choices=("no", "bf16", "fp16"), default="no")
    add_option(
        p, "--save-precision", choices=("fp16", "bf16", "fp32"), default="fp16", help="dtype of the LoRA file"
    )
    add_option(
        p,
        "--guidance",
        type=float,
        default=3.5,
        help="the distilled-guidance input of models that take one (FLUX.1-dev) while training; others ignore it",
    )
    add_option(p, "--sample-steps", type=int, default=20, help="sampling steps of the preview grids")
    add_run_options(p, sample_every=500)
    return p


def run(args: argparse.Namespace) -> int:
    from latentworks.cli import UserError
    from latentworks.training.lora import LoraTrainConfig, train_lora
    from latentworks.training.resume import LORA_RESUME, config_from_saved, merge_for_resume, read_run_config

    saved = read_run_config(args.out, LORA_RESUME) if args.resume else None
    cfg: Any
    if saved is not None:
        given = {_FIELDS.get(d, d): v for d, v in given_options(args).items()}
        if "text_encoders" in given:
            given["text_encoders"] = [str(t) for t in given["text_encoders"]]
        merged, _ = merge_for_resume(saved["train"], given, LORA_RESUME, run=args.out)
        cfg = config_from_saved(LoraTrainConfig, merged, out=args.out, resume=True, progress=True)
        cfg = _with_paths(cfg)
    else:
        o = option_values(args)
        if o["data"] is None:
            raise UserError("--data is required: a folder of images with same-name .txt captions, or a .npz")
        cfg = LoraTrainConfig(
            data=o["data"],
            out=args.out,
            base=str(o["model"]),
            vae=o["vae"],
            text_encoders=tuple(o["text_encoder"] or ()),
            tokenizer=o["tokenizer"],
            resolution=o["resolution"],
            rank=o["rank"],
            alpha=o["alpha"],
            conv_rank=o["conv_rank"],
            conv_alpha=o["conv_alpha"],
            steps=o["steps"],
            batch_size=o["batch_size"],
            lr=o["lr"],
            caption_dropout=o["caption_dropout"],
            guidance=o["guidance"],
            mixed_precision=o["mixed_precision"],
            save_precision=o["save_precision"],
            seed=o["seed"],
            checkpoint_every=o["checkpoint_every"],
            sample_every=o["sample_every"],
            sample_steps=o["sample_steps"],
            max_seconds=o["max_seconds"],
            device=o["device"],
        )
        refuse_non_empty(args.out, args.overwrite, advice="; to continue its run, add --resume")
        if not cfg.data.exists():
            raise UserError(
                f"--data {cfg.data} does not exist; give an image folder with .txt captions or a .npz"
            )
    ckpt = args.out / "checkpoints" / "last.safetensors"
    try:
        with tidy_run_folder(args.out, ckpt):
            r = train_lora(cfg)
    except FloatingPointError as e:
        raise UserError(str(e)) from None
    except KeyboardInterrupt:
        if ckpt.is_file():
            print("interrupted; the run keeps its last checkpoint", file=sys.stderr)
            print_continue_hints(
                "train-lora", args.out, _next_steps(cfg, args.out / "lora.safetensors"), file=sys.stderr
            )
        raise
    print(f"step {r.step}; LoRA in {r.lora_file}")
    if r.step < cfg.steps:
        print(f"stopped early (--max-seconds) at step {r.step} of {cfg.steps}")
        print_continue_hints("train-lora", args.out, _next_steps(cfg, r.lora_file))
    else:
        for line in _next_steps(cfg, r.lora_file):
            print(line)
    return 0


def _with_paths(cfg: Any) -> Any:
    """A config rebuilt from JSON has its text-encoder files as strings: make them paths."""
    import dataclasses

    return dataclasses.replace(cfg, text_encoders=tuple(Path(t) for t in cfg.text_encoders))


def _next_steps(cfg: Any, lora_file: Path) -> list[str]:
    q = shlex.quote
    parts = [f"--vae {q(str(cfg.vae))}"] if cfg.vae else []
    parts += [f"--text-encoder {q(str(t))}" for t in cfg.text_encoders]
    parts += [f"--tokenizer {q(str(cfg.tokenizer))}"] if cfg.tokenizer else []
    components = "".join(" " + p for p in parts)
    return [
        "to use it as it is:                   "
        f"latentworks generate 'PROMPT' --model {q(cfg.base)}{components} --lora {q(str(lora_file))}:1.0",
        "in ComfyUI:                           copy it to ComfyUI/models/loras/ and load it with LoraLoader",
    ]
