"""Time to first image with the embedded default model on this machine (not a test).

Measures: model load, then one 20-step generation with CFG at batch 1 and the model's native
resolution (text encoding + sampling + decoding), median of several runs; peak resident memory.
The goal for the default model on the 2-core CPU is at most 3 s per image after load. As a baseline
in the same process it also times the denoiser alone (40 calls: 20 steps x cond/uncond in one batch
of 2 means 20 batched calls), so the printed ratio shows how much of the time is the network itself.

    .venv/bin/python benchmarks/generate.py [--model default] [--runs 5] [--steps 20]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--sampler", default="euler")
    args = ap.parse_args()
    from latentworks.pipelines import Pipeline

    t0 = time.perf_counter()
    pipe = Pipeline.from_pretrained(args.model)
    pipe.text_encoder.encode(["warm-up"])  # the text encoder loads lazily; count it in load time
    load_s = time.perf_counter() - t0
    pipe("warm-up", seed=0, steps=2)
    times, parts = [], []
    for i in range(args.runs):
        t = time.perf_counter()
        r = pipe("a red apple, google style", seed=i, steps=args.steps, guidance=5.0, sampler=args.sampler)
        times.append(time.perf_counter() - t)
        parts.append(r.timings)
    # Baseline: the network alone for the same number of batched calls.
    net = pipe.model.denoiser_net
    h, w = pipe.model.resolution
    f = pipe.model.vae.config.downsample_factor
    x = torch.randn(2, pipe.model.latent_format.channels, h // f, w // f)
    cond = pipe.encode_prompts(["a", ""])
    with torch.no_grad():
        net(x, torch.full((2,), 500.0), cond)
        t = time.perf_counter()
        for _ in range(args.steps):
            net(x, torch.full((2,), 500.0), cond)
        net_s = time.perf_counter() - t
    med = statistics.median(times)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"| model | load s | image s (median of {args.runs}) | network-only s | image/network | peak RSS MB |"
    )
    print("|---|---|---|---|---|---|")
    print(
        f"| {args.model} {h}x{w}, {args.steps} steps {args.sampler}, CFG | {load_s:.2f} | {med:.3f} | "
        f"{net_s:.3f} | {med / net_s:.2f} | {peak_mb:.0f} |"
    )
    enc = statistics.median(p["encode_text"] for p in parts)
    smp = statistics.median(p["sample"] for p in parts)
    dec = statistics.median(p["decode"] for p in parts)
    print(
        f"\nparts (median s): encode_text {enc:.3f}, sample {smp:.3f}, decode {dec:.3f}; "
        f"threads {torch.get_num_threads()}"
    )


if __name__ == "__main__":
    main()
