"""Per-step sampler overhead (time outside the model call): ours vs the matching diffusers scheduler.

A trivial model (returns x * 0.5) on a 2 x 4 x 64 x 64 float32 latent, both sides in the same
process, one torch thread. Overhead per step = (loop time - time spent inside the model calls,
measured around each call) / steps; best of ``--repeats`` runs, ours and diffusers interleaved.

    .venv/bin/python benchmarks/sampler_overhead.py [--steps 50] [--repeats 5]
"""

from __future__ import annotations

import argparse
import functools
import time
import warnings

import torch

from latentworks.diffusion.samplers import SAMPLERS

SHAPE = (2, 4, 64, 64)


class Trivial:
    """A model that costs almost nothing: D(x) = x * 0.5 (ours), eps = x * 0.5 (diffusers).
    Accumulates the time spent inside its calls."""

    def __init__(self) -> None:
        self.inside = 0.0

    def __call__(self, x, sigma=None, cond=None):
        t0 = time.perf_counter()
        out = x * 0.5
        self.inside += time.perf_counter() - t0
        return out


def overhead(fn, model: Trivial) -> float:
    """Seconds of ``fn()`` spent outside ``model``."""
    model.inside = 0.0
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0 - model.inside


def diffusers_loop(scheduler_factory, steps: int, x: torch.Tensor, model: Trivial):
    def run():
        scheduler = scheduler_factory()
        scheduler.set_timesteps(steps)
        sample = x * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            model_in = scheduler.scale_model_input(sample, t)
            out = model(model_in)
            sample = scheduler.step(out, t, sample).prev_sample
        return sample

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    import diffusers

    torch.set_num_threads(1)
    torch.manual_seed(0)
    x = torch.randn(SHAPE)
    betas = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}
    pairs = {
        "euler": (lambda: diffusers.EulerDiscreteScheduler(**betas), 1),
        "dpmpp_2m": (lambda: diffusers.DPMSolverMultistepScheduler(**betas, algorithm_type="dpmsolver++"), 1),
        "uni_pc": (lambda: diffusers.UniPCMultistepScheduler(**betas, solver_order=3), 1),
        "heun": (lambda: diffusers.HeunDiscreteScheduler(**betas), 2),
        "ddim": (lambda: diffusers.DDIMScheduler(**betas, clip_sample=False), 1),
    }
    print(f"latent {SHAPE} float32, {args.steps} steps, best of {args.repeats}, torch threads 1\n")
    print("| sampler | ours us/step | diffusers us/step | ratio ours/diffusers |")
    print("|---|---:|---:|---:|")
    for name, (factory, _) in pairs.items():
        scheduler = factory()
        scheduler.set_timesteps(args.steps)
        sigmas = torch.unique_consecutive(scheduler.sigmas) if hasattr(scheduler, "sigmas") else None
        if sigmas is None:  # ddim: sigma(t) at its timesteps, then 0
            abar = scheduler.alphas_cumprod[scheduler.timesteps.long()]
            sigmas = torch.cat([((1 - abar) / abar).sqrt(), torch.zeros(1)])
        n_steps = len(sigmas) - 1
        model = Trivial()
        ours_runs, theirs_runs = [], []
        for _ in range(args.repeats):
            ours_runs.append(overhead(functools.partial(SAMPLERS[name], model, x, sigmas), model))
            theirs_runs.append(overhead(diffusers_loop(factory, args.steps, x, model), model))
        ours, theirs = min(ours_runs) / n_steps, min(theirs_runs) / n_steps
        print(f"| {name} | {ours * 1e6:.0f} | {theirs * 1e6:.0f} | {ours / theirs:.2f} |")


if __name__ == "__main__":
    main()
