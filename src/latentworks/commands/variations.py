"""``latentworks variations IMG``: image variations with an unCLIP model: SD 2.1 unCLIP (encode the image with the
model's CLIP vision encoder) or our own (``latentworks train-unclip``: its own small image encoder), then generate
from the noise-augmented embedding."""

from __future__ import annotations

import argparse
from pathlib import Path

from latentworks.cli import UserError


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "variations",
        help="image variations with an unCLIP model (SD 2.1 unCLIP or our own)",
        description="Generate variations of an image with an SD 2.1 unCLIP checkpoint (single file or diffusers "
        "folder) or our own unCLIP model folder (latentworks train-unclip): the image's embedding, noised to "
        "--noise-augmentation, conditions every sample.",
        epilog="examples:\n"
        "  latentworks variations photo.png --model sd21-unclip-h.safetensors --count 4\n"
        "  latentworks variations photo.png --model unclip/ --prompt 'as a watercolor' --noise-augmentation 0.2\n"
        "  latentworks variations apple.png --model runs/unclip/model --count 8",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("image", type=Path, help="the image to vary")
    p.add_argument(
        "--model",
        type=Path,
        required=True,
        metavar="PATH",
        help="unCLIP single file or diffusers folder, or our own unCLIP model folder",
    )
    p.add_argument("--prompt", default="", help="optional text that steers the variations")
    p.add_argument(
        "--count", type=int, default=4, metavar="N", help="how many variations (seeds SEED..SEED+N-1)"
    )
    p.add_argument(
        "--noise-augmentation",
        type=float,
        default=None,
        metavar="X",
        help="0 = close to the image, 1 = its gist (default: 0, or our own model's default)",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the first variation and of the embedding noise"
    )
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the family's)")
    p.add_argument("--guidance", type=float, default=None, help="CFG scale (default: the family's)")
    p.add_argument("--width", type=int, default=None, help="pixels (default: the model's native size)")
    p.add_argument("--height", type=int, default=None, help="pixels (default: the model's native size)")
    p.add_argument(
        "--tokenizer",
        type=Path,
        default=None,
        help="a folder with the CLIP tokenizer (default: the bundled one, or the folder's own)",
    )
    p.add_argument("-o", "--output-dir", type=Path, default=Path("outputs"), help="where the PNGs go")
    p.add_argument("--device", default="cpu", help="torch device")
    return p


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch
    from PIL import Image, UnidentifiedImageError

    from latentworks.families import get
    from latentworks.pipelines import Pipeline
    from latentworks.pipelines.unclip import image_class_input, load_unclip_image_parts

    if not args.image.is_file():
        raise UserError(f"no such image file: {args.image}")
    if args.count < 1:
        raise UserError(f"--count must be at least 1, got {args.count}")
    if args.noise_augmentation is not None and not 0.0 <= args.noise_augmentation <= 1.0:
        raise UserError(f"--noise-augmentation must be in [0, 1], got {args.noise_augmentation}")
    try:
        rgb = np.asarray(Image.open(args.image).convert("RGB"), dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError) as e:
        raise UserError(f"{args.image}: not an image PIL can read ({e})") from e
    from latentworks.pipelines.own_unclip import has_own_unclip

    if has_own_unclip(args.model):
        return _own_variations(args, Image.open(args.image))
    noise_augmentation = args.noise_augmentation or 0.0
    kw = {"tokenizer": args.tokenizer} if args.tokenizer is not None else {}
    pipe = Pipeline.from_pretrained(args.model, device=args.device, **kw)
    family = get(pipe.model.meta.get("family"))
    if not family.generation.class_input_dim:
        raise UserError(
            f"--model {args.model} is a {family.title} model; variations need an SD 2.1 unCLIP checkpoint "
            "(sd21-unclip-h / -l, single file or diffusers folder)"
        )
    vision, augmentor = load_unclip_image_parts(args.model)
    embeds = vision.encode(torch.from_numpy(rgb)[None]).image_embeds  # (1, D)
    class_input = image_class_input(embeds, augmentor, noise_augmentation=noise_augmentation, seed=args.seed)
    result = pipe(
        args.prompt,
        seed=args.seed,
        batch=args.count,
        steps=args.steps,
        guidance=args.guidance,
        width=args.width,
        height=args.height,
        class_input=class_input,
    )
    return _save(args, list(result.images))


def _save(args: argparse.Namespace, images: list) -> int:  # noqa: ANN001 - PIL images
    args.output_dir.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(images):
        path = args.output_dir / f"{args.image.stem}-variation-{args.seed + i}.png"
        im.save(path)
        print(path)
    return 0


def _own_variations(args: argparse.Namespace, image: object) -> int:
    """Our own unCLIP: the folder's image encoder -> embedding -> the folder's decoder, ``count`` seeds."""
    from latentworks.pipelines import Pipeline
    from latentworks.pipelines.own_unclip import decode_embeddings, image_to_tensor, load_own_unclip

    parts = load_own_unclip(args.model, args.device)
    embeds = parts.embed_images(image_to_tensor(image, parts.encoder.config.image_size))  # (1, D)
    pipe = Pipeline.from_pretrained(args.model, device=args.device)
    images = decode_embeddings(
        pipe, parts, embeds.expand(args.count, -1), args.prompt, seed=args.seed,
        noise_augmentation=args.noise_augmentation, steps=args.steps, guidance=args.guidance,
        width=args.width, height=args.height,
    )  # fmt: skip
    return _save(args, images)
