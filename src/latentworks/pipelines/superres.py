"""A two-stage cascade: the default 32 px model, then a pixel super-resolution stage to 64 px.

Imagen's cascade (Saharia et al. 2022) on our own emoji: stage 1 is any latentworks pipeline; stage 2 is a
``latentworks train --task superres`` run (``models.superres``), which samples a 2x image conditioned on
the stage-1 image (upsampled, noise-augmented at a fixed level) and on the same prompt's MiniLM tokens.
Sampling goes through the one sampling path (``pipelines.sampling.denoise_latents``) in pixel space.

>>> base = Pipeline.from_pretrained("default")                         # doctest: +SKIP
>>> pipe = CascadePipeline(base, load_superres_stage("runs/sr"))      # doctest: +SKIP
>>> pipe("red apple, google style", seed=1).images[0].size            # doctest: +SKIP
(64, 64)

A stage trained with ``--residual`` samples the scaled residual over the bicubic upsample; the image is
``bicubic(low) + residual / residual_scale`` (``training.superres``).

``BicubicStage`` is the baseline the stage must beat: the same stage-1 images, upscaled bicubically.

Seeds: image i of a call with ``seed`` has stage-1 seed ``seed + i`` (as ``Pipeline``); its stage-2 noise
and augmentation noise come from that seed offset by :data:`STAGE_SEED_OFFSET` and :data:`AUG_SEED_OFFSET`,
so the two stages do not share noise.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor

from latentworks.diffusion.conditioning import Conditioning
from latentworks.diffusion.noise import seeded_noise
from latentworks.diffusion.samplers import StepInfo
from latentworks.diffusion.schedules import get_sigmas
from latentworks.models.superres import IMAGE_CHANNELS, check_superres_config, superres_conditioning, upsample
from latentworks.models.unet import UNetConfig
from latentworks.pipelines.sampling import SEED_MODULUS, NetworkModel, SamplingModel, denoise_latents
from latentworks.pipelines.text_to_image import Pipeline, PipelineResult, images_to_tensor, tensor_to_images

STAGE_SEED_OFFSET = 1 << 62
AUG_SEED_OFFSET = 3 << 61
DEFAULT_AUG_LEVEL = 0.1  # Imagen / IF sample with a small fixed level (IF-II: noise_level 250 of 1000)
STAGE_DEFAULTS: dict[str, Any] = {
    "steps": 20,
    "guidance": 1.0,
    "aug_level": DEFAULT_AUG_LEVEL,
    "sampler": "euler",
    "scheduler": "simple",
    "denoise": 1.0,
}


def offset_seeds(seeds: list[int], offset: int) -> list[int]:
    return [(int(s) + offset) % SEED_MODULUS for s in seeds]


def upscale_with_model(
    model: SamplingModel,
    low: Tensor,
    cond: Conditioning,
    uncond: Conditioning | None,
    seeds: list[int],
    *,
    size: int,
    level_dim: int,
    steps: int,
    guidance: float,
    aug_level: float,
    sampler: str = "euler",
    scheduler: str = "simple",
    callback: Callable[[StepInfo], object] | None = None,
    residual_scale: float = 0.0,
    denoise: float = 1.0,
) -> Tensor:
    """Sample the (B, 3, size, size) images in [-1, 1] a super-resolution network draws for low-resolution
    images ``low`` (B, 3, h, w) in [-1, 1] and the prompts' conditionings (B rows each; ``uncond`` is used
    when ``guidance != 1``). ``seeds[i]`` (the stage-1 seed of image i) seeds its noise. With
    ``residual_scale > 0`` the network samples the scaled residual over the bicubic upsample of ``low``.
    ``denoise < 1`` (img2img strength) starts from the bicubic image noised to that level instead of from pure
    noise and runs the last part of the schedule: 0+ keeps the bicubic image, 1 samples from scratch."""
    b = low.shape[0]
    if len(seeds) != b:
        raise ValueError(f"got {len(seeds)} seeds for {b} low-resolution images")
    if not 0.0 <= aug_level <= 1.0:
        raise ValueError(f"the augmentation level must be in [0, 1], got {aug_level}")
    device = next(model.denoiser_net.parameters()).device
    level = torch.full((b,), float(aug_level))
    aug_noise = seeded_noise(
        (IMAGE_CHANNELS, size, size), offset_seeds(seeds, AUG_SEED_OFFSET), device=device
    )
    low = low.to(device)
    c = superres_conditioning(cond.to(device), low, level, aug_noise, size=size, level_dim=level_dim)
    u = None
    if guidance != 1.0:
        if uncond is None:
            raise ValueError(f"guidance {guidance} needs the negative prompts' conditioning (uncond)")
        u = superres_conditioning(uncond.to(device), low, level, aug_noise, size=size, level_dim=level_dim)
    sigmas = get_sigmas(model.model_sampling, scheduler, steps, denoise=denoise)
    # the bicubic image in the network's space: a zero residual, or the upsampled pixels (denoise 1 noises
    # it away entirely)
    if residual_scale > 0 or denoise == 1.0:
        x0 = torch.zeros((b, IMAGE_CHANNELS, size, size), device=device)
    else:
        x0 = upsample(low, size)
    x = denoise_latents(
        model, x0, sigmas, offset_seeds(seeds, STAGE_SEED_OFFSET), c, u, guidance, sampler, callback=callback
    )
    if residual_scale > 0:
        x = upsample(low, size) + x / residual_scale
    return x.clamp(-1, 1)


class UpscaleStage(Protocol):
    """What :class:`CascadePipeline` needs of its second stage."""

    @property
    def low_size(self) -> int: ...

    @property
    def size(self) -> int: ...

    @property
    def uses_text(self) -> bool: ...

    def describe(self) -> dict[str, Any]: ...

    def upscale(
        self,
        low: Tensor,
        cond: Conditioning | None,
        uncond: Conditioning | None,
        seeds: list[int],
        *,
        steps: int | None = None,
        guidance: float | None = None,
        aug_level: float | None = None,
        sampler: str | None = None,
        scheduler: str | None = None,
        callback: Callable[[StepInfo], object] | None = None,
        denoise: float | None = None,
    ) -> Tensor: ...


@dataclass(frozen=True)
class BicubicStage:
    """The baseline second stage: bicubic upsampling (``models.superres.upsample``), no network."""

    low_size: int = 32
    size: int = 64
    uses_text: bool = False

    def describe(self) -> dict[str, Any]:
        return {"stage": "bicubic"}

    def upscale(
        self,
        low: Tensor,
        cond: Conditioning | None,
        uncond: Conditioning | None,
        seeds: list[int],
        *,
        steps: int | None = None,
        guidance: float | None = None,
        aug_level: float | None = None,
        sampler: str | None = None,
        scheduler: str | None = None,
        callback: Callable[[StepInfo], object] | None = None,
        denoise: float | None = None,
    ) -> Tensor:
        """``low`` (B, 3, low_size, low_size) upsampled bicubically; the sampling options do not apply."""
        return upsample(low, self.size)


@dataclass(frozen=True)
class SuperResStage:
    """A trained super-resolution stage (a ``latentworks train --task superres`` run): its EMA network,
    objective, sizes, text encoder and sampling defaults."""

    path: Path
    model: NetworkModel
    low_size: int
    size: int
    text_encoder: dict[str, Any]  # {"name": "minilm", "max_length": 32, "dim": 384}
    defaults: dict[str, Any] = field(default_factory=lambda: dict(STAGE_DEFAULTS))
    uses_text: bool = True
    residual_scale: float = 0.0  # > 0: the network samples residuals over the bicubic upsample

    @property
    def level_dim(self) -> int:
        config = self.model.denoiser_net.config
        if not isinstance(config, UNetConfig):
            raise TypeError(f"{self.path}: the stage's network is not a U-Net")
        return config.pooled_dim

    def describe(self) -> dict[str, Any]:
        described = {"stage": str(self.path), **self.defaults}
        if self.residual_scale > 0:
            described["residual_scale"] = self.residual_scale
        return described

    def upscale(
        self,
        low: Tensor,
        cond: Conditioning | None,
        uncond: Conditioning | None,
        seeds: list[int],
        *,
        steps: int | None = None,
        guidance: float | None = None,
        aug_level: float | None = None,
        sampler: str | None = None,
        scheduler: str | None = None,
        callback: Callable[[StepInfo], object] | None = None,
        denoise: float | None = None,
    ) -> Tensor:
        """(B, 3, size, size) images in [-1, 1] from ``low`` (B, 3, low_size, low_size) in [-1, 1]; ``cond``
        (and ``uncond`` for guidance) are the prompts' MiniLM conditionings. Unset options: the defaults."""
        if cond is None:
            raise ValueError(f"the super-resolution stage {self.path} needs the prompts' conditioning")
        if low.shape[-2:] != (self.low_size, self.low_size):
            raise ValueError(
                f"the super-resolution stage {self.path} upscales {self.low_size}x{self.low_size} images, got "
                f"{low.shape[-1]}x{low.shape[-2]}"
            )
        d = self.defaults
        return upscale_with_model(
            self.model,
            low,
            cond,
            uncond,
            seeds,
            size=self.size,
            level_dim=self.level_dim,
            steps=int(steps if steps is not None else d["steps"]),
            guidance=float(guidance if guidance is not None else d["guidance"]),
            aug_level=float(aug_level if aug_level is not None else d["aug_level"]),
            sampler=sampler or d["sampler"],
            scheduler=scheduler or d["scheduler"],
            callback=callback,
            residual_scale=self.residual_scale,
            denoise=float(denoise if denoise is not None else d.get("denoise", 1.0)),
        )


def load_superres_stage(path: str | Path, device: str | torch.device = "cpu") -> SuperResStage:
    """The super-resolution stage of a ``latentworks train --task superres`` run folder (its config.json and
    model.safetensors, the EMA weights)."""
    from latentworks.pipelines.export import load_diffusion_run, run_objective

    run = Path(path)
    cfg_path = run / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(
            f"{run}: no config.json; give the folder of a 'latentworks train --task superres' run"
        )
    saved = json.loads(cfg_path.read_text())
    task = saved.get("train", {}).get("task", "text2image")
    if saved.get("kind") != "diffusion" or task != "superres":
        raise ValueError(
            f"{run} is a {saved.get('kind')!r} run with task {task!r}, not a super-resolution stage; train one "
            "with 'latentworks train --task superres --data emoji-64.npz'"
        )
    if not (run / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"{run}: no model.safetensors (the stage's weights); the run has not saved a checkpoint yet"
        )
    _, net = load_diffusion_run(run)
    check_superres_config(net.config, str(cfg_path))  # type: ignore[arg-type]
    objective = run_objective(saved)
    sr = saved.get("superres", {})
    net = net.to(device).eval()
    return SuperResStage(
        path=run,
        model=NetworkModel(net, saved["prediction"], objective.model_sampling),
        low_size=int(sr.get("low_resolution", saved["latent"]["size"] // 2)),
        size=int(saved["latent"]["size"]),
        text_encoder=dict(saved.get("text_encoder", {"name": "minilm"})),
        defaults={**STAGE_DEFAULTS, **sr.get("defaults", {})},
        residual_scale=float(sr.get("residual_scale", 0.0)),
    )


def load_stage(spec: str | Path, device: str | torch.device = "cpu", *, low_size: int = 32) -> UpscaleStage:
    """``"bicubic"`` (the baseline, from ``low_size`` to twice that) or a super-resolution run folder."""
    if str(spec) == "bicubic":
        return BicubicStage(low_size=low_size, size=2 * low_size)
    return load_superres_stage(spec, device)


class CascadePipeline:
    """Stage 1 (a :class:`Pipeline`) at its native size, then an upscale stage to twice that size.

    ``__call__`` takes the base pipeline's arguments (``steps``, ``guidance``, ``sampler`` ... apply to stage
    1) and ``upscale_steps``, ``upscale_guidance``, ``aug_level``, ``upscale_denoise``, ``upscale_sampler`` for
    stage 2. The result's images are the stage-2 images; ``parameters["upscale"]`` records stage 2's settings
    and ``latents`` are stage 1's.
    """

    def __init__(self, base: Pipeline, stage: UpscaleStage) -> None:
        native = tuple(base.model.resolution)
        if native != (stage.low_size, stage.low_size):
            raise ValueError(
                f"the upscale stage takes {stage.low_size}x{stage.low_size} images but the base model draws "
                f"{native[1]}x{native[0]}: the two stages do not belong together"
            )
        if isinstance(stage, SuperResStage):
            te = base.model.meta.get("text_encoder", {}).get("kind")
            want = stage.text_encoder.get("name", "minilm")
            dim = getattr(base.text_encoder, "dim", None)
            ctx = getattr(stage.model.denoiser_net.config, "context_dim", None)
            if te != want or (dim is not None and dim != ctx):
                raise ValueError(
                    f"the upscale stage conditions on {want} tokens ({ctx}-dim) but the base model's text encoder "
                    f"is {te!r} ({dim}-dim): stages from different model families cannot share prompts"
                )
        self.base, self.stage = base, stage

    @property
    def resolution(self) -> tuple[int, int]:
        return (self.stage.size, self.stage.size)

    def __call__(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None = None,
        *,
        seed: int | None = None,
        batch: int = 1,
        upscale_steps: int | None = None,
        upscale_guidance: float | None = None,
        upscale_sampler: str | None = None,
        aug_level: float | None = None,
        upscale_denoise: float | None = None,
        upscale_callback: Callable[[StepInfo], object] | None = None,
        **base_options: Any,
    ) -> PipelineResult:
        if (
            base_options.get("width")
            or base_options.get("height")
            or base_options.get("hires_scale", 1.0) != 1.0
        ):
            raise ValueError(
                "a cascade samples stage 1 at its native size; drop width/height/hires_scale (stage 2 doubles it)"
            )
        seed = random.randrange(2**31) if seed is None else int(seed)
        first = self.base(prompt, negative_prompt, seed=seed, batch=batch, **base_options)
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        negs = (
            negative_prompt if isinstance(negative_prompt, list) else [negative_prompt or ""] * len(prompts)
        )
        all_prompts = [p for p in prompts for _ in range(batch)]
        all_negs = [q for q in negs for _ in range(batch)]
        low = images_to_tensor(first.images, (self.stage.low_size, self.stage.low_size))  # the uint8 pixels
        options: dict[str, Any] = {}
        cond = uncond = None
        if self.stage.uses_text:
            cond = self.base.text_encoder.encode(all_prompts)
            defaults = getattr(self.stage, "defaults", STAGE_DEFAULTS)
            guidance = float(upscale_guidance if upscale_guidance is not None else defaults["guidance"])
            if guidance != 1.0:
                uncond = self.base.text_encoder.encode(all_negs)
            options = {
                "steps": upscale_steps,
                "guidance": guidance,
                "aug_level": aug_level,
                "denoise": upscale_denoise,
                "sampler": upscale_sampler,
                "callback": upscale_callback,
            }
        x = self.stage.upscale(low, cond, uncond, first.seeds, **options)
        images = tensor_to_images(x)
        described = self.stage.describe()
        for key in ("steps", "guidance", "aug_level", "denoise", "sampler"):
            if options.get(key) is not None:
                described[key] = options[key]
        params = {
            **first.parameters,
            "width": self.stage.size,
            "height": self.stage.size,
            "upscale": described,
        }
        return PipelineResult(
            images=images, parameters=params, seeds=first.seeds, latents=first.latents, timings=first.timings
        )
