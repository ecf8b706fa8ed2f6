"""The denoiser contract and the wrappers that turn networks into denoisers.

The one contract of latentworks: a *denoiser* is a callable ``D(x, sigma, cond) -> x0_hat``.

* ``x`` is the noisy sample, shape (B, ...).
* ``sigma`` is a per-sample noise level, shape (B,), in the sense of Karras et al. 2022 (EDM) and
  k-diffusion.
* ``cond`` is whatever the network needs (a ``Conditioning``), opaque to samplers.

How ``x`` relates to clean data ``x0`` and unit Gaussian noise ``n`` at level ``sigma`` is the
denoiser's *interpolation* (``denoiser.interpolation``):

* ``VE`` (variance exploding, EDM/k-diffusion):  ``x = x0 + sigma * n``. Discrete DDPM models
  (eps/v/x0 prediction) are driven in this space: ``x_ve = x_vp / sqrt(alpha_bar)``.
* ``FLOW`` (rectified flow, SD3/FLUX):           ``x = (1 - sigma) * x0 + sigma * n``, sigma in [0, 1].

Deterministic samplers need only ``D``: for both interpolations the probability-flow ODE is
``dx/dsigma = (x - D(x)) / sigma`` (Euler on it is exactly the flow-matching Euler step). Stochastic
samplers ask the interpolation how to add fresh noise (see ``Interpolation``).

A denoiser also carries its ``model_sampling`` (sigma range, sigma <-> timestep map, and for
discrete models the table of training sigmas) so schedules can be built for it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

# --------------------------------------------------------------------------------------------------
# Interpolations
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Interpolation:
    """How noisy samples are formed: ``x = alpha(sigma) * x0 + sigma * n``.

    ``VE``: alpha = 1. ``FLOW``: alpha = 1 - sigma.
    """

    name: str

    def alpha(self, sigma: Tensor | float) -> Tensor | float:
        return 1.0 - sigma if self.name == "flow" else (sigma * 0 + 1.0 if isinstance(sigma, Tensor) else 1.0)

    def noise(self, x0: Tensor, noise: Tensor, sigma: Tensor | float) -> Tensor:
        """Noise clean ``x0`` to level ``sigma`` (``sigma`` scalar or broadcastable)."""
        return self.alpha(sigma) * x0 + sigma * noise

    @property
    def is_flow(self) -> bool:
        return self.name == "flow"


VE = Interpolation("ve")
FLOW = Interpolation("flow")


# --------------------------------------------------------------------------------------------------
# Model sampling: sigma ranges and sigma <-> timestep maps
# --------------------------------------------------------------------------------------------------


class ModelSampling(Protocol):
    """What schedules need to know about a model's noise levels."""

    interpolation: Interpolation

    @property
    def sigma_min(self) -> float: ...

    @property
    def sigma_max(self) -> float: ...

    def timestep(self, sigma: Tensor) -> Tensor:
        """The network's time input for noise level ``sigma``."""
        ...

    def sigma(self, timestep: Tensor) -> Tensor:
        """Inverse of ``timestep``."""
        ...


@runtime_checkable
class Denoiser(Protocol):
    """``D(x, sigma, cond) -> x0_hat``; see the module docstring."""

    interpolation: Interpolation

    def __call__(self, x: Tensor, sigma: Tensor, cond: Any = None) -> Tensor: ...


def interpolation_of(denoiser: Any) -> Interpolation:
    """The interpolation of ``denoiser`` (``VE`` when it does not say)."""
    return getattr(denoiser, "interpolation", VE)


# --------------------------------------------------------------------------------------------------
# Discrete-time DDPM noise schedules (1000 training steps)
# --------------------------------------------------------------------------------------------------


def make_betas(kind: str, num_timesteps: int = 1000, linear_start: float = 0.00085,
               linear_end: float = 0.012) -> Tensor:
    """Training betas of a discrete diffusion model, float64.

    ``linear``: linear in beta (DDPM, Ho et al. 2020). ``scaled_linear``: linear in sqrt(beta)
    (Stable Diffusion). ``cosine``: Nichol & Dhariwal 2021, eq. 17, betas clipped at 0.999.
    """
    if num_timesteps < 2:
        raise ValueError(f"num_timesteps must be at least 2, got {num_timesteps}")
    if kind == "linear":
        return torch.linspace(linear_start, linear_end, num_timesteps, dtype=torch.float64)
    if kind == "scaled_linear":
        return torch.linspace(linear_start**0.5, linear_end**0.5, num_timesteps, dtype=torch.float64) ** 2
    if kind == "cosine":
        s = 0.008
        steps = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
        f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
        alpha_bar = f / f[0]
        return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=0.999)
    raise ValueError(f"unknown beta schedule {kind!r}; choose one of: linear, scaled_linear, cosine")


def rescale_zero_terminal_snr(betas: Tensor) -> Tensor:
    """Rescale betas so the last step has zero SNR (Lin et al. 2023, Algorithm 1)."""
    alphas_bar_sqrt = torch.cumprod(1 - betas, 0).sqrt()
    first, last = alphas_bar_sqrt[0].clone(), alphas_bar_sqrt[-1].clone()
    alphas_bar_sqrt = (alphas_bar_sqrt - last) * first / (first - last)
    alphas_bar = alphas_bar_sqrt**2
    alphas = torch.cat([alphas_bar[:1], alphas_bar[1:] / alphas_bar[:-1]])
    return 1 - alphas
