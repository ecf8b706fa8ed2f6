"""``latentworks unclip``: text -> prior -> image embedding -> image with our own unCLIP (a model folder from
``latentworks train-unclip``), and interpolation between two embeddings (slerp), each end a prompt or an image."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "unclip",
        help="text -> prior -> image embedding -> image with our own unCLIP; interpolation",
        description="Generate with our own unCLIP model folder (latentworks train-unclip): the prior turns the "
        "prompt into an image embedding, the decoder draws it (with the prompt's text too). With --to, make "
        "--frames images along the great circle (slerp) from the first embedding to the second; each end is a "
        "prompt (through the prior) or an image file (through the image encoder).",
        epilog="examples:\n"
        "  latentworks unclip 'red apple' --model runs/unclip/model --count 4\n"
        "  latentworks unclip 'red apple' --to 'green apple' --frames 5 --model runs/unclip/model\n"
        "  latentworks unclip --image cat.png --to 'dog face' --frames 5 --model runs/unclip/model",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("prompt", nargs="?", default=None, help="the prompt (or give --image)")
    p.add_argument("--model", type=Path, required=True, metavar="PATH", help="our own unCLIP model folder")
    p.add_argument(
        "--image",
        type=Path,
        default=None,
        help="start from this image's embedding instead of a prompt (default: none)",
    )
    p.add_argument(
        "--to", default=None, metavar="PROMPT|IMAGE", help="interpolate to this prompt or image file"
    )
    p.add_argument("--frames", type=int, default=5, help="images along the interpolation (with --to)")
    p.add_argument(
        "--text",
        default=None,
        help="the text the decoder reads (default: the prompt, or none when interpolating or from --image)",
    )
    p.add_argument(
        "--count", type=int, default=4, metavar="N", help="images (seeds SEED..SEED+N-1), without --to"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the first image (and of the prior)")
    p.add_argument("--steps", type=int, default=None, help="decoder steps (default: the model's)")
    p.add_argument("--guidance", type=float, default=None, help="decoder CFG scale (default: the model's)")
    p.add_argument("--prior-steps", type=int, default=None, help="prior steps (default: the model's)")
    p.add_argument(
        "--prior-guidance", type=float, default=None, help="prior CFG scale (default: the model's)"
    )
    p.add_argument(
        "--noise-augmentation",
        type=float,
        default=None,
        help="embedding noise in [0, 1] (default: the model's)",
    )
    p.add_argument("-o", "--output-dir", type=Path, default=Path("outputs"), help="where the PNGs go")
    p.add_argument("--device", default="cpu", help="torch device")
    return p


def run(args: argparse.Namespace) -> int:
    import torch

    from latentworks.cli import UserError
    from latentworks.pipelines import Pipeline
    from latentworks.pipelines.own_unclip import (
        decode_embeddings,
        has_own_unclip,
        interpolate,
        load_own_unclip,
    )

    if (args.prompt is None) == (args.image is None):
        raise UserError("give a prompt or --image (one of the two)")
    if args.count < 1 or args.frames < 2:
        raise UserError(f"--count must be >= 1 and --frames >= 2, got {args.count} and {args.frames}")
    if not has_own_unclip(args.model):
        raise UserError(
            f"--model {args.model}: not one of our unCLIP model folders (model.json has no 'unclip' entry); "
            "make one with 'latentworks train-unclip' (for SD 2.1 unCLIP checkpoints use 'latentworks variations')"
        )
    parts = load_own_unclip(args.model, args.device)
    pipe = Pipeline.from_pretrained(args.model, device=args.device)
    te = pipe.text_encoder
    prior_kw = {"steps": args.prior_steps, "guidance": args.prior_guidance}

    def embed(end: str, seed: int, n: int = 1) -> torch.Tensor:
        path = Path(end)
        if path.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif"):
            if not path.is_file():
                raise UserError(f"no such image file: {path}")
            return parts.embed_images(_read_image(path, parts.encoder.config.image_size)).expand(n, -1)
        return parts.embed_text(te, [end] * n, seed, **prior_kw)

    kw = {"steps": args.steps, "guidance": args.guidance}
    start = str(args.image) if args.image is not None else args.prompt
    if args.to is None:
        embeds = embed(start, args.seed, args.count)
        text = args.text if args.text is not None else (args.prompt or "")
        images = decode_embeddings(
            pipe, parts, embeds, text, seed=args.seed, noise_augmentation=args.noise_augmentation, **kw
        )
        stem = "unclip"
    else:
        a, b = embed(start, args.seed), embed(args.to, args.seed)
        fractions = [i / (args.frames - 1) for i in range(args.frames)]
        embeds = interpolate(a, b, fractions)
        images = decode_embeddings(
            pipe, parts, embeds, args.text or "", seed=args.seed, same_seed=True,
            noise_augmentation=args.noise_augmentation, **kw,
        )  # fmt: skip
        stem = "interpolation"
    args.output_dir.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(images):
        path = args.output_dir / f"{stem}-{args.seed}-{i:02d}.png"
        im.save(path)
        print(path)
    return 0


def _read_image(path: Path, size: int):  # noqa: ANN202 - (1, 3, size, size) tensor
    from PIL import Image, UnidentifiedImageError

    from latentworks.cli import UserError
    from latentworks.pipelines.own_unclip import image_to_tensor

    try:
        with Image.open(path) as im:
            return image_to_tensor(im, size)
    except (UnidentifiedImageError, OSError) as e:
        raise UserError(f"{path}: not an image PIL can read ({e})") from e
