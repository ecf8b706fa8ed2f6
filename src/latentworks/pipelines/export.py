"""Turn training runs into a latentworks model folder (see ``pipelines.loading``)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from latentworks.checkpoints.io import load_state_dict
from latentworks.diffusion.denoisers import FlowSamplingSpec, sampling_spec_from_dict
from latentworks.diffusion.latent_formats import LatentFormat
from latentworks.diffusion.objective import DiffusionObjective
from latentworks.families.architectures import architecture
from latentworks.models.autoencoder import Autoencoder
from latentworks.models.configs import config_from_dict
from latentworks.pipelines.loading import save_model_folder


def fit_preview_factors(
    vae: Autoencoder, images: torch.Tensor, scale: float, shift: float
) -> tuple[tuple[tuple[float, float, float], ...], tuple[float, float, float]]:
    """Least-squares linear map from model-space latents (C) to RGB in [-1, 1] at latent resolution.

    ``images``: (N, 3, H, W) in [-1, 1]. Returns (rgb_factors C x 3, rgb_bias 3) for ``LatentFormat``.
    """
    with torch.no_grad():
        z = (vae.encode(images).mode() - shift) * scale  # (N, C, h, w)
    rgb = torch.nn.functional.adaptive_avg_pool2d(images, (z.shape[-2], z.shape[-1]))  # (N, 3, h, w)
    a = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]).double()
    a = torch.cat([a, torch.ones(a.shape[0], 1, dtype=a.dtype)], 1)  # (P, C + 1)
    b = rgb.permute(0, 2, 3, 1).reshape(-1, 3).double()
    sol = torch.linalg.lstsq(a, b).solution  # (C + 1, 3)
    factors = tuple(tuple(round(float(v), 5) for v in row) for row in sol[:-1])
    bias = tuple(round(float(v), 5) for v in sol[-1])
    return factors, bias  # type: ignore[return-value]


def upgrade_run_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """A run ``config.json`` in today's vocabulary: runs written before the family registry call the network
    architecture ``family`` (at the top and in ``train``); it is ``architecture`` now. Returns ``cfg``."""
    for part in (cfg, cfg.get("train")):
        if isinstance(part, dict) and "family" in part and "architecture" not in part:
            part["architecture"] = part.pop("family")
    return cfg


def load_diffusion_run(run: str | Path) -> tuple[dict[str, Any], nn.Module]:
    """A ``latentworks train`` run's ``config.json`` and its denoiser with the EMA weights (float32)."""
    run = Path(run)
    cfg_path = run / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{run}: no config.json; give the folder of a 'latentworks train' run")
    cfg = upgrade_run_config(json.loads(cfg_path.read_text()))
    if cfg.get("kind") != "diffusion":
        raise ValueError(
            f"{cfg_path} is a {cfg.get('kind')!r} run, not a 'latentworks train' (diffusion) run"
        )
    arch = architecture(cfg["architecture"], source=str(Path(run) / "config.json"))
    model_cls, config_cls = arch.network, arch.config
    net = model_cls(config_from_dict(config_cls, cfg["model"]))
    net.load_state_dict(load_state_dict(run / "model.safetensors"), strict=True)
    return cfg, net


def run_objective(cfg: dict[str, Any]) -> DiffusionObjective:
    """The objective a ``latentworks train`` run trained with, from its ``config.json``: the ``sampling`` spec
    it records, or (older runs) the objective's default for its prediction."""
    spec = cfg.get("sampling")
    train = cfg.get("train", {})
    return DiffusionObjective(
        cfg["prediction"],
        float(train.get("logit_mean", 0.0)),
        float(train.get("logit_std", 1.0)),
        sampling=None if spec is None else sampling_spec_from_dict(spec),
    )


def export_run(
    diffusion_run: str | Path,
    out: str | Path,
    *,
    name: str,
    data: str | Path | None = None,
    resolution: int | None = None,
    half: bool = False,
    defaults: dict[str, Any] | None = None,
    card: dict[str, Any] | None = None,
    shift: float | None = None,
) -> Path:
    """Write the model folder for a ``latentworks train`` run (EMA weights) and its ``train-vae`` run.

    With ``data`` (a dataset file), preview factors for the latent format are fitted on 256 images. ``shift``
    (flow runs only) replaces the sampling shift written to model.json: a sampling-time choice, like the
    ``shift`` of SD3's scheduler config; the run trained on its own noise levels either way.
    """
    from latentworks.pipelines.latents import load_autoencoder

    run = Path(diffusion_run)
    cfg, net = load_diffusion_run(run)
    arch_name = cfg["architecture"]
    sampling = run_objective(cfg).sampling
    if shift is not None:
        if not isinstance(sampling, FlowSamplingSpec):
            raise ValueError(
                f"shift: {run} is a {sampling.kind!r} model; a sampling shift applies to flow models only"
            )
        sampling = replace(sampling, shift=shift)  # the spec checks it
    vae_run = Path(cfg["vae_run"])
    if not vae_run.is_absolute() and not vae_run.exists():
        vae_run = run.parent / vae_run.name
    vae = load_autoencoder(vae_run)
    lat = cfg["latent"]
    factors: tuple = ()
    bias: tuple = (0.0, 0.0, 0.0)
    res = resolution or int(lat["size"]) * vae.config.downsample_factor
    if data is not None:
        from latentworks.data.folder import load_dataset

        ds = load_dataset(data, size=res, split="all")
        images = ds.batch(range(0, len(ds), max(1, len(ds) // 256)))[0][:256]
        factors, bias = fit_preview_factors(vae, images, float(lat["scale"]), float(lat["shift"]))
    lf = LatentFormat(
        channels=int(lat["channels"]),
        scale_factor=float(lat["scale"]),
        shift_factor=float(lat["shift"]),
        rgb_factors=factors,
        rgb_bias=bias,
    )
    prediction = cfg["prediction"]
    te = cfg.get("text_encoder", {})
    return save_model_folder(
        out,
        name=name,
        architecture=arch_name,
        denoiser=net,
        prediction=prediction,
        sampling=sampling.to_dict(),
        vae=vae,
        latent_format=lf,
        text_encoder={"kind": "minilm", "max_length": int(te.get("max_length", 32))},
        resolution=(res, res),
        defaults=defaults,
        card=card,
        half=half,
    )
