"""Conditioning, latent and sampling nodes: CLIPTextEncode, FluxGuidance, EmptyLatentImage, KSampler,
KSamplerAdvanced, SetLatentNoiseMask, LatentUpscale.

Family specifics (SDXL size ids, FLUX guidance and resolution-dependent shift) are filled in at sampling
time from the model's family, as ComfyUI's models do, so plain CLIPTextEncode conditioning works for all.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from latentworks.diffusion.conditioning import CONCAT_KEY, Conditioning
from latentworks.diffusion.regions import (
    CondEntry,
    area_from_fractions,
    mask_bounds,
    resize_mask,
    sigma_range_of,
)
from latentworks.diffusion.samplers import SAMPLERS, StepInfo
from latentworks.diffusion.schedules import SCHEDULERS, get_sigmas
from latentworks.graph.executor import ExecutionContext
from latentworks.graph.types import NodeSpec, OutputSpec, Preview, input_spec
from latentworks.nodes.devices import compute_device, on_device, text_networks
from latentworks.nodes.guards import interruptible, needs_fine_checks
from latentworks.nodes.image_ops import MAX_RESOLUTION
from latentworks.nodes.payloads import ClipPayload, ConditioningPayload, Latent, ModelPayload, latent_factor
from latentworks.nodes.resize import LATENT_METHODS, resize
from latentworks.pipelines.families import add_conditioning_extras, behaviour_of, model_sampling_for
from latentworks.pipelines.inpaint import inpaint_channels, model_inpaint_inputs
from latentworks.pipelines.loading import ModelFolder
from latentworks.pipelines.sampling import DualGuidance, denoise_latents, seeds_for

FLUX_DEFAULT_GUIDANCE = 3.5  # what FLUX.1-dev gets when no FluxGuidance node sets it (as in ComfyUI)

SEED_MAX = 2**64 - 1

DIFFERENTIAL_KEY = "differential_diffusion"
"""``ModelFolder.meta`` key set by the DifferentialDiffusion node: sample with differential diffusion at this
strength (a float in [0, 1], see ``InpaintDenoiser``)."""


def _encode(ctx: Any, text: str, clip: ClipPayload) -> tuple[Any, ...]:
    with on_device(ctx, *([] if clip.on_host else text_networks(clip.encoder))):
        return (ConditioningPayload(clip.encoder.encode([text])),)


def _flux_guidance(ctx: Any, conditioning: ConditioningPayload, guidance: float) -> tuple[Any, ...]:
    def set_guidance(c: Conditioning) -> Conditioning:
        g = torch.full((c.batch_size,), float(guidance), dtype=torch.float32, device=c.tokens.device)
        return c.with_extra(guidance=g)

    return (conditioning.map_conds(set_guidance),)


def _empty_latent(ctx: Any, width: int, height: int, batch_size: int) -> tuple[Any, ...]:
    ctx.check_pixels(width, height, batch_size, inputs="width, height, batch_size")
    return (Latent(pixel_size=(int(height), int(width)), batch_size=int(batch_size)),)


def _preview_jpeg(rgb: torch.Tensor) -> Preview:
    """uint8 (h, w, 3) -> a JPEG preview, upscaled so small latents are visible."""
    im = Image.fromarray(rgb.cpu().numpy())
    if im.width < 256:
        s = max(1, 256 // im.width)
        im = im.resize((im.width * s, im.height * s), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=85)
    return Preview("JPEG", buf.getvalue())


def run_sampler(
    ctx: ExecutionContext,
    model: ModelPayload,
    seed: int,
    steps: int,
    cfg: float,
    sampler_name: str,
    scheduler: str,
    positive: ConditioningPayload,
    negative: ConditioningPayload,
    latent: Latent,
    *,
    denoise: float = 1.0,
    add_noise: bool = True,
    start_at_step: int = 0,
    end_at_step: int | None = None,
    leftover_noise: bool = False,
) -> Latent:
    """The shared body of KSampler and KSamplerAdvanced."""
    folder = model.folder
    x0, _ = materialise_latent(ctx, folder, latent)
    ms = model_sampling_for(folder, latent_height=x0.shape[-2], latent_width=x0.shape[-1])
    full = get_sigmas(ms, scheduler, steps, denoise=denoise) if denoise > 0 else torch.zeros(1)
    last = len(full) - 1 if end_at_step is None else min(end_at_step, len(full) - 1)
    sigmas = full[start_at_step : last + 1].clone()
    if len(sigmas) >= 2 and last < len(full) - 1 and not leftover_noise:
        sigmas[-1] = 0.0  # stop early but still finish the denoising (ComfyUI's force_full_denoise)
    samples, _ = sample_along(
        ctx, folder, latent, x0, sigmas, seed, cfg, sampler_name, positive, negative, add_noise=add_noise
    )
    return samples


def materialise_latent(
    ctx: ExecutionContext, folder: ModelFolder, latent: Latent
) -> tuple[torch.Tensor, int]:
    """The model-space latents (B, C, h, w) float32 on the model's device, and the VAE's downsampling
    factor; budget-checked before anything is allocated, and a clear error for a latent of another model."""
    device = compute_device(ctx, folder.denoiser_net)
    lf = folder.latent_format
    factor = latent_factor(folder)
    if latent.samples is not None:
        shape = tuple(latent.samples.shape)
    else:
        h, w = latent.pixel_size  # type: ignore[misc]
        shape = (latent.batch_size, lf.channels, h // factor, w // factor)
    ctx.check_latent(shape, inputs="latent_image")  # before materialising it (and the sampler's copies)
    x0 = latent.materialise(lf.channels, factor, device).float()
    if x0.shape[1] != lf.channels:
        raise ValueError(
            f"latent has {x0.shape[1]} channels but the model expects {lf.channels}; "
            "encode the image with this model's VAE"
        )
    return x0, factor


def model_concat(
    folder: ModelFolder,
    positive: ConditioningPayload,
    negative: ConditioningPayload | None,
    latent: Latent,
    x0: torch.Tensor,
) -> torch.Tensor:
    """The extra input channels of an inpainting model for latents ``x0`` (B, C, h, w), as ComfyUI builds them:
    InpaintModelConditioning's mask and masked-image latent (from the positive conditioning, else the
    negative); without them the latent's noise mask and the latent itself (VAEEncodeForInpaint greys out the
    masked area before encoding)."""
    b, size = x0.shape[0], x0.shape[-2:]
    source = next((c for c in (positive, negative) if c is not None and c.concat_latent is not None), None)
    if source is not None:
        masked, pixel_mask = source.concat_latent, source.concat_mask
    elif latent.noise_mask is not None:
        masked, pixel_mask = x0, latent.noise_mask
    else:
        raise ValueError(
            "this is an inpainting model (it takes a mask and a masked image besides the latent): give it "
            "InpaintModelConditioning's conditioning and latent, or a latent from VAEEncodeForInpaint"
        )
    assert masked is not None and pixel_mask is not None
    masked = masked.to(x0.device).float()
    if masked.shape[-2:] != size:
        raise ValueError(
            f"the inpainting image's latent is {tuple(masked.shape[-2:])} but the latent being sampled is "
            f"{tuple(size)}; encode the same image that InpaintModelConditioning got"
        )
    f = latent_factor(folder)
    m = F.interpolate(pixel_mask.to(x0.device).float(), size=(size[0] * f, size[1] * f), mode="bilinear")
    return model_inpaint_inputs(folder, _to_batch(m, b), _to_batch(masked, b), resize="bilinear")


def _to_batch(t: torch.Tensor, b: int) -> torch.Tensor:
    """Repeat or cut ``t`` (B', ...) to ``b`` rows (ComfyUI's resize_to_batch_size for the common cases)."""
    if t.shape[0] == b:
        return t
    reps = -(-b // t.shape[0])
    return t.repeat(reps, *([1] * (t.ndim - 1)))[:b]


def condition_list(
    payload: ConditioningPayload,
    prepare: Callable[[Conditioning], Conditioning],
    latent_hw: tuple[int, ...] | torch.Size,
    factor: int,
    model_sampling: Any,
) -> tuple[CondEntry, ...]:
    """A CONDITIONING's entries resolved for a latent of ``latent_hw`` cells (ComfyUI's rules):
    pixel areas are divided by the VAE ``factor`` (floor), fraction areas rounded (sizes at least 1),
    masks resized (bilinear) and multiplied by their strength, "mask bounds" turned into the mask's
    bounding box, and start/end percentages into noise levels of ``model_sampling``.
    ``prepare`` turns an entry's conditioning into the batch the sampler needs."""
    hw = (int(latent_hw[0]), int(latent_hw[1]))
    out = []
    for e in payload.entries:
        area = None
        if e.area is not None:
            area = tuple(int(v) // factor for v in e.area)
        elif e.area_fraction is not None:
            area = area_from_fractions(e.area_fraction, hw)
        mask = None
        if e.mask is not None:
            mask = resize_mask(e.mask, hw)
            if e.set_area_to_bounds:
                area = mask_bounds(mask)
            mask = mask * float(e.mask_strength)
        out.append(
            CondEntry(
                cond=prepare(e.cond),
                area=area,  # type: ignore[arg-type]
                mask=mask,
                strength=float(e.strength),
                sigma_range=sigma_range_of(model_sampling, e.start_percent, e.end_percent),
            )
        )
    return tuple(out)


def sample_along(
    ctx: ExecutionContext,
    folder: ModelFolder,
    latent: Latent,
    x0: torch.Tensor,
    sigmas: torch.Tensor,
    seed: int,
    cfg: float,
    sampler_name: str,
    positive: ConditioningPayload,
    negative: ConditioningPayload | None,
    *,
    add_noise: bool = True,
    sampler_options: dict[str, Any] | None = None,
    dual: tuple[ConditioningPayload, float, bool] | None = None,
) -> tuple[Latent, Latent]:
    """Sample ``x0`` (from :func:`materialise_latent`) along ``sigmas`` with ``denoise_latents``, seeding
    image i with ``seeds_for(seed, B)[i]``: the sampling body every sampler node shares.

    Returns the sampled latent and the model's last x0 prediction (SamplerCustom's ``denoised_output``;
    the input itself when there is no step to take). ``negative`` may be None only when ``cfg == 1``.
    Conditioning lists (ConditioningCombine, areas, masks, timestep ranges) are resolved for this latent
    (:func:`condition_list`); ``dual`` = (cond2, its scale, nested) selects DualCFGGuider's guidance.
    """
    factor = latent_factor(folder)
    lf = folder.latent_format
    if len(sigmas) < 2:
        same = Latent(samples=x0, noise_mask=latent.noise_mask, factor=factor, latent_format=lf)
        return same, same
    device = x0.device
    b = x0.shape[0]
    seeds = seeds_for(seed, b)
    behaviour = behaviour_of(folder.meta.get("family"))
    mask = None
    if latent.noise_mask is not None:
        mask = F.interpolate(latent.noise_mask.to(device).float(), size=x0.shape[-2:], mode="bilinear")
        mask = mask.expand(b, 1, *x0.shape[-2:]) if mask.shape[0] == 1 else mask
    h, w, g = x0.shape[-2] * factor, x0.shape[-1] * factor, FLUX_DEFAULT_GUIDANCE
    if negative is None and cfg != 1.0:
        raise ValueError(f"a negative conditioning is needed for cfg {cfg}; connect one or set cfg to 1")
    plain = positive.is_plain and (negative is None or negative.is_plain) and dual is None

    concat = model_concat(folder, positive, negative, latent, x0) if inpaint_channels(folder) else None

    def prepare(c: Conditioning, neg: bool) -> Conditioning:
        c = c.repeat(b).to(device)
        c = add_conditioning_extras(behaviour, c, height=h, width=w, guidance=g, negative=neg)
        return c if concat is None else c.with_extra(**{CONCAT_KEY: concat})

    cond: Any
    uncond: Any = None
    dual_guidance = None
    if plain:  # one prompt each: the sampler's one-call path, exactly as before conditioning lists
        cond = prepare(positive.cond, False)
        uncond = None if negative is None else prepare(negative.cond, True)
    else:
        ms = model_sampling_for(folder, latent_height=x0.shape[-2], latent_width=x0.shape[-1])

        def entries(payload: ConditioningPayload, neg: bool) -> tuple[CondEntry, ...]:
            return condition_list(payload, lambda c: prepare(c, neg), x0.shape[-2:], factor, ms)

        cond = entries(positive, False)
        uncond = None if negative is None else entries(negative, True)
        if dual is not None:
            dual_guidance = DualGuidance(entries(dual[0], True), dual[1], nested=dual[2])
    total = len(sigmas) - 1
    last: list[torch.Tensor] = []

    def callback(info: StepInfo) -> None:
        last[:] = [info.denoised]
        wanted = lf.rgb_factors and getattr(ctx, "previews", True)  # off unless a preview method is set
        preview = _preview_jpeg(torch.as_tensor(lf.preview(info.denoised[:1]))[0]) if wanted else None
        ctx.progress(info.i + 1, total, preview=preview)  # raises Interrupted when cancelled

    # /interrupt and the wall-time budget are checked before every network block, not only between steps.
    net = folder.denoiser_net
    fine = needs_fine_checks(net, x0.shape[-2] * x0.shape[-1])
    with on_device(ctx, net), interruptible(ctx.check_cancelled, net, fine=fine):
        out = denoise_latents(
            folder,
            x0,
            sigmas,
            seeds,
            cond,
            uncond,
            cfg,
            sampler_name,
            add_noise=add_noise,
            mask=mask,
            differential=folder.meta.get(DIFFERENTIAL_KEY, False),
            callback=callback,
            sampler_options=sampler_options,
            rescale_cfg=float(folder.meta.get("rescale_cfg", 0.0)),
            dual=dual_guidance,
        )
    samples = Latent(samples=out.float(), noise_mask=latent.noise_mask, factor=factor, latent_format=lf)
    denoised = replace(samples, samples=last[0].float()) if last else samples
    return samples, denoised


def _ksampler(
    ctx: ExecutionContext,
    model: ModelPayload,
    seed: int,
    steps: int,
    cfg: float,
    sampler_name: str,
    scheduler: str,
    positive: ConditioningPayload,
    negative: ConditioningPayload,
    latent_image: Latent,
    denoise: float = 1.0,
) -> tuple[Any, ...]:
    return (
        run_sampler(
            ctx,
            model,
            seed,
            steps,
            cfg,
            sampler_name,
            scheduler,
            positive,
            negative,
            latent_image,
            denoise=denoise,
        ),
    )


def _ksampler_advanced(
    ctx: ExecutionContext,
    model: ModelPayload,
    add_noise: str,
    noise_seed: int,
    steps: int,
    cfg: float,
    sampler_name: str,
    scheduler: str,
    positive: ConditioningPayload,
    negative: ConditioningPayload,
    latent_image: Latent,
    start_at_step: int,
    end_at_step: int,
    return_with_leftover_noise: str,
) -> tuple[Any, ...]:
    return (
        run_sampler(
            ctx,
            model,
            noise_seed,
            steps,
            cfg,
            sampler_name,
            scheduler,
            positive,
            negative,
            latent_image,
            add_noise=add_noise == "enable",
            start_at_step=start_at_step,
            end_at_step=end_at_step,
            leftover_noise=return_with_leftover_noise == "enable",
        ),
    )


def _set_mask(ctx: Any, samples: Latent, mask: torch.Tensor) -> tuple[Any, ...]:
    m = mask if mask.ndim == 3 else mask[None]
    return (samples.with_mask(m[:, None].float()),)


UPSCALE_METHODS = LATENT_METHODS  # ComfyUI: nearest-exact, bilinear, area, bicubic, bislerp


def _latent_upscale(
    ctx: Any, samples: Latent, upscale_method: str, width: int, height: int, crop: str
) -> tuple[Any, ...]:
    if samples.samples is None:
        ctx.check_pixels(width, height, samples.batch_size, inputs="width, height")
        return (Latent(pixel_size=(height, width), batch_size=samples.batch_size),)
    z = samples.samples
    h, w = z.shape[-2:]
    if width == 0 and height == 0:
        return (samples,)
    th = height // samples.factor if height else round(h * width / (w * samples.factor))
    tw = width // samples.factor if width else round(w * height / (h * samples.factor))
    th, tw = max(1, th), max(1, tw)
    f = samples.factor
    ctx.check_pixels(tw * f, th * f, z.shape[0], inputs="width, height")
    ctx.check_latent((z.shape[0], z.shape[1], th, tw), inputs="width, height")
    out = resize(z, tw, th, upscale_method, crop)  # ComfyUI's methods (bislerp too) and centre-crop rule
    return (Latent(samples=out, noise_mask=samples.noise_mask, factor=samples.factor),)


def sampling_nodes() -> list[NodeSpec]:
    I = input_spec  # noqa: E741, N806

    common = (
        I("sampler_name", "COMBO", choices=tuple(SAMPLERS), default="euler"),
        I("scheduler", "COMBO", choices=tuple(SCHEDULERS), default="normal"),
        I("positive", "CONDITIONING"),
        I("negative", "CONDITIONING"),
        I("latent_image", "LATENT"),
    )
    # ComfyUI's range; the default is our bundled model's 64 px (ComfyUI: 1024), and the job's pixel budget
    # (ctx.check_pixels) refuses sizes this machine cannot afford.
    size = {"default": 64, "min": 16, "max": MAX_RESOLUTION, "step": 8}
    return [
        NodeSpec(
            name="CLIPTextEncode",
            display_name="CLIP Text Encode (Prompt)",
            category="conditioning",
            description="Encode a prompt with the checkpoint's text encoder.",
            execute=_encode,
            inputs=(I("text", "STRING", default="", multiline=True), I("clip", "CLIP")),
            outputs=(OutputSpec(type="CONDITIONING"),),
        ),
        NodeSpec(
            name="FluxGuidance",
            display_name="FluxGuidance",
            category="advanced/conditioning/flux",
            description="Set FLUX.1-dev's distilled guidance scale on a conditioning (default 3.5).",
            execute=_flux_guidance,
            inputs=(
                I("conditioning", "CONDITIONING"),
                I("guidance", "FLOAT", default=3.5, min=0.0, max=100.0, step=0.1),
            ),
            outputs=(OutputSpec(type="CONDITIONING"),),
        ),
        NodeSpec(
            name="EmptyLatentImage",
            display_name="Empty Latent Image",
            category="latent",
            description="An empty latent of a pixel size; the model decides channels and scale.",
            execute=_empty_latent,
            inputs=(
                I("width", "INT", **size),
                I("height", "INT", **size),
                I("batch_size", "INT", default=1, min=1, max=4096),
            ),
            outputs=(OutputSpec(type="LATENT"),),
        ),
        NodeSpec(
            name="KSampler",
            category="sampling",
            execute=_ksampler,
            description="Denoise a latent with classifier-free guidance. Image i uses seed + i.",
            inputs=(
                I("model", "MODEL"),
                I("seed", "INT", default=0, min=0, max=SEED_MAX, extra={"control_after_generate": True}),
                I("steps", "INT", default=20, min=1, max=10000),
                I("cfg", "FLOAT", default=8.0, min=0.0, max=100.0, step=0.1, extra={"round": 0.01}),
                *common,
                I("denoise", "FLOAT", default=1.0, min=0.0, max=1.0, step=0.01),
            ),
            outputs=(OutputSpec(type="LATENT"),),
        ),
        NodeSpec(
            name="KSamplerAdvanced",
            display_name="KSampler (Advanced)",
            category="sampling",
            execute=_ksampler_advanced,
            description="KSampler over a step range, for multi-stage sampling.",
            inputs=(
                I("model", "MODEL"),
                I("add_noise", "COMBO", choices=("enable", "disable"), default="enable"),
                I(
                    "noise_seed",
                    "INT",
                    default=0,
                    min=0,
                    max=SEED_MAX,
                    extra={"control_after_generate": True},
                ),
                I("steps", "INT", default=20, min=1, max=10000),
                I("cfg", "FLOAT", default=8.0, min=0.0, max=100.0, step=0.1, extra={"round": 0.01}),
                *common,
                I("start_at_step", "INT", default=0, min=0, max=10000),
                I("end_at_step", "INT", default=10000, min=0, max=10000),
                I("return_with_leftover_noise", "COMBO", choices=("disable", "enable"), default="disable"),
            ),
            outputs=(OutputSpec(type="LATENT"),),
        ),
        NodeSpec(
            name="SetLatentNoiseMask",
            category="latent/inpaint",
            execute=_set_mask,
            description="Only regenerate where the mask is 1.",
            inputs=(I("samples", "LATENT"), I("mask", "MASK")),
            outputs=(OutputSpec(type="LATENT"),),
        ),
        NodeSpec(
            name="LatentUpscale",
            display_name="Upscale Latent",
            category="latent",
            execute=_latent_upscale,
            description="Resize a latent to a pixel size (0 keeps the aspect ratio).",
            inputs=(
                I("samples", "LATENT"),
                I("upscale_method", "COMBO", choices=UPSCALE_METHODS),
                I("width", "INT", default=512, min=0, max=16384, step=8),
                I("height", "INT", default=512, min=0, max=16384, step=8),
                I("crop", "COMBO", choices=("disabled", "center")),
            ),
            outputs=(OutputSpec(type="LATENT"),),
        ),
    ]
