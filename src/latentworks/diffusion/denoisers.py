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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Protocol, runtime_checkable

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
# Training: noise levels, network inputs and targets
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NoiseLevel:
    """Per-sample training noise levels, each (B,), made by a model sampling's ``training_level``.

    The network sees ``x_in = alpha * x0 + sigma_in * n`` at time ``timestep``: the VP sample for
    discrete models (``alpha = sqrt(alpha_bar)``, ``sigma_in = sqrt(1 - alpha_bar)``), the flow sample
    for flow models (``alpha = 1 - sigma``, ``sigma_in = sigma``). ``sigma`` is the same level as the
    denoiser and samplers see it (VE sigma ``sigma_in / alpha`` for discrete models), so a network that
    outputs its training target exactly makes ``D(x_in / c_in(sigma), sigma) == x0``.
    """

    sigma: Tensor
    alpha: Tensor
    sigma_in: Tensor
    timestep: Tensor


@dataclass(frozen=True)
class TrainingExample:
    """One noised training batch: the network's input and time, its regression target and loss weight."""

    x_in: Tensor  # network input (B, C, h, w)
    timestep: Tensor  # network time (B,)
    target: Tensor  # what the network should output, like x_in
    weight: Tensor | None = None  # per-sample loss weight (B,); None: uniform (the "simple" loss)

    def loss(self, prediction: Tensor) -> Tensor:
        """Mean squared error of the network's ``prediction`` against ``target`` (float32), weighted."""
        err = (prediction.float() - self.target.float()).pow(2)
        if self.weight is not None:
            err = err * self.weight.float().view(-1, *([1] * (err.ndim - 1)))
        return err.mean()


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
    """``D(x, sigma, cond) -> x0_hat``; see the module docstring. ``sigma`` is (B,); ``cond`` is opaque to
    samplers (a ``Conditioning``, or a ``GuidedCond`` pair for guidance wrappers)."""

    @property
    def interpolation(self) -> Interpolation: ...

    def __call__(self, x: Tensor, sigma: Tensor, cond: Any = None) -> Tensor: ...


Network = Callable[[Tensor, Tensor, Any], Tensor]
"""A network as the wrappers call it: ``model(x_in (B, ...), timestep (B,), cond) -> prediction (B, ...)``."""


def interpolation_of(denoiser: object) -> Interpolation:
    """The interpolation of ``denoiser`` (``VE`` when it does not say)."""
    return getattr(denoiser, "interpolation", VE)


# --------------------------------------------------------------------------------------------------
# Discrete-time DDPM noise schedules (1000 training steps)
# --------------------------------------------------------------------------------------------------


# The discrete schedule of SD 1.x/2.x/XL (as a model-sampling spec; see pipelines.loading.sampling_from_meta,
# which fills a discrete spec's missing fields from it).
SD_DISCRETE_SAMPLING: dict[str, object] = {
    "kind": "discrete",
    "betas": "scaled_linear",
    "linear_start": 0.00085,
    "linear_end": 0.012,
    "num_timesteps": 1000,
}  # key order = DiscreteSamplingSpec's field order, so the spec writes it back as the same JSON text


def make_betas(
    kind: str, num_timesteps: int = 1000, linear_start: float = 0.00085, linear_end: float = 0.012
) -> Tensor:
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


# --------------------------------------------------------------------------------------------------
# Model samplings: the noise levels a network was trained on and its sigma <-> timestep map
# --------------------------------------------------------------------------------------------------

# alpha_bar given to the last training step of a zero-terminal-SNR model. The true value is 0, which
# would make sigma_max infinite; this tiny positive value (the one ComfyUI uses; diffusers uses 2**-24)
# gives sigma_max ~ 4519 instead, finite but far beyond any other training level.
ZERO_SNR_TERMINAL_ALPHA_BAR = 4.8973451890853435e-08


def _table_timestep(sigma: Tensor, log_sigmas: Tensor) -> Tensor:
    """Continuous table index of ``sigma`` by linear interpolation in log-sigma (clamped to the table).

    ``log_sigmas`` is ascending, (N,). Same map as diffusers' ``_sigma_to_t`` and k-diffusion's
    ``DiscreteSchedule.sigma_to_t``.
    """
    shape = sigma.shape
    log_s = sigma.detach().to(torch.float64).clamp(min=1e-10).log().reshape(-1)  # (M,)
    table = log_sigmas.to(log_s.device)
    low = (torch.searchsorted(table, log_s, right=True) - 1).clamp(0, table.numel() - 2)  # (M,)
    lo, hi = table[low], table[low + 1]
    w = ((log_s - lo) / (hi - lo)).clamp(0.0, 1.0)
    return (low.to(torch.float64) + w).reshape(shape)


def _table_sigma(t: Tensor, log_sigmas: Tensor) -> Tensor:
    """Inverse of ``_table_timestep``: sigma at continuous index ``t`` (clamped to [0, N - 1])."""
    table = log_sigmas.to(t.device)
    tt = t.detach().to(torch.float64).clamp(0, table.numel() - 1)
    low = tt.floor().long()
    high = (low + 1).clamp(max=table.numel() - 1)
    w = tt - low.to(torch.float64)
    return ((1 - w) * table[low] + w * table[high]).exp()


def _out_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


class DiscreteModelSampling:
    """A discrete-time DDPM model (eps/v/x0 prediction, usually 1000 steps) seen in VE space.

    Training step ``i`` has ``alpha_bar_i = prod_{j<=i} (1 - beta_j)`` and noise level
    ``sigma_i = sqrt((1 - alpha_bar_i) / alpha_bar_i)`` (Karras et al. 2022, Appendix C.2: a VP sample
    ``x_vp = sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) n`` equals ``sqrt(alpha_bar) * (x0 + sigma n)``).

    The network's timestep for any sigma is the continuous table index found by interpolating in
    log-sigma; ``sigma(t)`` is its exact inverse.

    Args:
        betas: training betas (N,), e.g. ``make_betas("scaled_linear")`` (the default: SD 1.x/2.x/XL).
        zero_terminal_snr: rescale ``betas`` so the last step has zero SNR (Lin et al. 2023). The last
            alpha_bar, then 0, is clamped to ``terminal_alpha_bar`` so ``sigma_max`` stays finite.
        terminal_alpha_bar: that clamp value (also applied if the given betas already reach 0).
    """

    interpolation = VE

    def __init__(
        self,
        betas: Tensor | None = None,
        *,
        zero_terminal_snr: bool = False,
        terminal_alpha_bar: float = ZERO_SNR_TERMINAL_ALPHA_BAR,
    ) -> None:
        betas = make_betas("scaled_linear") if betas is None else torch.as_tensor(betas)
        betas = betas.detach().to("cpu", torch.float64)
        if betas.ndim != 1 or betas.numel() < 2:
            raise ValueError(f"betas must be 1-D with at least 2 entries, got shape {tuple(betas.shape)}")
        if not bool(((betas > 0) & (betas <= 1)).all()):
            raise ValueError("betas must lie in (0, 1]; build them with make_betas(kind)")
        if not 0 < terminal_alpha_bar < 1:
            raise ValueError(f"terminal_alpha_bar must be in (0, 1), got {terminal_alpha_bar}")
        if zero_terminal_snr:
            betas = rescale_zero_terminal_snr(betas)
        alphas_cumprod = torch.cumprod(1 - betas, 0)  # (N,)
        if alphas_cumprod[-1] <= 0:
            alphas_cumprod[-1] = terminal_alpha_bar
        if not bool((alphas_cumprod > 0).all()):
            raise ValueError("alpha_bar reaches 0 before the last step; these betas cannot be used")
        self.betas = betas
        self.alphas_cumprod = alphas_cumprod
        self.sigmas = ((1 - alphas_cumprod) / alphas_cumprod).sqrt()  # (N,) ascending, float64
        self.log_sigmas = self.sigmas.log()

    @property
    def num_timesteps(self) -> int:
        return int(self.sigmas.numel())

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def timestep(self, sigma: Tensor) -> Tensor:
        """Continuous training step in [0, N - 1] for noise level ``sigma`` (clamped to the table)."""
        sigma = torch.as_tensor(sigma)
        return _table_timestep(sigma, self.log_sigmas).to(_out_dtype(sigma))

    def sigma(self, timestep: Tensor) -> Tensor:
        """Noise level at continuous training step ``timestep`` (log-linear between table entries)."""
        timestep = torch.as_tensor(timestep)
        return _table_sigma(timestep, self.log_sigmas).to(_out_dtype(timestep))

    def training_level(self, index: Tensor, dtype: torch.dtype = torch.float32) -> NoiseLevel:
        """The training noise levels of table steps ``index`` (B,) (integers in [0, N - 1]).

        ``alpha_bar`` is taken in float32 and the square roots in ``dtype``; the network time is the step.
        """
        if index.dtype.is_floating_point or index.dtype == torch.bool:
            raise ValueError(f"index must hold integer training steps, got dtype {index.dtype}")
        alpha_bar = self.alphas_cumprod.float().to(index.device)[index].to(dtype)  # (B,)
        return NoiseLevel(
            sigma=self.sigmas.to(index.device)[index].to(dtype),
            alpha=alpha_bar.sqrt(),
            sigma_in=(1 - alpha_bar).sqrt(),
            timestep=index.to(dtype),
        )

    def __repr__(self) -> str:
        return (
            f"DiscreteModelSampling(num_timesteps={self.num_timesteps}, sigma_min={self.sigma_min:.6g}, "
            f"sigma_max={self.sigma_max:.6g})"
        )


class EDMModelSampling:
    """A continuous VE model preconditioned as in Karras et al. 2022 (EDM), Table 1.

    ``timestep(sigma) = c_noise = ln(sigma) / 4``. ``sigmas`` is a table of 1000 log-spaced levels
    between ``sigma_min`` and ``sigma_max`` used by table-based schedules (simple, ddim_uniform, beta).
    """

    interpolation = VE

    def __init__(
        self,
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
        sigma_data: float = 0.5,
        *,
        table_size: int = 1000,
    ) -> None:
        if not 0 < sigma_min < sigma_max:
            raise ValueError(
                f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}"
            )
        if sigma_data <= 0:
            raise ValueError(f"sigma_data must be positive, got {sigma_data}")
        self._sigma_min, self._sigma_max, self.sigma_data = (
            float(sigma_min),
            float(sigma_max),
            float(sigma_data),
        )
        self.sigmas = torch.linspace(
            math.log(sigma_min), math.log(sigma_max), table_size, dtype=torch.float64
        ).exp()  # (N,) ascending

    @property
    def sigma_min(self) -> float:
        return self._sigma_min

    @property
    def sigma_max(self) -> float:
        return self._sigma_max

    def timestep(self, sigma: Tensor) -> Tensor:
        sigma = torch.as_tensor(sigma)
        return (0.25 * sigma.to(torch.float64).log()).to(_out_dtype(sigma))

    def sigma(self, timestep: Tensor) -> Tensor:
        timestep = torch.as_tensor(timestep)
        return (4.0 * timestep.to(torch.float64)).exp().to(_out_dtype(timestep))

    def __repr__(self) -> str:
        return f"EDMModelSampling(sigma_min={self.sigma_min}, sigma_max={self.sigma_max}, sigma_data={self.sigma_data})"


def time_shift_static(sigma: Tensor | float, shift: float) -> Tensor | float:
    """SD3's resolution shift of a flow schedule: ``shift * s / (1 + (shift - 1) * s)``.

    Esser et al. 2024, eq. 23 (with shift = sqrt(m/n)); ``shift = 1`` is the identity.
    """
    return shift * sigma / (1 + (shift - 1) * sigma)


def time_shift_exponential(sigma: Tensor | float, mu: float, exponent: float = 1.0) -> Tensor | float:
    """FLUX's shift of a flow schedule: ``exp(mu) / (exp(mu) + (1 / s - 1) ** exponent)``.

    Equals ``time_shift_static`` with ``shift = exp(mu)`` when ``exponent = 1``. Defined as 0 at s = 0.
    """
    if isinstance(sigma, Tensor):
        inv = torch.where(
            sigma > 0,
            1 / sigma.clamp(min=torch.finfo(sigma.dtype).tiny) - 1,
            torch.full_like(sigma, math.inf),
        )
        return math.exp(mu) / (math.exp(mu) + inv**exponent)
    if sigma <= 0:
        return 0.0
    return math.exp(mu) / (math.exp(mu) + (1 / sigma - 1) ** exponent)


# FLUX.1's published resolution-dependent shift: ``mu`` runs linearly from ``base_shift`` at
# ``base_seq_len`` latent tokens to ``max_shift`` at ``max_seq_len`` (diffusers' scheduler config names
# them base_image_seq_len / max_image_seq_len / base_shift / max_shift). The one copy of these numbers.
FLUX_DYNAMIC_SHIFT: dict[str, float] = {
    "base_seq_len": 256,
    "max_seq_len": 4096,
    "base_shift": 0.5,
    "max_shift": 1.15,
}


def flux_shift_mu(
    image_seq_len: int,
    base_seq_len: int = int(FLUX_DYNAMIC_SHIFT["base_seq_len"]),
    max_seq_len: int = int(FLUX_DYNAMIC_SHIFT["max_seq_len"]),
    base_shift: float = FLUX_DYNAMIC_SHIFT["base_shift"],
    max_shift: float = FLUX_DYNAMIC_SHIFT["max_shift"],
) -> float:
    """FLUX's ``mu`` for an image of ``image_seq_len`` latent tokens: linear from (base_seq_len,
    base_shift) to (max_seq_len, max_shift), as in diffusers' ``calculate_shift``.

    ``image_seq_len`` for FLUX is ``(H / 16) * (W / 16)`` for an H x W image (8x VAE, 2x2 patches).
    """
    if max_seq_len == base_seq_len:
        raise ValueError("max_seq_len must differ from base_seq_len")
    slope = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return image_seq_len * slope + (base_shift - slope * base_seq_len)


class FlowModelSampling:
    """A rectified-flow model (SD3, FLUX): ``x = (1 - sigma) x0 + sigma n``, sigma in [0, 1].

    The network's timestep is ``sigma * multiplier`` (diffusers passes 0..1000) and ``sigma(t)`` is its
    inverse. The schedule transform ``time_shift`` (static ``shift`` as in SD3, or FLUX's exponential
    shift with ``mu`` when ``mu`` is given) maps uniform training time to noise level; ``sigmas`` is the
    shifted table ``time_shift(i / N)``, i = 1..N, as in diffusers' ``FlowMatchEulerDiscreteScheduler``.
    Schedules apply ``time_shift``; the wrapper and samplers never do.
    """

    interpolation = FLOW

    def __init__(
        self,
        shift: float = 1.0,
        multiplier: float = 1000.0,
        *,
        mu: float | None = None,
        num_train_timesteps: int = 1000,
    ) -> None:
        if shift <= 0:
            raise ValueError(f"shift must be positive, got {shift}")
        if multiplier <= 0:
            raise ValueError(f"multiplier must be positive, got {multiplier}")
        if num_train_timesteps < 2:
            raise ValueError(f"num_train_timesteps must be at least 2, got {num_train_timesteps}")
        self.shift, self.multiplier, self.mu = float(shift), float(multiplier), mu
        u = torch.arange(1, num_train_timesteps + 1, dtype=torch.float64) / num_train_timesteps
        self.sigmas = self.time_shift(u)  # (N,) ascending, float64

    @classmethod
    def flux(
        cls, image_seq_len: int, *, multiplier: float = 1000.0, **shift_kwargs: float
    ) -> FlowModelSampling:
        """FLUX's resolution-dependent sampling for ``image_seq_len`` tokens (see ``flux_shift_mu``)."""
        return cls(multiplier=multiplier, mu=flux_shift_mu(image_seq_len, **shift_kwargs))  # type: ignore[arg-type]

    def time_shift(self, sigma: Tensor) -> Tensor:
        """Map an unshifted noise level (uniform training time) to this model's shifted level."""
        if self.mu is not None:
            return time_shift_exponential(sigma, self.mu)  # type: ignore[return-value]
        return time_shift_static(sigma, self.shift)  # type: ignore[return-value]

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def timestep(self, sigma: Tensor) -> Tensor:
        sigma = torch.as_tensor(sigma)
        return (sigma.to(torch.float64) * self.multiplier).to(_out_dtype(sigma))

    def sigma(self, timestep: Tensor) -> Tensor:
        timestep = torch.as_tensor(timestep)
        return (timestep.to(torch.float64) / self.multiplier).to(_out_dtype(timestep))

    def training_level(self, sigma: Tensor) -> NoiseLevel:
        """The training noise levels ``sigma`` (B,) in [0, 1], used as drawn: the shift is a schedule
        transform for sampling (see the class docstring), not applied here."""
        return NoiseLevel(sigma=sigma, alpha=1 - sigma, sigma_in=sigma, timestep=self.timestep(sigma))

    def __repr__(self) -> str:
        shift = f"mu={self.mu}" if self.mu is not None else f"shift={self.shift}"
        return f"FlowModelSampling({shift}, multiplier={self.multiplier})"


# --------------------------------------------------------------------------------------------------
# Sampling specs: a model sampling as it is written in model.json (``denoiser.sampling``)
# --------------------------------------------------------------------------------------------------


def _spec_number(value: object, where: str, *, integer: bool = False, positive: bool = False) -> None:
    ok = isinstance(value, int) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not ok:
        raise ValueError(
            f"sampling spec: {where} must be {'an integer' if integer else 'a number'}, got {value!r}"
        )
    if positive and not (math.isfinite(float(value)) and float(value) > 0):  # type: ignore[arg-type]
        raise ValueError(f"sampling spec: {where} must be a number greater than 0, got {value!r}")


def _spec_fields(cls: type, data: Mapping[str, Any], kind: str) -> dict[str, Any]:
    """``data`` minus ``kind``, refusing keys that are not fields of ``cls``."""
    names = [f.name for f in fields(cls)]
    unknown = [k for k in data if k != "kind" and k not in names]
    if unknown:
        raise ValueError(
            f"sampling spec of kind {kind!r}: unknown key(s) {', '.join(map(repr, unknown))}; "
            f"known: {', '.join(names)}"
        )
    return {k: v for k, v in data.items() if k != "kind"}


def _spec_dict(spec: DiscreteSamplingSpec | FlowSamplingSpec) -> dict[str, Any]:
    """``{"kind": ..., field: value, ...}`` with the fields that are set (not None), in field order."""
    out: dict[str, Any] = {"kind": spec.kind}
    for f in fields(spec):
        value = getattr(spec, f.name)
        if value is not None:
            out[f.name] = value.to_dict() if hasattr(value, "to_dict") else value
    return out


@dataclass(frozen=True, kw_only=True)
class DiscreteSamplingSpec:
    """``{"kind": "discrete", ...}``: a discrete DDPM schedule (see :class:`DiscreteModelSampling`).

    A field left None is absent from the JSON and takes SD 1.x/2.x/XL's value (``SD_DISCRETE_SAMPLING``;
    ``zero_terminal_snr``: False). Values keep the Python type they were read with, so
    ``from_dict(d).to_dict() == d`` and model.json files are written back unchanged.
    """

    kind: ClassVar[str] = "discrete"
    betas: str | None = None  # make_betas kind: "linear" | "scaled_linear" | "cosine"
    linear_start: float | None = None
    linear_end: float | None = None
    num_timesteps: int | None = None
    zero_terminal_snr: bool | None = None

    def __post_init__(self) -> None:
        if self.betas is not None and self.betas not in ("linear", "scaled_linear", "cosine"):
            raise ValueError(
                f"sampling spec: unknown betas {self.betas!r}; choose one of: linear, scaled_linear, cosine"
            )
        for name in ("linear_start", "linear_end"):
            if getattr(self, name) is not None:
                _spec_number(getattr(self, name), name)
        if self.num_timesteps is not None:
            _spec_number(self.num_timesteps, "num_timesteps", integer=True)
        if self.zero_terminal_snr is not None and not isinstance(self.zero_terminal_snr, bool):
            raise ValueError(
                f"sampling spec: zero_terminal_snr must be true or false, got {self.zero_terminal_snr!r}"
            )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DiscreteSamplingSpec:
        return cls(**_spec_fields(cls, data, cls.kind))

    def to_dict(self) -> dict[str, Any]:
        return _spec_dict(self)

    def model_sampling(self) -> DiscreteModelSampling:
        sd = SD_DISCRETE_SAMPLING

        def pick(value: object, key: str) -> Any:
            return sd[key] if value is None else value

        betas = make_betas(
            str(pick(self.betas, "betas")),
            int(pick(self.num_timesteps, "num_timesteps")),
            float(pick(self.linear_start, "linear_start")),
            float(pick(self.linear_end, "linear_end")),
        )
        return DiscreteModelSampling(betas, zero_terminal_snr=bool(self.zero_terminal_snr))


@dataclass(frozen=True, kw_only=True)
class FlowDynamicShift:
    """FLUX's resolution-dependent shift as written in a spec: the keyword arguments of ``flux_shift_mu``."""

    base_seq_len: int
    max_seq_len: int
    base_shift: float
    max_shift: float

    def __post_init__(self) -> None:
        for f in fields(self):
            _spec_number(getattr(self, f.name), f"dynamic_shift.{f.name}", integer=f.name.endswith("_len"))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FlowDynamicShift:
        names = [f.name for f in fields(cls)]
        if not isinstance(data, Mapping) or set(data) != set(names):
            raise ValueError(
                f"sampling spec: dynamic_shift must have exactly the keys {', '.join(names)}, got {data!r}"
            )
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True, kw_only=True)
class FlowSamplingSpec:
    """``{"kind": "flow", ...}``: a rectified-flow model (see :class:`FlowModelSampling`).

    Fields left None are absent from the JSON (``shift`` 1, ``multiplier`` 1000, ``num_train_timesteps``
    1000). ``dynamic_shift`` (FLUX.1-dev, Qwen-Image) makes the shift depend on the image's token count; it is
    applied per image size (``pipelines.families.sampling_for_size``), not by ``model_sampling()``.
    ``shift_terminal`` (Qwen-Image's diffusers scheduler) stretches each generated schedule so that its last
    non-zero sigma is this value (``diffusion.schedules.stretch_to_terminal``, applied by the pipeline).
    """

    kind: ClassVar[str] = "flow"
    shift: float | None = None
    multiplier: float | None = None
    dynamic_shift: FlowDynamicShift | None = None
    num_train_timesteps: int | None = None
    shift_terminal: float | None = None

    def __post_init__(self) -> None:
        if self.shift_terminal is not None and not 0 < self.shift_terminal < 1:
            raise ValueError(f"sampling spec: shift_terminal must be in (0, 1), got {self.shift_terminal!r}")
        for name in ("shift", "multiplier"):
            if getattr(self, name) is not None:
                _spec_number(getattr(self, name), name, positive=True)
        if self.num_train_timesteps is not None:
            _spec_number(self.num_train_timesteps, "num_train_timesteps", integer=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FlowSamplingSpec:
        kw = _spec_fields(cls, data, cls.kind)
        if kw.get("dynamic_shift") is not None:
            kw["dynamic_shift"] = FlowDynamicShift.from_dict(kw["dynamic_shift"])
        return cls(**kw)

    def to_dict(self) -> dict[str, Any]:
        return _spec_dict(self)

    def model_sampling(self) -> FlowModelSampling:
        return FlowModelSampling(
            shift=float(1.0 if self.shift is None else self.shift),
            multiplier=float(1000 if self.multiplier is None else self.multiplier),
            num_train_timesteps=1000 if self.num_train_timesteps is None else int(self.num_train_timesteps),
        )


SamplingSpec = DiscreteSamplingSpec | FlowSamplingSpec
"""A model sampling in its model.json form; ``spec.model_sampling()`` builds the object."""

SAMPLING_SPECS: dict[str, type[DiscreteSamplingSpec] | type[FlowSamplingSpec]] = {
    DiscreteSamplingSpec.kind: DiscreteSamplingSpec,
    FlowSamplingSpec.kind: FlowSamplingSpec,
}


def sampling_spec_from_dict(data: Mapping[str, Any]) -> SamplingSpec:
    """The spec dataclass of a ``{"kind": ...}`` dict (model.json ``denoiser.sampling``); ValueError names
    what is wrong."""
    if not isinstance(data, Mapping):
        raise ValueError(f"a sampling spec must be a JSON object with a 'kind', got {data!r}")
    kind = data.get("kind")
    if kind not in SAMPLING_SPECS:
        raise ValueError(f"unknown sampling kind {kind!r}; choose {' or '.join(map(repr, SAMPLING_SPECS))}")
    return SAMPLING_SPECS[kind].from_dict(data)


# --------------------------------------------------------------------------------------------------
# Wrappers: network -> denoiser
# --------------------------------------------------------------------------------------------------


def _model_dtype(model: Any, fallback: torch.dtype) -> torch.dtype:
    dtype = getattr(model, "dtype", None)
    if isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(model, torch.nn.Module):
        for p in model.parameters():
            if p.is_floating_point():
                return p.dtype
    return fallback


def _per_sample_sigma(sigma: Tensor | float, x: Tensor, dtype: torch.dtype) -> Tensor:
    """``sigma`` as a (B,) tensor on x's device in ``dtype`` (a scalar is broadcast to the batch)."""
    s = torch.as_tensor(sigma, device=x.device).to(dtype)
    if s.ndim == 0:
        s = s.expand(x.shape[0])
    if s.ndim != 1 or s.shape[0] != x.shape[0]:
        raise ValueError(
            f"sigma must be a scalar or a (B,) = ({x.shape[0]},) tensor, got shape {tuple(s.shape)}"
        )
    return s


class _NetworkDenoiser:
    """``D(x, sigma) = c_skip * x + c_out * F(c_in * x, timestep(sigma), cond)``.

    Subclasses give the scalings. The network runs in its own dtype; the scalings and the result are
    computed in float32 (float64 when ``x`` is float64) and returned in ``x``'s dtype.
    """

    prediction = ""
    _needs: Interpolation = VE

    def __init__(self, model: Network, model_sampling: ModelSampling | None = None) -> None:
        self.model = model
        self.model_sampling = self._default_sampling() if model_sampling is None else model_sampling
        got = self.model_sampling.interpolation
        if got != self._needs:
            raise ValueError(
                f"{type(self).__name__} needs a model sampling with {self._needs.name.upper()} interpolation, "
                f"got {type(self.model_sampling).__name__} ({got.name.upper()}); use "
                + (
                    "FlowModelSampling"
                    if self._needs.is_flow
                    else "DiscreteModelSampling or EDMModelSampling"
                )
            )

    @property
    def interpolation(self) -> Interpolation:
        return self.model_sampling.interpolation

    def _default_sampling(self) -> ModelSampling:
        return DiscreteModelSampling()

    def scalings(self, sigma: Tensor) -> tuple[Tensor | float, Tensor | float, Tensor | float]:
        """``(c_skip, c_out, c_in)`` for broadcastable ``sigma``."""
        raise NotImplementedError

    @classmethod
    def training_target(cls, x0: Tensor, noise: Tensor, alpha: Tensor, sigma_in: Tensor) -> Tensor:
        """What the network should output for the input ``alpha * x0 + sigma_in * noise`` (``alpha`` and
        ``sigma_in`` broadcastable): the output that makes this wrapper return ``x0``."""
        raise ValueError(f"{cls.__name__} has no training target; latentworks trains eps, v, x0 and flow")

    @classmethod
    def loss_weight(cls, level: NoiseLevel) -> Tensor | None:
        """Per-sample loss weight at ``level`` in the network's output space; None = uniform."""
        return None

    @classmethod
    def training_example(cls, x0: Tensor, noise: Tensor, level: NoiseLevel) -> TrainingExample:
        """Noise ``x0`` (B, ...) with unit Gaussian ``noise`` to ``level`` and give the network's target."""
        shape = (-1,) + (1,) * (x0.ndim - 1)
        alpha, sigma_in = level.alpha.view(shape), level.sigma_in.view(shape)  # (B, 1, ...)
        return TrainingExample(
            x_in=alpha * x0 + sigma_in * noise,
            timestep=level.timestep,
            target=cls.training_target(x0, noise, alpha, sigma_in),
            weight=cls.loss_weight(level),
        )

    def network_input(self, x: Tensor, sigma: Tensor | float) -> tuple[Tensor, Tensor]:
        """``(c_in * x, timestep(sigma))``: what the network receives, in the network's dtype and (B,)."""
        dtype = _out_dtype(x)
        s = _per_sample_sigma(sigma, x, dtype)  # (B,)
        _, _, c_in = self.scalings(s.reshape(-1, *([1] * (x.ndim - 1))))
        t = self.model_sampling.timestep(s).to(dtype)  # (B,)
        return (x.to(dtype) * c_in).to(_model_dtype(self.model, dtype)), t

    def network_output(self, x: Tensor, sigma: Tensor | float, out: Tensor) -> Tensor:
        """``c_skip * x + c_out * out``: the x0 estimate from the network's output ``out``, in x's dtype."""
        dtype = _out_dtype(x)
        s = _per_sample_sigma(sigma, x, dtype)  # (B,)
        c_skip, c_out, _ = self.scalings(s.reshape(-1, *([1] * (x.ndim - 1))))
        return (c_skip * x.to(dtype) + c_out * out.to(dtype)).to(x.dtype)

    def __call__(self, x: Tensor, sigma: Tensor | float, cond: Any = None) -> Tensor:
        x_in, t = self.network_input(x, sigma)
        return self.network_output(x, sigma, self.model(x_in, t, cond))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self.model).__name__}, {self.model_sampling!r})"


class EpsDenoiser(_NetworkDenoiser):
    """Noise (eps) prediction (Ho et al. 2020) driven in VE space: ``x0 = x - sigma * eps``,
    network input ``x / sqrt(sigma^2 + 1)`` (= the VP sample), Karras et al. 2022 Table 1 "VP"."""

    prediction = "eps"

    @classmethod
    def training_target(cls, x0: Tensor, noise: Tensor, alpha: Tensor, sigma_in: Tensor) -> Tensor:
        return noise

    def scalings(self, sigma: Tensor) -> tuple[Tensor | float, Tensor | float, Tensor | float]:
        return 1.0, -sigma, (sigma**2 + 1).rsqrt()


class VDenoiser(_NetworkDenoiser):
    """Velocity prediction ``v = alpha n - sigma_vp x0`` (Salimans & Ho 2022) in VE space:
    ``c_skip = 1 / (sigma^2 + 1)``, ``c_out = -sigma / sqrt(sigma^2 + 1)``, ``c_in = 1 / sqrt(sigma^2 + 1)``."""

    prediction = "v"

    @classmethod
    def training_target(cls, x0: Tensor, noise: Tensor, alpha: Tensor, sigma_in: Tensor) -> Tensor:
        return alpha * noise - sigma_in * x0

    def scalings(self, sigma: Tensor) -> tuple[Tensor | float, Tensor | float, Tensor | float]:
        c_in = (sigma**2 + 1).rsqrt()
        return c_in**2, -sigma * c_in, c_in


class X0Denoiser(_NetworkDenoiser):
    """Direct x0 prediction from the VP sample ``x / sqrt(sigma^2 + 1)``."""

    prediction = "x0"

    @classmethod
    def training_target(cls, x0: Tensor, noise: Tensor, alpha: Tensor, sigma_in: Tensor) -> Tensor:
        return x0

    def scalings(self, sigma: Tensor) -> tuple[Tensor | float, Tensor | float, Tensor | float]:
        return 0.0, 1.0, (sigma**2 + 1).rsqrt()


class FlowDenoiser(_NetworkDenoiser):
    """Rectified-flow velocity ``v = n - x0`` (Liu et al. 2022; Esser et al. 2024): ``x0 = x - sigma * v``,
    network input ``x`` unscaled, timestep ``sigma * multiplier``."""

    prediction = "flow"
    _needs = FLOW

    @classmethod
    def training_target(cls, x0: Tensor, noise: Tensor, alpha: Tensor, sigma_in: Tensor) -> Tensor:
        return noise - x0

    def _default_sampling(self) -> ModelSampling:
        return FlowModelSampling()

    def scalings(self, sigma: Tensor) -> tuple[Tensor | float, Tensor | float, Tensor | float]:
        return 1.0, -sigma, 1.0


class EDMDenoiser(_NetworkDenoiser):
    """EDM preconditioning (Karras et al. 2022, Table 1): ``c_skip = sd^2 / (sigma^2 + sd^2)``,
    ``c_out = sigma * sd / sqrt(sigma^2 + sd^2)``, ``c_in = 1 / sqrt(sigma^2 + sd^2)``,
    ``c_noise = ln(sigma) / 4`` (the model sampling's timestep), sd = ``sigma_data``."""

    prediction = "edm"

    def __init__(
        self, model: Network, model_sampling: ModelSampling | None = None, *, sigma_data: float | None = None
    ) -> None:
        super().__init__(model, model_sampling)
        if sigma_data is None:
            sigma_data = getattr(self.model_sampling, "sigma_data", None)
            if sigma_data is None:
                raise ValueError("EDMDenoiser needs sigma_data: pass sigma_data= or use EDMModelSampling")
        self.sigma_data = float(sigma_data)

    def _default_sampling(self) -> ModelSampling:
        return EDMModelSampling()

    def scalings(self, sigma: Tensor) -> tuple[Tensor | float, Tensor | float, Tensor | float]:
        sd2 = self.sigma_data**2
        c_in = (sigma**2 + sd2).rsqrt()
        return sd2 * c_in**2, sigma * self.sigma_data * c_in, c_in


DENOISERS: dict[str, type[_NetworkDenoiser]] = {
    "eps": EpsDenoiser,
    "v": VDenoiser,
    "x0": X0Denoiser,
    "flow": FlowDenoiser,
    "edm": EDMDenoiser,
}


def make_denoiser(
    model: Network, prediction: str, model_sampling: ModelSampling | None = None
) -> _NetworkDenoiser:
    """Wrap a network ``model(x_in, t, cond) -> prediction`` as a denoiser ``D(x, sigma, cond) -> x0``.

    ``prediction`` is one of ``eps``, ``v``, ``x0``, ``flow``, ``edm``. ``model_sampling`` defaults to SD's
    discrete schedule (eps/v/x0), ``FlowModelSampling()`` (flow) or ``EDMModelSampling()`` (edm).
    """
    try:
        cls = DENOISERS[prediction]
    except KeyError:
        raise ValueError(
            f"unknown prediction type {prediction!r}; choose one of: {', '.join(DENOISERS)}"
        ) from None
    return cls(model, model_sampling)
