"""ControlNet application as guidance: control inputs ride on the conditioning, one wrapper applies them.

Zhang et al. 2023 ("Adding Conditional Control to Text-to-Image Diffusion Models"): a trainable copy of a
U-Net's encoder reads a hint image (edges, depth, pose...) and returns one residual per skip connection plus
one for the middle block; the frozen U-Net adds them. Here:

* :class:`ControlInput` is one applied ControlNet (network, hint image, strength, start/end percent). It is
  part of :class:`~latentworks.diffusion.conditioning.Conditioning` (``cond.control``), as in ComfyUI, so the
  prompt and the negative prompt can carry different controls and CFG's batching keeps them per sample.
* :class:`ControlDenoiser` wraps a network denoiser (inside CFG): at each call it runs every active control
  network on the network's own input ``c_in * x`` and timestep, sums ``strength * residuals`` and hands the
  sum to the network (``network(x_in, t, cond, control=residuals)``).

A control is active while ``sigma_end <= sigma <= sigma_start``, the sigmas of its start/end percent of the
model's schedule (:func:`percent_to_sigma`, ComfyUI's convention). Strength 0 or an inactive control is skipped
entirely, so the result is bit-identical to sampling without it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentworks.diffusion.denoisers import (
    DiscreteModelSampling,
    FlowModelSampling,
    Interpolation,
    ModelSampling,
)

if TYPE_CHECKING:
    from latentworks.diffusion.conditioning import Conditioning


@dataclass(frozen=True)
class ControlResiduals:
    """What a control network returns, in the U-Net's terms.

    ``down[i]`` (ControlNet) has the shape of the i-th skip tensor the U-Net's down path stores ((B, C_i, H_i,
    W_i), in the order they are pushed: conv_in output first); ``mid`` has the middle block's output shape.
    ``adapter[k]`` (T2I-Adapter) is added to the k-th down level's output (and to its last skip) and, when one
    is left over with the middle block's shape, after the middle block, as diffusers'
    ``down_intrablock_additional_residuals``. ``double[j]`` / ``single[j]`` (FLUX ControlNets) are (B, N, D)
    residuals for the image tokens after the FLUX transformer's double / single-stream blocks; block ``i`` of
    ``n`` takes entry ``i // ceil(n / len)`` (diffusers' rule). Empty tuples / None: nothing there.
    """

    down: tuple[Tensor, ...] = ()
    mid: Tensor | None = None
    adapter: tuple[Tensor, ...] = ()
    double: tuple[Tensor, ...] = ()
    single: tuple[Tensor, ...] = ()

    def scaled(self, weight: Tensor | float) -> ControlResiduals:
        """Every residual times ``weight`` (a float or a (B,) per-sample tensor)."""

        def mul(r: Tensor) -> Tensor:
            if isinstance(weight, Tensor):
                return r * weight.to(r.dtype).reshape(-1, *([1] * (r.ndim - 1)))
            return r * weight

        return ControlResiduals(
            tuple(mul(r) for r in self.down),
            None if self.mid is None else mul(self.mid),
            tuple(mul(r) for r in self.adapter),
            tuple(mul(r) for r in self.double),
            tuple(mul(r) for r in self.single),
        )

    def __add__(self, other: ControlResiduals) -> ControlResiduals:
        def add(a: tuple[Tensor, ...], b: tuple[Tensor, ...], what: str) -> tuple[Tensor, ...]:
            if not a or not b:
                return a or b
            if len(a) != len(b):
                raise ValueError(
                    f"cannot add {what} with {len(a)} and {len(b)} tensors; are both control networks for the "
                    "same model?"
                )
            return tuple(x + y for x, y in zip(a, b, strict=True))

        mid = self.mid if other.mid is None else other.mid if self.mid is None else self.mid + other.mid
        return ControlResiduals(
            add(self.down, other.down, "ControlNet residuals"),
            mid,
            add(self.adapter, other.adapter, "adapter features"),
            add(self.double, other.double, "FLUX ControlNet double-block residuals"),
            add(self.single, other.single, "FLUX ControlNet single-block residuals"),
        )


class ControlNetwork(Protocol):
    """A control network: ``(x_in (B, C, h, w), t (B,), cond, hint (B, 3, H, W) in [0, 1]) -> residuals``.

    ``x_in`` and ``t`` are exactly what the denoising network receives. ``check_model(network)`` raises a
    ValueError naming the mismatch when the control network cannot drive ``network`` (another family).
    A network with the class attribute ``hint_space = "latent"`` (FLUX ControlNets) gets the hint encoded
    by the control's :class:`LatentHintEncoder` instead: model-space latents (B, C, h, w).
    """

    def __call__(self, x: Tensor, t: Tensor, cond: Conditioning, hint: Tensor) -> ControlResiduals: ...

    def check_model(self, network: object) -> None: ...

    @property
    def hint_factor(self) -> int: ...  # pixels of the hint per latent cell (8 for SD)


@dataclass(frozen=True, eq=False)
class LatentHintEncoder:
    """Turns a control image into model-space latents for ControlNets that read latents (FLUX ControlNets).

    Attributes:
        encode: pixels (N, 3, H, W) in [0, 1] -> model-space latents (N, C, H / factor, W / factor): the VAE's
            posterior mode, scaled and shifted by the model's latent format.
        factor: pixels per latent cell of the VAE (8 for the released VAEs).
    """

    encode: Callable[[Tensor], Tensor]
    factor: int


@dataclass(frozen=True, eq=False)
class ControlInput:
    """One ControlNet applied to a conditioning (what ComfyUI's ControlNetApplyAdvanced adds).

    Attributes:
        network: the control network.
        hint: the control image, (N, 3, H, W) in [0, 1]; resized to the latent's pixel size at sampling
            (nearest-exact after a centre crop to its aspect ratio) and tiled over the batch.
        strength: multiplies the residuals; 0 switches the control off.
        start_percent / end_percent: the part of the schedule (0 = first step, 1 = last) where it acts.
        sample_weight: per-sample multiplier (B,) set when conditionings with different controls are
            batched together (0 for the samples that do not carry this control); None = 1 for all.
        encoder: encodes the hint for networks that read latents (``hint_space = "latent"``); None for the
            others (ComfyUI's optional ``vae`` input of ControlNetApplyAdvanced).
    """

    network: ControlNetwork
    hint: Tensor
    strength: float = 1.0
    start_percent: float = 0.0
    end_percent: float = 1.0
    sample_weight: Tensor | None = None
    encoder: LatentHintEncoder | None = None

    def __post_init__(self) -> None:
        if self.hint.ndim != 4 or self.hint.shape[1] != 3:
            raise ValueError(
                f"a control hint must be an RGB image batch (N, 3, H, W), got shape {tuple(self.hint.shape)}"
            )
        if not 0.0 <= self.start_percent <= self.end_percent <= 1.0:
            raise ValueError(
                "control start/end percent must satisfy 0 <= start_percent <= end_percent <= 1, got "
                f"start_percent={self.start_percent}, end_percent={self.end_percent}"
            )


def tile_batch(t: Tensor, batch: int) -> Tensor:
    """Repeat ``t`` along dim 0 cyclically and cut to ``batch`` rows (a batch of 1 is broadcast)."""
    n = t.shape[0]
    if n == batch:
        return t
    return t.repeat(-(-batch // n), *([1] * (t.ndim - 1)))[:batch]


def cat_controls(items: list[tuple[tuple[ControlInput, ...], int]]) -> tuple[ControlInput, ...]:
    """The controls of conditionings concatenated along the batch: ``items`` = [(controls, batch size)].

    When every item carries the same controls (same objects, as ControlNetApplyAdvanced gives the prompt
    and the negative prompt) they are kept as they are. Otherwise each distinct control gets its hint
    tiled per item and a ``sample_weight`` that is 0 on the rows of items without it.
    """
    first = items[0][0]
    if all(len(c) == len(first) and all(a is b for a, b in zip(c, first, strict=True)) for c, _ in items):
        return first
    distinct: list[ControlInput] = []
    for controls, _ in items:
        distinct += [c for c in controls if not any(c is d for d in distinct)]
    merged = []
    for control in distinct:
        hints, weights = [], []
        for controls, batch in items:
            has = any(c is control for c in controls)
            hint = tile_batch(control.hint, batch)
            hints.append(hint if has else torch.zeros_like(hint))
            own = control.sample_weight if control.sample_weight is not None else torch.ones(batch)
            weights.append(tile_batch(own.float(), batch) if has else torch.zeros(batch))
        merged.append(replace(control, hint=torch.cat(hints), sample_weight=torch.cat(weights)))
    return tuple(merged)


def percent_to_sigma(model_sampling: ModelSampling, percent: float) -> float:
    """The noise level at ``percent`` of the way through the model's schedule (0 -> inf, 1 -> 0).

    As ComfyUI's ``percent_to_sigma``: discrete models use the timestep ``(1 - percent) * 999``, flow models
    the shifted level ``time_shift(1 - percent)``; others interpolate log-sigma between sigma_max and
    sigma_min.
    """
    if percent <= 0.0:
        return math.inf
    if percent >= 1.0:
        return 0.0
    if isinstance(model_sampling, DiscreteModelSampling):
        t = torch.tensor((1.0 - percent) * (model_sampling.num_timesteps - 1), dtype=torch.float64)
        return float(model_sampling.sigma(t))
    if isinstance(model_sampling, FlowModelSampling):
        return float(model_sampling.time_shift(torch.tensor(1.0 - percent, dtype=torch.float64)))
    lo, hi = math.log(model_sampling.sigma_min), math.log(model_sampling.sigma_max)
    return math.exp(hi + percent * (lo - hi))


def resize_hint(hint: Tensor, height: int, width: int) -> Tensor:
    """``hint`` (N, 3, H, W) centre-cropped to the aspect ratio of ``height x width`` and resized to it with
    nearest-exact sampling (ComfyUI's default for control hints)."""
    h, w = hint.shape[-2:]
    if (h, w) == (height, width):
        return hint
    if h * width > w * height:  # too tall: crop rows
        new_h = round(w * height / width)
        top = (h - new_h) // 2
        hint = hint[..., top : top + new_h, :]
    elif h * width < w * height:  # too wide: crop columns
        new_w = round(h * width / height)
        left = (w - new_w) // 2
        hint = hint[..., left : left + new_w]
    return F.interpolate(hint, size=(height, width), mode="nearest-exact")


class NetworkDenoiserLike(Protocol):
    """What :class:`ControlDenoiser` needs of the denoiser it wraps (``diffusion.denoisers._NetworkDenoiser``)."""

    model: Any
    model_sampling: ModelSampling

    @property
    def interpolation(self) -> Interpolation: ...

    def network_input(self, x: Tensor, sigma: Tensor | float) -> tuple[Tensor, Tensor]: ...

    def network_output(self, x: Tensor, sigma: Tensor | float, out: Tensor) -> Tensor: ...

    def __call__(self, x: Tensor, sigma: Tensor | float, cond: Any = None) -> Tensor: ...


class ControlDenoiser:
    """Applies the ControlNets carried by ``cond.control`` around a network denoiser; a denoiser itself.

    Place it directly around the network denoiser (inside CFG), so the prompt's and the negative prompt's
    controls travel with their batch rows. Without active controls it calls the inner denoiser unchanged.
    """

    def __init__(self, denoiser: NetworkDenoiserLike) -> None:
        self.denoiser = denoiser
        # Residuals of networks that read only the hint (T2I-Adapters: ``reads_latent = False``), computed once
        # per hint for the whole sampling run: (network, hint, unscaled residuals).
        self._hint_only: list[tuple[object, Tensor, ControlResiduals]] = []
        # VAE-encoded hints of networks that read latents (FLUX ControlNets), once per control and latent size.
        self._latent_hints: list[tuple[ControlInput, tuple[int, int], Tensor]] = []

    def _latent_hint(self, control: ControlInput, height: int, width: int) -> Tensor:
        """``control.hint`` resized to the pixel size of an ``height x width`` latent and VAE-encoded, (N, C, h, w)."""
        for cached, size, latents in self._latent_hints:  # CFG batching may rebuild equal controls each step
            same_hint = cached.hint is control.hint or (
                cached.hint.shape == control.hint.shape and torch.equal(cached.hint, control.hint)
            )
            if cached.encoder is control.encoder and size == (height, width) and same_hint:
                return latents
        if control.encoder is None:
            raise ValueError(
                "this ControlNet reads the control image as VAE latents (a FLUX ControlNet) but no VAE was given: "
                "connect the model's VAE to the 'vae' input of Apply ControlNet (ControlNetApplyAdvanced)"
            )
        f = control.encoder.factor
        with torch.no_grad():
            latents = control.encoder.encode(resize_hint(control.hint, height * f, width * f))
        if tuple(latents.shape[-2:]) != (height, width):
            raise ValueError(
                f"the VAE given to the ControlNet encodes the control image to {tuple(latents.shape[-2:])} latents "
                f"but the model samples {(height, width)}; give the ControlNet the model's own VAE"
            )
        self._latent_hints.append((control, (height, width), latents))
        return latents

    def _residuals(
        self, net: ControlNetwork, x_in: Tensor, t: Tensor, cond: Any, hint: Tensor
    ) -> ControlResiduals:
        if getattr(net, "reads_latent", True):
            return net(x_in, t, cond, hint)
        for cached_net, cached_hint, residuals in self._hint_only:
            if cached_net is net and cached_hint.shape == hint.shape and torch.equal(cached_hint, hint):
                return residuals
        residuals = net(x_in, t, cond, hint)
        self._hint_only.append((net, hint, residuals))
        return residuals

    @property
    def interpolation(self) -> Interpolation:
        return self.denoiser.interpolation

    @property
    def model_sampling(self) -> ModelSampling:
        return self.denoiser.model_sampling

    def _weight(self, control: ControlInput, sigma: Tensor) -> Tensor | None:
        """(B,) strength of ``control`` per sample at ``sigma`` (B,), or None when it is off for all."""
        if control.strength == 0.0:
            return None
        hi = percent_to_sigma(self.model_sampling, control.start_percent)
        lo = percent_to_sigma(self.model_sampling, control.end_percent)
        s = sigma.double()
        on = (s <= hi) & (s >= lo)
        if control.sample_weight is not None:
            on &= tile_batch(control.sample_weight, sigma.shape[0]).to(on.device) != 0
        if not bool(on.any()):
            return None
        weight = on.to(torch.float32) * control.strength
        if control.sample_weight is not None:
            weight = weight * tile_batch(control.sample_weight, sigma.shape[0]).to(weight)
        return weight

    def __call__(self, x: Tensor, sigma: Tensor | float, cond: Any = None) -> Tensor:
        controls: tuple[ControlInput, ...] = getattr(cond, "control", ())
        if not controls:
            return self.denoiser(x, sigma, cond)
        plain = replace(cond, control=())
        sigma_t = torch.as_tensor(sigma, device=x.device)
        sigma_t = sigma_t.expand(x.shape[0]) if sigma_t.ndim == 0 else sigma_t  # (B,)
        active = [(c, w) for c in controls if (w := self._weight(c, sigma_t)) is not None]
        if not active:
            return self.denoiser(x, sigma, plain)
        x_in, t = self.denoiser.network_input(x, sigma_t)
        total: ControlResiduals | None = None
        for control, weight in active:
            control.network.check_model(self.denoiser.model)
            # The control network follows the model's device and dtype (an fp16 file next to an fp32 model).
            if isinstance(control.network, nn.Module):
                control.network.to(device=x_in.device, dtype=x_in.dtype)
            if getattr(control.network, "hint_space", "pixel") == "latent":
                hint = self._latent_hint(control, x.shape[-2], x.shape[-1])
            else:
                factor = control.network.hint_factor
                hint = resize_hint(control.hint, x.shape[-2] * factor, x.shape[-1] * factor)
            hint = tile_batch(hint, x.shape[0]).to(device=x.device, dtype=x_in.dtype)
            residuals = self._residuals(control.network, x_in, t, plain, hint).scaled(weight.to(x.device))
            total = residuals if total is None else total + residuals
        out = self.denoiser.model(x_in, t, plain, control=total)
        return self.denoiser.network_output(x, sigma_t, out)
