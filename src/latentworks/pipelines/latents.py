"""Encode a dataset once with a trained autoencoder and cache the latents for stage 2.

The cache (``.safetensors``) holds ``mean`` and ``std`` of each image's posterior, (N, C, h, w)
float16, plus metadata: captions (JSON), the autoencoder run folder, and the latent ``scale`` and
``shift`` (1/std of the posterior samples and mean of the posterior means, over the cache) that stage 2 applies:
``z_train = (sample - shift) * scale``. Stage 2 draws ``sample = mean + std * eps`` per step.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from latentworks.checkpoints.io import load_state_dict, read_metadata, save_file_atomic
from latentworks.data.arrays import ArrayDataset
from latentworks.data.captions import CaptionParts, caption_parts


@dataclass
class LatentCache:
    mean: Tensor  # (N, C, h, w) float32
    std: Tensor  # (N, C, h, w) float32
    captions: list[str]
    scale: float
    shift: float
    metadata: dict
    parts: list[CaptionParts] | None = (
        None  # the captions' parts, for caption augmentation (data/captions.py)
    )

    def __len__(self) -> int:
        return len(self.captions)

    @property
    def channels(self) -> int:
        return int(self.mean.shape[1])

    @property
    def size(self) -> int:
        return int(self.mean.shape[-1])

    def sample(self, idx: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Scaled latent samples (B, C, h, w) for indices ``idx``."""
        m, s = self.mean[idx], self.std[idx]
        eps = torch.randn(m.shape, generator=generator, dtype=m.dtype)
        return (m + s * eps - self.shift) * self.scale


@torch.no_grad()
def encode_dataset(
    autoencoder: Any,
    ds: ArrayDataset,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> tuple[Tensor, Tensor]:
    """Posterior mean and std (N, C, h, w) float32 of every image in ``ds``."""
    autoencoder.eval()
    means, stds = [], []
    it = range(0, len(ds), batch_size)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="encode latents", unit="batch")
    for i in it:
        x = ds.batch(range(i, min(i + batch_size, len(ds))))[0].to(device)
        post = autoencoder.encode(x)
        means.append(post.mean.float().cpu())
        stds.append(post.std.float().cpu())
    return torch.cat(means), torch.cat(stds)


def save_latent_cache(
    path: str | Path,
    mean: Tensor,
    std: Tensor,
    captions: list[str],
    metadata: dict | None = None,
    parts: list[CaptionParts] | None = None,
) -> LatentCache:
    """Write the cache; ``parts`` (one per caption, optional) are kept as metadata ``caption_parts``."""
    shift = float(mean.mean())
    # Unit variance for what training draws, mean + std * eps: var = var(mean) + E[std^2]. (From the means
    # alone, an autoencoder with a wide posterior gave the diffusion model latents of std 1.26, not 1.)
    scale = float(1.0 / (mean.float().var() + std.float().square().mean()).sqrt().clamp(min=1e-6))
    meta = dict(metadata or {})
    meta.update(scale=scale, shift=shift, count=len(captions))
    text = {"captions": json.dumps(captions), "metadata": json.dumps(meta)}
    if parts is not None:
        if len(parts) != len(captions):
            raise ValueError(f"{len(parts)} caption parts for {len(captions)} captions")
        text["caption_parts"] = json.dumps([[p.label, list(p.tags), p.style] for p in parts])
    save_file_atomic({"mean": mean.half(), "std": std.half()}, path, text)
    return LatentCache(mean.half().float(), std.half().float(), list(captions), scale, shift, meta, parts)


def load_latent_cache(path: str | Path) -> LatentCache:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"latent cache not found: {path}; create it with 'latentworks train --vae RUN --data DATA' "
            "(it encodes the dataset once) or pipelines.latents.cache_latents()"
        )
    t = load_state_dict(path)
    meta = read_metadata(path)
    if "mean" not in t or "std" not in t or "captions" not in meta:
        raise ValueError(f"{path}: not a latent cache (expected tensors 'mean', 'std' and captions metadata)")
    md = json.loads(meta.get("metadata", "{}"))
    parts = None
    if "caption_parts" in meta:
        parts = [
            CaptionParts(str(a), tuple(map(str, b)), str(c)) for a, b, c in json.loads(meta["caption_parts"])
        ]
    return LatentCache(
        t["mean"].float(),
        t["std"].float(),
        json.loads(meta["captions"]),
        float(md["scale"]),
        float(md["shift"]),
        md,
        parts,
    )


def load_autoencoder(run_dir: str | Path, device: str | torch.device = "cpu") -> Any:
    """The autoencoder of a ``train-vae`` run folder (config.json + model.safetensors) or of a model folder."""
    from latentworks.models.autoencoder import Autoencoder, AutoencoderConfig
    from latentworks.pipelines.loading import is_model_folder, load_model_autoencoder

    run_dir = Path(run_dir)
    if is_model_folder(run_dir):
        return load_model_autoencoder(run_dir).to(device).eval().requires_grad_(False)
    cfg_path = run_dir / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(
            f"{run_dir}: no config.json; give the folder of a 'latentworks train-vae' run"
        )
    cfg = json.loads(cfg_path.read_text())
    mc = dict(cfg["model"])
    mc["channels"] = tuple(mc["channels"])
    model = Autoencoder(AutoencoderConfig(**mc))
    model.load_state_dict(load_state_dict(run_dir / "model.safetensors", device="cpu"))
    return model.to(device).eval().requires_grad_(False)


def _vae_source_path(vae_run: str | Path) -> Path:
    """Where the autoencoder lives, absolute (``default`` -> the embedded model folder)."""
    from latentworks.pipelines.loading import is_model_folder, resolve_model_path

    return resolve_model_path(vae_run).resolve() if is_model_folder(vae_run) else Path(vae_run).resolve()


def vae_run_resolution(vae_run: str | Path) -> int:
    """The image size a ``train-vae`` run was trained at (its ``config.json``; 64 if it does not say), or
    a model folder's resolution."""
    from latentworks.pipelines.loading import is_model_folder, model_resolution

    if is_model_folder(vae_run):
        return model_resolution(vae_run)[0]
    cfg = json.loads((Path(vae_run) / "config.json").read_text())
    return int(cfg.get("data", {}).get("resolution", 64))


def cache_latents(
    vae_run: str | Path,
    data: str | Path,
    out: str | Path,
    split: str = "train",
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> LatentCache:
    """Encode dataset ``data`` (``split``) with the autoencoder of run ``vae_run`` into ``out``."""
    from latentworks.data.folder import load_dataset

    ae = load_autoencoder(vae_run, device)
    ds = load_dataset(data, size=vae_run_resolution(vae_run), split=split)
    mean, std = encode_dataset(ae, ds, device=device, progress=progress)
    return save_latent_cache(
        out,
        mean,
        std,
        ds.captions,
        {
            "vae_run": str(_vae_source_path(vae_run)),
            "data": str(data),
            "split": split,
            "resolution": ds.resolution,
        },
        parts=caption_parts(ds.extra, len(ds)),
    )
