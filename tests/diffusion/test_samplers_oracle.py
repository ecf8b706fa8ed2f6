"""Samplers against diffusers' schedulers: same model, same sigmas, same injected noise.

The model is the exact Gaussian-mixture denoiser (float64). For diffusers it is wrapped as an
eps-prediction network on variance-preserving samples (``x_vp = x_ve / sqrt(1 + sigma^2)``, the
input every discrete scheduler hands its model after ``scale_model_input``), or as a velocity
network for flow matching. The wrapper reads the noise level of the current step from the
scheduler's own tables (``sigmas[step_index]`` or ``alphas_cumprod[t]``), so both sides evaluate
the model at exactly the same sigmas; our samplers get those same sigmas (diffusers stores them in
float32, we pass those float32 values as float64).

Conventions configured to match, per scheduler:
* the final step goes to sigma = 0 (except uni_pc bh1, see CASES; DDIM: ``set_alpha_to_one=True``; DPM/UniPC:
  ``final_sigmas_type="zero"``; the Euler family appends 0 already);
* DDIM: ``clip_sample=False``; timesteps "leading" (diffusers' default): our sigmas are
  ``sigma(t)`` at its timesteps followed by 0;
* DPM-Solver++ and UniPC: Karras sigmas; diffusers then takes a first-order last step
  (``lower_order_final``), as our samplers do when going to 0; UniPC ``solver_order=3`` (ComfyUI's);
* LCM: ``timestep_scaling=1e6`` makes the consistency boundary scalings c_skip ~ 0, c_out ~ 1 (they
  belong to an LCM model's denoiser wrapper, not to the sampler);
* noise: diffusers draws it through ``randn_tensor`` imported into the scheduler module; we patch
  that symbol to hand out a pre-drawn list, and give our sampler the same list in the same order
  (diffusers also draws for the final step, where its coefficient is 0; our samplers skip it).

Final samples must agree within 1e-4 relative error (diffusers does parts of its arithmetic in
float32, so agreement is ~1e-6, not 1e-12).
"""

from __future__ import annotations

import importlib

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from latentworks.diffusion.analytic import default_test_mixture  # noqa: E402
from latentworks.diffusion.denoisers import FLOW, VE  # noqa: E402
from latentworks.diffusion.samplers import SAMPLERS  # noqa: E402

BATCH = 64
STEPS = 10
REL_TOL = 1e-4


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


class NoiseList:
    """Pre-drawn unit noise handed out in call order (to diffusers and to us separately)."""

    def __init__(self, num: int, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.draws = torch.randn(num, BATCH, 2, dtype=torch.float64, generator=gen)

    def ours(self):
        it = iter(self.draws)
        return lambda sigma, sigma_next: next(it)

    def theirs(self):
        it = iter(self.draws)
        return lambda shape, *args, **kwargs: next(it).clone().to(kwargs.get("dtype") or torch.float64)


def current_sigma(scheduler, t) -> float:
    if hasattr(scheduler, "sigmas") and getattr(scheduler, "step_index", None) is not None:
        return float(scheduler.sigmas[scheduler.step_index])
    if hasattr(scheduler, "sigmas") and getattr(scheduler, "step_index", None) is None:
        return float(scheduler.sigmas[0])
    abar = float(scheduler.alphas_cumprod[int(t)])
    return ((1 - abar) / abar) ** 0.5


def run_diffusers(scheduler, denoiser, x_start_ve: torch.Tensor, *, vp_sample: bool, flow: bool = False):
    """Drive ``scheduler`` with the GMM model; x_start_ve is the VE (or flow) sample at sigmas[0]."""
    sigma0 = current_sigma(scheduler, scheduler.timesteps[0])
    sample = x_start_ve / (1 + sigma0**2) ** 0.5 if vp_sample else x_start_ve.clone()
    for t in scheduler.timesteps:
        model_in = (
            scheduler.scale_model_input(sample, t) if hasattr(scheduler, "scale_model_input") else sample
        )
        sigma = current_sigma(scheduler, t)
        if flow:
            x = model_in
            out = (x - denoiser(x, torch.full((BATCH,), sigma, dtype=torch.float64))) / sigma  # velocity
        else:
            x_ve = model_in * (1 + sigma**2) ** 0.5
            out = (x_ve - denoiser(x_ve, torch.full((BATCH,), sigma, dtype=torch.float64))) / sigma  # eps
        sample = scheduler.step(out.to(torch.float64), t, sample).prev_sample.to(torch.float64)
    if vp_sample:  # back to VE space at the final sigma (a no-op when it is 0)
        sigma_last = float(scheduler.sigmas[-1]) if hasattr(scheduler, "sigmas") else 0.0
        sample = sample * (1 + sigma_last**2) ** 0.5
    return sample


def discrete_sigmas(scheduler) -> torch.Tensor:
    abar = scheduler.alphas_cumprod.to(torch.float64)[scheduler.timesteps.long()]
    return torch.cat([((1 - abar) / abar).sqrt(), torch.zeros(1, dtype=torch.float64)])


def x_start(sigma0: float, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(BATCH, 2, dtype=torch.float64, generator=gen) * (1 + sigma0**2) ** 0.5


SD_BETAS = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
}


def make(name: str, **config):
    return getattr(diffusers, name)(**SD_BETAS, **config)


CASES = {
    # our sampler, diffusers scheduler, config, VP-sample convention, randn module to patch
    "ddim": ("DDIMScheduler", {"clip_sample": False, "set_alpha_to_one": True}, True, None),
    "euler": ("EulerDiscreteScheduler", {}, False, None),
    "euler_karras": ("EulerDiscreteScheduler", {"use_karras_sigmas": True}, False, None),
    "euler_ancestral": ("EulerAncestralDiscreteScheduler", {}, False, "scheduling_euler_ancestral_discrete"),
    "heun": ("HeunDiscreteScheduler", {}, False, None),
    "dpmpp_2m": (
        "DPMSolverMultistepScheduler",
        {
            "algorithm_type": "dpmsolver++",
            "solver_order": 2,
            "use_karras_sigmas": True,
            "final_sigmas_type": "zero",
        },
        True,
        None,
    ),
    "dpmpp_2m_sde": (
        "DPMSolverMultistepScheduler",
        {
            "algorithm_type": "sde-dpmsolver++",
            "solver_order": 2,
            "use_karras_sigmas": True,
            "final_sigmas_type": "zero",
        },
        True,
        "scheduling_dpmsolver_multistep",
    ),
    # bh1 with a final step to 0 is NaN in diffusers (alpha_t * B(h) * 0 with B(h) = -inf), so this
    # case ends at the table's sigma_min instead (default spacing, final_sigmas_type="sigma_min").
    "uni_pc": (
        "UniPCMultistepScheduler",
        {
            "solver_order": 3,
            "solver_type": "bh1",
            "predict_x0": True,
            "final_sigmas_type": "sigma_min",
            "lower_order_final": True,
        },
        True,
        None,
    ),
    "uni_pc_bh2": (
        "UniPCMultistepScheduler",
        {
            "solver_order": 3,
            "solver_type": "bh2",
            "predict_x0": True,
            "use_karras_sigmas": True,
            "final_sigmas_type": "zero",
            "lower_order_final": True,
        },
        True,
        None,
    ),
    "lcm": ("LCMScheduler", {"timestep_scaling": 1e6}, True, "scheduling_lcm"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_matches_diffusers(case: str, monkeypatch):
    scheduler_name, config, vp_sample, randn_module = CASES[case]
    sampler = SAMPLERS[case.removesuffix("_karras")]
    scheduler = make(scheduler_name, **config)
    scheduler.set_timesteps(4 if case == "lcm" else STEPS)
    if hasattr(scheduler, "sigmas") and case not in ("lcm", "ddim"):
        sigmas = torch.unique_consecutive(scheduler.sigmas.to(torch.float64))  # Heun repeats each sigma
    else:
        sigmas = discrete_sigmas(scheduler)
    mixture = default_test_mixture()
    denoiser = mixture.denoiser(VE)
    x0 = x_start(float(sigmas[0]))
    noise = NoiseList(STEPS + 1, seed=1)
    if randn_module is not None:
        module = importlib.import_module(f"diffusers.schedulers.{randn_module}")
        monkeypatch.setattr(module, "randn_tensor", noise.theirs())
    theirs = run_diffusers(scheduler, denoiser, x0, vp_sample=vp_sample)
    ours = sampler(denoiser, x0, sigmas, noise=noise.ours() if randn_module else None)
    err = relative_error(ours, theirs)
    print(f"{case}: relative error {err:.1e}")
    assert err < REL_TOL, f"{case}: relative error {err:.2e} vs diffusers {scheduler_name}"
    # and the comparison can fail: a different sampler is far off
    other_name = "dpm_2" if sampler in (SAMPLERS["euler"], SAMPLERS["ddim"]) else "euler"
    other = SAMPLERS[other_name](denoiser, x0, sigmas, noise=noise.ours())
    assert relative_error(other, theirs) > 100 * REL_TOL


def test_flow_euler_matches_flow_match_euler_discrete():
    """Flow-matching Euler (SD3/FLUX): our euler on a FLOW denoiser with the scheduler's shifted
    sigmas (shift = 3, starting at sigma = 1) equals FlowMatchEulerDiscreteScheduler."""
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    scheduler.set_timesteps(STEPS)
    sigmas = scheduler.sigmas.to(torch.float64)
    assert float(sigmas[0]) == 1.0 and float(sigmas[-1]) == 0.0
    denoiser = default_test_mixture().denoiser(FLOW)
    x0 = torch.randn(BATCH, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    theirs = run_diffusers(scheduler, denoiser, x0, vp_sample=False, flow=True)
    ours = SAMPLERS["euler"](denoiser, x0, sigmas)
    assert relative_error(ours, theirs) < REL_TOL
    assert relative_error(SAMPLERS["heun"](denoiser, x0, sigmas), theirs) > 100 * REL_TOL
