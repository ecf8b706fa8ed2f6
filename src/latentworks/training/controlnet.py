"""Training a ControlNet for one of our own U-Nets (``latentworks train-controlnet``), inside the one diffusion loop.

Zhang, Rao & Agrawala 2023: the base U-Net is frozen; a trainable copy of its encoder (conv_in, time
embedding, down levels, middle block; initialised from the base's weights), a small hint encoder and
zero-initialised 1x1 convs (:class:`~latentworks.models.controlnet.ControlNet`) learn to steer it from a
control image. Because every zero conv (and the hint encoder's last conv) starts at exactly zero, the
controlled model equals the base model at step 0.

``training.diffusion.train_diffusion`` runs it when ``DiffusionTrainConfig.controlnet`` is set: same data
order, noise, objective, caption dropout, EMA, checkpoints and resume; only the trained module (the
ControlNet), the forward pass (:meth:`ControlNetTraining.predict`) and what is written
(``controlnet.safetensors``) differ. The control of each training image is its Canny edge map
(``data.edges``, the Canny node's detector), computed once from the dataset the latent cache was encoded from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from latentworks.data.edges import canny_hints
from latentworks.diffusion.conditioning import Conditioning
from latentworks.diffusion.control import ControlInput
from latentworks.families.controlnet import save_controlnet
from latentworks.models.controlnet import ControlNet, controlnet_for
from latentworks.models.unet import UNet
from latentworks.training.resume import DIFFUSION_RESUME, ResumePolicy

HINTS = ("canny",)  # the control images train-controlnet can derive from a dataset
HINT_WIDTHS = (16, 32, 96, 256)  # SD's hint encoder widths; a 2**k-fold one keeps the first k + 1

CONTROLNET_RESUME = ResumePolicy(
    kind="controlnet",
    command="latentworks train-controlnet",
    mutable=DIFFUSION_RESUME.mutable,
    flags={"init_from": "--base", "controlnet": "--hint/--low-threshold/--high-threshold"},
)


@dataclass(frozen=True, kw_only=True)
class ControlNetTrainSpec:
    """What ControlNet to train (``DiffusionTrainConfig.controlnet``); the base model is ``init_from``.

    Attributes:
        hint: the control image derived from each training image: ``canny`` (white edges on black).
        low_threshold / high_threshold: Canny hysteresis thresholds on ComfyUI's [0, 1] scale (the Canny
            node's defaults, so hints made with that node match training).
        data: the dataset (``.npz``) the latent cache was encoded from, for the images; None = the one the
            cache's metadata names.
    """

    hint: str = "canny"
    low_threshold: float = 0.4
    high_threshold: float = 0.8
    data: Path | None = None

    def __post_init__(self) -> None:
        if self.hint not in HINTS:
            raise ValueError(f"unknown ControlNet hint {self.hint!r}; choose {', '.join(HINTS)}")
        if not 0.0 < self.low_threshold <= self.high_threshold:
            raise ValueError(
                f"Canny thresholds must satisfy 0 < low <= high, got low={self.low_threshold}, "
                f"high={self.high_threshold}"
            )
        if self.data is not None:
            object.__setattr__(self, "data", Path(self.data))

    @classmethod
    def from_saved(cls, saved: Any) -> ControlNetTrainSpec:
        """The spec from itself or from its JSON form in a run's ``config.json``."""
        if isinstance(saved, ControlNetTrainSpec):
            return saved
        if not isinstance(saved, dict):
            raise ValueError(f"a ControlNet training spec must be a dict, got {type(saved).__name__}")
        return cls(**saved)


def hint_widths(factor: int) -> tuple[int, ...]:
    """Hint encoder widths for a VAE that downsamples ``factor`` times (a power of two from 1 to 8)."""
    k = int(math.log2(factor)) if factor >= 1 else -1
    if factor < 1 or 2**k != factor or k >= len(HINT_WIDTHS):
        raise ValueError(f"the image must be 1, 2, 4 or 8 times the latent size, got a factor of {factor}")
    return HINT_WIDTHS[: k + 1]


@torch.no_grad()
def controlnet_from_unet(base: UNet, hint_channels: tuple[int, ...]) -> ControlNet:
    """A new ControlNet for ``base`` whose encoder is a copy of the base's (Zhang et al. 2023, Sec. 3.2) and
    whose zero convs and hint output are zero: with it, the controlled model equals the base exactly."""
    net = ControlNet(controlnet_for(base.config, hint_channels=hint_channels))
    theirs = base.state_dict()
    copied = 0
    for name, p in net.state_dict().items():
        if name.split(".")[0] in ("conv_in", "time_embed", "add_embed", "down", "mid"):
            if name not in theirs or theirs[name].shape != p.shape:
                raise ValueError(
                    f"ControlNet parameter {name} {tuple(p.shape)} has no match in the base U-Net; the "
                    "ControlNet's encoder must mirror the U-Net's (models.controlnet)"
                )
            p.copy_(theirs[name])
            copied += 1
    if copied == 0:
        raise ValueError("the base U-Net shares no encoder parameters with its ControlNet")
    return net


def load_hints(spec: ControlNetTrainSpec, cache: Any, image_size: int) -> Tensor:
    """The control of every latent-cache item, (N, 1, H, W) bool (edge = True), in the cache's order.

    The images come from ``spec.data`` or the dataset the cache was encoded from (its metadata ``data`` and
    ``split``); they must be as many as the cache's items and ``image_size`` pixels wide.
    """
    from latentworks.data.folder import load_dataset

    source = spec.data or cache.metadata.get("data")
    if not source:
        raise ValueError(
            "training a ControlNet needs the training images for their edge maps, but the latent cache does not "
            "name its dataset; pass the dataset (--data) or rebuild the cache with 'latentworks train-controlnet'"
        )
    split = str(cache.metadata.get("split", "train"))
    ds = load_dataset(source, size=image_size, split=split)
    if len(ds) != len(cache):
        raise ValueError(
            f"the dataset {source} ({split} split) has {len(ds)} images but the latent cache has {len(cache)} "
            "items; the cache was encoded from other data: rebuild it (remove it, or use a new --out folder)"
        )
    if ds.resolution != image_size:
        raise ValueError(f"{source}: images are {ds.resolution} px, the ControlNet expects {image_size} px")
    hints = canny_hints(ds.images, spec.low_threshold, spec.high_threshold)  # (N, 3, H, W) float
    return hints[:, :1] > 0.5


class ControlNetTraining:
    """The ControlNet side of ``train_diffusion``: the trained network, its forward pass, previews, output file.

    ``base`` is frozen here (eval mode, no gradients); ``network`` is what the optimizer, EMA, DDP and the
    checkpoints see.
    """

    def __init__(self, spec: ControlNetTrainSpec, base: nn.Module, cache: Any, image_size: int) -> None:
        if not isinstance(base, UNet):
            raise ValueError(
                f"train-controlnet trains ControlNets for U-Nets; the base model is a {type(base).__name__}"
            )
        self.spec = spec
        self.base = base.eval().requires_grad_(False)
        factor = image_size // cache.size
        if factor * cache.size != image_size:
            raise ValueError(f"{image_size} px images do not map onto {cache.size}x{cache.size} latents")
        device = next(base.parameters()).device
        self.network = controlnet_from_unet(base, hint_widths(factor)).to(device)
        self.hints = load_hints(spec, cache, image_size)  # (N, 1, H, W) bool, on the CPU

    def hint_batch(self, idx: Tensor) -> Tensor:
        """The hints (B, 3, H, W) float of cache items ``idx``."""
        return self.hints[idx].float().expand(-1, 3, -1, -1)

    def predict(self, network: nn.Module, x_in: Tensor, t: Tensor, cond: Conditioning, idx: Tensor) -> Tensor:
        """The frozen base's output with ``network``'s residuals (``network``: the ControlNet, maybe DDP-wrapped)."""
        residuals = network(x_in, t, cond, self.hint_batch(idx).to(x_in))
        return self.base(x_in, t, cond, control=residuals)

    def preview_control(self, network: ControlNet, count: int) -> ControlInput:
        """The control for ``count`` preview images: the hints of ``count`` cache items spread over the data."""
        n = len(self.hints)
        idx = torch.linspace(0, n - 1, max(count, 1)).round().long()
        return ControlInput(network, self.hint_batch(idx))

    def save(self, network: ControlNet, path: Path, step: int, base: str) -> None:
        """Write ``network`` (the EMA weights) as a ControlNet file :func:`load_controlnet` reads."""
        save_controlnet(
            network,
            path,
            {
                "step": str(step),
                "kind": "controlnet",
                "weights": "ema",
                "base": base,
                "hint": self.spec.hint,
                "canny_thresholds": f"{self.spec.low_threshold},{self.spec.high_threshold}",
            },
        )
