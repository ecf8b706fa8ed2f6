"""Stage 2: train a latent diffusion model (U-Net or DiT) on cached latents.

Objectives (``diffusion.objective``): ``eps`` / ``v`` (discrete DDPM, scaled-linear betas) or ``flow``
(rectified flow with logit-normal time, SD3); a fine-tune keeps its source's sampling spec. Previews
sample through the one sampling path (``pipelines.sampling.denoise_latents``). Captions are encoded on
the fly by the frozen text encoder; 10% are replaced by "" (the unconditional embedding) for
classifier-free guidance. AdamW, EMA weights, gradient clipping, bf16/fp16 autocast on GPU, DDP under
torchrun.

Run folder (``cfg.out``)::

    config.json                   {"kind": "diffusion", "architecture": "unet"|"dit", "model": {...},
                                   "prediction": "eps"|"v"|"flow", "sampling": {"kind": ...},
                                   "vae_run": ..., "latent": {"scale", "shift",
                                   "channels", "size"}, "text_encoder": {"name": "minilm", "max_length": 32},
                                   "train": {...}}
    model.safetensors             EMA weights (what pipelines load)
    controlnet.safetensors        instead of model.safetensors when training a ControlNet for a frozen base
                                  (``controlnet``; training.controlnet): config.json "kind" is "controlnet"
    checkpoints/last.safetensors  full training state for --resume
    samples/step_XXXXXXX.png, loss.png, log.jsonl
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn

from latentworks.checkpoints.io import save_file_atomic
from latentworks.diffusion.conditioning import Conditioning
from latentworks.diffusion.control import ControlInput
from latentworks.diffusion.denoisers import SamplingSpec, sampling_spec_from_dict
from latentworks.diffusion.objective import DiffusionObjective
from latentworks.diffusion.schedules import get_sigmas
from latentworks.families.architectures import architecture
from latentworks.models.controlnet import ControlNet
from latentworks.pipelines.sampling import NetworkModel, SamplingModel, denoise_latents, seeds_for
from latentworks.training.checkpoint import (
    check_finite,
    grad_scaler_meta,
    load_grad_scaler,
    load_training_state,
    save_training_state,
)
from latentworks.training.common import (
    RunLog,
    batch_indices,
    seed_step_globals,
    step_generator,
    to_jsonable,
    write_json,
)
from latentworks.training.controlnet import CONTROLNET_RESUME, ControlNetTraining, ControlNetTrainSpec
from latentworks.training.distributed import (
    all_reduce_mean,
    barrier,
    cleanup,
    init_distributed,
    wrap_ddp,
)
from latentworks.training.ema import EMA
from latentworks.training.resume import DIFFUSION_RESUME, check_resume, read_run_config

TRAINABLE = ("unet", "dit")  # the architectures latentworks train builds and fine-tunes
TASKS = ("text2image", "superres", "unclip")  # superres: a pixel 2x stage with noise augmentation
# (training.superres); unclip: our own unCLIP decoder, the init model given image-embedding conditioning
# (training.unclip)

DEFAULT_PROMPTS = (
    "red apple, google style",
    "grinning face, twitter style",
    "red heart, google style",
    "waving hand, twitter style",
)


@dataclass(frozen=True, kw_only=True)
class DiffusionTrainConfig:
    """Stage-2 training on a latent cache (``pipelines.latents``), or with ``task="superres"`` a pixel
    super-resolution stage on a dataset file (``latents`` is then the ``.npz`` of high-resolution images;
    ``training.superres``)."""

    latents: Path
    out: Path
    architecture: str = "unet"  # the network: "unet" or "dit" (families.architectures)
    preset: str = "emoji-s"
    model: Any = None  # a UNetConfig / DiTConfig; overrides ``preset``
    prediction: str = "flow"  # "eps", "v" or "flow"
    steps: int = 50_000
    batch_size: int = 32
    lr: float = 1e-4
    weight_decay: float = 0.01
    ema_decay: float = 0.999
    caption_dropout: float = 0.1
    # "auto": vary each caption into the forms people type (data/captions.py) when the latent cache holds
    # the captions' parts (label, tags, style), as caches of the emoji data do; "on" requires them; "off".
    caption_augment: str = "auto"
    grad_clip: float = 1.0
    mixed_precision: str = "no"  # "no", "bf16", "fp16" (autocast; fp16 adds a GradScaler)
    logit_mean: float = 0.0
    logit_std: float = 1.0
    text_max_length: int = 32
    seed: int = 0
    log_every: int = 10
    sample_every: int = 1000
    checkpoint_every: int = 500
    sample_prompts: tuple[str, ...] = DEFAULT_PROMPTS
    sample_steps: int = 20
    sample_guidance: float = 4.0
    vae_run: Path | None = None  # decode sample grids to pixels with this autoencoder
    init_from: Path | None = None  # fine-tune a model folder's (or a run's) denoiser; sets the model config
    resume: bool = False
    device: str = "cpu"
    progress: bool = True
    max_seconds: float | None = None
    task: str = "text2image"  # or "superres" (see the class docstring)
    noise_aug_max: float = 0.5  # superres: augmentation levels are drawn uniformly from [0, noise_aug_max]
    aug_level: float = 0.1  # superres: the fixed level previews and the exported stage sample with
    crop: int | None = None  # superres: train on random crops of this side (None: whole images)
    # superres: learn the scaled residual over the bicubic upsample (training.superres)
    residual: bool = False
    # unclip: the image encoder run (training.unclip) and the dataset file the latent cache was built from
    image_encoder: Path | None = None
    image_data: Path | None = None  # default: the dataset the latent cache names
    image_dropout: float = 0.1  # unclip: the share of steps an example is shown without its image embedding
    # unclip: the new image-embedding path (``add_embed``, zero at step 0) learns at lr x this; the
    # pretrained U-Net at lr (a new layer beside a trained network needs larger steps to catch up)
    embed_lr_scale: float = 1.0
    # Train a ControlNet for the frozen ``init_from`` model instead of the model itself (training.controlnet).
    controlnet: ControlNetTrainSpec | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "latents", Path(self.latents))
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if self.task == "superres" and self.architecture != "unet":
            raise ValueError(f"task superres trains a U-Net; got architecture {self.architecture!r}")
        if self.embed_lr_scale <= 0:
            raise ValueError(f"embed_lr_scale must be > 0, got {self.embed_lr_scale}")
        if self.embed_lr_scale != 1.0 and self.task != "unclip":
            raise ValueError(f"embed_lr_scale applies to task unclip only, not {self.task!r}")
        if self.residual and self.task != "superres":
            raise ValueError(f"residual applies to task superres only, not {self.task!r}")
        if not (0 < self.noise_aug_max <= 1 and 0 <= self.aug_level <= 1):
            raise ValueError(
                f"noise_aug_max must be in (0, 1] and aug_level in [0, 1], got {self.noise_aug_max}, {self.aug_level}"
            )
        object.__setattr__(self, "out", Path(self.out))
        if self.task == "unclip" and self.image_encoder is None:
            raise ValueError(
                "task unclip needs the image encoder run: set image_encoder (--image-encoder RUN, made by "
                "'latentworks train-unclip --stages encoder')"
            )
        if self.controlnet is not None:
            object.__setattr__(self, "controlnet", ControlNetTrainSpec.from_saved(self.controlnet))
            if self.init_from is None:
                raise ValueError("training a ControlNet needs its base model: set init_from (--base)")
        if self.architecture not in TRAINABLE:
            raise ValueError(f"architecture must be 'unet' or 'dit', got {self.architecture!r}")
        if self.prediction not in ("eps", "v", "flow"):
            raise ValueError(f"prediction must be eps, v or flow, got {self.prediction!r}")
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise ValueError(f"mixed_precision must be no, bf16 or fp16, got {self.mixed_precision!r}")
        if self.caption_augment not in ("auto", "on", "off"):
            raise ValueError(f"caption_augment must be auto, on or off, got {self.caption_augment!r}")
        if not 0 <= self.caption_dropout < 1:
            raise ValueError(f"caption_dropout must be in [0, 1), got {self.caption_dropout}")
        for name in ("steps", "batch_size", "log_every", "sample_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"DiffusionTrainConfig.{name} must be >= 1, got {getattr(self, name)}")

    def model_config(self) -> Any:
        if self.model is not None:
            return self.model
        presets: dict[str, Any]
        if self.task == "superres":
            from latentworks.models.superres import PRESETS as presets
        elif self.architecture == "unet":
            from latentworks.models.unet import PRESETS as presets
        else:
            from latentworks.models.dit import PRESETS as presets
        if self.preset not in presets:
            raise ValueError(
                f"unknown {self.architecture} preset {self.preset!r}; choose from {', '.join(presets)}"
            )
        return presets[self.preset]


@dataclass(frozen=True)
class InitSource:
    """Denoiser weights to fine-tune from (``DiffusionTrainConfig.init_from``)."""

    architecture: str
    net: nn.Module  # float32; its ``config`` is the run's model config
    prediction: str
    latent_scale: float
    latent_shift: float
    # The source's noise schedule, which the fine-tune keeps (None: the objective's default).
    sampling: SamplingSpec | None = None


def load_init_source(path: str | Path) -> InitSource:
    """The denoiser of a model folder (``default`` = the embedded one) or of a ``latentworks train`` run
    (its EMA weights)."""
    from latentworks.pipelines.export import load_diffusion_run
    from latentworks.pipelines.loading import denoiser_architecture, is_model_folder, load_model_folder

    if is_model_folder(path):
        mf = load_model_folder(path)
        te = mf.meta.get("text_encoder", {}).get("kind")
        if te != "minilm":
            raise ValueError(
                f"{mf.path}: its text encoder is {te!r}; latentworks train conditions on MiniLM only"
            )
        arch, net, prediction = denoiser_architecture(mf.meta), mf.denoiser_net, mf.prediction
        scale, shift = mf.latent_format.scale_factor, mf.latent_format.shift_factor
        sampling: SamplingSpec | None = sampling_spec_from_dict(mf.meta["denoiser"]["sampling"])
    elif (Path(path) / "config.json").is_file():
        rc, net = load_diffusion_run(path)
        arch, prediction = rc["architecture"], rc["prediction"]
        scale, shift = float(rc["latent"]["scale"]), float(rc["latent"]["shift"])
        sampling = None if rc.get("sampling") is None else sampling_spec_from_dict(rc["sampling"])
    else:
        raise FileNotFoundError(
            f"--init-from {path}: neither a model folder (model.json) nor a 'latentworks train' run (config.json)"
        )
    if arch not in TRAINABLE:
        raise ValueError(f"{path}: a {arch!r} denoiser; latentworks train fine-tunes unet and dit models")
    return InitSource(arch, net, prediction, scale, shift, sampling)


@dataclass
class DiffusionResult:
    step: int
    losses: list[float] = field(default_factory=list)
    run_dir: Path | None = None


def _check_init(cfg: DiffusionTrainConfig, init: InitSource, scale: float, shift: float) -> None:
    """Refuse a fine-tune whose source does not match this run's architecture, objective or latents."""
    if init.architecture != cfg.architecture:
        raise ValueError(
            f"--init-from holds a {init.architecture} denoiser; pass --architecture {init.architecture}"
        )
    if init.prediction != cfg.prediction:
        raise ValueError(
            f"--init-from was trained with {init.prediction!r} prediction; pass --prediction {init.prediction}"
        )
    if not (
        math.isclose(init.latent_scale, scale, rel_tol=1e-3)
        and math.isclose(init.latent_shift, shift, rel_tol=1e-3, abs_tol=1e-3)
    ):
        raise ValueError(
            f"--init-from expects latents with scale {init.latent_scale:.5g} / shift {init.latent_shift:.5g} but "
            f"the latent cache has {scale:.5g} / {shift:.5g}: encode the data with the source model's "
            "autoencoder (--vae MODEL)"
        )


def build_model(arch: str, config: Any) -> nn.Module:
    """A new network of architecture ``arch`` ("unet" | "dit") and ``config``."""
    return architecture(arch).network(config)


def model_config_class(arch: str) -> type:
    """The config dataclass of architecture ``arch``."""
    return architecture(arch).config


def _resume_model_config(cfg: DiffusionTrainConfig, saved: dict[str, Any] | None) -> Any:
    """The model config of a resumed run: ``cfg.model`` if set, else the one the run saved (so a run that
    fine-tuned ``--init-from`` a model resumes without it), else the preset's."""
    if cfg.model is not None or saved is None:
        return cfg.model_config()
    from latentworks.models.configs import config_from_dict

    return config_from_dict(model_config_class(saved.get("architecture", cfg.architecture)), saved["model"])


def check_fit(
    arch: str, mcfg: Any, channels: int, size: int, text_dim: int, concat_channels: int = 0
) -> None:
    """Raise a clear error when the model config does not fit the latents or the text encoder.
    ``concat_channels``: channels the network reads besides the latents (a super-resolution stage's
    low-resolution image)."""
    if mcfg.in_channels != channels + concat_channels:
        if concat_channels:
            raise ValueError(
                f"the {arch} config has in_channels={mcfg.in_channels}; this task needs {channels} + "
                f"{concat_channels} (the image and its conditioning image)"
            )
        raise ValueError(
            f"the {arch} config has in_channels={mcfg.in_channels} but the latents have {channels} channels; "
            f"use a config with in_channels={channels} (and out_channels={channels})"
        )
    out = getattr(mcfg, "output_channels", getattr(mcfg, "out_channels", channels))
    if out != channels:
        raise ValueError(f"the {arch} config predicts {out} channels; the latents have {channels}")
    if arch == "dit" and mcfg.sample_size != size:
        raise ValueError(
            f"the DiT config has sample_size={mcfg.sample_size} but the latents are {size}x{size}"
        )
    ctx = getattr(mcfg, "context_dim", None)
    if ctx is not None and ctx != text_dim:
        raise ValueError(
            f"the {arch} config has context_dim={ctx} but the text encoder gives {text_dim}-dim tokens"
        )
    pooled = getattr(mcfg, "pooled_dim", None)
    class_embedding = getattr(mcfg, "num_time_ids", None) == 0  # reads cond.extra, not the pooled text
    if pooled and not class_embedding and pooled != text_dim:
        raise ValueError(
            f"the {arch} config has pooled_dim={pooled}; the text encoder's pooled vector is {text_dim}"
        )


class _CaptionCache:
    """Text embeddings per caption, memoised (captions repeat every epoch); the first ``max_items``
    distinct captions are kept (on the CPU), later ones are encoded again each time they come up.

    Each caption is encoded alone (a batch of one), so its embedding is a function of the caption only.
    Encoded in a batch, it would depend on its neighbours (batched matmuls round differently: 1.8e-6 for
    MiniLM), and a memo filled batch by batch would hold different numbers in a resumed run (which starts
    with an empty memo) than in a straight one, breaking bit-exact resume. The cost is one encoder call
    per distinct caption, once.
    """

    def __init__(self, encoder: Any, device: torch.device, max_items: int = 20_000) -> None:
        self.encoder, self.device, self.max_items = encoder, device, max_items
        self.memo: dict[str, Conditioning] = {}

    def one(self, caption: str) -> Conditioning:
        """The (1, ...) conditioning of one caption."""
        cond = self.memo.get(caption)
        if cond is None:
            cond = self.encoder.encode([caption]).map(lambda t: t.cpu())
            if len(self.memo) < self.max_items:
                self.memo[caption] = cond
        return cond

    def __call__(self, captions: list[str]) -> Conditioning:
        return Conditioning.cat([self.one(c) for c in captions]).to(self.device)


CAPTION_STREAM = 1 << 20  # offsets the rank in the caption generator's seed: its own stream, so the noise
# and the batch draws of a run are the same with and without caption augmentation


def _caption_augment(cfg: DiffusionTrainConfig, cache: Any) -> Any:
    """A function ``(captions, idx, dropped, generator) -> captions`` that rewrites each kept caption
    into a user form (``data.captions.CaptionAugment``), or None when augmentation is off."""
    from latentworks.data.captions import CaptionAugment

    parts = cache.parts
    if cfg.caption_augment == "off" or (cfg.caption_augment == "auto" and parts is None):
        return None
    if parts is None:
        raise ValueError(
            f"{cfg.latents}: --caption-augment on needs the captions' parts (label, tags, style), which this "
            "latent cache does not hold; rebuild the dataset with 'latentworks data emoji' (it stores them) "
            "and the cache, or pass --caption-augment off"
        )
    aug = CaptionAugment()

    def apply(caps: list[str], idx: Any, dropped: Tensor, gen: torch.Generator) -> list[str]:
        return [c if bool(d) else aug(parts[int(i)], gen) for c, i, d in zip(caps, idx, dropped)]

    return apply


PREVIEW_SAMPLER = "euler"
PREVIEW_SCHEDULER = "normal"


def sample_latents(
    model: SamplingModel,
    cond: Conditioning,
    uncond: Conditioning,
    shape: tuple[int, int, int, int],
    *,
    steps: int,
    guidance: float,
    seed: int,
    sampler: str = PREVIEW_SAMPLER,
    scheduler: str = PREVIEW_SCHEDULER,
) -> Tensor:
    """Latents (B, C, h, w) = ``shape`` for the previews during training, through the one sampling path
    (``pipelines.sampling.denoise_latents``, seeds ``seeds_for(seed, B)``): the same settings give the
    latents ``Pipeline.__call__`` and the KSampler node give. ``cond`` / ``uncond``: B rows each."""
    device = next(model.denoiser_net.parameters()).device
    sigmas = get_sigmas(model.model_sampling, scheduler, steps)
    x0 = torch.zeros(shape, device=device)
    return denoise_latents(
        model, x0, sigmas, seeds_for(seed, shape[0]), cond.to(device), uncond.to(device), guidance, sampler
    )


def train_diffusion(cfg: DiffusionTrainConfig, text_encoder: Any = None) -> DiffusionResult:
    """Train (or resume) a latent diffusion model; see the module docstring. ``text_encoder`` defaults to
    the frozen MiniLM (``models.text.minilm``)."""
    from latentworks.pipelines.latents import load_latent_cache

    info = init_distributed(cfg.device)
    device = torch.device(
        cfg.device if not (cfg.device.startswith("cuda") and info.enabled) else f"cuda:{info.local_rank}"
    )
    try:
        cache: Any
        if cfg.task == "superres":
            from latentworks.training.superres import load_pixel_pairs

            cache = load_pixel_pairs(
                cfg.latents, max_level=cfg.noise_aug_max, level_dim=0, crop=cfg.crop, residual=cfg.residual
            )
        else:
            cache = load_latent_cache(cfg.latents)
        if text_encoder is None:
            from latentworks.models.text.minilm import MiniLMTextEncoder

            text_encoder = MiniLMTextEncoder(max_length=cfg.text_max_length, device=device)
        run, ckpt = cfg.out, cfg.out / "checkpoints" / "last.safetensors"
        policy = DIFFUSION_RESUME if cfg.controlnet is None else CONTROLNET_RESUME
        saved = read_run_config(run, policy) if cfg.resume else None
        resuming = cfg.resume and ckpt.is_file()
        init = None
        # On resume the checkpoint's weights replace these, except a ControlNet's base (not in the checkpoint).
        if cfg.init_from is not None and (not resuming or cfg.controlnet is not None):
            init = load_init_source(cfg.init_from)
            _check_init(cfg, init, cache.scale, cache.shift)
        mcfg = init.net.config if init is not None else _resume_model_config(cfg, saved)
        unclip = None
        if cfg.task == "unclip":  # the decoder: mcfg with an image-embedding path (models.own_unclip)
            from latentworks.models.own_unclip import decoder_config
            from latentworks.training.unclip import decoder_conditioning

            image_data = cfg.image_data or cache.metadata.get("data")
            if cfg.image_encoder is None or not image_data:
                raise ValueError(
                    f"{cfg.latents}: the latent cache does not name its dataset; pass it (--data, image_data)"
                )
            unclip = decoder_conditioning(
                cfg.image_encoder,
                image_data,
                cache.captions,
                max_level=cfg.noise_aug_max,
                dropout=cfg.image_dropout,
            )
            mcfg = decoder_config(cast(Any, mcfg), unclip.augmentor.dim)
        changes = check_resume(saved, cfg, policy, run=run, model_config=mcfg)
        if changes and info.is_main:
            print("--resume: changed from the saved config: " + "; ".join(changes))
        superres = cfg.task == "superres"
        if superres:
            from latentworks.models.superres import check_superres_config
            from latentworks.models.unet import UNetConfig

            sr_cfg = cast(UNetConfig, mcfg)
            check_superres_config(
                sr_cfg, f"preset {cfg.preset!r}" if cfg.model is None else "the model config"
            )
            cache.level_dim = sr_cfg.pooled_dim
            if cfg.crop is not None and cfg.crop % sr_cfg.downsample_factor:
                raise ValueError(
                    f"crop {cfg.crop} must be a multiple of the U-Net's downsampling factor {sr_cfg.downsample_factor}"
                )
        check_fit(
            cfg.architecture,
            mcfg,
            cache.channels,
            cache.size,
            text_encoder.dim,
            concat_channels=cache.channels if superres else 0,
        )
        torch.manual_seed(cfg.seed)
        model = build_model(cfg.architecture, mcfg).to(device)
        if init is not None and unclip is not None:
            from latentworks.models.own_unclip import load_base_weights

            load_base_weights(model, init.net)  # the new image path starts at zero: step 0 = the init model
        elif init is not None:
            model.load_state_dict(init.net.state_dict(), strict=True)
        control = None  # a ControlNet run trains ``control.network`` and keeps ``model`` (the base) frozen
        if cfg.controlnet is not None:
            image_size = int(cache.metadata.get("resolution", 0)) or cache.size
            control = ControlNetTraining(cfg.controlnet, model, cache, image_size)
        trained: nn.Module = model if control is None else control.network
        # Fine-tuned weights already are an average, so their EMA starts at full decay (a new ControlNet is not).
        ema = EMA(trained, cfg.ema_decay, warmup=cfg.init_from is None or control is not None)
        opt = torch.optim.AdamW(_param_groups(trained, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay)
        # A fine-tune samples noise levels by its source's spec; a resumed run by the one it recorded (its
        # source is not read again), so a resume draws exactly what the uninterrupted run would have.
        sampling = init.sampling if init is not None else None
        if init is None and saved is not None and saved.get("sampling") is not None:
            sampling = sampling_spec_from_dict(saved["sampling"])
        objective = DiffusionObjective(cfg.prediction, cfg.logit_mean, cfg.logit_std, sampling=sampling)
        scaler = torch.amp.GradScaler(device.type, enabled=cfg.mixed_precision == "fp16")
        step = 0
        if resuming:
            meta = load_training_state(
                ckpt, modules={"model": trained, "ema": ema.model}, optimizers={"model": opt}, device=device
            )
            step = int(meta["step"])
            ema.num_updates = int(meta.get("ema_updates", step))
            load_grad_scaler(scaler, meta)
            for group in opt.param_groups:  # the only optimizer setting a resume may change
                group["lr"] = cfg.lr * group.get("lr_scale", 1.0)
        elif cfg.resume and info.is_main:
            print(f"--resume: no checkpoint at {ckpt}; starting from step 0")
        run_config = {
            "kind": policy.kind,
            "architecture": cfg.architecture,
            "model": to_jsonable(mcfg),
            "prediction": cfg.prediction,
            "sampling": objective.sampling.to_dict(),  # what an exported model samples with
            "vae_run": str(cache.metadata.get("vae_run", cfg.vae_run or "")),
            "latent": {
                "scale": cache.scale,
                "shift": cache.shift,
                "channels": cache.channels,
                "size": cache.size,
            },
            "text_encoder": {"name": "minilm", "max_length": cfg.text_max_length, "dim": text_encoder.dim},
            "train": to_jsonable(cfg),
        }
        if superres:  # what pipelines.superres.load_superres_stage reads
            run_config["latent"]["size"] = cache.image_size  # the stage's output, not the crop
            run_config["superres"] = {
                "low_resolution": cache.low_size,
                "residual_scale": cache.residual_scale,  # 0: the stage samples whole images
                "defaults": {"aug_level": cfg.aug_level, "steps": cfg.sample_steps},
            }
        if unclip is not None:
            run_config["unclip"] = {
                "image_encoder": str(cfg.image_encoder),
                "embed_dim": unclip.augmentor.dim,
            }
        if control is not None:
            run_config["controlnet"] = {
                "config": to_jsonable(control.network.config),
                "file": "controlnet.safetensors",
            }
        if info.is_main:
            run.mkdir(parents=True, exist_ok=True)
            write_json(run / "config.json", run_config)
        log = RunLog(run, step) if info.is_main else None
        ddp_model = wrap_ddp(trained, info)
        captions = _CaptionCache(text_encoder, device)
        augment = _caption_augment(cfg, cache)

        def save_all(s: int) -> None:
            if info.is_main:
                save_training_state(
                    ckpt,
                    step=s,
                    modules={"model": trained, "ema": ema.model},
                    optimizers={"model": opt},
                    extra_meta={
                        "config": run_config,
                        "ema_updates": str(ema.num_updates),
                        "grad_scaler": grad_scaler_meta(scaler),
                    },
                )
                if control is not None:
                    assert isinstance(ema.model, ControlNet)
                    control.save(ema.model, run / "controlnet.safetensors", s, str(cfg.init_from))
                    return
                save_file_atomic(
                    ema.state_dict(),
                    run / "model.safetensors",
                    {"step": str(s), "kind": "diffusion", "weights": "ema"},
                )

        # EMA: updated in place. A ControlNet run previews the base with the EMA ControlNet.
        preview_model = NetworkModel(
            model if control is not None else ema.model, cfg.prediction, objective.model_sampling
        )
        preview_control = None
        if control is not None:
            assert isinstance(ema.model, ControlNet)
            preview_control = control.preview_control(ema.model, len(cfg.sample_prompts))
        loop = StepLoop(
            cfg=cfg,
            info=info,
            device=device,
            cache=cache,
            encode=captions,
            augment=augment,
            objective=objective,
            model=ddp_model,
            net=trained,
            trainable=list(trained.parameters()),
            opt=opt,
            scaler=scaler,
            save=save_all,
            ema=ema,
            log=log,
            condition=cache.condition if superres else (None if unclip is None else unclip.condition),
            predict=None if control is None else partial(control.predict, ddp_model),
            preview=(
                (lambda s: _preview_superres(cfg, preview_model, text_encoder, cache, run, s))
                if superres
                else (lambda s: _preview(cfg, preview_model, text_encoder, cache, run, s, preview_control))
            ),
            title=f"train ({cfg.architecture}, {cfg.prediction}) loss",
        )
        step, losses = run_steps(loop, step)
        return DiffusionResult(step=step, losses=losses, run_dir=run)
    finally:
        cleanup(info)


@dataclass
class StepLoop:
    """What :func:`run_steps` needs: the run's settings, the data, the objective and the trainable parts.

    ``cfg`` is a training config with the loop's fields (``steps``, ``batch_size``, ``seed``,
    ``caption_dropout``, ``mixed_precision``, ``grad_clip``, ``log_every``, ``sample_every``,
    ``checkpoint_every``, ``max_seconds``, ``progress``): ``DiffusionTrainConfig`` or
    ``training.lora.LoraTrainConfig``. ``model(x_in, timestep, cond)`` is the network to train (possibly
    DDP-wrapped), ``net`` the same network unwrapped (what ``ema`` follows); ``trainable`` its parameters that the optimizer updates (gradient clipping covers them).
    ``encode(captions) -> Conditioning`` (B rows on ``device``). ``save(step)`` writes the checkpoint and
    the run's outputs; ``preview(step)`` (optional) a sample grid.
    """

    cfg: Any
    info: Any  # distributed.DistInfo
    device: torch.device
    cache: Any  # pipelines.latents.LatentCache
    encode: Callable[[list[str]], Conditioning]
    augment: Any  # _caption_augment(...) or None
    objective: DiffusionObjective
    model: nn.Module
    net: nn.Module
    trainable: list[nn.Parameter]
    opt: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    save: Callable[[int], None]
    ema: EMA | None = None
    log: RunLog | None = None
    preview: Callable[[int], None] | None = None
    title: str = "train loss"
    # extra conditioning drawn after the objective's noise (the super-resolution stage's noise-augmented
    # low-resolution image): ``condition(cond, batch indices, step generator) -> cond``
    condition: Callable[[Conditioning, Tensor, torch.Generator], Conditioning] | None = None
    # the prediction when it is not ``model(x_in, timestep, cond)`` (a ControlNet run: the frozen base with
    # the trained ControlNet's residuals): ``predict(x_in, timestep, cond, batch indices) -> prediction``
    predict: Callable[[Tensor, Tensor, Conditioning, Tensor], Tensor] | None = None


def run_steps(loop: StepLoop, step: int) -> tuple[int, list[float]]:
    """The diffusion training loop from ``step`` to ``cfg.steps`` (or until ``cfg.max_seconds``): per step
    a batch of cached latents and captions (dropout, augmentation), noise from the objective, the loss,
    AdamW with clipping, EMA; logging, previews and checkpoints at their intervals and at the end. The
    randomness of step ``s`` is a function of ``(seed, s, rank)`` only (``training.common``), so a resumed
    run replays the straight one. Returns the last step and the losses of this call's steps."""
    cfg, info, device, cache = loop.cfg, loop.info, loop.device, loop.cache
    objective, model, opt, scaler, ema, log = (
        loop.objective,
        loop.model,
        loop.opt,
        loop.scaler,
        loop.ema,
        loop.log,
    )
    use_amp = cfg.mixed_precision != "no"
    amp_dtype = torch.bfloat16 if cfg.mixed_precision == "bf16" else torch.float16
    bar = None
    if info.is_main and cfg.progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, initial=step, desc="train", unit="step", dynamic_ncols=True)
    losses: list[float] = []
    t_start, start_step = time.perf_counter(), step
    model.train()
    while step < cfg.steps:
        seed_step_globals(cfg.seed, step, info.rank)  # dropout, if the model has any
        idx = batch_indices(step, len(cache), cfg.batch_size, cfg.seed, info.rank, info.world_size)
        gen = step_generator(cfg.seed, step, info.rank)
        x0 = cache.sample(idx, gen).to(device)
        drop = torch.rand(len(idx), generator=gen) < cfg.caption_dropout
        caps = ["" if d else cache.captions[int(i)] for i, d in zip(idx, drop)]
        if loop.augment is not None:
            caps = loop.augment(caps, idx, drop, step_generator(cfg.seed, step, info.rank + CAPTION_STREAM))
        cond = loop.encode(caps)
        nb = objective.noise(x0, gen)
        if loop.condition is not None:
            cond = loop.condition(cond, idx, gen)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
            if loop.predict is None:
                pred = model(nb.x_in, nb.timestep, cond)
            else:
                pred = loop.predict(nb.x_in, nb.timestep, cond, idx)
        loss = nb.loss(pred)
        check_finite(loss, step)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if cfg.grad_clip > 0:
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(loop.trainable, cfg.grad_clip)
        scaler.step(opt)
        scaler.update()
        if ema is not None:
            ema.update(loop.net)
        step += 1
        losses.append(float(loss.detach()))

        if step % cfg.log_every == 0 or step == cfg.steps:
            lv = float(all_reduce_mean(loss.detach(), info))
            if log is not None:
                log.log(step, loss=lv)
            if bar is not None:
                rate = (
                    (step - start_step) * cfg.batch_size * info.world_size / (time.perf_counter() - t_start)
                )
                bar.set_postfix(loss=f"{lv:.4f}", img_s=f"{rate:.1f}")
        if bar is not None:
            bar.update(1)
        timed_out = cfg.max_seconds is not None and time.perf_counter() - t_start > cfg.max_seconds
        if info.is_main and (step % cfg.sample_every == 0 or step == cfg.steps or timed_out):
            if loop.preview is not None:
                loop.preview(step)
            if log is not None:
                log.plot(loop.title)
        if step % cfg.checkpoint_every == 0 or step == cfg.steps or timed_out:
            loop.save(step)
            barrier(info)
        if timed_out:
            break
    if bar is not None:
        bar.close()
    return step, losses


def _preview(
    cfg: DiffusionTrainConfig,
    model: NetworkModel,
    text_encoder: Any,
    cache: Any,
    run: Path,
    step: int,
    control: ControlInput | None = None,
) -> None:
    """Sample the preview prompts with the EMA model (and ``control``, one hint per prompt, on both the prompt
    and the negative prompt); decode with the VAE when one is known."""
    from latentworks.pipelines.loading import is_model_folder
    from latentworks.training.grids import make_grid

    prompts = list(cfg.sample_prompts)
    if not prompts:
        return
    vae_run = cfg.vae_run or cache.metadata.get("vae_run")
    device = next(model.denoiser_net.parameters()).device
    cond = text_encoder.encode(prompts)
    uncond = text_encoder.encode([""] * len(prompts))
    if control is not None:
        cond, uncond = cond.with_control(control), uncond.with_control(control)
    shape = (len(prompts), cache.channels, cache.size, cache.size)
    z = sample_latents(
        model, cond, uncond, shape, steps=cfg.sample_steps, guidance=cfg.sample_guidance, seed=cfg.seed
    )
    (run / "samples").mkdir(exist_ok=True)
    if vae_run and (Path(vae_run, "model.safetensors").is_file() or is_model_folder(vae_run)):
        from latentworks.pipelines.latents import load_autoencoder

        ae = load_autoencoder(vae_run, device)
        with torch.no_grad():
            img = ae.decode((z / cache.scale + cache.shift).to(device)).clamp(-1, 1)
    else:  # no autoencoder: show the first three latent channels
        img = (z[:, :3] / max(1e-6, float(z[:, :3].abs().max()))).clamp(-1, 1)
        if img.shape[1] < 3:
            img = img.expand(-1, 3, -1, -1)
    make_grid(img.cpu()).save(run / "samples" / f"step_{step:07d}.png")


def _param_groups(trained: nn.Module, cfg: DiffusionTrainConfig) -> list[dict[str, Any]]:
    """The optimizer's parameter groups: one, or with ``embed_lr_scale != 1`` the unCLIP decoder's new
    image-embedding path (``add_embed.*``) apart, at ``lr * embed_lr_scale`` (its ``lr_scale`` is kept in
    the group, so a resume with another ``lr`` keeps the ratio)."""
    if cfg.embed_lr_scale == 1.0:
        return [{"params": list(trained.parameters()), "lr_scale": 1.0}]
    new = [p for n, p in trained.named_parameters() if n.startswith("add_embed.")]
    if not new:
        raise ValueError("embed_lr_scale: the network has no image-embedding path (add_embed)")
    rest = [p for n, p in trained.named_parameters() if not n.startswith("add_embed.")]
    return [
        {"params": rest, "lr_scale": 1.0},
        {"params": new, "lr": cfg.lr * cfg.embed_lr_scale, "lr_scale": cfg.embed_lr_scale},
    ]


def _preview_superres(
    cfg: DiffusionTrainConfig, model: NetworkModel, text_encoder: Any, cache: Any, run: Path, step: int
) -> None:
    """A grid of the first four training images: bicubic from low resolution, the stage's output, the real
    image (one column each)."""
    from latentworks.models.superres import upsample
    from latentworks.pipelines.superres import upscale_with_model
    from latentworks.training.grids import make_grid

    idx = torch.arange(min(4, len(cache)))
    device = next(model.denoiser_net.parameters()).device
    low, high = cache.low[idx], cache.high[idx]  # whole images, whatever the training crop
    cond = text_encoder.encode([cache.captions[int(i)] for i in idx])
    uncond = text_encoder.encode([""] * len(idx))
    sr = upscale_with_model(
        model,
        low,
        cond,
        uncond,
        list(range(len(idx))),
        size=cache.image_size,
        level_dim=cache.level_dim,
        steps=cfg.sample_steps,
        guidance=1.0,
        aug_level=cfg.aug_level,
        sampler=PREVIEW_SAMPLER,
        residual_scale=cache.residual_scale,
    ).to(device)
    rows = torch.cat([upsample(low, cache.image_size).to(device), sr, high.to(device)])
    (run / "samples").mkdir(exist_ok=True)
    make_grid(rows.cpu(), nrow=len(idx)).save(run / "samples" / f"step_{step:07d}.png")
