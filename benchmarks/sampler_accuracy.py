"""Final error vs number of steps for every sampler on the analytic Gaussian-mixture problem.

Deterministic samplers: RMS distance to the reference probability-flow ODE solution (DOP853,
rtol 1e-10) at sigma = 0, 256 trajectories from sigma_max = 80 (VE, Karras rho = 7 schedule to
sigma_min = 0.002, then 0) — the same shape of run a user makes. Stochastic samplers: moment error
of 20k samples vs the exact mixture (max |mean error| + max |covariance error|); at these step counts
this is dominated by discretisation, the Monte-Carlo floor is ~0.02. LCM uses the exact
consistency function as its model (see analytic.ConsistencyFunction) and 4k samples.

    .venv/bin/python benchmarks/sampler_accuracy.py [--flow]
"""

from __future__ import annotations

import argparse
import time

import torch

from latentworks.diffusion.analytic import default_test_mixture
from latentworks.diffusion.denoisers import FLOW, VE
from latentworks.diffusion.samplers import SAMPLERS, STOCHASTIC_SAMPLERS, gaussian_noise

STEPS = (4, 8, 10, 16, 32)


def karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    sig = (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([sig, torch.zeros(1, dtype=torch.float64)])


def flow_schedule(n: int, shift: float = 3.0) -> torch.Tensor:
    t = torch.linspace(1, 0, n + 1, dtype=torch.float64)
    return shift * t / (1 + (shift - 1) * t)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--flow", action="store_true", help="FLOW interpolation (SD3 shift-3 schedule from sigma=1)"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    interp = FLOW if args.flow else VE
    mixture = default_test_mixture()
    denoiser = mixture.denoiser(interp)
    gen = torch.Generator().manual_seed(0)
    sigma_max = 1.0 if args.flow else 80.0

    def schedule(n: int) -> torch.Tensor:
        return flow_schedule(n) if args.flow else karras(n, 0.002, sigma_max)

    x_det = torch.randn(256, 2, dtype=torch.float64, generator=gen) * sigma_max
    ref = mixture.reference_ode_solution(x_det, (sigma_max, 0.0), interp, rtol=1e-10, atol=1e-11)
    x_sto = torch.randn(20_000, 2, dtype=torch.float64, generator=gen) * sigma_max
    mean, cov = mixture.mean(), mixture.covariance()
    t0 = time.time()
    print(f"interpolation {interp.name}; columns: steps (denoiser calls differ per sampler)\n")
    print("| sampler | kind | " + " | ".join(str(n) for n in STEPS) + " |")
    print("|---|---|" + "---:|" * len(STEPS))
    for name, fn in SAMPLERS.items():
        cells = []
        for n in STEPS:
            sig = schedule(n)
            if name == "lcm":
                x = x_sto[:4000]
                out = fn(
                    mixture.consistency_function(interp, rtol=1e-6),
                    x,
                    sig,
                    noise=gaussian_noise(x, torch.Generator().manual_seed(n)),
                )
            elif name in STOCHASTIC_SAMPLERS:
                out = fn(denoiser, x_sto, sig, noise=gaussian_noise(x_sto, torch.Generator().manual_seed(n)))
            else:
                out = fn(denoiser, x_det, sig)
            if name in STOCHASTIC_SAMPLERS:
                err = (out.mean(0) - mean).abs().max() + (torch.cov(out.T) - cov).abs().max()
            else:
                err = (out - ref).pow(2).sum(-1).mean().sqrt()
            cells.append(f"{float(err):.2e}")
        kind = "moments" if name in STOCHASTIC_SAMPLERS else "ODE RMS"
        print(f"| {name} | {kind} | " + " | ".join(cells) + " |", flush=True)
    print(f"\n({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
