"""The GPU half of the Z-Image / Qwen-Image benchmarks, in one run that fits a single device call (not a test).

For each of Z-Image and Qwen-Image, at the released width (Z-Image 3840, Qwen-Image 3072) with the depth reduced
(``--depth``, default 4 main blocks), both transformers are built with identical random weights (diffusers'
model from an inline config, ours through our key maps, as ``vs_diffusers.py`` does), then:

* **bf16 step**: one denoiser call (CFG batch of 2, 1024x1024 image = 128x128 latent, 64 caption tokens), median of
  ``--runs``, ours and diffusers alternating; plus the relative difference of the outputs.
* **memory-budget streaming**: ours taken over by ``pipelines.memory.MemoryManager`` with a budget of half its
  weights (host copy in RAM, pinned and not): step time against the resident model, peak CUDA memory against the
  budget, the output against the resident one (``torch.equal`` expected), and the host-to-device rate it reached.
* **fp8 step**: linear weights stored as float8_e4m3fn and upcast to bf16 per layer at compute time. Ours: a
  benchmark-local ``Fp8Linear`` swap in every transformer block (what an fp8 checkpoint loads into; embedders
  and final layer stay bf16); diffusers: its
  ``enable_layerwise_casting(storage_dtype=float8_e4m3fn, compute_dtype=bfloat16)``. Step time and the
  relative difference from each side's own bf16 output.

Everything is written to ``--out`` (``results.json`` and ``results.md``); lines are also printed as they come.

    benchmarks/gpu_check.sh                                   # on the GPU machine: writes to $OUT
    .venv/bin/python benchmarks/gpu_check.py --cpu --tiny --out /tmp/gpu-check   # the CPU path, in seconds
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from latentworks.pipelines.memory import MemoryManager, stream_blocks

sys.path.insert(0, str(Path(__file__).resolve().parent))
import vs_diffusers as vs  # noqa: E402  (the pair builders and timers this script shares)


class Fp8Linear(nn.Module):
    """A linear layer whose weight is stored in ``storage`` dtype and upcast to its compute dtype (the dtype the
    weight had) per call. Inputs arrive in the compute dtype, or in the storage dtype where a model casts its
    input to ``weight.dtype``; either way the product is computed in the compute dtype."""

    def __init__(self, linear: nn.Linear, storage: torch.dtype) -> None:
        super().__init__()
        self.compute = linear.weight.dtype
        self.weight = nn.Parameter(linear.weight.detach().to(storage), requires_grad=False)
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.to(self.compute), self.weight.to(self.compute), self.bias)


def fp8_linears(model: nn.Module, storage: torch.dtype = torch.float8_e4m3fn) -> int:
    """Swap every ``nn.Linear`` inside ``model``'s transformer blocks for :class:`Fp8Linear` in place (the
    embedders and final layer, under 1% of the weights, stay in bf16); returns how many."""
    swaps = [
        (parent, name, child)
        for block in stream_blocks(model)
        for parent in block.modules()
        for name, child in parent.named_children()
        if type(child) is nn.Linear
    ]
    for parent, name, child in swaps:
        setattr(parent, name, Fp8Linear(child, storage))
    return len(swaps)


def weight_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_time(fn: Callable[[], Any], device: torch.device, runs: int) -> float:
    vs.time_once(fn, device)  # warm-up
    return statistics.median(vs.time_once(fn, device) for _ in range(runs))


def peak_memory(fn: Callable[[], Any], device: torch.device) -> int:
    """Peak bytes allocated during one call (CUDA), 0 on CPU."""
    if device.type != "cuda":
        with torch.no_grad():
            fn()
        return 0
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    with torch.no_grad():
        fn()
    sync(device)
    return torch.cuda.max_memory_allocated(device)


def streaming(pair: vs.Pair, device: torch.device, runs: int, fraction: float, pin: bool) -> dict[str, Any]:
    """Ours under a budget of ``fraction`` of its weights, against itself resident; restores it afterwards."""
    ours = pair.ours
    total = weight_bytes(ours)
    with torch.no_grad():
        want = pair.ours_call()
    resident_s = median_time(pair.ours_call, device, runs)
    ours.to("cpu")
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    blocks = [weight_bytes(b) for b in stream_blocks(ours)]
    rest = total - sum(blocks)
    budget = max(int(total * fraction), rest + 2 * max(blocks))  # never below what streaming needs
    manager = MemoryManager(device=device, mode="none", budget=budget, pin_memory=pin)
    with manager.use(ours):
        with torch.no_grad():
            got = pair.ours_call()
        loads_before = manager.block_loads
        streamed_s = median_time(pair.ours_call, device, runs)
        loads_per_step = (manager.block_loads - loads_before) / (runs + 1)
        peak = peak_memory(pair.ours_call, device)
        streamed_bytes = total - manager.module_bytes(ours)[0]
    manager.release(ours)
    ours.to(device)
    return {
        "weights_MiB": total / 2**20,
        "budget_MiB": budget / 2**20,
        "pinned": pin,
        "resident_s": resident_s,
        "streamed_s": streamed_s,
        "slowdown": streamed_s / resident_s,
        "blocks_streamed_per_step": loads_per_step,
        "streamed_MiB_per_step": streamed_bytes / 2**20,
        "effective_GBps": streamed_bytes / max(streamed_s - resident_s, 1e-9) / 1e9,
        "peak_cuda_MiB": peak / 2**20,
        "manager_peak_MiB": manager.peak_bytes / 2**20,
        "equal_to_resident": bool(torch.equal(got, want)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="folder for results.json and results.md")
    ap.add_argument("--cpu", action="store_true", help="run on the CPU (to test this script without a GPU)")
    ap.add_argument("--tiny", action="store_true", help="narrow, shallow models and a small latent (seconds)")
    ap.add_argument("--families", default="zimage,qwenimage")
    ap.add_argument(
        "--depth", type=int, default=4, help="main blocks (the release: Z-Image 30, Qwen-Image 60)"
    )
    ap.add_argument("--size", type=int, default=128, help="latent side (128 = a 1024x1024 image)")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--budget-fraction", type=float, default=0.5, help="streaming budget / weights")
    ap.add_argument("--skip", default="", help="comma list of sections to skip: bf16, stream, fp8")
    args = ap.parse_args()

    device = torch.device("cpu" if args.cpu else "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: run on the GPU machine, or pass --cpu (with --tiny) to test")
    width, depth, size, runs = (256, 3, 8, 2) if args.tiny else (None, args.depth, args.size, args.runs)
    dtype = torch.bfloat16
    skip = set(filter(None, args.skip.split(",")))
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_grad_enabled(False)
    machine = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    )
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine,
        "torch": torch.__version__,
        "dtype": str(dtype),
        "depth": depth,
        "size": size,
        "runs": runs,
        "families": {},
    }
    md = [f"# GPU check: {report['date']}, {machine}, torch {torch.__version__}, bf16, depth {depth}", ""]
    md += ["| family | measurement | ours | diffusers | ours / diffusers |", "|---|---|---|---|---|"]

    def save() -> None:
        (args.out / "results.json").write_text(json.dumps(report, indent=2))
        (args.out / "results.md").write_text("\n".join(md) + "\n")

    for family in args.families.split(","):
        t0 = time.perf_counter()
        pair = vs.make_pair(family, device, dtype, size, depth, width)
        res: dict[str, Any] = {"shape": pair.shape, "build_s": time.perf_counter() - t0}
        report["families"][family] = res
        print(f"{family}: {pair.shape}, built in {res['build_s']:.1f} s", flush=True)
        with torch.no_grad():
            ours_bf16, theirs_bf16 = pair.ours_call(), pair.theirs_call()
        res["bf16_relative_difference"] = rel(ours_bf16, theirs_bf16)
        if "bf16" not in skip:
            o, t, _, _ = vs.interleaved(pair.ours_call, pair.theirs_call, runs, device)
            mo, mt = peak_memory(pair.ours_call, device), peak_memory(pair.theirs_call, device)
            res["bf16"] = {
                "ours_s": o,
                "diffusers_s": t,
                "ratio": o / t,
                "ours_peak": mo,
                "diffusers_peak": mt,
            }
            md.append(f"| {family} | bf16 step | {o * 1e3:.1f} ms | {t * 1e3:.1f} ms | {o / t:.2f} |")
            if mt:
                md.append(f"| {family} | bf16 peak CUDA memory | {mo / 2**20:.0f} MiB | {mt / 2**20:.0f} MiB | "
                          f"{mo / mt:.2f} |")  # fmt: skip
            print(
                f"  bf16 step: ours {o * 1e3:.1f} ms, diffusers {t * 1e3:.1f} ms ({o / t:.2f}x)", flush=True
            )
            save()
        if "stream" not in skip:
            res["stream"] = []
            for pin in (False, True) if device.type == "cuda" else (False,):
                s = streaming(pair, device, runs, args.budget_fraction, pin)
                res["stream"].append(s)
                md.append(
                    f"| {family} | budget {s['budget_MiB']:.0f} of {s['weights_MiB']:.0f} MiB"
                    f"{' (pinned)' if pin else ''}: step | {s['streamed_s'] * 1e3:.1f} ms | resident "
                    f"{s['resident_s'] * 1e3:.1f} ms | {s['slowdown']:.2f} |"
                )
                print(f"  stream{' pinned' if pin else ''}: {json.dumps(s)}", flush=True)
                save()
        if "fp8" not in skip:
            n_ours = fp8_linears(pair.ours)
            pair.theirs.enable_layerwise_casting(  # type: ignore[operator]
                storage_dtype=torch.float8_e4m3fn, compute_dtype=dtype
            )
            with torch.no_grad():
                ours_fp8, theirs_fp8 = pair.ours_call(), pair.theirs_call()
            o, t, _, _ = vs.interleaved(pair.ours_call, pair.theirs_call, runs, device)
            res["fp8"] = {
                "ours_s": o,
                "diffusers_s": t,
                "ratio": o / t,
                "ours_linears": n_ours,
                "ours_weights_MiB": weight_bytes(pair.ours) / 2**20,
                "diffusers_weights_MiB": weight_bytes(pair.theirs) / 2**20,
                "ours_vs_own_bf16": rel(ours_fp8, ours_bf16),
                "diffusers_vs_own_bf16": rel(theirs_fp8, theirs_bf16),
            }
            md.append(f"| {family} | fp8 (e4m3fn) step | {o * 1e3:.1f} ms | {t * 1e3:.1f} ms | {o / t:.2f} |")
            print(f"  fp8: {json.dumps(res['fp8'])}", flush=True)
            save()
        res["total_s"] = time.perf_counter() - t0
        del pair, ours_bf16, theirs_bf16
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    save()
    print("\n".join(md))


if __name__ == "__main__":
    main()
