"""Stage 1: train a KL autoencoder (L1 + perceptual + KL, patch-GAN hinge loss after a warm-up).

With ``finetune_decoder`` it instead fine-tunes only the decoder of an existing autoencoder (a run or a
model folder), the encoder frozen, as the ft-MSE/ft-EMA decoders of Stable Diffusion were made: the
latents stay exactly the same, so a denoiser trained on them keeps working with the new decoder
(``latentworks convert MODEL --decoder-from RUN`` swaps it into a model folder).

Run folder (``cfg.out``)::

    config.json                     {"kind": "autoencoder", "model": {...AutoencoderConfig}, "train": {...}}
    model.safetensors               autoencoder weights (our names), what pipelines load
    checkpoints/last.safetensors    full training state for --resume
    samples/step_XXXXXXX.png        held-out originals (top row) and reconstructions (bottom)
    loss.png, log.jsonl, metrics.json
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from latentworks.checkpoints.io import save_file_atomic
from latentworks.training.checkpoint import check_finite, load_training_state, save_training_state
from latentworks.training.common import (
    RunLog,
    batch_indices,
    seed_step_globals,
    step_generator,
    to_jsonable,
    write_json,
)
from latentworks.training.distributed import (
    DistInfo,
    all_reduce_mean,
    barrier,
    cleanup,
    init_distributed,
    unwrap,
    wrap_ddp,
)
from latentworks.training.resume import VAE_RESUME, check_resume, read_run_config


@dataclass(frozen=True, kw_only=True)
class VAETrainConfig:
    """Stage-1 training. ``data``: a ``.npz`` from ``latentworks data`` or an image folder."""

    data: Path
    out: Path
    preset: str = "emoji-f4c4"
    model: Any = None  # an AutoencoderConfig; overrides ``preset``
    resolution: int = 64
    steps: int = 20_000
    batch_size: int = 16
    lr: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.9)
    kl_weight: float = 1e-6  # relative to the per-pixel-sum reconstruction loss, as in LDM
    perceptual_weight: float = 1.0  # 0 disables (and skips loading Inception)
    disc_start: int = 5_000  # steps before the GAN loss switches on; -1 never
    disc_weight: float = 0.5
    adaptive_weight: bool = True
    grad_clip: float = 1.0
    seed: int = 0
    log_every: int = 10
    sample_every: int = 500
    checkpoint_every: int = 500
    eval_items: int = 64  # held-out images for PSNR/SSIM at the end (and in sample grids)
    resume: bool = False
    device: str = "cpu"
    progress: bool = True
    max_seconds: float | None = None  # stop (after checkpointing) when the wall time is up
    finetune_decoder: Path | None = None  # a train-vae run or model folder: train its decoder only

    def __post_init__(self) -> None:
        object.__setattr__(self, "data", Path(self.data))
        object.__setattr__(self, "out", Path(self.out))
        if self.finetune_decoder is not None:
            object.__setattr__(self, "finetune_decoder", Path(self.finetune_decoder))
            if not self.finetune_decoder.exists() and str(self.finetune_decoder) != "default":
                raise FileNotFoundError(
                    f"--finetune-decoder: no such run or model folder {self.finetune_decoder}"
                )
        for name in ("steps", "batch_size", "log_every", "sample_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"VAETrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"VAETrainConfig.lr must be > 0, got {self.lr}")

    def model_config(self) -> Any:
        from latentworks.models.autoencoder import PRESETS

        if self.finetune_decoder is not None:
            from latentworks.pipelines.latents import load_autoencoder

            return load_autoencoder(self.finetune_decoder).config
        if self.model is not None:
            return self.model
        if self.preset not in PRESETS:
            raise ValueError(f"unknown autoencoder preset {self.preset!r}; choose from {', '.join(PRESETS)}")
        return PRESETS[self.preset]


@dataclass
class VAEResult:
    step: int
    metrics: dict[str, float] = field(default_factory=dict)
    run_dir: Path | None = None


def _last_layer(model: nn.Module) -> torch.Tensor:
    return unwrap(model).decoder.conv_out.weight


def _split(cfg: VAETrainConfig):
    from latentworks.data.folder import load_dataset

    ds = load_dataset(cfg.data, size=cfg.resolution, split="all")
    if ds.resolution != cfg.resolution:
        raise ValueError(
            f"{cfg.data} holds {ds.resolution}px images but resolution={cfg.resolution}; "
            f"pass --resolution {ds.resolution} or rebuild the dataset"
        )
    if "heldout" in ds.extra:
        return ds.split("train"), ds.split("heldout")
    n_eval = min(cfg.eval_items, max(1, len(ds) // 20))
    idx = torch.arange(len(ds)).numpy()
    return ds.subset(idx[n_eval:]), ds.subset(idx[:n_eval])


@torch.no_grad()
def reconstruct(model: Any, images: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    """Reconstructions (N, 3, H, W) in [-1, 1] of ``images`` through ``model``'s posterior mode."""
    model = unwrap(model)
    was_training = model.training
    model.eval()
    recs = []
    for i in range(0, len(images), batch_size):
        x = images[i : i + batch_size]
        recs.append(model.decode(model.encode(x).mode()).clamp(-1, 1))
    model.train(was_training)
    return torch.cat(recs)


def reconstruction_metrics(images: torch.Tensor, rec: torch.Tensor) -> dict[str, float]:
    """Mean PSNR (over images with a finite PSNR) and SSIM of reconstructions ``rec`` of ``images``.

    rFID needs the evaluation layer: ``evaluation.fid.fid_kid(images, rec)`` (as ``latentworks eval`` does).
    """
    from latentworks.nn.image_metrics import psnr, ssim

    p = psnr(images, rec)
    return {
        "psnr": float(p[torch.isfinite(p)].mean()) if torch.isfinite(p).any() else math.inf,
        "ssim": float(ssim(images, rec).mean()),
        "n": len(images),
    }


def evaluate_reconstruction(model: Any, images: torch.Tensor, batch_size: int = 32) -> dict[str, float]:
    """PSNR/SSIM of ``model`` on images (N, 3, H, W) in [-1, 1] via the posterior mode."""
    return reconstruction_metrics(images, reconstruct(model, images, batch_size))


def train_vae(cfg: VAETrainConfig) -> VAEResult:
    """Train (or resume) an autoencoder; see the module docstring for the run folder."""
    from latentworks.models.autoencoder import Autoencoder
    from latentworks.training.grids import make_grid
    from latentworks.training.losses import (
        InceptionPerceptualLoss,
        PatchDiscriminator,
        adaptive_gan_weight,
        hinge_d_loss,
    )

    info: DistInfo = init_distributed(cfg.device)
    device = torch.device(
        cfg.device if not cfg.device.startswith("cuda") or not info.enabled else f"cuda:{info.local_rank}"
    )
    try:
        run = cfg.out
        ckpt = run / "checkpoints" / "last.safetensors"
        saved = read_run_config(run, VAE_RESUME) if cfg.resume else None
        train_ds, eval_ds = _split(cfg)
        mcfg = cfg.model_config()
        changes = check_resume(saved, cfg, VAE_RESUME, run=run, model_config=mcfg)
        if changes and info.is_main:
            print("--resume: changed from the saved config: " + "; ".join(changes))
        torch.manual_seed(cfg.seed)
        model = Autoencoder(mcfg)
        if cfg.finetune_decoder is not None:
            from latentworks.pipelines.latents import load_autoencoder
            from latentworks.pipelines.loading import ENCODER_PREFIXES

            model.load_state_dict(load_autoencoder(cfg.finetune_decoder).state_dict())
            for name, p in model.named_parameters():
                p.requires_grad_(not name.startswith(ENCODER_PREFIXES))
        model = model.to(device)
        disc = PatchDiscriminator(num_layers=2 if cfg.resolution <= 64 else 3).to(device)
        trainable = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(trainable, lr=cfg.lr, betas=cfg.betas, weight_decay=0.0)
        d_opt = torch.optim.AdamW(disc.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=0.0)
        perceptual = InceptionPerceptualLoss(device=device) if cfg.perceptual_weight > 0 else None
        step = 0
        if cfg.resume and ckpt.is_file():
            meta = load_training_state(
                ckpt,
                modules={"model": model, "disc": disc},
                optimizers={"model": opt, "disc": d_opt},
                device=device,
            )
            step = int(meta["step"])
            for o in (opt, d_opt):  # the only optimizer setting a resume may change
                for group in o.param_groups:
                    group["lr"] = cfg.lr
        elif cfg.resume and info.is_main:
            print(f"--resume: no checkpoint at {ckpt}; starting from step 0")
        run_config = {
            "kind": "autoencoder",
            "model": to_jsonable(mcfg),
            "train": to_jsonable(cfg),
            "data": {
                "resolution": cfg.resolution,
                "train_items": len(train_ds),
                "heldout_items": len(eval_ds),
            },
        }
        if info.is_main:
            run.mkdir(parents=True, exist_ok=True)
            write_json(run / "config.json", run_config)
        log = RunLog(run, step) if info.is_main else None
        ddp_model, ddp_disc = wrap_ddp(model, info), wrap_ddp(disc, info)
        eval_x = eval_ds.batch(range(min(cfg.eval_items, len(eval_ds))))[0].to(device)
        num_pixels = 3 * cfg.resolution * cfg.resolution

        def save_all(s: int) -> None:
            if info.is_main:
                save_training_state(
                    ckpt,
                    step=s,
                    modules={"model": model, "disc": disc},
                    optimizers={"model": opt, "disc": d_opt},
                    extra_meta={"config": run_config},
                )
                save_file_atomic(
                    model.state_dict(), run / "model.safetensors", {"step": str(s), "kind": "autoencoder"}
                )

        bar = None
        if info.is_main and cfg.progress:
            from tqdm import tqdm

            bar = tqdm(total=cfg.steps, initial=step, desc="train-vae", unit="step", dynamic_ncols=True)
        t_start, start_step = time.perf_counter(), step
        model.train()
        while step < cfg.steps:
            idx = batch_indices(step, len(train_ds), cfg.batch_size, cfg.seed, info.rank, info.world_size)
            x = train_ds.batch(idx)[0].to(device)
            gen = step_generator(cfg.seed, step, info.rank, device)
            gan_on = 0 <= cfg.disc_start <= step
            seed_step_globals(cfg.seed, step, info.rank)  # anything drawing from torch's global generator

            rec, posterior = ddp_model(x, gen)  # through the DDP wrapper so gradients are synchronised
            l1 = (rec - x).abs().mean()
            p_loss = perceptual(x, rec).mean() if perceptual is not None else rec.new_zeros(())
            nll = l1 + cfg.perceptual_weight * p_loss
            kl = posterior.kl().mean() / num_pixels
            loss = nll + cfg.kl_weight * kl
            g_loss = rec.new_zeros(())
            d_weight = rec.new_zeros(())
            if gan_on:
                for p in disc.parameters():
                    p.requires_grad_(False)
                g_loss = -ddp_disc(rec).mean()
                for p in disc.parameters():
                    p.requires_grad_(True)
                if cfg.adaptive_weight:
                    d_weight = adaptive_gan_weight(nll, g_loss, _last_layer(model)) * cfg.disc_weight
                else:
                    d_weight = rec.new_tensor(cfg.disc_weight)
                loss = loss + d_weight * g_loss
            check_finite(loss, step)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(trainable, cfg.grad_clip)
            opt.step()

            d_loss = rec.new_zeros(())
            if gan_on:
                d_loss = hinge_d_loss(ddp_disc(x), ddp_disc(rec.detach()))
                check_finite(d_loss, step, "discriminator loss")
                d_opt.zero_grad(set_to_none=True)
                d_loss.backward()
                d_opt.step()
            step += 1

            if step % cfg.log_every == 0 or step == cfg.steps:
                vals = {
                    k: float(all_reduce_mean(v.detach(), info))
                    for k, v in dict(
                        loss=loss, l1=l1, perceptual=p_loss, kl=kl, g=g_loss, d=d_loss, d_weight=d_weight
                    ).items()
                }
                if log is not None:
                    log.log(step, **vals)
                if bar is not None:
                    bar.set_postfix(
                        loss=f"{vals['loss']:.4f}",
                        l1=f"{vals['l1']:.4f}",
                        img_s=f"{(step - start_step) * cfg.batch_size * info.world_size / (time.perf_counter() - t_start):.1f}",
                    )
            if bar is not None:
                bar.update(1)
            timed_out = cfg.max_seconds is not None and time.perf_counter() - t_start > cfg.max_seconds
            if info.is_main and (step % cfg.sample_every == 0 or step == cfg.steps or timed_out):
                with torch.no_grad():
                    model.eval()
                    xs = eval_x[:8]
                    rs = model.decode(model.encode(xs).mode())
                    model.train()
                (run / "samples").mkdir(exist_ok=True)
                make_grid(torch.cat([xs, rs]), nrow=len(xs)).save(run / "samples" / f"step_{step:07d}.png")
                if log is not None:
                    log.plot("train-vae loss")
            if step % cfg.checkpoint_every == 0 or step == cfg.steps or timed_out:
                save_all(step)
                barrier(info)
            if timed_out:
                break
        if bar is not None:
            bar.close()
        metrics: dict[str, float] = {}
        if info.is_main:
            metrics = evaluate_reconstruction(model, eval_x)
            metrics["step"] = step
            write_json(run / "metrics.json", metrics)
        return VAEResult(step=step, metrics=metrics, run_dir=run)
    finally:
        cleanup(info)


def with_overrides(cfg: VAETrainConfig, **kw: Any) -> VAETrainConfig:
    return replace(cfg, **kw)
