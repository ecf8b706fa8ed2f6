"""Guidance: wrappers that turn a denoiser into a guided denoiser with the same contract.

Every wrapper here is itself a denoiser ``D(x, sigma, cond) -> x0`` with ``.interpolation`` and
``.model_sampling`` passed through, so samplers never know guidance exists.

* ``CFGDenoiser``: classifier-free guidance (Ho & Salimans 2022) with cond and uncond in ONE batched
  network call, optional guidance rescale (Lin et al. 2023), dynamic thresholding (Saharia et al. 2022,
  Imagen) and a guidance interval (Kynkaanniemi et al. 2024). Its ``cond`` is a ``GuidedCond``.
* ``GuidanceNorm``: rescale the guided prediction to the conditional one's norm, per position: Qwen-Image's
  true CFG (diffusers' ``QwenImagePipeline``, on the velocity) and ComfyUI's CFGNorm node (on x0).
* ``InpaintDenoiser``: keeps known regions of a latent while the rest is generated.
* ``noised_start``: the starting sample of img2img / txt2img.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from latentworks.diffusion.conditioning import Conditioning
from latentworks.diffusion.denoisers import Denoiser, Interpolation, ModelSampling, interpolation_of
from latentworks.diffusion.regions import as_entries, compose, is_entry_list, match_areas


@dataclass(frozen=True)
class GuidedCond:
    """The conditioning of a guided denoiser: the prompt's ``cond`` and the negative/empty ``uncond``.

    Each is what the inner denoiser takes (usually ``Conditioning`` with the same batch size as x), or a
    conditioning list (a tuple of :class:`~latentworks.diffusion.regions.CondEntry`: prompts over areas, masks
    and noise-level ranges, blended by :func:`~latentworks.diffusion.regions.compose`).
    """

    cond: Any
    uncond: Any = None


def _cat_cond(items: list[Any]) -> Any:
    """Concatenate conditionings along the batch (Conditioning, Tensor or all None)."""
    if all(c is None for c in items):
        return None
    if all(isinstance(c, Conditioning) for c in items):
        return Conditioning.cat(items)
    if all(isinstance(c, Tensor) for c in items):
        return torch.cat(items, 0)
    kinds = ", ".join(type(c).__name__ for c in items)
    raise TypeError(f"cannot batch cond and uncond of types ({kinds}); use Conditioning for both")


def _bcast(v: Tensor, x: Tensor) -> Tensor:
    """(B,) -> (B, 1, ..., 1) to broadcast against x."""
    return v.reshape(-1, *([1] * (x.ndim - 1)))


def rescale_guidance(x0_cfg: Tensor, x0_cond: Tensor, phi: float) -> Tensor:
    """Guidance rescale, Lin et al. 2023 ("Common Diffusion Noise Schedules and Sample Steps are Flawed"),
    eq. 15-16: scale the guided prediction to the per-sample std of the conditional one, then mix by phi.

    Applied here to the x0 predictions (the denoiser's output); diffusers applies it to the raw network
    prediction, which is equivalent for x0 models only.
    """
    if phi == 0:
        return x0_cfg
    dims = tuple(range(1, x0_cfg.ndim))
    std_cond = x0_cond.std(dim=dims, keepdim=True)
    std_cfg = x0_cfg.std(dim=dims, keepdim=True)
    rescaled = x0_cfg * (std_cond / std_cfg.clamp(min=1e-12))  # eq. 15
    return phi * rescaled + (1 - phi) * x0_cfg  # eq. 16


def rescale_cfg_v(
    x: Tensor, sigma: Tensor, x0_cond: Tensor, x0_uncond: Tensor, scale: float, multiplier: float
) -> Tensor:
    """ComfyUI's RescaleCFG: guidance and guidance rescale (Lin et al. 2023, eq. 15-16) done on the
    v-prediction that a VE input ``x`` at ``sigma`` (B,) and the x0 predictions imply, back to x0.

    With ``a = 1 / (sigma^2 + 1)`` and ``b = sqrt(sigma^2 + 1) / sigma``, ``v = (a x - x0) b``; the guided
    ``v_cfg = v_u + scale (v_c - v_u)`` is scaled to the per-sample std of ``v_c`` and mixed by
    ``multiplier``; the result is ``a x - v / b``. For VE inputs (eps/v models); :class:`CFGDenoiser`
    rescales flow models' x0 directly (:func:`rescale_guidance`), as ComfyUI does.
    """
    s = _bcast(sigma.to(x.dtype), x)
    a = 1.0 / (s * s + 1.0)
    b = (s * s + 1.0).sqrt() / s
    v_c = (a * x - x0_cond) * b
    v_u = (a * x - x0_uncond) * b
    v_cfg = v_u + scale * (v_c - v_u)
    v = rescale_guidance(v_cfg, v_c, multiplier)
    return a * x - v / b


@dataclass(frozen=True, kw_only=True)
class GuidanceNorm:
    """Rescale the guided prediction so that its norm per position matches the conditional prediction's.

    Two published forms:

    - ``space="velocity"`` (diffusers' ``QwenImagePipeline`` true CFG, the Qwen-Image release): on the flow
      velocity ``v = (x - x0) / sigma``, ``v_cfg * ||v_cond|| / ||v_cfg||`` with norms over each packed token,
      i.e. the channels of each ``patch`` x ``patch`` latent square (16 x 2 x 2 = 64 values for Qwen-Image);
      no clamp, ``strength`` 1.
    - ``space="x0"`` (ComfyUI's CFGNorm node): on x0, ``x0_cfg * min(1, ||x0_cond|| / (||x0_cfg|| + 1e-8))
      * strength`` with norms over the channels of each latent pixel (``patch`` 1, ``clamp=True``).

    Attributes:
        space: which prediction is rescaled.
        patch: side of the square of latent pixels one norm covers.
        clamp: cap the factor at 1 (ComfyUI) or not (diffusers).
        strength: final multiplier (ComfyUI's CFGNorm ``strength``).
    """

    space: Literal["velocity", "x0"]
    patch: int = 1
    clamp: bool = False
    strength: float = 1.0

    def __post_init__(self) -> None:
        if self.space not in ("velocity", "x0"):
            raise ValueError(f"GuidanceNorm.space must be 'velocity' or 'x0', got {self.space!r}")
        if self.patch < 1:
            raise ValueError(f"GuidanceNorm.patch must be at least 1, got {self.patch}")

    def _norm(self, t: Tensor) -> Tensor:
        """Per-position norm of (B, C, H, W) over C and each patch x patch square, broadcast back."""
        p = self.patch
        if p == 1:
            return torch.linalg.vector_norm(t, dim=1, keepdim=True)
        b, c, h, w = t.shape
        if h % p or w % p:
            raise ValueError(f"GuidanceNorm: latent {h}x{w} is not a multiple of the patch {p}")
        sq = t.reshape(b, c, h // p, p, w // p, p)
        n = torch.linalg.vector_norm(sq, dim=(1, 3, 5), keepdim=True)  # (B, 1, h/p, 1, w/p, 1)
        return n.expand(b, 1, h // p, p, w // p, p).reshape(b, 1, h, w)

    def __call__(self, x: Tensor, sigma: Tensor, x0_guided: Tensor, x0_cond: Tensor) -> Tensor:
        """The rescaled x0 for samples ``x`` (B, C, H, W) at per-sample ``sigma`` (B,)."""
        if self.space == "x0":
            factor = self._norm(x0_cond) / (self._norm(x0_guided) + 1e-8)
            if self.clamp:
                factor = factor.clamp(0.0, 1.0)
            return x0_guided * factor * self.strength
        s = _bcast(sigma.to(x.dtype), x)
        safe = torch.where(s > 0, s, torch.ones_like(s))
        v_guided, v_cond = (x - x0_guided) / safe, (x - x0_cond) / safe
        factor = self._norm(v_cond) / self._norm(v_guided)
        if self.clamp:
            factor = factor.clamp(0.0, 1.0)
        out = x - s * (v_guided * factor * self.strength)
        return torch.where(s > 0, out, x0_guided)  # at sigma 0 there is no velocity to rescale


QWEN_IMAGE_TRUE_CFG = GuidanceNorm(space="velocity", patch=2)
"""diffusers' ``QwenImagePipeline``: ``noise_pred = comb_pred * (||cond|| / ||comb||)`` per packed 2x2 token."""


def dynamic_threshold(x0: Tensor, percentile: float, max_value: float | None = None) -> Tensor:
    """Dynamic thresholding (Saharia et al. 2022, Imagen, Sec. 2.3): per sample, let ``s`` be the
    ``percentile`` quantile of |x0| (at least 1, at most ``max_value``); clamp x0 to [-s, s] and divide
    by s. Samples already within [-1, 1] at that percentile are unchanged."""
    if not 0 < percentile <= 1:
        raise ValueError(f"threshold percentile must be in (0, 1], got {percentile}")
    flat = x0.reshape(x0.shape[0], -1).abs()  # (B, N)
    s = torch.quantile(
        flat.float() if flat.dtype not in (torch.float32, torch.float64) else flat, percentile, dim=1
    ).to(x0.dtype)  # (B,)
    s = s.clamp(min=1.0) if max_value is None else s.clamp(min=1.0, max=max_value)
    s = _bcast(s, x0)
    return torch.maximum(torch.minimum(x0, s), -s) / s


def check_interval(interval: Any) -> tuple[float, float]:
    """A guidance interval ``(sigma_lo, sigma_hi)`` from any pair of numbers (e.g. a JSON list), or a clear error."""
    try:
        lo, hi = (float(v) for v in interval)
    except (TypeError, ValueError):
        raise ValueError(f"interval must be a pair (sigma_lo, sigma_hi), got {interval!r}") from None
    if not 0 <= lo <= hi:
        raise ValueError(f"interval must be (sigma_lo, sigma_hi) with 0 <= lo <= hi, got ({lo:g}, {hi:g})")
    return lo, hi


class CFGDenoiser:
    """Classifier-free guidance as a denoiser: ``x0 = x0_u + scale * (x0_c - x0_u)``.

    Called as ``D(x, sigma, GuidedCond(cond, uncond))``. Cond and uncond go through the inner denoiser
    in one batched call (``Conditioning.cat``); the uncond half is skipped entirely when ``scale == 1``
    or when every sample's sigma lies outside ``interval``.

    Args:
        denoiser: the inner denoiser.
        scale: guidance scale w (1 = no guidance).
        rescale: guidance-rescale phi in [0, 1] (Lin et al. 2023); 0 = off. SD 2.x v-models use 0.7.
        interval: ``(sigma_lo, sigma_hi)``: guide only for sigma in [lo, hi] (Kynkaanniemi et al. 2024);
            outside, the conditional prediction alone is used.
        threshold: dynamic-thresholding percentile p in (0, 1] (Imagen uses 0.995); None = off. Applied
            to the guided x0 (data space), after rescale.
        threshold_max: upper bound for the threshold s (None = unbounded).
        rescale_cfg: ComfyUI's RescaleCFG multiplier in [0, 1]: guidance and rescale on the implied
            v-prediction (:func:`rescale_cfg_v`), or on x0 for flow models; 0 = off.

    Conditioning lists (tuples of ``CondEntry``) in cond or uncond are evaluated entry by entry and blended
    (:func:`~latentworks.diffusion.regions.compose`), after each area entry got an opposite entry of the
    same area in the other list (:func:`~latentworks.diffusion.regions.match_areas`).
        norm: a :class:`GuidanceNorm` applied to the guided x0 (before rescale); with ``scale == 1`` it
            sees the conditional prediction as the guided one (as ComfyUI's post-CFG hook does).
    """

    def __init__(
        self,
        denoiser: Denoiser,
        scale: float,
        *,
        rescale: float = 0.0,
        interval: tuple[float, float] | None = None,
        threshold: float | None = None,
        threshold_max: float | None = None,
        rescale_cfg: float = 0.0,
        crop_multiple: int = 1,
        norm: GuidanceNorm | None = None,
    ) -> None:
        self.crop_multiple = int(crop_multiple)
        if not 0.0 <= rescale <= 1.0:
            raise ValueError(f"rescale (phi) must be in [0, 1], got {rescale}")
        if not 0.0 <= rescale_cfg <= 1.0:
            raise ValueError(f"rescale_cfg (RescaleCFG multiplier) must be in [0, 1], got {rescale_cfg}")
        self.rescale_cfg = float(rescale_cfg)
        interval = None if interval is None else check_interval(interval)
        if threshold is not None and not 0 < threshold <= 1:
            raise ValueError(f"threshold is a percentile in (0, 1] such as 0.995, got {threshold}")
        self.denoiser, self.scale, self.rescale = denoiser, float(scale), float(rescale)
        self.interval, self.threshold, self.threshold_max = interval, threshold, threshold_max
        self.norm = norm

    @property
    def interpolation(self) -> Interpolation:
        return interpolation_of(self.denoiser)

    @property
    def model_sampling(self) -> ModelSampling | None:
        return getattr(self.denoiser, "model_sampling", None)

    def _guided(self, sigma: Tensor) -> Tensor:
        """(B,) bool: which samples get guidance at this sigma."""
        on = torch.full_like(sigma, self.scale != 1.0, dtype=torch.bool)
        if self.interval is not None:
            lo, hi = self.interval
            on &= (sigma >= lo) & (sigma <= hi)
        return on

    def __call__(self, x: Tensor, sigma: Tensor | float, cond: Any = None) -> Tensor:
        if not isinstance(cond, GuidedCond):
            raise TypeError(
                f"CFGDenoiser expects cond=GuidedCond(cond, uncond), got {type(cond).__name__}; "
                "wrap the prompt and negative-prompt conditionings in GuidedCond"
            )
        b = x.shape[0]
        sigma_t = torch.as_tensor(sigma, device=x.device)
        sigma_t = sigma_t.expand(b) if sigma_t.ndim == 0 else sigma_t  # (B,)
        on = self._guided(sigma_t)
        if is_entry_list(cond.cond) or is_entry_list(cond.uncond):
            return self._lists(x, sigma_t, cond, on)
        if not bool(on.any()):
            x0 = self.denoiser(x, sigma_t, cond.cond)
            if self.norm is not None:
                x0 = self.norm(x, sigma_t, x0, x0)
        else:
            if cond.uncond is None and cond.cond is not None:
                raise ValueError("guidance scale != 1 needs an uncond (e.g. the empty prompt's conditioning)")
            both = self.denoiser(
                torch.cat([x, x]), torch.cat([sigma_t, sigma_t]), _cat_cond([cond.cond, cond.uncond])
            )  # (2B, ...)
            x0 = self._combine(x, sigma_t, on, both[:b], both[b:])
        if self.threshold is not None:
            x0 = dynamic_threshold(x0, self.threshold, self.threshold_max)
        return x0

    def _combine(self, x: Tensor, sigma_t: Tensor, on: Tensor, x0_c: Tensor, x0_u: Tensor) -> Tensor:
        """Guided x0 from the cond and uncond predictions (conditional alone where ``on`` is False)."""
        if self.rescale_cfg > 0 and not self.interpolation.is_flow:
            x0 = rescale_cfg_v(x, sigma_t, x0_c, x0_u, self.scale, self.rescale_cfg)
        elif (
            self.rescale_cfg > 0
        ):  # flow models: x0 is what gets rescaled (ComfyUI's RescaleCFG does the same)
            x0 = rescale_guidance(x0_u + self.scale * (x0_c - x0_u), x0_c, self.rescale_cfg)
        else:
            x0 = x0_u + self.scale * (x0_c - x0_u)
        if self.norm is not None:
            x0 = self.norm(x, sigma_t, x0, x0_c)
        x0 = rescale_guidance(x0, x0_c, self.rescale)
        if not bool(on.all()):
            x0 = torch.where(_bcast(on, x), x0, x0_c)
        return x0

    def _lists(self, x: Tensor, sigma_t: Tensor, cond: GuidedCond, on: Tensor) -> Tensor:
        """The conditioning-list path: blend each list's entries, then guide as usual."""
        guided = bool(on.any())
        if guided and cond.uncond is None:
            raise ValueError("guidance scale != 1 needs an uncond (e.g. the empty prompt's conditioning)")
        lists = match_areas([as_entries(cond.cond), as_entries(cond.uncond) if guided else None])
        x0_c, x0_u = compose(self.denoiser, x, sigma_t, lists, multiple=self.crop_multiple)
        if guided:
            x0 = self._combine(x, sigma_t, on, x0_c, x0_u)
        else:
            x0 = x0_c if self.norm is None else self.norm(x, sigma_t, x0_c, x0_c)
        if self.threshold is not None:
            x0 = dynamic_threshold(x0, self.threshold, self.threshold_max)
        return x0


@dataclass(frozen=True)
class DualGuidedCond:
    """The conditioning of :class:`DualCFGDenoiser`: ``cond1``, the middle ``cond2`` and ``uncond``
    (each a conditioning or a conditioning list)."""

    cond1: Any
    cond2: Any
    uncond: Any


class DualCFGDenoiser:
    """Guidance with two prompts (ComfyUI's DualCFGGuider), from the three x0 predictions c1, c2, u:

    * ``regular``: ``u + scale2 (c2 - u) + scale1 (c1 - c2)``
    * ``nested``: ``u + scale2 (t - u)`` with ``t = c2 + scale1 (c1 - c2)``

    In ``regular`` style the uncond is skipped when ``scale2 == 1`` and cond2 too when ``scale1 == 1`` as well
    (their terms then reduce to the cond alone). All three go through :func:`~latentworks.diffusion.regions.compose`.
    """

    def __init__(
        self,
        denoiser: Denoiser,
        scale1: float,
        scale2: float,
        *,
        nested: bool = False,
        crop_multiple: int = 1,
    ) -> None:
        self.denoiser, self.scale1, self.scale2, self.nested = denoiser, float(scale1), float(scale2), nested
        self.crop_multiple = int(crop_multiple)

    @property
    def interpolation(self) -> Interpolation:
        return interpolation_of(self.denoiser)

    @property
    def model_sampling(self) -> ModelSampling | None:
        return getattr(self.denoiser, "model_sampling", None)

    def __call__(self, x: Tensor, sigma: Tensor | float, cond: Any = None) -> Tensor:
        if not isinstance(cond, DualGuidedCond):
            raise TypeError(
                f"DualCFGDenoiser expects cond=DualGuidedCond(cond1, cond2, uncond), got {type(cond).__name__}"
            )
        sigma_t = torch.as_tensor(sigma, device=x.device)
        sigma_t = sigma_t.expand(x.shape[0]) if sigma_t.ndim == 0 else sigma_t  # (B,)
        c1, c2, u = as_entries(cond.cond1), as_entries(cond.cond2), as_entries(cond.uncond)
        if self.nested:
            x0_u, x0_2, x0_1 = compose(
                self.denoiser, x, sigma_t, match_areas([u, c2, c1]), multiple=self.crop_multiple
            )
            text = x0_2 + self.scale1 * (x0_1 - x0_2)
            return x0_u + self.scale2 * (text - x0_u)
        skip_u = math.isclose(self.scale2, 1.0)
        skip_2 = skip_u and math.isclose(self.scale1, 1.0)
        lists = [None if skip_u else u, None if skip_2 else c2, c1]
        x0_u, x0_2, x0_1 = compose(self.denoiser, x, sigma_t, match_areas(lists), multiple=self.crop_multiple)
        if skip_2:
            return x0_1
        middle = x0_2 if skip_u else x0_u + self.scale2 * (x0_2 - x0_u)
        return middle + self.scale1 * (x0_1 - x0_2)


def noised_start(x0: Tensor, noise: Tensor, sigma: Tensor | float, interpolation: Interpolation) -> Tensor:
    """The sample at noise level ``sigma`` for clean ``x0``: ``x0 + sigma n`` (VE) or
    ``(1 - sigma) x0 + sigma n`` (FLOW). ``sigma``: scalar or (B,).

    img2img: ``noised_start(encoded, noise, sigmas[0], denoiser.interpolation)`` with
    ``sigmas = get_sigmas(..., denoise=strength)``. txt2img: pass ``x0 = zeros``.
    """
    s = torch.as_tensor(
        sigma, dtype=torch.float64 if x0.dtype == torch.float64 else torch.float32, device=x0.device
    )
    if s.ndim == 1:
        s = _bcast(s, x0)
    elif s.ndim != 0:
        raise ValueError(f"sigma must be a scalar or (B,), got shape {tuple(s.shape)}")
    out = interpolation.noise(x0.to(s.dtype), noise.to(device=x0.device, dtype=s.dtype), s)
    return out.to(x0.dtype)


class InpaintDenoiser:
    """Generate where ``mask`` is 1, keep ``known_x0`` where it is 0 (soft masks blend).

    Before each call the known region of ``x`` is replaced by ``known_x0`` noised to the current sigma
    with the fixed ``noise`` (so it matches the trajectory), and the known region of the returned x0 is
    ``known_x0`` itself; at sigma = 0 the known pixels are therefore exactly ``known_x0``. This is
    ComfyUI's KSampler with a latent noise mask: ``x = mask * x + (1 - mask) * noised(known_x0)``.

    Differential diffusion (Levin & Fried 2023, "Differential Diffusion: Giving Each Pixel Its Strength"):
    with ``differential=(sigma_from, sigma_to)`` the soft mask becomes a per-step binary one, ``mask >=
    threshold``, where the threshold falls linearly in the model's timestep from 1 at ``sigma_from`` (the
    first sigma) to 0 at ``sigma_to`` (the last sigma, at least the model's ``sigma_min``), as ComfyUI's
    DifferentialDiffusion node does: a pixel with mask value m is regenerated during the last m of the
    schedule (in timestep), so grey mask values change an area a little and white ones fully.

    Args:
        denoiser: the inner (possibly guided) denoiser.
        known_x0: clean latent to keep, (B, C, H, W) or broadcastable.
        mask: 1 = generate, 0 = keep; broadcastable to x, e.g. (B, 1, H, W).
        noise: unit Gaussian noise of x's shape, the same noise the sampling started from.
        differential: ``(sigma_from, sigma_to)`` for differential diffusion; None = the soft mask as is.
        differential_strength: blends the per-step binary mask with the soft one,
            ``s * binary + (1 - s) * mask`` for 0 < s < 1 (ComfyUI's DifferentialDiffusion ``strength``; as there,
            0 and 1 both give the binary mask).
    """

    def __init__(
        self,
        denoiser: Denoiser,
        known_x0: Tensor,
        mask: Tensor,
        noise: Tensor,
        *,
        differential: tuple[float, float] | None = None,
        differential_strength: float = 1.0,
    ) -> None:
        if mask.ndim != known_x0.ndim:
            raise ValueError(
                f"mask must have as many dims as known_x0 ({known_x0.ndim}), e.g. (B, 1, H, W); got {tuple(mask.shape)}"
            )
        if bool((mask < 0).any()) or bool((mask > 1).any()):
            raise ValueError("mask values must lie in [0, 1] (1 = generate, 0 = keep)")
        if differential is not None and self._sampling(denoiser) is None:
            raise ValueError("differential diffusion needs a denoiser with a model_sampling (timestep map)")
        self.denoiser, self.known_x0, self.mask, self.noise = denoiser, known_x0, mask, noise
        if not 0.0 <= differential_strength <= 1.0:
            raise ValueError(f"differential_strength must be in [0, 1], got {differential_strength}")
        self.differential, self.differential_strength = differential, float(differential_strength)

    @staticmethod
    def _sampling(denoiser: Denoiser) -> ModelSampling | None:
        return getattr(denoiser, "model_sampling", None)

    @property
    def interpolation(self) -> Interpolation:
        return interpolation_of(self.denoiser)

    @property
    def model_sampling(self) -> ModelSampling | None:
        return self._sampling(self.denoiser)

    def step_mask(self, sigma: float) -> Tensor:
        """The mask used at noise level ``sigma``: the soft mask, or its differential-diffusion threshold."""
        if self.differential is None:
            return self.mask
        ms = self.model_sampling
        assert ms is not None  # checked in __init__
        sigma_from, sigma_to = self.differential
        sigma_to = max(sigma_to, float(ms.sigma_min))
        t = ms.timestep(torch.tensor([sigma_from, sigma_to, sigma], dtype=torch.float64))
        t_from, t_to, t_now = (float(v) for v in t)
        threshold = (t_now - t_to) / (t_from - t_to) if t_from != t_to else 0.0
        binary = (self.mask >= threshold).to(self.mask.dtype)
        st = self.differential_strength
        return st * binary + (1 - st) * self.mask if 0.0 < st < 1.0 else binary

    def __call__(self, x: Tensor, sigma: Tensor | float, cond: Any = None) -> Tensor:
        sigma_t = torch.as_tensor(sigma, device=x.device)
        sigma_t = sigma_t.expand(x.shape[0]) if sigma_t.ndim == 0 else sigma_t  # (B,)
        mask = self.step_mask(float(sigma_t.reshape(-1)[0])).to(device=x.device, dtype=x.dtype)
        known = self.known_x0.to(device=x.device, dtype=x.dtype)
        known_noisy = noised_start(known.expand_as(x), self.noise, sigma_t, self.interpolation)
        x_in = mask * x + (1 - mask) * known_noisy
        x0 = self.denoiser(x_in, sigma_t, cond)
        return mask * x0 + (1 - mask) * known
