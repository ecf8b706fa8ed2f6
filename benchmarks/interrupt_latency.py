"""Interrupt latency and the cost of the long-pass mode of ``nodes.guards.interruptible`` on the built-in
default model (small U-Net + KL VAE, f4 latents) at 4096 x 4096 pixels: a 2 x 8 x 1024 x 1024 latent
(cond and uncond in one batch, as KSampler runs it).

A whole 4096 px U-Net call is out of reach on a CPU (its self-attention over 512 x 512 = 262,144 tokens in
five transformers: about 1.5 hours on one core by a multiply-add count), so the script times the parts
that matter:

1. *latency*: a full U-Net call runs under ``interruptible(fine=True)``; a timer thread sets the cancel
   flag after ``--at`` seconds; latency = time from the set to the call raising ``Interrupted``.
2. *worst gap*: the longest time between two consecutive checks while the full-resolution stages run
   (``conv_in`` + the first down level, and the last up level + ``norm_out`` + ``conv_out``, where the
   biggest tensors and the single longest ops are). A cancel at any moment there is seen within it.
   Also shown with the convolution bands switched off, which is the behaviour before bands existed.
3. *overhead*: the same stages timed plain (no guard) and in the long-pass mode, in this process, on the
   same inputs: the ratio, and whether the outputs are bit-identical.
4. *equality at a moderate size*: a full U-Net call and a VAE decode at ``--small`` pixels with tiny bands
   (every convolution split), plain vs long-pass: ratio and max abs difference.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/interrupt_latency.py [--size 4096] [--at 1 4 9]
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from latentworks.diffusion.conditioning import Conditioning
from latentworks.graph import Interrupted
from latentworks.nodes import guards
from latentworks.nodes.guards import interruptible
from latentworks.pipelines.loading import load_model_folder


class Checks:
    """The job's check: records when it is called and raises once ``cancel`` is set."""

    def __init__(self) -> None:
        self.cancel = threading.Event()
        self.times: list[float] = []

    def __call__(self) -> None:
        self.times.append(time.monotonic())
        if self.cancel.is_set():
            raise Interrupted("cancelled")

    def worst_gap(self, start: float, end: float) -> float:
        marks = [start, *self.times, end]
        return max(b - a for a, b in zip(marks, marks[1:], strict=False))


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def latency(net: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, cond: Conditioning, at: float) -> float:
    """Seconds from setting the cancel flag ``at`` seconds into a U-Net call to the call raising."""
    checks = Checks()
    set_at: list[float] = []

    def cancel() -> None:
        set_at.append(time.monotonic())
        checks.cancel.set()

    timer = threading.Timer(at, cancel)
    with interruptible(checks, net, fine=True):
        timer.start()
        try:
            net(x, t, cond)
        except Interrupted:
            return time.monotonic() - set_at[0]
        finally:
            timer.cancel()
    raise RuntimeError(f"the U-Net call finished before the cancel at {at} s; pass a smaller --at")


class SlowestOps(TorchFunctionMode):
    """Times every torch call made under it (under ``interruptible``: every op between two checks) and
    keeps the slowest: the longest stretch a cancel can wait for."""

    def __init__(self) -> None:
        super().__init__()
        self.slowest: list[tuple[float, str]] = []

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        t0 = time.perf_counter()
        out = func(*args, **(kwargs or {}))
        shape = tuple(args[0].shape) if args and isinstance(args[0], torch.Tensor) else ()
        self.slowest.append((time.perf_counter() - t0, f"{getattr(func, '__name__', func)}{list(shape)}"))
        self.slowest = sorted(self.slowest, reverse=True)[:3]
        return out


def stages(net: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, cond: Conditioning, repeats: int) -> None:
    """Parts 2 and 3: the U-Net's full-resolution stages, plain and in the long-pass mode."""
    temb = net._time_embedding(t, cond, x.shape[0], x.dtype)
    ctx, side = cond.tokens, x.shape[-1]
    ch0 = net.config.channels[0]
    h_up = torch.randn(2, net.config.channels[1], side, side)  # what level 1's upsampler hands down
    skips_in = [torch.randn(2, ch0, side, side) for _ in range(net.config.layers_per_block + 1)]

    def head() -> torch.Tensor:
        skips = [net.conv_in(x)]
        return net.down[0](skips[0], temb, ctx, None, skips)

    def tail() -> torch.Tensor:
        h = net.up[-1](h_up, temb, ctx, None, list(skips_in))
        return net.conv_out(F.silu(net.norm_out(h)))

    for name, stage in (("head (conv_in + down[0])", head), ("tail (up[-1] + out)", tail)):
        plain_s, fine_s, gap, same, slow = float("inf"), float("inf"), 0.0, True, SlowestOps()
        for _ in range(repeats):  # interleaved, best of each
            s, want = timed(stage)
            plain_s = min(plain_s, s)
            checks = Checks()
            with slow, interruptible(checks, net, fine=True):
                start = time.monotonic()
                s, got = timed(stage)
                gap = max(gap, checks.worst_gap(start, time.monotonic()))
            fine_s, same = min(fine_s, s), same and torch.equal(got, want)
            del want, got
        print(
            f"{name}: plain {plain_s:.2f} s, long-pass {fine_s:.2f} s, ratio {fine_s / plain_s:.3f}, "
            f"bit-identical {same}, {len(checks.times)} checks, worst gap {gap:.3f} s"
        )
        print("  slowest single ops: " + ", ".join(f"{n} {d:.2f} s" for d, n in slow.slowest))
        if stage is head:
            band_work, guards.CONV_BAND_WORK = guards.CONV_BAND_WORK, 2**62  # bands off: one call per conv
            try:
                checks = Checks()
                with interruptible(checks, net, fine=True):
                    start = time.monotonic()
                    stage()
                    print(
                        f"  without conv bands: worst gap {checks.worst_gap(start, time.monotonic()):.3f} s"
                    )
            finally:
                guards.CONV_BAND_WORK = band_work


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=4096, help="image side in pixels (default 4096)")
    ap.add_argument("--at", type=float, nargs="*", default=[1.0, 4.0, 9.0], help="cancel times (s)")
    ap.add_argument("--small", type=int, default=512, help="image side for the equality check")
    ap.add_argument("--repeats", type=int, default=2, help="plain / long-pass runs per stage (best of)")
    args = ap.parse_args()

    folder = load_model_folder("default")
    net, vae = folder.denoiser_net.eval(), folder.vae.eval()
    f, c = vae.config.downsample_factor, net.config.in_channels
    side = args.size // f
    torch.manual_seed(0)
    print(f"torch threads {torch.get_num_threads()}; default model, {args.size} px = {side} x {side} latent")

    with torch.no_grad():
        x = torch.randn(2, c, side, side)
        t = torch.tensor([500.0, 500.0])
        cond = Conditioning(tokens=torch.randn(2, 8, net.config.context_dim))
        for at in args.at:  # 1. latency of a real cancel inside a full U-Net call
            print(
                f"latency: cancel {at:4.1f} s into a U-Net call -> raised {latency(net, x, t, cond, at):.3f} s later"
            )
        stages(net, x, t, cond, args.repeats)  # 2 + 3

        # 4. Equality and cost at a moderate size, every 3x3 convolution split into bands.
        side = args.small // f
        x = torch.randn(2, c, side, side)
        z = torch.randn(1, vae.config.latent_channels, side, side)
        band_work, guards.CONV_BAND_WORK = guards.CONV_BAND_WORK, 2**24
        try:
            for name, model, call in (
                (f"U-Net call at {args.small} px", net, lambda: net(x, t, cond)),
                (f"VAE decode at {args.small} px", vae, lambda: vae.decode(z)),
            ):
                plain_s, want = timed(call)
                with interruptible(lambda: None, model, fine=True):
                    fine_s, got = timed(call)
                print(
                    f"{name} (bands of 2**24 multiply-adds): plain {plain_s:.2f} s, long-pass {fine_s:.2f} s, "
                    f"ratio {fine_s / plain_s:.3f}, max abs diff {(got - want).abs().max().item():.3g}, "
                    f"bit-identical {torch.equal(got, want)}"
                )
        finally:
            guards.CONV_BAND_WORK = band_work


if __name__ == "__main__":
    main()
