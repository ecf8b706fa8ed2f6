"""``latentworks generate``: images from a prompt, with a progress bar and parameters in the PNGs."""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from pathlib import Path
from typing import Any

from latentworks.cli import UserError
from latentworks.commands.checkpoint_options import add_component_arguments
from latentworks.commands.generate_cascade import add_cascade_arguments, generate_cascade, wants_cascade
from latentworks.commands.image_outputs import save_images
from latentworks.commands.karlo import add_stage_arguments, is_karlo_model, run_generate
from latentworks.commands.quiet import quiet_libraries


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "generate",
        help="generate images from a prompt",
        description="Generate images from a text prompt. Every PNG carries its full generation parameters "
        "in PNG text chunks (read them back with 'latentworks info --image FILE' or any A1111-style tool).",
        epilog="examples:\n"
        '  latentworks generate "a red apple, google style" -o apple.png\n'
        '  latentworks generate "a grinning face, twitter style" --seed 7 --batch 4 -o faces.png\n'
        '  latentworks generate "a blue heart" --init apple.png --strength 0.6\n'
        '  latentworks generate "make the apple green" --image apple.png --model qwen_image_edit_bf16.safetensors \\\n'
        "      --text-encoder qwen_2.5_vl_7b.safetensors --vae qwen_image_vae.safetensors\n"
        '  latentworks generate "a red apple" --init photo.png --mask mask.png --mask-blur 4 --composite\n'
        '  latentworks generate "a red apple" --init photo.png --outpaint 0,0,64,0 --composite\n'
        '  latentworks generate "a lighthouse" --model sd15.safetensors --hires-scale 2 --hires-denoise 0.5\n'
        '  latentworks generate "a cat" --model sd15.safetensors --lora models/loras/style.safetensors:0.8\n'
        '  latentworks generate "a lighthouse at dusk" --model models/v1-5-pruned-emaonly.safetensors\n'
        '  latentworks generate "a fox" --model flux1-schnell.safetensors --vae ae.safetensors \\\n'
        "      --text-encoder clip_l.safetensors --text-encoder t5xxl_fp16.safetensors --tokenizer t5/tokenizer.json\n"
        "Samplers and schedulers: see 'latentworks info'. Running SD/SDXL/SD3/FLUX files: docs/checkpoints.md.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("prompt", help="what to draw")
    p.add_argument(
        "--model",
        default="default",
        metavar="NAME|PATH",
        help="'default' (the embedded model), a latentworks model folder, a checkpoint file "
        "(.safetensors, fp8 included, or a ComfyUI-GGUF .gguf: SD 1.x/2.x/XL, SD3, FLUX, Z-Image) or a diffusers "
        "folder (default: %(default)s)",
    )
    add_component_arguments(p)
    p.add_argument(
        "--lora",
        action="append",
        default=[],
        type=parse_lora,
        metavar="FILE[:STRENGTH]",
        help="add a LoRA (.safetensors, kohya/A1111 or diffusers/PEFT) at STRENGTH for the denoiser and "
        "text encoder; repeat for several (default: none; STRENGTH default: 1.0)",
    )
    p.add_argument("--negative", default="", metavar="TEXT", help="negative prompt (default: empty)")
    p.add_argument("--steps", type=int, default=None, metavar="N", help="sampling steps (model default: 20)")
    p.add_argument(
        "--cfg",
        type=float,
        default=None,
        metavar="X",
        help="classifier-free guidance scale (default: the model's own)",
    )
    p.add_argument(
        "--cfg-interval",
        type=float,
        nargs=2,
        default=None,
        metavar=("LO", "HI"),
        help="guide only at noise levels sigma in [LO, HI] (Kynkaanniemi et al. 2024); '0 inf' guides "
        "every step (model default, if it sets none)",
    )
    p.add_argument(
        "--sampler",
        default=None,
        metavar="NAME",
        help="sampler, e.g. euler, dpmpp_2m, uni_pc (default: the model's own)",
    )
    p.add_argument(
        "--scheduler",
        default=None,
        metavar="NAME",
        help="schedule, e.g. normal, karras, simple (default: the model's own)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=None,
        metavar="N",
        help="seed of image 1 (image i uses seed+i-1; default: random, printed with each file)",
    )
    p.add_argument("--batch", type=int, default=1, metavar="N", help="images to generate (default: 1)")
    p.add_argument(
        "--width",
        type=int,
        default=None,
        metavar="W",
        help="width in pixels (default: the model's native width, 32 for the default model)",
    )
    p.add_argument(
        "--height",
        type=int,
        default=None,
        metavar="H",
        help="height in pixels (default: the model's native height, 32 for the default model)",
    )
    p.add_argument(
        "--init",
        type=Path,
        default=None,
        metavar="IMAGE",
        help="start from this image (img2img; default: none, from noise)",
    )
    p.add_argument(
        "--image",
        type=Path,
        default=None,
        metavar="IMAGE",
        help="edit this image as the prompt says (editing models: Qwen-Image-Edit; the output takes its "
        "aspect ratio unless --width/--height are given; default: none)",
    )
    p.add_argument(
        "--strength",
        type=float,
        default=None,
        metavar="S",
        help="with --init: how much to change it, 0 (keep) .. 1 (ignore) (default: 0.75; 1.0 with --mask)",
    )
    inpaint = p.add_argument_group("inpainting and outpainting (docs/editing.md)")
    inpaint.add_argument(
        "--mask",
        type=Path,
        default=None,
        metavar="IMAGE",
        help="with --init: regenerate where this mask is white (greyscale; grey = partly); the output keeps "
        "the input image's size unless --width/--height are given (default: none)",
    )
    inpaint.add_argument(
        "--outpaint",
        type=_parse_padding,
        default=None,
        metavar="L,T,R,B",
        help="with --init: extend it by these many pixels left, top, right, bottom and draw the new border "
        "(default: none)",
    )
    inpaint.add_argument(
        "--mask-grow", type=int, default=0, metavar="PX", help="grow the mask by PX pixels (negative: shrink)"
    )
    inpaint.add_argument(
        "--mask-blur",
        type=float,
        default=0.0,
        metavar="PX",
        help="soften the mask edge (Gaussian sigma, pixels)",
    )
    inpaint.add_argument(
        "--composite",
        action="store_true",
        help="paste the unmasked pixels of the input image back over the result, so they stay exactly as they were",
    )
    inpaint.add_argument(
        "--differential",
        action="store_true",
        help="differential diffusion: a grey mask changes an area a little instead of blending",
    )
    cascade = p.add_argument_group("cascade: a super-resolution stage after the model (Imagen style)")
    cascade.add_argument(
        "--upscale-stage",
        default=None,
        metavar="RUN|bicubic",
        help="upscale the model's images 2x with a 'latentworks train --task superres' run (the default "
        "model then gives 64 px emoji), or 'bicubic' for comparison (default: none)",
    )
    cascade.add_argument(
        "--upscale-steps", type=int, default=None, help="the stage's steps (default: its own)"
    )
    cascade.add_argument(
        "--aug-level",
        type=float,
        default=None,
        help="the stage's noise augmentation level 0..1 (default: its own)",
    )
    cascade.add_argument(
        "--upscale-denoise",
        type=float,
        default=None,
        help="the stage's strength in (0, 1]: start from the bicubic image noised to this level; lower keeps "
        "closer to bicubic (default: its own, 1)",
    )
    hires = p.add_argument_group("hires fix: a second pass at a larger size")
    hires.add_argument(
        "--hires-scale",
        type=float,
        default=1.0,
        metavar="X",
        help="upscale the first pass by X, then sample again (1: no second pass)",
    )
    hires.add_argument(
        "--hires-denoise",
        type=float,
        default=0.5,
        metavar="D",
        help="how much the second pass changes the upscaled image, 0..1",
    )
    hires.add_argument(
        "--hires-upscale",
        default="latent",
        metavar="latent|pixel|FILE",
        help="how to upscale: 'latent' (bilinear in latent space), 'pixel' (decode, bicubic, encode) or an "
        "upscale model file (.safetensors, ESRGAN and others through spandrel)",
    )
    hires.add_argument(
        "--hires-steps",
        type=int,
        default=None,
        metavar="N",
        help="steps of the second pass (default: --steps)",
    )
    p.add_argument(
        "--controlnet",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="a ControlNet file or diffusers folder (SD1.x/SD2.x/SDXL, original or diffusers layout, Control-LoRA; FLUX "
        "InstantX/Union, diffusers layout); repeat for several, each with its own --control-image (default: none)",
    )
    p.add_argument(
        "--control-image",
        type=Path,
        action="append",
        default=[],
        metavar="IMAGE",
        help="the control image (edges, depth, pose...) of each --controlnet, in the same order (default: none)",
    )
    p.add_argument(
        "--control-strength",
        type=float,
        action="append",
        default=[],
        metavar="S",
        help="strength of each --controlnet (one value for all, or one per ControlNet; default: 1.0)",
    )
    p.add_argument(
        "--control-mode",
        action="append",
        default=[],
        metavar="N",
        help="control mode of each --controlnet, in order: an index into a Union ControlNet's table (InstantX "
        "FLUX Union: 0 canny, 1 tile, 2 depth, 3 blur, 4 pose, 5 gray, 6 low quality), or 'auto' for none "
        "(default: auto)",
    )
    p.add_argument(
        "-o",
        "--output",
        type=Path,
        default=Path("latentworks.png"),
        metavar="PATH",
        help="output PNG; with --batch N, files PATH-1.png ... PATH-N.png (default: %(default)s)",
    )
    p.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    p.add_argument(
        "--memory-budget",
        type=memory_budget,
        default=None,
        metavar="SIZE",
        help="most bytes of weights on --device at once, e.g. 12GB or 512MiB; a network that does not fit "
        "runs block by block (same images, slower). Default: no limit",
    )
    p.add_argument(
        "--quiet", action="store_true", help="no progress bars (ours and the libraries' weight loading)"
    )
    add_stage_arguments(p)
    add_cascade_arguments(p)
    return p


def _parse_padding(spec: str) -> tuple[int, int, int, int]:
    """``L,T,R,B`` (pixels, each >= 0) -> a 4-tuple."""
    try:
        values = tuple(int(v) for v in spec.split(","))
    except ValueError:
        values = ()
    if len(values) != 4 or min(values) < 0:
        raise argparse.ArgumentTypeError(
            f"expected four pixel counts >= 0 as LEFT,TOP,RIGHT,BOTTOM, got {spec!r}"
        )
    return values  # type: ignore[return-value]


def memory_budget(text: str) -> int:
    """``--memory-budget`` value: a size such as 12GB, 512MiB or a number of bytes."""
    from latentworks.graph.budgets import parse_bytes

    try:
        value = parse_bytes(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: the memory budget must be more than 0 bytes")
    return value


def parse_lora(spec: str) -> tuple[Path, float]:
    """``FILE[:STRENGTH]`` -> (file, strength). Paths may hold ':' (``C:\\x``, ``a:b/c.safetensors``): the
    text after the last ':' is a strength only when it parses as a number; otherwise it belongs to FILE."""
    head, sep, tail = spec.rpartition(":")
    if sep and head:
        try:
            strength = float(tail)
        except ValueError:
            pass
        else:
            if not math.isfinite(strength):
                raise argparse.ArgumentTypeError(
                    f"strength must be a finite number, got {tail!r} in {spec!r}"
                )
            return Path(head), strength
    return Path(spec), 1.0


def _check_args(args: argparse.Namespace) -> None:
    from latentworks.diffusion.samplers import SAMPLERS
    from latentworks.diffusion.schedules import SCHEDULERS

    if args.sampler is not None and args.sampler not in SAMPLERS:
        raise UserError(f"unknown sampler {args.sampler!r}; choose one of: {', '.join(SAMPLERS)}")
    if args.scheduler is not None and args.scheduler not in SCHEDULERS:
        raise UserError(f"unknown scheduler {args.scheduler!r}; choose one of: {', '.join(SCHEDULERS)}")
    if args.steps is not None and not 1 <= args.steps <= 1000:
        raise UserError(f"--steps must be between 1 and 1000, got {args.steps}")
    if args.batch < 1 or args.batch > 64:
        raise UserError(f"--batch must be between 1 and 64, got {args.batch}")
    if args.cfg is not None and not 0 <= args.cfg <= 100:
        raise UserError(f"--cfg must be between 0 and 100, got {args.cfg}")
    if args.cfg_interval is not None:
        from latentworks.diffusion.guidance import check_interval

        try:
            check_interval(args.cfg_interval)
        except ValueError as e:
            raise UserError(f"--cfg-interval LO HI: {e}") from None
    for name in ("width", "height"):
        v = getattr(args, name)
        if v is not None and not 8 <= v <= 4096:
            raise UserError(f"--{name} must be between 8 and 4096 pixels, got {v}")
    if args.init is None and args.strength is not None:
        raise UserError("--strength only applies with --init IMAGE")
    if args.strength is not None and not 0 <= args.strength <= 1:
        raise UserError(f"--strength must be between 0 and 1, got {args.strength}")
    if args.init is not None and not args.init.is_file():
        raise UserError(f"--init: no such image file: {args.init}")
    if args.image is not None and not args.image.is_file():
        raise UserError(f"--image: no such image file: {args.image}")
    if args.image is not None and args.init is not None:
        raise UserError("give either --image (editing) or --init (image-to-image), not both")
    masking = args.mask is not None or args.outpaint is not None
    if masking and args.init is None:
        raise UserError("--mask and --outpaint need the image they apply to: give --init IMAGE")
    if args.mask is not None and args.outpaint is not None:
        raise UserError("give --mask or --outpaint, not both (--outpaint makes its own mask)")
    if args.mask is not None and not args.mask.is_file():
        raise UserError(f"--mask: no such image file: {args.mask}")
    if not masking:
        for flag, on in (
            ("--composite", args.composite),
            ("--differential", args.differential),
            ("--mask-grow", args.mask_grow != 0),
            ("--mask-blur", args.mask_blur != 0),
        ):
            if on:
                raise UserError(f"{flag} only applies with --mask or --outpaint")
    if args.mask_blur < 0:
        raise UserError(f"--mask-blur must be >= 0, got {args.mask_blur}")
    if not 0 < args.hires_scale <= 8:
        raise UserError(f"--hires-scale must be in (0, 8], got {args.hires_scale}")
    if not 0 < args.hires_denoise <= 1:
        raise UserError(f"--hires-denoise must be in (0, 1], got {args.hires_denoise}")
    if args.hires_steps is not None and not 1 <= args.hires_steps <= 1000:
        raise UserError(f"--hires-steps must be between 1 and 1000, got {args.hires_steps}")
    if args.hires_upscale not in ("latent", "pixel") and not Path(args.hires_upscale).is_file():
        raise UserError(
            f"--hires-upscale: not 'latent', 'pixel' or an upscale model file: {args.hires_upscale}"
        )
    if args.hires_scale != 1.0 and masking:
        raise UserError("--hires-scale cannot be combined with --mask or --outpaint")
    n_cn = len(args.controlnet)
    if len(args.control_image) != n_cn:
        raise UserError(
            f"give one --control-image per --controlnet: got {n_cn} ControlNet(s) and {len(args.control_image)} image(s)"
        )
    if args.control_strength and (not n_cn or len(args.control_strength) not in (1, n_cn)):
        raise UserError(
            f"--control-strength needs --controlnet, and one value or one per ControlNet ({n_cn}); "
            f"got {len(args.control_strength)}"
        )
    if args.control_mode and len(args.control_mode) != n_cn:
        raise UserError(
            f"give one --control-mode per --controlnet (or none): got {n_cn} ControlNet(s) and "
            f"{len(args.control_mode)} mode(s)"
        )
    if any(m != "auto" and not m.isdigit() for m in args.control_mode):
        raise UserError(f"--control-mode must be a mode index (0, 1, ...) or 'auto', got {args.control_mode}")
    if any(not 0 <= s <= 10 for s in args.control_strength):
        raise UserError(f"--control-strength must be between 0 and 10, got {args.control_strength}")
    for opt, files in (("--controlnet", args.controlnet), ("--control-image", args.control_image)):
        for f in files:
            if not (f.is_file() or (opt == "--controlnet" and f.is_dir())):
                raise UserError(f"{opt}: no such file: {f}")
    if args.output.suffix.lower() != ".png":
        raise UserError(f"--output must end in .png, got {args.output}")
    if not args.output.parent.exists():
        raise UserError(f"--output: folder {args.output.parent} does not exist")


def _load_controls(args: argparse.Namespace, pipe: Any) -> list[Any]:
    """``Control`` objects for ``--controlnet`` / ``--control-image`` / ``--control-strength``."""
    from PIL import Image, UnidentifiedImageError

    from latentworks.families.controlnet import load_controlnet
    from latentworks.models.controlnet_flux import FluxControlNet
    from latentworks.pipelines.control import Control

    strengths = args.control_strength or [1.0]
    controls = []
    for i, (file, image_path) in enumerate(zip(args.controlnet, args.control_image, strict=True)):
        try:
            net = load_controlnet(file, dtype=pipe.dtype, device=pipe.device, allow_pickle=args.allow_pickle)
        except (OSError, ValueError, KeyError) as e:
            raise UserError(f"--controlnet {file}: {e}") from None
        try:
            net.check_model(pipe.model.denoiser_net)
        except ValueError as e:
            raise UserError(f"--controlnet {file}: {e}") from None
        try:
            image = Image.open(image_path)
            image.load()
        except (UnidentifiedImageError, OSError) as e:
            raise UserError(f"--control-image: cannot read {image_path} as an image ({e})") from None
        strength = strengths[i] if len(strengths) > 1 else strengths[0]
        mode = args.control_mode[i] if args.control_mode else "auto"
        if mode != "auto":
            if not isinstance(net, FluxControlNet):
                raise UserError(f"--control-mode {mode}: {file} is not a Union ControlNet (it has no modes)")
            try:
                net.with_mode(int(mode))  # an index outside its table fails here, before sampling
            except ValueError as e:
                raise UserError(f"--control-mode {mode}: {e}") from None
        controls.append(Control(image, net, strength, mode=None if mode == "auto" else int(mode)))
    return controls


def run(args: argparse.Namespace) -> int:
    _check_args(args)
    if is_karlo_model(args.model):  # a cascade with its own pipeline (commands/karlo.py)
        with quiet_libraries(args.quiet):
            return run_generate(args)
    with quiet_libraries(args.quiet):  # text encoders load on first use, so the whole command is inside
        return generate_cascade(args) if wants_cascade(args) else _generate(args)


def _generate(args: argparse.Namespace) -> int:
    from PIL import Image, UnidentifiedImageError
    from tqdm import tqdm

    from latentworks.pipelines import Pipeline
    from latentworks.pipelines.inpaint import MaskSizeWarning
    from latentworks.pipelines.memory import MemoryBudgetError
    from latentworks.pipelines.text_to_image import ResolutionWarning

    init: Image.Image | None = None
    mask: Image.Image | None = None
    if args.init is not None:
        try:
            init = Image.open(args.init)
            init.load()
        except (UnidentifiedImageError, OSError) as e:
            raise UserError(f"--init: cannot read {args.init} as an image ({e})") from None
    edit = None
    if args.image is not None:
        try:
            edit = Image.open(args.image)
            edit.load()
        except (UnidentifiedImageError, OSError) as e:
            raise UserError(f"--image: cannot read {args.image} as an image ({e})") from None
    if args.mask is not None:
        try:
            mask = Image.open(args.mask)
            mask.load()
        except (UnidentifiedImageError, OSError) as e:
            raise UserError(f"--mask: cannot read {args.mask} as an image ({e})") from None
    if args.outpaint is not None and init is not None:
        from latentworks.pipelines.inpaint import pad_image_for_outpaint

        init, mask = pad_image_for_outpaint(init, *args.outpaint)
    for opt, path in (
        [("--vae", args.vae), ("--tokenizer", args.tokenizer)]
        + [("--text-encoder", t) for t in args.text_encoder]
        + [("--lora", f) for f, _ in args.lora]
    ):
        if path is not None and not path.exists():
            raise UserError(f"{opt}: no such file: {path}")
    try:
        pipe: Any = Pipeline.from_pretrained(
            args.model,
            device=args.device,
            vae=args.vae,
            text_encoders=args.text_encoder,
            tokenizer=args.tokenizer,
            prediction=args.prediction,
            allow_pickle=args.allow_pickle,
            memory_budget=args.memory_budget,
        )
    except (FileNotFoundError, ValueError, KeyError) as e:
        raise UserError(f"--model {args.model}: {e}") from None
    for file, strength in args.lora:
        try:
            unmatched = pipe.load_lora(file, strength)
        except (OSError, ValueError, KeyError) as e:
            raise UserError(f"--lora {file}: {e}") from None
        skipped = sum(len(v) for v in unmatched.values())
        if skipped:
            print(f"warning: --lora {file}: {skipped} keys match no module of this model", file=sys.stderr)
    loras = [{"file": str(f), "strength": s} for f, s in args.lora]
    if args.upscale_stage is not None:
        from latentworks.pipelines.superres import CascadePipeline, load_stage

        if init is not None or mask is not None or edit is not None or args.hires_scale != 1.0:
            raise UserError(
                "--upscale-stage works on text-to-image runs only (no --init, --mask, --image, --hires-scale)"
            )
        try:
            stage = load_stage(args.upscale_stage, device=args.device, low_size=pipe.model.resolution[0])
            pipe = CascadePipeline(pipe, stage)
        except (FileNotFoundError, ValueError, KeyError) as e:
            raise UserError(f"--upscale-stage {args.upscale_stage}: {e}") from None
    controls = _load_controls(args, pipe)
    bar = None

    def on_step(step) -> None:  # noqa: ANN001
        nonlocal bar
        if bar is None or (step.i == 0 and bar.n > 0):  # the hires fix's second pass gets its own bar
            desc = "sampling" if bar is None else "hires pass"
            if bar is not None:
                bar.close()
            bar = tqdm(total=step.total, desc=desc, unit="step", disable=args.quiet, file=sys.stderr)
        bar.update(1)
        bar.set_postfix(sigma=f"{step.sigma_next:.3f}")

    show_default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
        if isinstance(message, ResolutionWarning):  # one line, in the CLI's own option names
            (h0, w0), (h, w) = message.native, message.requested
            print(
                f"warning: the {message.model} model draws {w0}x{h0} images; {w}x{h} gives {message.look} "
                f"results. Use --width {w0} --height {h0} (its native size)",
                file=sys.stderr,
            )
        elif isinstance(message, MaskSizeWarning):
            print(f"warning: --mask: {message}", file=sys.stderr)
        else:
            show_default(message, category, filename, lineno, file, line)

    with warnings.catch_warnings():  # restores the filters and showwarning afterwards
        warnings.simplefilter("always", ResolutionWarning)  # the CLI samples once
        warnings.showwarning = show
        warnings.simplefilter("always", MaskSizeWarning)
        strength = args.strength if args.strength is not None else (1.0 if mask is not None else 0.75)
        if args.hires_scale != 1.0 and args.hires_upscale not in ("latent", "pixel"):
            from latentworks.pipelines.upscale import load_upscale_model

            try:
                args.hires_upscale = load_upscale_model(
                    args.hires_upscale, allow_pickle=args.allow_pickle, device=args.device
                )
            except (ImportError, ValueError) as e:
                raise UserError(f"--hires-upscale {args.hires_upscale}: {e}") from None
        try:
            result = _run(pipe, args, init, mask, strength, on_step, controls, edit)
        except MemoryBudgetError as e:
            raise UserError(f"--memory-budget: {e}") from None
        except ValueError as e:
            raise UserError(str(e)) from None
    if bar is not None:
        bar.close()
    save_images(
        result.images, result.seeds, result.parameters, args.output, {"loras": loras} if loras else {}
    )
    return 0


def _run(pipe, args: argparse.Namespace, init, mask, strength: float, on_step, controls=None, edit=None):  # noqa: ANN001, ANN202
    """The pipeline call with the command line's options."""
    masking = mask is not None
    if args.upscale_stage is not None:
        return pipe(
            args.prompt,
            args.negative,
            steps=args.steps,
            guidance=args.cfg,
            sampler=args.sampler,
            scheduler=args.scheduler,
            seed=args.seed,
            batch=args.batch,
            callback=on_step,
            upscale_steps=args.upscale_steps,
            aug_level=args.aug_level,
            upscale_denoise=args.upscale_denoise,
        )
    return pipe(
        args.prompt,
        args.negative,
        steps=args.steps,
        guidance=args.cfg,
        guidance_interval=None if args.cfg_interval is None else tuple(args.cfg_interval),
        sampler=args.sampler,
        scheduler=args.scheduler,
        seed=args.seed,
        batch=args.batch,
        width=args.width,
        height=args.height,
        image=init,
        edit_image=edit,
        strength=strength if init else 1.0,
        mask=mask,
        mask_blur=args.mask_blur if masking else 0.0,
        mask_grow=args.mask_grow if masking else 0,
        composite=args.composite,
        differential=args.differential,
        hires_scale=args.hires_scale,
        hires_denoise=args.hires_denoise,
        hires_upscale=args.hires_upscale,
        hires_steps=args.hires_steps,
        callback=on_step,
        control=controls or None,
    )
