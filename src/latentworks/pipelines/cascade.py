"""A pixel-space cascade: a base stage draws a small image from the prompt, a super-resolution stage redraws it
larger, conditioned on the base image upsampled and noise-augmented (Ho et al. 2021, "Cascaded Diffusion Models";
Saharia et al. 2022, Imagen). The stages people run are DeepFloyd IF's (:mod:`latentworks.families.deepfloyd_if`):

    prompt --T5--> states --stage I (64 px)--> image --bilinear up, noise to step 250--> stage II (256 px)
           --CLIP--> states --(optional) stage III, the SD x4 latent upscaler, noise level 100--> 1024 px

Each stage is a diffusers folder (``model_index.json``, ``unet/``, ``scheduler/``; stage I also ``text_encoder/``
and ``tokenizer/``; stage II also ``image_noising_scheduler/``). Both stages sample with
:func:`~latentworks.diffusion.ddpm.sample_ddpm_learned_variance` on the integer steps diffusers' ``DDPMScheduler``
visits, with classifier-free guidance and dynamic thresholding per the folder's scheduler config, each with its own
steps and guidance. Stage II reuses stage I's prompt states (as DeepFloyd's own examples do). The optional stage
III is Stable Diffusion's x4 upscaler (:class:`~latentworks.pipelines.x4_upscale.X4Upscaler`), run on stage II's
image with the same prompts through its own CLIP text encoder.

Randomness is passed in: ``__call__`` derives independent streams from each sample's seed (start noise, step
noise and augmentation noise per stage); :meth:`CascadePipeline.run_base` and :meth:`CascadePipeline.run_upscaler`
take the noise explicitly.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from latentworks.checkpoints.diffusers_folder import TRANSFORMERS_WEIGHTS, read_json, read_weights
from latentworks.checkpoints.io import build_on_meta
from latentworks.checkpoints.keymaps.if_diffusers import if_config_from_diffusers, if_unet_from_diffusers
from latentworks.diffusion.conditioning import CONCAT_KEY, Conditioning
from latentworks.diffusion.ddpm import (
    LearnedVarianceDenoiser,
    LearnedVarianceGuidance,
    ddpm_timesteps,
    sample_ddpm_learned_variance,
    timestep_sigmas,
)
from latentworks.diffusion.denoisers import DiscreteModelSampling, make_betas
from latentworks.diffusion.noise import SeededNoiseSampler, derive_seed, seeded_noise
from latentworks.diffusion.samplers import NoiseFn, StepCallback
from latentworks.families import by_pipeline_class
from latentworks.families.base import ModelFamily
from latentworks.families.deepfloyd_if import (
    STAGE_III_NOISE_LEVEL,
    STAGE_III_PIPELINES,
    T5_LENGTH,
    UPSCALER_OF,
)
from latentworks.families.sd_upscaler import is_x4_upscaler_folder
from latentworks.models.deepfloyd_if import NOISE_LEVEL_KEY, IFUNet, IFUNetConfig
from latentworks.models.text.t5 import build_t5
from latentworks.pipelines.sampling import seeds_for
from latentworks.pipelines.x4_upscale import X4Upscaler, describe_x4_folder

CASCADE_PIPELINES = ("IFPipeline", "IFSuperResolutionPipeline")
T5_TOKENIZER_HELP = (
    "DeepFloyd IF needs T5 v1.1's SentencePiece tokenizer (google/t5-v1_1-xxl), which cannot be downloaded "
    "here. Pass it with --tokenizer (Python: tokenizer=): the IF-I folder's 'tokenizer' folder (tokenizer.json, "
    "or spiece.model with the 'sentencepiece' package installed), or any T5 v1.1 tokenizer.json, e.g. an SD3 "
    "folder's 'tokenizer_3' or a FLUX folder's 'tokenizer_2' (the same vocabulary)."
)
T5_ENCODER_HELP = (
    "DeepFloyd IF needs the T5-XXL encoder: the IF-I folder's 'text_encoder' (config.json + model.safetensors or "
    "its shards), or pass a T5 v1.1 XXL file with --text-encoder (Python: text_encoder=), e.g. t5xxl_fp16.safetensors."
)

# diffusers' DDPMScheduler beta_schedule -> make_betas kind
BETA_SCHEDULES = {"squaredcos_cap_v2": "cosine", "linear": "linear", "scaled_linear": "scaled_linear"}


# --------------------------------------------------------------------------------------------------
# T5 prompt encoding (masked, 77 tokens, as diffusers' IF pipelines)
# --------------------------------------------------------------------------------------------------


def load_t5_tokenizer(path: str | Path | None) -> Any:
    """transformers' T5 tokenizer from a tokenizer folder (tokenizer.json, or spiece.model with sentencepiece),
    or from a ``tokenizer.json`` file; a clear error naming what to pass when there is none."""
    if path is None:
        raise FileNotFoundError(f"no T5 tokenizer found. {T5_TOKENIZER_HELP}")
    p = Path(path)
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    if p.is_file() and p.suffix == ".json":
        return PreTrainedTokenizerFast(
            tokenizer_file=str(p), pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
        )
    if p.is_dir() and not (p / "tokenizer.json").is_file() and not (p / "spiece.model").is_file():
        # a model folder given for its T5 tokenizer folder (IF: tokenizer, SD3: tokenizer_3, FLUX: tokenizer_2);
        # a CLIP tokenizer folder (merges.txt) is never taken for it
        for sub in (p / "tokenizer", p / "tokenizer_3", p / "tokenizer_2"):
            t5_files = (sub / "tokenizer.json").is_file() or (sub / "spiece.model").is_file()
            if t5_files and not (sub / "merges.txt").is_file():
                p = sub
                break
    if not p.is_dir() or not ((p / "tokenizer.json").is_file() or (p / "spiece.model").is_file()):
        raise FileNotFoundError(
            f"no T5 tokenizer at {p} (expected tokenizer.json or spiece.model). {T5_TOKENIZER_HELP}"
        )
    try:
        return AutoTokenizer.from_pretrained(str(p), local_files_only=True)
    except (ImportError, ValueError, OSError) as e:
        raise ValueError(
            f"{p}: cannot read the T5 tokenizer ({e}). spiece.model alone needs the 'sentencepiece' package "
            f"(pip install sentencepiece); a tokenizer.json needs nothing. {T5_TOKENIZER_HELP}"
        ) from None


class T5PromptEncoder:
    """Prompts -> T5 last hidden states (B, 77, d_model), as diffusers' IF pipelines without caption cleaning:
    lower-cased and stripped, ``</s>`` appended, padded with ``<pad>`` to 77 tokens (truncated beyond), run with
    the padding masked inside T5, every position returned."""

    def __init__(self, model: Any, tokenizer: Any, max_length: int = T5_LENGTH) -> None:
        self.model, self.tokenizer, self.max_length = model, tokenizer, max_length

    @torch.no_grad()
    def __call__(self, prompts: Sequence[str]) -> Tensor:
        text = [p.lower().strip() for p in prompts]
        tok = self.tokenizer(
            text, padding="max_length", max_length=self.max_length, truncation=True, add_special_tokens=True,
            return_tensors="pt",
        )  # fmt: skip
        device = next(self.model.parameters()).device
        out = self.model(input_ids=tok.input_ids.to(device), attention_mask=tok.attention_mask.to(device))
        return out.last_hidden_state  # (B, 77, d_model)


# --------------------------------------------------------------------------------------------------
# One stage
# --------------------------------------------------------------------------------------------------


@dataclass
class SchedulerSettings:
    """What a diffusers ``DDPMScheduler`` config says about sampling (the fields IF uses)."""

    sampling: DiscreteModelSampling
    learned_variance: bool
    threshold: float | None  # dynamic-thresholding percentile (None: off)
    threshold_max: float | None
    clip: float | None
    spacing: str
    offset: int

    @property
    def num_train(self) -> int:
        return self.sampling.num_timesteps


def scheduler_settings(cfg: Mapping[str, Any], *, source: str) -> SchedulerSettings:
    """Read a ``DDPMScheduler`` config (beta schedule, variance type, thresholding, clipping, spacing)."""
    if cfg.get("_class_name", "DDPMScheduler") != "DDPMScheduler":
        raise ValueError(f"{source}: expected a DDPMScheduler, got {cfg.get('_class_name')!r}")
    schedule = cfg.get("beta_schedule", "linear")
    if schedule not in BETA_SCHEDULES or cfg.get("trained_betas") is not None:
        raise ValueError(
            f"{source}: beta_schedule {schedule!r} is not supported; expected one of {list(BETA_SCHEDULES)}"
        )
    if cfg.get("prediction_type", "epsilon") != "epsilon":
        raise ValueError(
            f"{source}: prediction_type {cfg.get('prediction_type')!r} is not supported (IF predicts epsilon)"
        )
    variance = cfg.get("variance_type", "fixed_small")
    if variance not in ("learned_range", "fixed_small"):
        raise ValueError(
            f"{source}: variance_type {variance!r} is not supported; expected learned_range or fixed_small"
        )
    betas = make_betas(
        BETA_SCHEDULES[schedule], int(cfg.get("num_train_timesteps", 1000)),
        float(cfg.get("beta_start", 0.0001)), float(cfg.get("beta_end", 0.02)),
    )  # fmt: skip
    thresholding = bool(cfg.get("thresholding", False))
    return SchedulerSettings(
        sampling=DiscreteModelSampling(betas),
        learned_variance=variance == "learned_range",
        threshold=float(cfg.get("dynamic_thresholding_ratio", 0.995)) if thresholding else None,
        threshold_max=float(cfg.get("sample_max_value", 1.0)) if thresholding else None,
        clip=float(cfg.get("clip_sample_range", 1.0))
        if cfg.get("clip_sample", True) and not thresholding
        else None,
        spacing=str(cfg.get("timestep_spacing", "leading")),
        offset=int(cfg.get("steps_offset", 0)),
    )


@dataclass
class CascadeStage:
    """One stage of a cascade, read from its diffusers folder."""

    path: Path
    family: ModelFamily
    unet: IFUNet
    scheduler: SchedulerSettings
    sample_size: int
    noising: DiscreteModelSampling | None = None  # stage II: the schedule that noise-augments its input image
    index: dict[str, Any] = field(default_factory=dict)

    @property
    def config(self) -> IFUNetConfig:
        return self.unet.config

    @property
    def is_upscaler(self) -> bool:
        return self.noising is not None

    def denoiser(self, guidance: float) -> LearnedVarianceGuidance:
        s = self.scheduler
        inner = LearnedVarianceDenoiser(self.unet, s.sampling)
        return LearnedVarianceGuidance(
            inner if s.learned_variance else _FixedVariance(inner), guidance,
            threshold=s.threshold, threshold_max=s.threshold_max, clip=s.clip,
        )  # fmt: skip

    def sigmas(self, steps: int) -> Tensor:
        s = self.scheduler
        return timestep_sigmas(s.sampling, ddpm_timesteps(steps, s.num_train, s.spacing, s.offset))


class _FixedVariance:
    """A learned-variance denoiser whose v is replaced by -1 (the posterior variance, diffusers' fixed_small)."""

    def __init__(self, inner: LearnedVarianceDenoiser) -> None:
        self.inner = inner
        self.interpolation = inner.interpolation

    def with_variance(self, x: Tensor, sigma: Tensor, cond: Any = None) -> tuple[Tensor, Tensor]:
        x0, _ = self.inner.with_variance(x, sigma, cond)
        return x0, torch.full_like(x0, -1.0)

    def __call__(self, x: Tensor, sigma: Tensor, cond: Any = None) -> Tensor:
        return self.inner(x, sigma, cond)


def folder_kind(path: str | Path) -> str | None:
    """The ``_class_name`` of a diffusers folder's ``model_index.json``, or None (not a diffusers folder)."""
    index = Path(path) / "model_index.json"
    if not index.is_file():
        return None
    return str(read_json(index, "model_index.json").get("_class_name", "")) or None


def is_cascade_folder(path: str | Path) -> bool:
    """True for a folder of a cascade stage (DeepFloyd IF stage I or II, or the x4 upscaler of stage III)."""
    p = Path(path)
    return p.is_dir() and (
        folder_kind(p) in (*CASCADE_PIPELINES, *STAGE_III_PIPELINES) or is_x4_upscaler_folder(p)
    )


def _describe_kind(kind: str | None, path: Path) -> str:
    if kind is None:
        return f"{path} is not a diffusers folder (no model_index.json)"
    index = read_json(path / "model_index.json", "model_index.json")
    family = by_pipeline_class(index)
    what = family.title if family is not None else "a diffusers pipeline"
    return f"{path} is {what} ({kind})"


def read_stage(
    path: str | Path, *, upscaler: bool, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> CascadeStage:
    """Read a cascade stage folder; ``upscaler`` says which stage the caller expects (a clear error otherwise)."""
    root = Path(path)
    option = "--upscaler" if upscaler else "--model"
    if not root.is_dir():
        need = (
            f"the stage II folder ({CASCADE_PIPELINES[1]}, e.g. IF-II-L-v1.0)"
            if upscaler
            else f"a DeepFloyd IF cascade needs the stage I folder ({CASCADE_PIPELINES[0]}, e.g. IF-I-XL-v1.0) as --model"
        )
        raise FileNotFoundError(f"{option}: no such folder: {root}; {need}")
    kind = folder_kind(root)
    want = CASCADE_PIPELINES[1] if upscaler else CASCADE_PIPELINES[0]
    if kind != want:
        if kind in STAGE_III_PIPELINES:
            raise ValueError(
                f"{option}: {_describe_kind(kind, root)}, DeepFloyd's optional stage III (the x4 latent upscaler); "
                f"pass it as --latent-upscaler (Python: latent_upscaler=), and the {want} folder as {option}. "
                f"Alone it upscales an image: latentworks upscale IMAGE --model {root} --prompt TEXT"
            )
        if kind in CASCADE_PIPELINES:
            hint = (
                "pass it as --upscaler, with the stage I folder as --model"
                if not upscaler
                else "a stage I folder goes to --model; --upscaler takes the stage II folder"
            )
            raise ValueError(
                f"{option}: {_describe_kind(kind, root)}, not the {want} this option takes; {hint}"
            )
        raise ValueError(
            f"{option}: {_describe_kind(kind, root)}, but a DeepFloyd IF cascade needs a stage I folder ({CASCADE_PIPELINES[0]}) "
            f"as --model and a stage II folder ({CASCADE_PIPELINES[1]}) as --upscaler; stages of different "
            "families cannot be combined"
        )
    index = read_json(root / "model_index.json", "model_index.json")
    family = by_pipeline_class(index)
    assert family is not None  # the registry lists both pipeline classes
    unet_dir, sched_dir = root / "unet", root / "scheduler"
    for folder, what in ((unet_dir, "config.json"), (sched_dir, "scheduler_config.json")):
        if not (folder / what).is_file():
            raise FileNotFoundError(
                f"{option} {root}: the {family.title} folder lacks {folder / what}; copy the whole '{folder.name}' "
                "folder of the release (its config and weights)"
            )
    cfg = read_json(unet_dir / "config.json", "the U-Net config")
    config = if_config_from_diffusers(cfg, source=str(unet_dir / "config.json"))
    if upscaler != config.noise_level_embed:
        raise ValueError(
            f"{option} {root}: its U-Net {'lacks' if upscaler else 'has'} the noise-level embedding of a super-resolution "
            f"stage, which does not match its pipeline class {kind}"
        )
    state = if_unet_from_diffusers(read_weights(unet_dir, dtype=dtype, device=device), config)
    unet = build_on_meta(IFUNet, config, state, dtype=dtype, device=device)
    scheduler = scheduler_settings(
        read_json(sched_dir / "scheduler_config.json", "the scheduler config"), source=str(sched_dir)
    )
    noising = None
    if upscaler:
        noise_dir = root / "image_noising_scheduler" / "scheduler_config.json"
        noising = (
            scheduler_settings(read_json(noise_dir, "the noising scheduler"), source=str(noise_dir)).sampling
            if noise_dir.is_file()
            else scheduler.sampling
        )
    return CascadeStage(
        path=root, family=family, unet=unet, scheduler=scheduler, index=index,
        sample_size=int(cfg.get("sample_size") or family.generation.resolution[0]), noising=noising,
    )  # fmt: skip


def read_text_encoder(
    stage1: Path,
    *,
    text_encoder: str | Path | None = None,
    tokenizer: str | Path | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> T5PromptEncoder:
    """The T5 prompt encoder: ``text_encoder`` (a T5 safetensors file or transformers folder) or the stage I
    folder's ``text_encoder/``; ``tokenizer`` or the stage I folder's ``tokenizer/``."""
    from latentworks.checkpoints.io import load_state_dict

    source = Path(text_encoder) if text_encoder is not None else stage1 / "text_encoder"
    weights: Mapping[str, Tensor]
    if source.is_file():
        weights = load_state_dict(source, dtype=dtype, device=device)
    elif source.is_dir():
        try:
            weights = read_weights(source, TRANSFORMERS_WEIGHTS, dtype=dtype, device=device)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"{e}. {T5_ENCODER_HELP}") from None
    else:
        raise FileNotFoundError(f"{source} does not exist. {T5_ENCODER_HELP}")
    model = build_t5(weights, dtype=dtype or torch.float32, device=device)
    tok_path = (
        Path(tokenizer)
        if tokenizer is not None
        else (stage1 / "tokenizer" if (stage1 / "tokenizer").is_dir() else None)
    )
    return T5PromptEncoder(model, load_t5_tokenizer(tok_path))


def pixels_to_images(x: Tensor) -> list[Image.Image]:
    """(B, 3, H, W) in [-1, 1] -> PIL images (rounded to 8 bits)."""
    arr = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in arr]


# --------------------------------------------------------------------------------------------------
# The pipeline
# --------------------------------------------------------------------------------------------------


@dataclass
class CascadeResult:
    """Images of the last stage run, every stage's output in [-1, 1] ((B, 3, H, W) each), seeds, parameters."""

    images: list[Image.Image]
    stages: list[Tensor]
    seeds: list[int]
    parameters: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)


class CascadePipeline:
    """Stage I, optionally stage II and stage III (the x4 latent upscaler), and the T5 prompt encoder of I and II.

    >>> pipe = CascadePipeline.from_pretrained("IF-I-XL-v1.0", upscaler="IF-II-L-v1.0")  # doctest: +SKIP
    >>> pipe("a red apple on a table", seed=1).images[0].size  # doctest: +SKIP
    (256, 256)
    >>> pipe = CascadePipeline.from_pretrained(
    ...     "IF-I-XL-v1.0", upscaler="IF-II-L-v1.0", latent_upscaler="stable-diffusion-x4-upscaler"
    ... )  # doctest: +SKIP
    >>> pipe("a red apple on a table", seed=1).images[0].size  # doctest: +SKIP
    (1024, 1024)
    """

    def __init__(
        self,
        base: CascadeStage,
        upscaler: CascadeStage | None,
        text: T5PromptEncoder,
        latent_upscaler: X4Upscaler | None = None,
    ) -> None:
        if latent_upscaler is not None and upscaler is None:
            raise ValueError(
                "a latent upscaler (stage III) runs after stage II: give the stage II folder too (--upscaler, "
                "Python: upscaler=)"
            )
        if base.is_upscaler or (upscaler is not None and not upscaler.is_upscaler):
            raise ValueError("CascadePipeline: give a base stage and, optionally, a super-resolution stage")
        if upscaler is not None and UPSCALER_OF.get(base.family.name) != upscaler.family.name:
            raise ValueError(
                f"{upscaler.path} ({upscaler.family.title}) is not the upscaler of {base.path} ({base.family.title})"
            )
        if upscaler is not None and upscaler.config.token_dim != base.config.token_dim:
            raise ValueError(
                f"{upscaler.path}: its U-Net reads {upscaler.config.token_dim}-wide text states, stage I's "
                f"{base.config.token_dim}; the two stages do not belong together"
            )
        self.base, self.upscaler, self.text = base, upscaler, text
        self.latent_upscaler = latent_upscaler

    @classmethod
    def from_pretrained(
        cls,
        model: str | Path,
        upscaler: str | Path | None = None,
        *,
        text_encoder: str | Path | None = None,
        tokenizer: str | Path | None = None,
        latent_upscaler: str | Path | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
    ) -> CascadePipeline:
        """Read stage I from ``model``, stage II from ``upscaler`` and stage III from ``latent_upscaler``
        (diffusers folders: IFPipeline, IFSuperResolutionPipeline, StableDiffusionUpscalePipeline)."""
        if latent_upscaler is not None and upscaler is None:
            raise ValueError(
                f"--latent-upscaler {latent_upscaler}: stage III runs after stage II; pass the stage II folder "
                f"({CASCADE_PIPELINES[1]}, e.g. IF-II-L-v1.0) as --upscaler too"
            )
        base = read_stage(model, upscaler=False, device=device, dtype=dtype)
        sr = read_stage(upscaler, upscaler=True, device=device, dtype=dtype) if upscaler is not None else None
        x4 = (
            read_latent_upscaler(latent_upscaler, device=device, dtype=dtype)
            if latent_upscaler is not None
            else None
        )
        text = read_text_encoder(
            base.path, text_encoder=text_encoder, tokenizer=tokenizer, device=device, dtype=dtype
        )
        return cls(base, sr, text, x4)

    # ---- the two stages, noise passed in ----------------------------------------------------------

    def conditionings(
        self, prompts: Sequence[str], negatives: Sequence[str]
    ) -> tuple[Conditioning, Conditioning]:
        """(cond, uncond) from T5 states of the prompts and the negative prompts."""
        states = self.text([*prompts, *negatives])  # one encoder call for both
        n = len(prompts)
        return Conditioning(tokens=states[:n]), Conditioning(tokens=states[n:])

    def run_base(
        self,
        cond: Conditioning,
        uncond: Conditioning,
        start: Tensor,
        noise: NoiseFn,
        *,
        steps: int,
        guidance: float,
        callback: StepCallback | None = None,
    ) -> Tensor:
        """Stage I from unit Gaussian ``start`` (B, 3, H, W) (DDPM's x_T) with step noise ``noise``: (B, 3, H, W)
        in [-1, 1]."""
        stage = self.base
        sigmas = stage.sigmas(steps)
        x = start.float() * float((1 + sigmas[0] ** 2) ** 0.5)  # x_T in VE scale
        return sample_ddpm_learned_variance(
            stage.denoiser(guidance), x, sigmas, cond=(cond, uncond), noise=noise, callback=callback
        )

    def run_upscaler(
        self,
        image: Tensor,
        cond: Conditioning,
        uncond: Conditioning,
        start: Tensor,
        augment_noise: Tensor,
        noise: NoiseFn,
        *,
        steps: int,
        guidance: float,
        noise_level: int,
        callback: StepCallback | None = None,
    ) -> Tensor:
        """Stage II on ``image`` (B, 3, h, w) in [-1, 1]: upsampled (bilinear, corners aligned) to ``start``'s size,
        noised to training step ``noise_level`` of the stage's noising schedule with ``augment_noise``; returns
        (B, 3, H, W) in [-1, 1]."""
        stage = self.upscaler
        if stage is None:
            raise ValueError("this cascade has no super-resolution stage; load one with upscaler=")
        assert stage.noising is not None
        if not 0 <= noise_level < stage.noising.num_timesteps:
            raise ValueError(
                f"noise_level must be a step in [0, {stage.noising.num_timesteps - 1}], got {noise_level}"
            )
        up = F.interpolate(image.float(), start.shape[-2:], mode="bilinear", align_corners=True)
        abar = float(stage.noising.alphas_cumprod[noise_level])
        low = abar**0.5 * up + (1 - abar) ** 0.5 * augment_noise.to(up)  # (B, 3, H, W), DDPM's q(x_t | x_0)
        level = torch.full((up.shape[0],), noise_level, device=up.device)
        extra = {CONCAT_KEY: low, NOISE_LEVEL_KEY: level}
        cond, uncond = cond.with_extra(**extra), uncond.with_extra(**extra)
        sigmas = stage.sigmas(steps)
        x = start.float() * float((1 + sigmas[0] ** 2) ** 0.5)
        return sample_ddpm_learned_variance(
            stage.denoiser(guidance), x, sigmas, cond=(cond, uncond), noise=noise, callback=callback
        )

    # ---- the whole cascade from seeds -----------------------------------------------------------------

    def defaults(self, stage: CascadeStage) -> Mapping[str, Any]:
        return stage.family.generation.defaults

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | Sequence[str],
        negative_prompt: str | Sequence[str] = "",
        *,
        seed: int | None = None,
        batch: int = 1,
        steps: int | None = None,
        guidance: float | None = None,
        upscaler_steps: int | None = None,
        upscaler_guidance: float | None = None,
        noise_level: int | None = None,
        callback: StepCallback | None = None,
        upscale: bool = True,
        latent_upscaler_steps: int | None = None,
        latent_upscaler_guidance: float | None = None,
        latent_upscaler_noise_level: int | None = None,
    ) -> CascadeResult:
        """Run stage I and (when loaded and ``upscale``) stages II and III; per-stage steps and guidance default to
        the families' (100 at 7.0, 50 at 4.0 with noise level 250, 75 at 9.0 with noise level 100). Sample i uses
        seed ``seed + i`` for every stream."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        negs = [negative_prompt] if isinstance(negative_prompt, str) else list(negative_prompt)
        if len(negs) == 1 and len(prompts) > 1:
            negs = negs * len(prompts)
        if len(negs) != len(prompts):
            raise ValueError(f"got {len(prompts)} prompts but {len(negs)} negative prompts")
        base_defaults = self.defaults(self.base)
        steps = int(steps or base_defaults["steps"])
        guidance = float(base_defaults["guidance"] if guidance is None else guidance)
        seed = random.randrange(2**31) if seed is None else int(seed)
        all_prompts = [p for p in prompts for _ in range(batch)]
        all_negs = [q for q in negs for _ in range(batch)]
        seeds = seeds_for(seed, len(all_prompts))
        device = self.base.unet.conv_in.weight.device
        timings: dict[str, float] = {}

        t0 = time.perf_counter()
        cond, uncond = self.conditionings(all_prompts, all_negs)
        timings["text"] = time.perf_counter() - t0

        def streams(k: int) -> list[int]:
            return [derive_seed(s, k) for s in seeds]

        size = self.base.sample_size
        shape = (3, size, size)
        t0 = time.perf_counter()
        image = self.run_base(
            cond, uncond, seeded_noise(shape, seeds, device=device),
            SeededNoiseSampler(seeds, shape, device=device, stream=1), steps=steps, guidance=guidance,
            callback=callback,
        )  # fmt: skip
        timings["stage_1"] = time.perf_counter() - t0
        outputs = [image]
        params: dict[str, Any] = {
            "prompt": prompts[0] if len(prompts) == 1 else prompts,
            "negative_prompt": negs[0] if len(negs) == 1 else negs,
            "model": self.base.path.name, "family": self.base.family.name, "steps": steps, "guidance": guidance,
            "sampler": "ddpm_learned_variance", "scheduler": self.base.scheduler.spacing, "seed": seed,
            "batch": batch, "width": size, "height": size,
        }  # fmt: skip
        sr = self.upscaler
        if sr is not None and upscale:
            sr_defaults = self.defaults(sr)
            sr_steps = int(upscaler_steps or sr_defaults["steps"])
            sr_guidance = float(sr_defaults["guidance"] if upscaler_guidance is None else upscaler_guidance)
            level = int(sr_defaults["noise_level"] if noise_level is None else noise_level)
            big = (3, sr.sample_size, sr.sample_size)
            t0 = time.perf_counter()
            image = self.run_upscaler(
                image, cond, uncond, seeded_noise(big, streams(2), device=device),
                seeded_noise(big, streams(3), device=device), SeededNoiseSampler(seeds, big, device=device, stream=4),
                steps=sr_steps, guidance=sr_guidance, noise_level=level, callback=callback,
            )  # fmt: skip
            timings["stage_2"] = time.perf_counter() - t0
            outputs.append(image)
            params |= {
                "upscaler": sr.path.name, "upscaler_steps": sr_steps, "upscaler_guidance": sr_guidance,
                "noise_level": level, "width": sr.sample_size, "height": sr.sample_size,
            }  # fmt: skip
        x4 = self.latent_upscaler
        if x4 is not None and sr is not None and upscale:
            x4_defaults = x4.family.generation.defaults
            x4_steps = int(latent_upscaler_steps or x4_defaults["steps"])
            x4_guidance = float(
                x4_defaults["guidance"] if latent_upscaler_guidance is None else latent_upscaler_guidance
            )
            x4_level = int(
                STAGE_III_NOISE_LEVEL if latent_upscaler_noise_level is None else latent_upscaler_noise_level
            )
            x4.check_noise_level(x4_level)
            t0 = time.perf_counter()
            cond3, uncond3 = x4.conditionings(all_prompts, all_negs)
            h, w = image.shape[-2:]
            start = seeded_noise((x4.vae.config.latent_channels, h, w), streams(5), device=x4.device)
            augment = seeded_noise((3, h, w), streams(6), device=x4.device)
            image = x4.run(
                image, cond3, uncond3, start, augment, steps=x4_steps, guidance=x4_guidance, noise_level=x4_level,
                callback=callback,
            )  # fmt: skip
            timings["stage_3"] = time.perf_counter() - t0
            outputs.append(image)
            params |= {
                "latent_upscaler": x4.path.name, "latent_upscaler_steps": x4_steps,
                "latent_upscaler_guidance": x4_guidance, "latent_upscaler_noise_level": x4_level,
                "width": int(image.shape[-1]), "height": int(image.shape[-2]),
            }  # fmt: skip
        return CascadeResult(
            images=pixels_to_images(image), stages=outputs, seeds=seeds, parameters=params, timings=timings
        )


def read_latent_upscaler(
    path: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> X4Upscaler:
    """Stage III from its folder, with errors that name ``--latent-upscaler`` (another family's folder, or a
    missing component file)."""
    root = Path(path)
    kind = folder_kind(root) if root.is_dir() else None
    if root.is_dir() and kind in CASCADE_PIPELINES:
        hint = "--model" if kind == CASCADE_PIPELINES[0] else "--upscaler"
        raise ValueError(
            f"--latent-upscaler: {_describe_kind(kind, root)}; it goes to {hint}. --latent-upscaler takes DeepFloyd's "
            f"stage III, a Stable Diffusion x4 upscaler folder ({STAGE_III_PIPELINES[0]})"
        )
    return X4Upscaler.from_pretrained(root, device=device, dtype=dtype, option="--latent-upscaler")


def describe_cascade(path: str | Path) -> str:
    """``latentworks info --model`` for a cascade stage folder: which stage, its network and sampling, and
    what it runs with."""
    root = Path(path)
    kind = folder_kind(root)
    if kind in STAGE_III_PIPELINES or is_x4_upscaler_folder(root):
        return describe_x4_folder(root)
    index = read_json(root / "model_index.json", "model_index.json")
    family = by_pipeline_class(index)
    assert family is not None
    upscaler = kind == CASCADE_PIPELINES[1]
    unet_cfg = read_json(root / "unet" / "config.json", "the U-Net config")
    config = if_config_from_diffusers(unet_cfg, source=str(root / "unet" / "config.json"))
    sched = scheduler_settings(
        read_json(root / "scheduler" / "scheduler_config.json", "the scheduler config"),
        source=str(root / "scheduler"),
    )
    weights = read_weights(root / "unet")
    count = sum(int(torch.Size(t.shape).numel()) for t in weights.values())
    has_text = (root / "text_encoder").is_dir()
    defaults = family.generation.defaults
    lines = [
        f"model       {root.name}  ({root})",
        f"family      {family.name}  ({family.title})",
        f"stage       {'II: super-resolution' if upscaler else 'I: base'} of DeepFloyd IF's cascade "
        f"(stage I {CASCADE_PIPELINES[0]} -> stage II {CASCADE_PIPELINES[1]} -> optional stage III, the x4 latent "
        f"upscaler {STAGE_III_PIPELINES[0]})",
        f"parameters  unet {count:,}  channels {list(config.channels)}  in {config.in_channels} out {config.out_channels}",
        f"resolution  {unet_cfg.get('sample_size')} px  (pixel space)",
        f"sampling    DDPM, {'learned' if sched.learned_variance else 'fixed'} variance, "
        + (
            f"dynamic thresholding p={sched.threshold} max={sched.threshold_max}"
            if sched.threshold
            else f"clip {sched.clip}"
        )
        + f", {sched.spacing} spacing",
        f"text        T5 ({config.token_dim} wide, {T5_LENGTH} tokens): "
        + ("text_encoder/ in this folder" if has_text else "from stage I (or --text-encoder)"),
        f"defaults    {dict(defaults)}",
    ]
    if not upscaler:
        lines.append(
            "run         latentworks generate PROMPT --model THIS --upscaler IF-II-FOLDER "
            "[--latent-upscaler X4-UPSCALER-FOLDER]"
        )
    return "\n".join(lines)
