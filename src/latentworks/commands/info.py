"""``latentworks info``: versions, devices, registered samplers, schedulers and model families, or one model's
card."""

from __future__ import annotations

import argparse
import platform


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "info",
        help="show versions, devices, samplers, schedulers, or describe a model",
        description="Print versions, the compute device, and the registered samplers and schedulers. "
        "With --model, describe that model instead (family, parameters, training data, licence); with "
        "--image, print the generation parameters a PNG carries.",
        epilog="examples:\n  latentworks info\n  latentworks info --model default\n"
        "  latentworks info --image latentworks.png   (the prompt, seed, sampler, ... that made it)\n"
        "  latentworks info --model sd_xl_base_1.0.safetensors   (family and parts, from the header only)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--model",
        metavar="NAME|PATH",
        help="describe a model folder, a named model (e.g. default), a checkpoint file or a diffusers folder "
        "(default: none: print versions and devices)",
    )
    p.add_argument(
        "--image",
        metavar="PNG",
        help="print the generation parameters in a PNG's text chunks (written by 'latentworks generate', "
        "the server or ComfyUI (its 'prompt' and 'workflow' chunks, summarised node by node), or an "
        "A1111-style tool; default: none)",
    )
    return p


def _describe_image(path: str) -> str:
    import json

    from latentworks.cli import UserError
    from latentworks.pipelines.metadata import describe_workflow_chunks, read_parameters, read_text_chunks

    try:
        params = read_parameters(path)
    except FileNotFoundError:
        raise UserError(f"--image: no such file: {path}") from None
    except OSError as e:  # PIL's UnidentifiedImageError included
        raise UserError(f"--image: cannot read {path} as an image ({e})") from None
    except json.JSONDecodeError:
        raise UserError(f"--image: {path}: its latentworks text chunk is not valid JSON") from None
    except ValueError:  # no latentworks chunk: an A1111-style image shows its summary as written
        chunks = read_text_chunks(path)
        if "parameters" in chunks:
            return chunks["parameters"]
        try:
            workflow = describe_workflow_chunks(chunks)  # saved by the workflow server (ComfyUI style)
        except ValueError as e:
            raise UserError(f"--image: {path}: {e}") from None
        if workflow is not None:
            return workflow
        found = ", ".join(sorted(chunks)) or "none"
        raise UserError(f"--image: {path} holds no generation parameters (text chunks: {found})") from None
    return "\n".join(f"{k:<18}{params[k]}" for k in sorted(params))


def run(args: argparse.Namespace) -> int:
    if args.model and args.image:
        from latentworks.cli import UserError

        raise UserError("give --model or --image, not both")
    if args.image:
        print(_describe_image(args.image))
        return 0
    if args.model:
        from latentworks.commands.karlo import describe
        from latentworks.pipelines.loading import describe_model

        cascade = describe(args.model)
        print(cascade if cascade is not None else describe_model(args.model))
        return 0
    import torch

    from latentworks._version import __version__

    print(f"latentworks {__version__}")
    print(f"python      {platform.python_version()} ({platform.machine()})")
    print(f"torch       {torch.__version__}")
    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        print(f"device      cuda ({names})")
    elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        print("device      mps")
    else:
        print(f"device      cpu ({torch.get_num_threads()} threads)")
    from latentworks import families
    from latentworks.diffusion.samplers import SAMPLERS
    from latentworks.diffusion.schedules import SCHEDULERS

    print(f"samplers    {', '.join(SAMPLERS)}")
    print(f"schedulers  {', '.join(SCHEDULERS)}")
    print(f"families    {', '.join(families.names())}  (checkpoints are recognised from their weights)")
    return 0
