"""The ``latentworks`` command: one entry point, one subcommand per module in ``latentworks.commands``.

Each command module defines ``add_parser(subparsers) -> argparse.ArgumentParser`` and
``run(args) -> int``. Modules are imported only for the command being run, so ``latentworks --help``
stays fast and a broken optional dependency only affects its own command.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# (subcommand, module under latentworks.commands, one-line help)
COMMANDS: tuple[tuple[str, str, str], ...] = (
    ("generate", "generate", "generate images from a prompt"),
    ("info", "info", "show versions, devices, samplers, schedulers, or describe a model"),
    ("train-vae", "train_vae", "stage 1: train a KL autoencoder on an image dataset"),
    ("train", "train", "stage 2: train a latent diffusion model"),
    ("train-quick", "train_quick", "both stages and a model folder in minutes, on a small dataset"),
    ("train-lora", "train_lora", "train a LoRA for a model on a folder of captioned images"),
    ("train-controlnet", "train_controlnet", "train a ControlNet (Canny edges) for one of our own models"),
    ("eval", "evaluate", "FID/KID of a model, or PSNR/SSIM/rFID of an autoencoder"),
    ("data", "data", "fetch and build datasets (emoji)"),
    ("convert", "convert", "convert checkpoints between formats"),
    ("serve", "serve", "run the workflow server and browser editor"),
    ("run", "run", "run a ComfyUI-style workflow (editor or API JSON, or a PNG) headless"),
    ("upscale", "upscale", "enlarge an image with an upscale model (ESRGAN, Real-ESRGAN, SwinIR, ...)"),
    ("variations", "variations", "image variations with an unCLIP model (SD 2.1 unCLIP or our own)"),
    ("train-unclip", "train_unclip", "our own unCLIP on the emoji data: image encoder, prior, decoder"),
    ("unclip", "unclip", "text -> prior -> image embedding -> image with our own unCLIP; interpolation"),
)


class DefaultsHelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Help that shows every option's default: "(default: X)" is added where the help text names none.
    Options whose default is None, False or a list say what that means in their own words instead."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        d = action.default
        if action.required or d is None or d is False or d == argparse.SUPPRESS or d == []:
            return text  # (0 == False, so no "in (None, False, ...)": a default of 0 is shown)
        if "default" in text.lower():
            return text
        if not action.option_strings and action.nargs not in ("?", "*"):
            return text  # a required positional has no default
        return f"{text} (default: %(default)s)" if text else "default: %(default)s"


def _show_defaults(p: argparse.ArgumentParser) -> None:
    """Give ``p`` and its nested subcommand parsers the DefaultsHelpFormatter (unless they chose another)."""
    if p.formatter_class in (argparse.HelpFormatter, argparse.RawDescriptionHelpFormatter):
        p.formatter_class = DefaultsHelpFormatter
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            for child in a.choices.values():
                _show_defaults(child)


class UserError(Exception):
    """An error caused by bad input; printed without a traceback (unless --debug)."""


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="latentworks",
        description="latentworks: latent-diffusion image generation, training and workflows.",
        epilog="Run 'latentworks COMMAND --help' for the options of a command.",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module, help_text in COMMANDS:
        if only is not None and name != only:
            sub.add_parser(name, help=help_text, add_help=False)
            continue
        try:
            mod = importlib.import_module(f"latentworks.commands.{module}")
        except ModuleNotFoundError as e:
            if e.name and e.name.startswith("latentworks.commands"):
                continue  # command not built yet
            raise
        p = mod.add_parser(sub)
        _show_defaults(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    names = {c[0] for c in COMMANDS}
    chosen = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(only=chosen if chosen in names else None)
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (UserError, ValueError, FileNotFoundError, KeyError) as e:
        if args.debug:
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"latentworks {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
