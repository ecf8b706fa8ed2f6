"""``latentworks upscale``: enlarge an image with an upscale model file (ESRGAN, Real-ESRGAN, SwinIR, ... via
spandrel) or with Stable Diffusion's x4 upscaler folder (a text-guided diffusion model,
:mod:`latentworks.pipelines.x4_upscale`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from latentworks.cli import UserError


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "upscale",
        help="enlarge an image with an upscale model (ESRGAN, Real-ESRGAN, SwinIR, ...) or the SD x4 upscaler",
        description="Enlarge an image with an upscale model file. The architecture and scale are detected from "
        "the file (by spandrel: pip install 'latentworks[upscale]'); the image is processed in tiles with "
        "overlapping context, so large images fit in memory without seams. Given a Stable Diffusion x4 "
        "upscaler folder (diffusers' StableDiffusionUpscalePipeline layout) instead, the image is redrawn 4x "
        "larger by diffusion, guided by --prompt (the whole image at once; --tile does not apply).",
        epilog="examples:\n"
        "  latentworks upscale photo.png --model models/upscale_models/RealESRGAN_x4plus.safetensors\n"
        "  latentworks upscale photo.png --model 4x-UltraSharp.safetensors --tile 256 -o big.png\n"
        "  latentworks upscale cat-128.png --model stable-diffusion-x4-upscaler --prompt 'a white cat' --seed 1",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("image", type=Path, help="the image to enlarge")
    p.add_argument(
        "--model",
        type=Path,
        required=True,
        metavar="FILE|FOLDER",
        help="upscale model file (.safetensors), or a Stable Diffusion x4 upscaler folder",
    )
    p.add_argument(
        "--tile",
        type=int,
        default=None,
        metavar="N",
        help="process the image in N x N pixel tiles (0: the whole image at once; default: 512)",
    )
    p.add_argument("--overlap", type=int, default=32, metavar="PX", help="context pixels around each tile")
    p.add_argument(
        "-o",
        "--output",
        type=Path,
        default=None,
        metavar="PATH",
        help="output PNG (default: IMAGE's name with -xSCALE, e.g. photo-x4.png, next to it)",
    )
    p.add_argument(
        "--allow-pickle",
        action="store_true",
        help="load a pickled .pth/.pt/.ckpt model (with torch.load(weights_only=True)); only for files you trust",
    )
    x4 = p.add_argument_group("Stable Diffusion x4 upscaler (a --model folder; docs/models.md)")
    x4.add_argument("--prompt", default=None, metavar="TEXT", help="what the image shows (default: empty)")
    x4.add_argument("--negative", default=None, metavar="TEXT", help="negative prompt (default: empty)")
    x4.add_argument("--steps", type=int, default=None, metavar="N", help="sampling steps (default: 75)")
    x4.add_argument("--cfg", type=float, default=None, metavar="X", help="guidance scale (default: 9.0)")
    x4.add_argument(
        "--noise-level",
        type=int,
        default=None,
        metavar="T",
        help="noise added to the input image first, a step 0..max_noise_level (350) of the folder's "
        "low_res_scheduler; more noise lets the model invent more detail (default: 20)",
    )
    x4.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    p.add_argument("--device", default="cpu", help="torch device")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _read_input(args: argparse.Namespace) -> Any:
    """The input image as RGB (a PIL image), after checking that --output names a PNG."""
    from PIL import Image, UnidentifiedImageError

    if args.output is not None and args.output.suffix.lower() != ".png":
        raise UserError(f"--output must end in .png, got {args.output}")
    try:
        with Image.open(args.image) as opened:
            return opened.convert("RGB")
    except (UnidentifiedImageError, OSError) as e:
        raise UserError(f"cannot read {args.image} as an image ({e})") from None


def run(args: argparse.Namespace) -> int:
    from PIL import Image

    if not args.image.is_file():
        raise UserError(f"no such image file: {args.image}")
    if args.model.is_dir():
        return run_x4(args)
    diffusion_only = [
        option
        for option, value in (("--prompt", args.prompt), ("--negative", args.negative), ("--steps", args.steps),
                              ("--cfg", args.cfg), ("--noise-level", args.noise_level), ("--seed", args.seed))
        if value is not None
    ]  # fmt: skip
    if not args.model.exists():
        raise UserError(f"--model: no such file or folder: {args.model}")
    if diffusion_only:
        raise UserError(
            f"{', '.join(diffusion_only)}: only for a diffusion upscaler (a Stable Diffusion x4 upscaler folder as "
            f"--model); {args.model} is an upscale model file"
        )
    if args.tile is None:
        args.tile = 512
    if args.tile != 0 and args.tile < 8:
        raise UserError(f"--tile must be 0 (no tiling) or at least 8 pixels, got {args.tile}")
    if args.overlap < 0:
        raise UserError(f"--overlap must be >= 0 pixels, got {args.overlap}")
    image = _read_input(args)

    import numpy as np
    import torch
    from tqdm import tqdm

    from latentworks.pipelines.upscale import load_upscale_model, tiles_for, upscale_images

    try:
        model = load_upscale_model(args.model, allow_pickle=args.allow_pickle, device=args.device)
    except (ImportError, ValueError) as e:
        raise UserError(f"--model {args.model}: {e}") from None
    out_path: Path = args.output or args.image.with_name(f"{args.image.stem}-x{model.scale}.png")
    if not out_path.parent.exists():
        raise UserError(f"--output: folder {out_path.parent} does not exist")
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
    tile = args.tile or None
    total = tiles_for(image.height, image.width, tile)
    with tqdm(total=total, desc="upscaling", unit="tile", disable=args.quiet, file=sys.stderr) as bar:
        y = upscale_images(model, x, tile=tile, overlap=args.overlap, callback=lambda d, t: bar.update(1))
    arr = (y[0].clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    Image.fromarray(arr).save(out_path)
    print(
        f"{out_path}  {image.width}x{image.height} -> {arr.shape[1]}x{arr.shape[0]} ({model.architecture} x{model.scale})"
    )
    return 0


def run_x4(args: argparse.Namespace) -> int:
    """``upscale`` with a Stable Diffusion x4 upscaler folder: the image redrawn 4x larger, guided by the prompt."""

    from latentworks.families.sd_upscaler import SCALE, is_x4_upscaler_folder

    if not is_x4_upscaler_folder(args.model):
        raise UserError(
            f"--model {args.model}: a folder, but not a Stable Diffusion x4 upscaler (model_index.json naming "
            "StableDiffusionUpscalePipeline); upscale takes that folder or an upscale model file (.safetensors)"
        )
    if args.tile is not None:
        raise UserError("--tile: the x4 upscaler runs on the whole image; leave --tile out")
    if args.steps is not None and not 1 <= args.steps <= 1000:
        raise UserError(f"--steps must be between 1 and 1000, got {args.steps}")
    image = _read_input(args)
    out_path: Path = args.output or args.image.with_name(f"{args.image.stem}-x{SCALE}.png")
    if not out_path.parent.exists():
        raise UserError(f"--output: folder {out_path.parent} does not exist")

    from tqdm import tqdm

    from latentworks.commands.quiet import quiet_libraries
    from latentworks.pipelines.metadata import save_png
    from latentworks.pipelines.x4_upscale import X4Upscaler

    with quiet_libraries(args.quiet):
        try:
            pipe = X4Upscaler.from_pretrained(args.model, device=args.device)
        except (FileNotFoundError, ValueError, KeyError) as e:
            raise UserError(str(e)) from None
        bar: Any = None

        def on_step(step: Any) -> None:
            nonlocal bar
            if bar is None:
                bar = tqdm(
                    total=step.total, desc="upscaling", unit="step", disable=args.quiet, file=sys.stderr
                )
            bar.update(1)

        try:
            result = pipe(
                image, args.prompt or "", args.negative or "", seed=args.seed, steps=args.steps, guidance=args.cfg,
                noise_level=args.noise_level, callback=on_step,
            )  # fmt: skip
        except ValueError as e:
            raise UserError(str(e)) from None
        finally:
            if bar is not None:
                bar.close()
    out = result.images[0]
    save_png(out, out_path, {**result.parameters, "input": args.image.name})
    print(
        f"{out_path}  {image.width}x{image.height} -> {out.width}x{out.height} (x4 upscaler, seed={result.seeds[0]})"
    )
    return 0
