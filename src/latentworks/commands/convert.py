"""``latentworks convert``: checkpoints between formats, and training runs into model folders."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from latentworks.cli import UserError
from latentworks.commands.checkpoint_options import add_component_arguments
from latentworks.commands.outputs import refuse_non_empty


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "convert",
        help="convert checkpoints between formats",
        description="Convert a checkpoint (single .safetensors file in the original LDM/SAI/BFL layout, or a "
        "diffusers folder; family detected from its tensors) into a diffusers folder or one single-file "
        "checkpoint; or turn the run folder of 'latentworks train' into a latentworks model folder; or copy "
        "a latentworks model folder with a fine-tuned decoder (--decoder-from).",
        epilog="examples:\n"
        "  latentworks convert v1-5-pruned-emaonly.safetensors --to diffusers --out models/sd15\n"
        "  latentworks convert models/sd15 --to single-file --out sd15.safetensors --half\n"
        "  latentworks convert flux1-dev.safetensors --to single-file --weight-dtype fp8_e4m3fn_scaled \\\n"
        "      --out flux1-dev-fp8-scaled.safetensors\n"
        "  latentworks convert flux1-schnell.safetensors --vae ae.safetensors --text-encoder clip_l.safetensors \\\n"
        "      --text-encoder t5xxl_fp16.safetensors --tokenizer t5/ --to diffusers --out models/flux-schnell\n"
        "  latentworks convert --from-run runs/unet --out models/checkpoints/mine --data data/emoji-32.npz\n"
        "  latentworks convert default --decoder-from runs/vae-ft --out models/checkpoints/default-ft",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("input", nargs="?", type=Path, default=None, help="checkpoint file or diffusers folder")
    p.add_argument(
        "--to",
        choices=["diffusers", "single-file"],
        default=None,
        help="output format for INPUT (diffusers folder, or one .safetensors in the original layout; no "
        "default: required with INPUT)",
    )
    add_component_arguments(p)
    p.add_argument(
        "--from-run",
        type=Path,
        default=None,
        metavar="RUN",
        help="a 'latentworks train' run folder (default: none)",
    )
    p.add_argument(
        "--decoder-from",
        type=Path,
        default=None,
        metavar="RUN",
        help="INPUT is a latentworks model folder (or 'default'): copy it with the decoder of RUN, a "
        "'train-vae --finetune-decoder' run (refused if RUN's encoder differs from the model's)",
    )
    p.add_argument("--out", type=Path, required=True, metavar="PATH", help="file or folder to write")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="write into an existing --out (a file is replaced; in a folder, files of the same name are "
        "replaced and others kept). Without it a non-empty --out is refused. Not for --decoder-from",
    )
    p.add_argument("--name", default=None, help="--from-run: model name (default: the folder name)")
    p.add_argument(
        "--data",
        type=Path,
        default=None,
        help="--from-run: dataset file used to fit the latent preview colours (default: none: no fitted preview colours)",
    )
    p.add_argument("--half", action="store_true", help="store weights in float16 (half the size)")
    p.add_argument(
        "--weight-dtype",
        choices=["fp8_e4m3fn", "fp8_e4m3fn_scaled", "fp8_e5m2"],
        default=None,
        help="--to single-file: store the denoiser's weight matrices in fp8 as ComfyUI's fp8 files do "
        "(fp8_e4m3fn_scaled adds ComfyUI's per-tensor scale_weight keys and scaled_fp8 marker); norms, "
        "biases, VAE and text encoders keep their dtype (default: none: the file's precision, or --half)",
    )
    p.add_argument(
        "--defaults",
        default=None,
        metavar="JSON",
        help='--from-run: generation defaults, e.g. \'{"steps": 20, "guidance": 5, "sampler": "euler"}\'',
    )
    p.add_argument(
        "--shift",
        type=float,
        default=None,
        help="--from-run, flow models: the sampling shift written to model.json; above 1 the schedule spends "
        "more of its steps at high noise (sigma -> shift*sigma / (1 + (shift-1)*sigma), as SD3's) "
        "(default: the run's own, 1)",
    )
    p.add_argument(
        "--card",
        type=Path,
        default=None,
        metavar="JSON_FILE",
        help="--from-run: model-card fields (JSON file; default: none)",
    )
    return p


def _convert_checkpoint(args: argparse.Namespace) -> int:
    import torch

    from latentworks.families.load import read_checkpoint, write_diffusers, write_single_file

    if args.to is None:
        raise UserError("give --to diffusers or --to single-file")
    if args.weight_dtype is not None and args.to != "single-file":
        raise UserError(
            f"--weight-dtype {args.weight_dtype} writes fp8 single files only; use --to single-file "
            "(diffusers folders are written in the file's precision, or float16 with --half)"
        )
    if not args.input.exists():
        raise UserError(f"no such checkpoint file or folder: {args.input}")
    refuse_non_empty(args.out, args.overwrite)
    dtype = torch.float16 if args.half else None
    parts = read_checkpoint(
        args.input,
        vae=args.vae,
        text_encoders=args.text_encoder,
        tokenizer=args.tokenizer,
        prediction=args.prediction,
        dtype=dtype,
        allow_pickle=args.allow_pickle,
    )
    if args.to == "single-file":
        write_single_file(parts, args.out, weight_dtype=args.weight_dtype)
    else:
        write_diffusers(parts, args.out)
    print(
        f"wrote {args.out}  ({parts.family.name}, {parts.variant}, text encoders: {sorted(parts.text_encoders)})"
    )
    return 0


def _replace_decoder(args: argparse.Namespace) -> int:
    from latentworks.pipelines.latents import load_autoencoder
    from latentworks.pipelines.loading import replace_decoder

    if args.input is None:
        raise UserError(
            "--decoder-from needs INPUT: the model folder (or 'default') whose decoder to replace"
        )
    if args.to is not None or args.from_run is not None:
        raise UserError("--decoder-from writes a latentworks model folder; drop --to/--from-run")
    if args.overwrite:
        raise UserError(
            "--decoder-from writes a new model folder only; drop --overwrite and choose a new --out"
        )
    try:
        ae = load_autoencoder(args.decoder_from)
        path = replace_decoder(str(args.input), ae, args.out)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        raise UserError(str(e)) from None
    print(f"wrote {path} (the decoder of {args.decoder_from}, everything else from {args.input})")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.shift is not None and args.from_run is None:
        raise UserError("--shift sets the sampling shift of a model folder written by --from-run RUN")
    if args.decoder_from is not None:
        return _replace_decoder(args)
    if args.input is not None and args.from_run is not None:
        raise UserError("give either INPUT (a checkpoint) or --from-run RUN, not both")
    if args.input is not None:
        return _convert_checkpoint(args)
    if args.from_run is None:
        raise UserError("give a checkpoint to convert (INPUT --to ...) or --from-run RUN")
    from latentworks.pipelines.export import export_run

    if not args.from_run.is_dir():
        raise UserError(f"--from-run: no such folder {args.from_run}")
    refuse_non_empty(args.out, args.overwrite)
    try:
        defaults = json.loads(args.defaults) if args.defaults else None
        card = json.loads(args.card.read_text()) if args.card else None
    except (json.JSONDecodeError, OSError) as e:
        raise UserError(f"--defaults/--card: {e}") from None
    path = export_run(
        args.from_run,
        args.out,
        name=args.name or args.out.name,
        data=args.data,
        half=args.half,
        defaults=defaults,
        card=card,
        shift=args.shift,
    )
    print(f"wrote {path}")
    return 0
