"""ComfyUI's custom-sampling nodes: SAMPLER, SIGMAS, NOISE and GUIDER builders and the samplers that take them.

KSamplerSelect, BasicScheduler, KarrasScheduler, ExponentialScheduler, SDTurboScheduler,
BetaSamplingScheduler, SplitSigmas, SplitSigmasDenoise, FlipSigmas, RandomNoise, DisableNoise, BasicGuider,
CFGGuider, SamplerCustom, SamplerCustomAdvanced. Names, inputs and categories are ComfyUI's.

SamplerCustom(Advanced) samples through the same body as KSampler (``nodes.sampling.sample_along``, which
calls ``pipelines.sampling.denoise_latents`` with ``seeds_for``), so RandomNoise(seed) + CFGGuider +
KSamplerSelect + BasicScheduler gives KSampler's latents bit for bit.

BasicScheduler schedules with the model's own sampling, as ComfyUI does; for a family whose shift follows the
image size (FLUX, Qwen-Image) that is the shift of its native resolution; use ModelSamplingFlux for others.
Not provided: DualCFGGuider (it needs a three-way guidance wrapper that the one sampling path does not take).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from latentworks.diffusion.samplers import SAMPLERS, get_sampler
from latentworks.diffusion.schedules import (
    SCHEDULERS,
    beta_schedule,
    exponential_sigmas,
    get_sigmas,
    karras_sigmas,
)
from latentworks.graph.executor import ExecutionContext
from latentworks.graph.types import NodeSpec, OutputSpec, input_spec
from latentworks.nodes.payloads import (
    ConditioningPayload,
    GuiderPayload,
    Latent,
    ModelPayload,
    NoisePayload,
    SamplerPayload,
    SigmasPayload,
)
from latentworks.nodes.sampling import SEED_MAX, materialise_latent, sample_along
from latentworks.pipelines.families import behaviour_of, model_sampling_for

SD_SIGMA_MAX, SD_SIGMA_MIN = 14.614642, 0.0291675  # ComfyUI's defaults: SD 1.x's training range


def scheduling_sampling(model: ModelPayload) -> Any:
    """The model sampling BasicScheduler and the other model-based schedulers use: the model's own, shifted
    for its family's native resolution when the shift follows the image size (ComfyUI's default for FLUX)."""
    folder = model.folder
    h, w = behaviour_of(folder.meta.get("family")).resolution
    f = model.factor  # the VAE's, or 8 for a denoiser loaded alone (UNETLoader)
    return model_sampling_for(folder, latent_height=h // f, latent_width=w // f)


# ----------------------------------------------------------------------------------------------------------
# SAMPLER, SIGMAS, NOISE, GUIDER
# ----------------------------------------------------------------------------------------------------------


def _ksampler_select(ctx: Any, sampler_name: str) -> tuple[Any, ...]:
    get_sampler(sampler_name)  # a clear error for an unknown name
    return (SamplerPayload(sampler_name),)


def _basic_scheduler(
    ctx: Any, model: ModelPayload, scheduler: str, steps: int, denoise: float
) -> tuple[Any, ...]:
    if denoise <= 0.0:
        return (SigmasPayload(torch.zeros(0)),)  # nothing to denoise (ComfyUI: an empty schedule)
    return (
        SigmasPayload(get_sigmas(scheduling_sampling(model), scheduler, int(steps), denoise=float(denoise))),
    )


def _check_range(node: str, sigma_max: float, sigma_min: float) -> None:
    if not 0.0 < sigma_min < sigma_max:
        raise ValueError(
            f"{node}: need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}"
        )


def _karras(ctx: Any, steps: int, sigma_max: float, sigma_min: float, rho: float) -> tuple[Any, ...]:
    _check_range("KarrasScheduler", sigma_max, sigma_min)
    return (SigmasPayload(karras_sigmas(int(steps), float(sigma_min), float(sigma_max), rho=float(rho))),)


def _exponential(ctx: Any, steps: int, sigma_max: float, sigma_min: float) -> tuple[Any, ...]:
    _check_range("ExponentialScheduler", sigma_max, sigma_min)
    return (SigmasPayload(exponential_sigmas(int(steps), float(sigma_min), float(sigma_max))),)


def _sd_turbo(ctx: Any, model: ModelPayload, steps: int, denoise: float) -> tuple[Any, ...]:
    """SD-Turbo's schedule: training steps 999, 899, ..., 99 (every 100th from the noisiest), starting
    ``10 - int(10 * denoise)`` entries in, ``steps`` of them, + 0."""
    start = 10 - int(10 * float(denoise))
    timesteps = torch.arange(10, 0, -1, dtype=torch.float64)[start : start + int(steps)] * 100 - 1
    sigmas = model.folder.model_sampling.sigma(timesteps).to(torch.float32)
    return (SigmasPayload(torch.cat([sigmas, sigmas.new_zeros(1)])),)


def _beta(ctx: Any, model: ModelPayload, steps: int, alpha: float, beta: float) -> tuple[Any, ...]:
    if alpha <= 0 or beta <= 0:
        raise ValueError(f"BetaSamplingScheduler: alpha and beta must be greater than 0, got {alpha}, {beta}")
    sigmas = beta_schedule(scheduling_sampling(model), int(steps), alpha=float(alpha), beta=float(beta))
    return (SigmasPayload(sigmas),)


def _split(ctx: Any, sigmas: SigmasPayload, step: int) -> tuple[Any, ...]:
    s = sigmas.sigmas
    return (SigmasPayload(s[: int(step) + 1]), SigmasPayload(s[int(step) :]))


def _split_denoise(ctx: Any, sigmas: SigmasPayload, denoise: float) -> tuple[Any, ...]:
    """The last ``round(steps * denoise)`` steps become low_sigmas, the steps before them high_sigmas.

    At denoise 0 high_sigmas is the whole schedule and low_sigmas ``[0]`` (ComfyUI's slice ``[:-0]`` gives
    an empty high_sigmas there)."""
    s = sigmas.sigmas
    low_steps = round(max(s.shape[-1] - 1, 0) * float(denoise))
    return (SigmasPayload(s[: s.shape[-1] - low_steps]), SigmasPayload(s[-(low_steps + 1) :]))


def _flip(ctx: Any, sigmas: SigmasPayload) -> tuple[Any, ...]:
    """Reverse a schedule (for unsampling); a leading 0 becomes 1e-4 so the first step has a noise level."""
    s = sigmas.sigmas.flip(0)
    if s.numel() and float(s[0]) == 0.0:
        s[0] = 0.0001
    return (SigmasPayload(s),)


def _random_noise(ctx: Any, noise_seed: int) -> tuple[Any, ...]:
    return (NoisePayload(int(noise_seed)),)


def _disable_noise(ctx: Any) -> tuple[Any, ...]:
    return (NoisePayload(0, add_noise=False),)


def _basic_guider(ctx: Any, model: ModelPayload, conditioning: ConditioningPayload) -> tuple[Any, ...]:
    return (GuiderPayload(model, conditioning, None, 1.0),)


def _cfg_guider(
    ctx: Any, model: ModelPayload, positive: ConditioningPayload, negative: ConditioningPayload, cfg: float
) -> tuple[Any, ...]:
    return (GuiderPayload(model, positive, negative, float(cfg)),)


def _dual_cfg_guider(
    ctx: Any,
    model: ModelPayload,
    cond1: ConditioningPayload,
    cond2: ConditioningPayload,
    negative: ConditioningPayload,
    cfg_conds: float,
    cfg_cond2_negative: float,
    style: str,
) -> tuple[Any, ...]:
    guider = GuiderPayload(
        model,
        cond1,
        negative,
        float(cfg_conds),
        cond2=cond2,
        cfg2=float(cfg_cond2_negative),
        nested=style == "nested",
    )
    return (guider,)


# ----------------------------------------------------------------------------------------------------------
# Samplers
# ----------------------------------------------------------------------------------------------------------


def sample_custom(
    ctx: ExecutionContext,
    noise: NoisePayload,
    guider: GuiderPayload,
    sampler: SamplerPayload,
    sigmas: SigmasPayload,
    latent_image: Latent,
) -> tuple[Latent, Latent]:
    """Sample ``latent_image`` along ``sigmas``: (the result, the model's last x0 prediction)."""
    s = sigmas.sigmas
    if s.ndim != 1:
        raise ValueError(f"sigmas must be a 1-D schedule, got shape {tuple(s.shape)}")
    folder = guider.model.folder
    x0, _ = materialise_latent(ctx, folder, latent_image)
    return sample_along(
        ctx,
        folder,
        latent_image,
        x0,
        s.float(),
        noise.seed,
        guider.cfg,
        sampler.name,
        guider.positive,
        guider.negative,
        add_noise=noise.add_noise,
        sampler_options=dict(sampler.options),
        dual=None if guider.cond2 is None else (guider.cond2, guider.cfg2, guider.nested),
    )


def _sampler_custom(
    ctx: ExecutionContext,
    model: ModelPayload,
    add_noise: bool,
    noise_seed: int,
    cfg: float,
    positive: ConditioningPayload,
    negative: ConditioningPayload,
    sampler: SamplerPayload,
    sigmas: SigmasPayload,
    latent_image: Latent,
) -> tuple[Any, ...]:
    noise = NoisePayload(int(noise_seed), add_noise=bool(add_noise))
    return sample_custom(
        ctx, noise, GuiderPayload(model, positive, negative, float(cfg)), sampler, sigmas, latent_image
    )


def _sampler_custom_advanced(
    ctx: ExecutionContext,
    noise: NoisePayload,
    guider: GuiderPayload,
    sampler: SamplerPayload,
    sigmas: SigmasPayload,
    latent_image: Latent,
) -> tuple[Any, ...]:
    return sample_custom(ctx, noise, guider, sampler, sigmas, latent_image)


def custom_sampling_nodes() -> list[NodeSpec]:
    I = input_spec  # noqa: E741, N806

    sigmas_out = (OutputSpec(type="SIGMAS"),)
    split_out = (OutputSpec(type="SIGMAS", name="high_sigmas"), OutputSpec(type="SIGMAS", name="low_sigmas"))
    latents_out = (
        OutputSpec(type="LATENT", name="output"),
        OutputSpec(type="LATENT", name="denoised_output"),
    )
    steps = I("steps", "INT", default=20, min=1, max=10000)
    exact = {"round": False, "advanced": True}  # ComfyUI: no rounding in the editor, an "advanced" widget
    sigma_max = I("sigma_max", "FLOAT", default=SD_SIGMA_MAX, min=0.0, max=5000.0, step=0.01, extra=exact)
    sigma_min = I("sigma_min", "FLOAT", default=SD_SIGMA_MIN, min=0.0, max=5000.0, step=0.01, extra=exact)
    seed = I("noise_seed", "INT", default=0, min=0, max=SEED_MAX, extra={"control_after_generate": True})
    cfg = I("cfg", "FLOAT", default=8.0, min=0.0, max=100.0, step=0.1, extra={"round": 0.01})
    return [
        NodeSpec(
            name="KSamplerSelect",
            category="sampling/samplers",
            description="Pick a sampler by name.",
            execute=_ksampler_select,
            inputs=(I("sampler_name", "COMBO", choices=tuple(SAMPLERS), default="euler"),),
            outputs=(OutputSpec(type="SAMPLER"),),
        ),
        NodeSpec(
            name="BasicScheduler",
            category="sampling/schedulers",
            description="A named schedule of noise levels for the model (denoise < 1 keeps its low end).",
            execute=_basic_scheduler,
            inputs=(
                I("model", "MODEL"),
                I("scheduler", "COMBO", choices=tuple(SCHEDULERS), default="normal"),
                steps,
                I("denoise", "FLOAT", default=1.0, min=0.0, max=1.0, step=0.01),
            ),
            outputs=sigmas_out,
        ),
        NodeSpec(
            name="KarrasScheduler",
            category="sampling/schedulers",
            description="Karras et al. 2022's schedule (eq. 5) between sigma_max and sigma_min.",
            execute=_karras,
            inputs=(
                steps,
                sigma_max,
                sigma_min,
                I("rho", "FLOAT", default=7.0, min=0.0, max=100.0, step=0.01, extra=exact),
            ),
            outputs=sigmas_out,
        ),
        NodeSpec(
            name="ExponentialScheduler",
            category="sampling/schedulers",
            description="Noise levels evenly spaced in log-sigma between sigma_max and sigma_min.",
            execute=_exponential,
            inputs=(steps, sigma_max, sigma_min),
            outputs=sigmas_out,
        ),
        NodeSpec(
            name="SDTurboScheduler",
            category="sampling/schedulers",
            description="SD-Turbo's 1-10 step schedule (training steps 999, 899, ...).",
            execute=_sd_turbo,
            inputs=(
                I("model", "MODEL"),
                I("steps", "INT", default=1, min=1, max=10),
                I("denoise", "FLOAT", default=1.0, min=0.0, max=1.0, step=0.01),
            ),
            outputs=sigmas_out,
        ),
        NodeSpec(
            name="BetaSamplingScheduler",
            category="sampling/schedulers",
            description="Lee et al. 2024's schedule: training steps at Beta(alpha, beta) quantiles.",
            execute=_beta,
            inputs=(
                I("model", "MODEL"),
                steps,
                I("alpha", "FLOAT", default=0.6, min=0.0, max=50.0, step=0.01, extra=exact),
                I("beta", "FLOAT", default=0.6, min=0.0, max=50.0, step=0.01, extra=exact),
            ),
            outputs=sigmas_out,
        ),
        NodeSpec(
            name="SplitSigmas",
            category="sampling/sigmas",
            description="Split a schedule at a step: high_sigmas up to it, low_sigmas from it.",
            execute=_split,
            inputs=(I("sigmas", "SIGMAS"), I("step", "INT", default=0, min=0, max=10000)),
            outputs=split_out,
        ),
        NodeSpec(
            name="SplitSigmasDenoise",
            category="sampling/sigmas",
            description="Split a schedule so low_sigmas holds the last denoise fraction of its steps.",
            execute=_split_denoise,
            inputs=(I("sigmas", "SIGMAS"), I("denoise", "FLOAT", default=1.0, min=0.0, max=1.0, step=0.01)),
            outputs=split_out,
        ),
        NodeSpec(
            name="FlipSigmas",
            category="sampling/sigmas",
            description="Reverse a schedule (to unsample an image back to noise).",
            execute=_flip,
            inputs=(I("sigmas", "SIGMAS"),),
            outputs=sigmas_out,
        ),
        NodeSpec(
            name="RandomNoise",
            category="sampling/noise",
            description="Seeded Gaussian noise; image i of a batch uses seed + i.",
            execute=_random_noise,
            inputs=(seed,),
            outputs=(OutputSpec(type="NOISE"),),
        ),
        NodeSpec(
            name="DisableNoise",
            category="sampling/noise",
            description="No initial noise: sample from the latent as it is.",
            execute=_disable_noise,
            inputs=(),
            outputs=(OutputSpec(type="NOISE"),),
        ),
        NodeSpec(
            name="BasicGuider",
            display_name="Basic Guider",
            category="sampling/guiders",
            description="Sample with one conditioning and no classifier-free guidance.",
            execute=_basic_guider,
            inputs=(I("model", "MODEL"), I("conditioning", "CONDITIONING")),
            outputs=(OutputSpec(type="GUIDER"),),
        ),
        NodeSpec(
            name="CFGGuider",
            display_name="CFG Guider",
            category="sampling/guiders",
            description="Classifier-free guidance between a positive and a negative conditioning.",
            execute=_cfg_guider,
            inputs=(
                I("model", "MODEL"),
                I("positive", "CONDITIONING"),
                I("negative", "CONDITIONING"),
                cfg,
            ),
            outputs=(OutputSpec(type="GUIDER"),),
        ),
        NodeSpec(
            name="DualCFGGuider",
            category="sampling/custom_sampling/guiders",
            description="Guidance with two prompts: cond2 against the negative, cond1 against cond2.",
            execute=_dual_cfg_guider,
            inputs=(
                I("model", "MODEL"),
                I("cond1", "CONDITIONING"),
                I("cond2", "CONDITIONING"),
                I("negative", "CONDITIONING"),
                replace(cfg, name="cfg_conds"),
                replace(cfg, name="cfg_cond2_negative"),
                I("style", "COMBO", choices=("regular", "nested"), default="regular"),
            ),
            outputs=(OutputSpec(type="GUIDER"),),
        ),
        NodeSpec(
            name="SamplerCustom",
            category="sampling/custom_sampling",
            description="Sample with a chosen sampler and schedule and classifier-free guidance.",
            execute=_sampler_custom,
            inputs=(
                I("model", "MODEL"),
                I("add_noise", "BOOLEAN", default=True, extra={"advanced": True}),
                seed,
                cfg,
                I("positive", "CONDITIONING"),
                I("negative", "CONDITIONING"),
                I("sampler", "SAMPLER"),
                I("sigmas", "SIGMAS"),
                I("latent_image", "LATENT"),
            ),
            outputs=latents_out,
        ),
        NodeSpec(
            name="SamplerCustomAdvanced",
            category="sampling/custom_sampling",
            description="Sample with separate noise, guider, sampler and schedule nodes.",
            execute=_sampler_custom_advanced,
            inputs=(
                I("noise", "NOISE"),
                I("guider", "GUIDER"),
                I("sampler", "SAMPLER"),
                I("sigmas", "SIGMAS"),
                I("latent_image", "LATENT"),
            ),
            outputs=latents_out,
        ),
    ]
