"""An analytic test problem: a Gaussian mixture whose exact denoiser is known in closed form.

If the data are a Gaussian mixture ``x0 ~ sum_k w_k N(mu_k, S_k)`` and the noisy sample is
``x = a x0 + sigma n`` (``a = 1`` for VE, ``a = 1 - sigma`` for FLOW, see
``latentworks.diffusion.denoisers``), then, per component,

    x | k      ~ N(a mu_k, C_k),           C_k = a^2 S_k + sigma^2 I
    E[x0 | x, k] = mu_k + a S_k C_k^-1 (x - a mu_k)

and the responsibilities ``p(k | x)`` are the normalised ``w_k N(x; a mu_k, C_k)``. The exact
posterior mean ``E[x0 | x] = sum_k p(k | x) E[x0 | x, k]`` is the ideal denoiser ``D(x, sigma)``
(Karras et al. 2022, eq. 2-3; Tweedie's formula). Written with ``a`` this stays finite at the
flow endpoint ``sigma = 1`` (``a = 0``: ``D = E[x0]``) and at ``sigma = 0`` (``D = x``).

Every ODE sampler then has an exact target: the probability-flow ODE
``dx/dsigma = (x - D(x, sigma)) / sigma`` integrated to high accuracy by
``GaussianMixture.reference_ode_solution``; every stochastic sampler has an exact target
distribution: the mixture itself. All arithmetic is float64.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from latentworks.diffusion.denoisers import FLOW, VE, Interpolation


class GaussianMixtureDenoiser:
    """The exact denoiser ``E[x0 | x_sigma]`` of a ``GaussianMixture`` (float64 inside).

    Follows the denoiser contract: ``D(x, sigma, cond) -> x0``, ``x`` (B, d), ``sigma`` (B,) or a
    scalar; returns x's dtype. ``cond`` is ignored. Counts its calls in ``num_calls``.
    """

    def __init__(self, mixture: GaussianMixture, interpolation: Interpolation) -> None:
        self.mixture = mixture
        self.interpolation = interpolation
        self.num_calls = 0

    def __call__(self, x: Tensor, sigma: Tensor | float, cond: Any = None) -> Tensor:
        self.num_calls += 1
        return self.mixture.posterior_mean(x, sigma, self.interpolation)


class ConsistencyFunction:
    """The exact consistency function of a ``GaussianMixture``: ``f(x, sigma)`` = the probability-flow
    ODE solution at sigma = 0 starting from ``(x, sigma)`` (Song et al. 2023, Consistency Models).

    Used as a "denoiser" it makes LCM-style multistep sampling exact at any step count, which is
    what consistency/LCM models are trained to approximate; the posterior mean is not one.
    Follows the denoiser contract; sigma must be the same for the whole batch.
    """

    def __init__(self, mixture: GaussianMixture, interpolation: Interpolation, rtol: float = 1e-8) -> None:
        self.mixture = mixture
        self.interpolation = interpolation
        self.rtol = rtol

    def __call__(self, x: Tensor, sigma: Tensor | float, cond: Any = None) -> Tensor:
        s = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1)
        if not bool((s == s[0]).all()):
            raise ValueError("ConsistencyFunction needs one sigma for the whole batch")
        out = self.mixture.reference_ode_solution(
            x, (float(s[0]), 0.0), self.interpolation, rtol=self.rtol, atol=self.rtol * 1e-2
        )
        return out.to(x.dtype)


class GaussianMixture:
    """A Gaussian mixture in low dimension (d = 2..4) with its exact denoiser.

    Args:
        weights: (K,) mixture weights (normalised here).
        means: (K, d) component means.
        covs: (K, d, d) component covariances (symmetric positive definite), or
        stds: (K,) isotropic standard deviations (exactly one of ``covs`` / ``stds``).
    """

    def __init__(
        self,
        weights: Sequence[float] | Tensor,
        means: Sequence[Sequence[float]] | Tensor,
        covs: Tensor | Sequence[Any] | None = None,
        *,
        stds: Sequence[float] | Tensor | None = None,
    ) -> None:
        w = torch.as_tensor(weights, dtype=torch.float64)
        mu = torch.as_tensor(means, dtype=torch.float64)
        if mu.ndim != 2 or w.ndim != 1 or w.shape[0] != mu.shape[0]:
            raise ValueError(
                f"weights must be (K,) and means (K, d); got {tuple(w.shape)} and {tuple(mu.shape)}"
            )
        if (w < 0).any() or w.sum() <= 0:
            raise ValueError("mixture weights must be non-negative with a positive sum")
        num_components, dim = mu.shape
        if (covs is None) == (stds is None):
            raise ValueError("pass exactly one of covs (K, d, d) or stds (K,)")
        if covs is not None:
            cov = torch.as_tensor(covs, dtype=torch.float64)
            if cov.shape != (num_components, dim, dim):
                raise ValueError(
                    f"covs must be (K, d, d) = {(num_components, dim, dim)}, got {tuple(cov.shape)}"
                )
            cov = 0.5 * (cov + cov.transpose(-1, -2))
        else:
            std = torch.as_tensor(stds, dtype=torch.float64)
            if std.shape != (num_components,):
                raise ValueError(f"stds must be (K,) = ({num_components},), got {tuple(std.shape)}")
            cov = std[:, None, None] ** 2 * torch.eye(dim, dtype=torch.float64)
        eigvals, eigvecs = torch.linalg.eigh(cov)  # (K, d), (K, d, d)
        if (eigvals <= 0).any():
            raise ValueError("every component covariance must be positive definite")
        self.weights = w / w.sum()  # (K,)
        self.means = mu  # (K, d)
        self.covs = cov  # (K, d, d)
        self._eigvals = eigvals  # (K, d)
        self._eigvecs = eigvecs  # (K, d, d), columns are eigenvectors
        self._chol = torch.linalg.cholesky(cov)  # (K, d, d)
        self._np_eig = (eigvals.numpy(), eigvecs.numpy())
        self._np_means = mu.numpy()
        self._np_logw = np.log(np.maximum(self.weights.numpy(), 1e-300))

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    # ----------------------------------------------------------------------------------------------
    # Exact statistics
    # ----------------------------------------------------------------------------------------------

    def mean(self) -> Tensor:
        """E[x0], (d,)."""
        return self.weights @ self.means

    def covariance(self) -> Tensor:
        """Cov[x0], (d, d): sum_k w_k (S_k + mu_k mu_k^T) - m m^T."""
        m = self.mean()
        second = torch.einsum(
            "k,kij->ij", self.weights, self.covs + self.means[:, :, None] * self.means[:, None, :]
        )
        return second - m[:, None] * m[None, :]

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """``n`` draws from the mixture: (samples (n, d) float64, component labels (n,) int64)."""
        labels = torch.multinomial(self.weights, n, replacement=True, generator=generator)  # (n,)
        z = torch.randn(n, self.dim, dtype=torch.float64, generator=generator)  # (n, d)
        x = self.means[labels] + torch.einsum("nij,nj->ni", self._chol[labels], z)
        return x, labels

    def log_component_likelihood(self, x0: Tensor) -> Tensor:
        """log(w_k N(x0; mu_k, S_k)), (n, K) — used to assign samples to components."""
        return self._log_joint(x0.to(torch.float64), 1.0, 0.0)

    # ----------------------------------------------------------------------------------------------
    # The exact denoiser
    # ----------------------------------------------------------------------------------------------

    def denoiser(self, interpolation: Interpolation = VE) -> GaussianMixtureDenoiser:
        """The exact posterior-mean denoiser for samples formed with ``interpolation`` (VE or FLOW)."""
        return GaussianMixtureDenoiser(self, interpolation)

    def consistency_function(
        self, interpolation: Interpolation = VE, rtol: float = 1e-8
    ) -> ConsistencyFunction:
        """The exact consistency function (ODE endpoint at sigma = 0) as a denoiser, for LCM tests."""
        return ConsistencyFunction(self, interpolation, rtol)

    def _log_joint(self, x: Tensor, a: Tensor | float, sigma: Tensor | float) -> Tensor:
        """log(w_k N(x; a mu_k, a^2 S_k + sigma^2 I)) for x (B, d) and per-sample a, sigma: (B, K)."""
        a_np = np.broadcast_to(np.asarray(a, dtype=np.float64).reshape(-1), (x.shape[0],))
        s_np = np.broadcast_to(np.asarray(sigma, dtype=np.float64).reshape(-1), (x.shape[0],))
        log_joint, _ = self._posterior_np(x.detach().cpu().numpy(), a_np, s_np)
        return torch.from_numpy(log_joint)

    def _posterior_np(self, x: np.ndarray, a: np.ndarray, sigma: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(log joint (B, K), posterior mean (B, d)) in numpy float64; a, sigma (B,).

        numpy rather than torch: these arrays are tiny and torch's per-op and thread-pool overhead
        would dominate (the reference ODE solve makes thousands of calls).
        """
        eigvals, eigvecs = self._np_eig  # (K, d), (K, d, d)
        if a.size and a.min() == a.max() and sigma.min() == sigma.max():
            a, sigma = a[:1], sigma[:1]  # one noise level for the batch (the common case): broadcast it
        a_kb = a[None, :, None]  # (1, B|1, 1)
        lam = a_kb**2 * eigvals[:, None, :] + sigma[None, :, None] ** 2  # (K, B, d) eigenvalues of C_k
        diff = x[None] - a_kb * self._np_means[:, None, :]  # (K, B, d)
        proj = np.matmul(diff, eigvecs)  # (K, B, d) coordinates in each component's eigenbasis
        scaled = proj / lam  # (K, B, d)
        maha = (proj * scaled).sum(-1)  # (K, B)
        logdet = np.log(lam).sum(-1)  # (K, B)
        log_joint = (
            self._np_logw[:, None] - 0.5 * (maha + logdet + self.dim * math.log(2 * math.pi))
        ).T  # (B, K)
        resp = np.exp(log_joint - log_joint.max(-1, keepdims=True))
        resp /= resp.sum(-1, keepdims=True)  # (B, K)
        # E[x0 | x, k] = mu_k + a S_k C_k^-1 (x - a mu_k); S_k C_k^-1 = U diag(eig / lam) U^T
        correction = np.matmul(a_kb * eigvals[:, None, :] * scaled, eigvecs.transpose(0, 2, 1))  # (K, B, d)
        comp_mean = self._np_means[:, None, :] + correction  # (K, B, d)
        mean = (resp.T[:, :, None] * comp_mean).sum(0)  # (B, d)
        return log_joint, mean

    def posterior_mean(self, x: Tensor, sigma: Tensor | float, interpolation: Interpolation = VE) -> Tensor:
        """E[x0 | x] for ``x = alpha(sigma) x0 + sigma n``; x (B, d), sigma (B,) or scalar -> (B, d)."""
        x_np = x.detach().cpu().to(torch.float64).numpy()
        if isinstance(sigma, Tensor):
            sig = sigma.detach().cpu().to(torch.float64).numpy().reshape(-1)
        else:
            sig = np.asarray([float(sigma)], dtype=np.float64)
        sig = np.broadcast_to(sig, (x_np.shape[0],))
        a = 1.0 - sig if interpolation.is_flow else np.ones_like(sig)
        _, mean = self._posterior_np(x_np, a, sig)
        return torch.from_numpy(mean).to(device=x.device, dtype=x.dtype)

    # ----------------------------------------------------------------------------------------------
    # Reference solution of the probability-flow ODE
    # ----------------------------------------------------------------------------------------------

    def reference_ode_solution(
        self,
        x_start: Tensor,
        sigmas_start_end: tuple[float, float],
        interpolation: Interpolation = VE,
        *,
        rtol: float = 1e-11,
        atol: float = 1e-12,
    ) -> Tensor:
        """Solve ``dx/dsigma = (x - D(x, sigma)) / sigma`` from ``sigma_start`` to ``sigma_end``.

        Integrates in log-sigma time (``dx/du = x - D``, ``u = log sigma``) with scipy's adaptive
        DOP853 (8th order) at tight tolerances, all samples at once. ``sigma_end = 0`` is reached
        by integrating to ``1e-7`` and taking ``D(x, 1e-7)``: near zero ``x(sigma) = x(0) +
        sigma * dx/dsigma + O(sigma^2)`` and ``D(x, sigma) = x - sigma * dx/dsigma``, so the error is
        ``O(1e-14)``. Returns float64, shaped like ``x_start`` (B, d).
        """
        from scipy.integrate import solve_ivp

        sigma_start, sigma_end = float(sigmas_start_end[0]), float(sigmas_start_end[1])
        if not sigma_start > sigma_end >= 0:
            raise ValueError(f"need sigma_start > sigma_end >= 0, got {sigma_start}, {sigma_end}")
        to_zero = sigma_end == 0.0
        tiny = 1e-7
        end = tiny if to_zero else sigma_end
        x0 = x_start.to(torch.float64)
        shape = x0.shape

        batch = shape[0]

        def rhs(u: float, y: Any) -> Any:
            x = y.reshape(batch, -1)
            sigma = np.full((batch,), math.exp(u))
            a = 1.0 - sigma if interpolation.is_flow else np.ones_like(sigma)
            return (x - self._posterior_np(x, a, sigma)[1]).reshape(-1)

        sol = solve_ivp(
            rhs,
            (math.log(sigma_start), math.log(end)),
            x0.reshape(-1).numpy(),
            method="DOP853",
            rtol=rtol,
            atol=atol,
        )
        if not sol.success:
            raise RuntimeError(f"reference ODE solve failed: {sol.message}")
        x = torch.from_numpy(sol.y[:, -1].copy()).reshape(shape)
        if to_zero:
            x = self.posterior_mean(x, tiny, interpolation)
        return x


def default_test_mixture(dim: int = 2) -> GaussianMixture:
    """The three-component mixture used by tests and benchmarks (unequal weights, anisotropic)."""
    if dim < 2:
        raise ValueError(f"dim must be at least 2, got {dim}")
    means = torch.zeros(3, dim, dtype=torch.float64)
    means[0, :2] = torch.tensor([1.5, 0.5])
    means[1, :2] = torch.tensor([-1.0, 1.0])
    means[2, :2] = torch.tensor([0.0, -1.5])
    covs = torch.eye(dim, dtype=torch.float64).repeat(3, 1, 1)
    covs[0] *= 0.3**2
    covs[1, :2, :2] = torch.tensor([[0.25, 0.1], [0.1, 0.2]])
    covs[2] *= 0.4**2
    return GaussianMixture([0.5, 0.3, 0.2], means, covs)


__all__ = [
    "FLOW",
    "VE",
    "ConsistencyFunction",
    "GaussianMixture",
    "GaussianMixtureDenoiser",
    "default_test_mixture",
]
