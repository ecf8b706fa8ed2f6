"""``latentworks upscale``: enlarge an image with an upscale model (ESRGAN, Real-ESRGAN, SwinIR, ... via spandrel)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from latentworks.cli import UserError


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "upscale",
        help="enlarge an image with an upscale model (ESRGAN, Real-ESRGAN, SwinIR, ...)",
        description="Enlarge an image with an upscale model file. The architecture and scale are detected from "
        "the file (by spandrel: pip install 'latentworks[upscale]'); the image is processed in tiles with "
        "overlapping context, so large images fit in memory without seams.",
        epilog="examples:\n"
        "  latentworks upscale photo.png --model models/upscale_models/RealESRGAN_x4plus.safetensors\n"
        "  latentworks upscale photo.png --model 4x-UltraSharp.safetensors --tile 256 -o big.png",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("image", type=Path, help="the image to enlarge")
    p.add_argument(
        "--model", type=Path, required=True, metavar="FILE", help="upscale model file (.safetensors)"
    )
    p.add_argument(
        "--tile",
        type=int,
        default=512,
        metavar="N",
        help="process the image in N x N pixel tiles (0: the whole image at once)",
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
    p.add_argument("--device", default="cpu", help="torch device")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def run(args: argparse.Namespace) -> int:
    from PIL import Image, UnidentifiedImageError

    if not args.image.is_file():
        raise UserError(f"no such image file: {args.image}")
    if not args.model.is_file():
        raise UserError(f"--model: no such file: {args.model}")
    if args.tile != 0 and args.tile < 8:
        raise UserError(f"--tile must be 0 (no tiling) or at least 8 pixels, got {args.tile}")
    if args.overlap < 0:
        raise UserError(f"--overlap must be >= 0 pixels, got {args.overlap}")
    if args.output is not None and args.output.suffix.lower() != ".png":
        raise UserError(f"--output must end in .png, got {args.output}")
    try:
        with Image.open(args.image) as opened:
            image = opened.convert("RGB")
    except (UnidentifiedImageError, OSError) as e:
        raise UserError(f"cannot read {args.image} as an image ({e})") from None

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
