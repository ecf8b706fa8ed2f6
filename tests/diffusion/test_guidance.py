"""Guidance wrappers: CFG by hand with call counting, rescale, thresholding, interval, inpainting."""

from __future__ import annotations

import pytest
import torch

from latentworks.diffusion.conditioning import Conditioning
from latentworks.diffusion.denoisers import FLOW, VE
from latentworks.diffusion.guidance import (
    CFGDenoiser,
    GuidedCond,
    InpaintDenoiser,
    dynamic_threshold,
    noised_start,
    rescale_guidance,
)

B, C, H, W = 2, 4, 6, 6


class ToyDenoiser:
    """A deterministic, cond-dependent, nonlinear denoiser that records every call's batch size."""

    interpolation = VE
    model_sampling = "toy-sampling"

    def __init__(self) -> None:
        self.batches: list[int] = []
        g = torch.Generator().manual_seed(0)
        self.w = torch.randn(C, 8, generator=g, dtype=torch.float64)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        self.batches.append(x.shape[0])
        bias = torch.einsum("bld,cd->bc", cond.tokens.double(), self.w)[:, :, None, None]  # (B, C, 1, 1)
        return torch.tanh(x) / (1 + sigma.reshape(-1, 1, 1, 1)) + bias


def _conds(seed: int = 1) -> tuple[Conditioning, Conditioning]:
    g = torch.Generator().manual_seed(seed)
    cond = Conditioning(tokens=torch.randn(B, 5, 8, generator=g, dtype=torch.float64))
    uncond = Conditioning(
        tokens=torch.randn(B, 3, 8, generator=g, dtype=torch.float64)
    )  # shorter: gets padded
    return cond, uncond


def _x(seed: int = 2) -> torch.Tensor:
    return torch.randn(B, C, H, W, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 3


def _by_hand(d: ToyDenoiser, x, sigma, cond, uncond, scale):  # noqa: ANN001
    # Conditioning.cat pads uncond's tokens with zeros + a mask; the toy ignores the mask, and zero
    # tokens add nothing to its bias, so separate calls give the same values.
    x0_c, x0_u = d(x, sigma, cond), d(x, sigma, uncond)
    return x0_c, x0_u, x0_u + scale * (x0_c - x0_u)


def test_cfg_is_one_batched_call_equal_to_formula() -> None:
    inner, ref = ToyDenoiser(), ToyDenoiser()
    cond, uncond = _conds()
    x, sigma = _x(), torch.tensor([3.0, 0.5], dtype=torch.float64)
    out = CFGDenoiser(inner, 7.5)(x, sigma, GuidedCond(cond, uncond))
    assert inner.batches == [2 * B]  # one call, cond and uncond batched
    *_, expected = _by_hand(ref, x, sigma, cond, uncond, 7.5)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_scale_one_skips_uncond() -> None:
    inner = ToyDenoiser()
    cond, uncond = _conds()
    x, sigma = _x(), torch.tensor([3.0, 0.5], dtype=torch.float64)
    out = CFGDenoiser(inner, 1.0)(x, sigma, GuidedCond(cond, uncond))
    assert inner.batches == [B]
    torch.testing.assert_close(out, ToyDenoiser()(x, sigma, cond))


def test_rescale_phi_zero_is_plain_cfg_and_phi_one_matches_cond_std() -> None:
    cond, uncond = _conds()
    x, sigma = _x(), torch.tensor([2.0, 2.0], dtype=torch.float64)
    plain = CFGDenoiser(ToyDenoiser(), 9.0)(x, sigma, GuidedCond(cond, uncond))
    phi0 = CFGDenoiser(ToyDenoiser(), 9.0, rescale=0.0)(x, sigma, GuidedCond(cond, uncond))
    phi1 = CFGDenoiser(ToyDenoiser(), 9.0, rescale=1.0)(x, sigma, GuidedCond(cond, uncond))
    half = CFGDenoiser(ToyDenoiser(), 9.0, rescale=0.5)(x, sigma, GuidedCond(cond, uncond))
    torch.testing.assert_close(phi0, plain, rtol=0, atol=0)
    x0_c = ToyDenoiser()(x, sigma, cond)
    dims = (1, 2, 3)
    torch.testing.assert_close(phi1.std(dim=dims), x0_c.std(dim=dims), rtol=1e-12, atol=0)
    assert not torch.allclose(plain.std(dim=dims), x0_c.std(dim=dims), rtol=1e-3)
    # phi = 1 keeps the direction of the guided prediction (a positive rescale per sample)
    ratio = phi1 / plain
    torch.testing.assert_close(ratio, ratio[:, :1, :1, :1].expand_as(ratio))
    torch.testing.assert_close(half, 0.5 * plain + 0.5 * phi1)
    torch.testing.assert_close(rescale_guidance(plain, x0_c, 1.0), phi1)


def test_dynamic_threshold_clamps_the_requested_percentile() -> None:
    g = torch.Generator().manual_seed(3)
    x0 = (
        torch.randn(3, 4, 16, 16, generator=g, dtype=torch.float64)
        * torch.tensor([4.0, 0.2, 2.0]).reshape(3, 1, 1, 1).double()
    )
    p = 0.9
    out = dynamic_threshold(x0, p)
    s = torch.quantile(x0.reshape(3, -1).abs(), p, dim=1)
    assert float(s[0]) > 1 and float(s[1]) < 1
    for i in range(3):
        si = max(float(s[i]), 1.0)
        torch.testing.assert_close(out[i], x0[i].clamp(-si, si) / si)
    # sample 0: about 1 - p of the values end up saturated at |x| = 1, the rest strictly inside
    sat = (out[0].abs() >= 1 - 1e-12).double().mean()
    assert abs(float(sat) - (1 - p)) < 0.01
    assert float(out.abs().max()) <= 1.0 + 1e-12
    # sample 1 lies inside [-1, 1] at that percentile: unchanged
    torch.testing.assert_close(out[1], x0[1], rtol=0, atol=0)
    # max_value caps s
    capped = dynamic_threshold(x0, p, max_value=1.5)
    torch.testing.assert_close(capped[0], x0[0].clamp(-1.5, 1.5) / 1.5)


def test_cfg_applies_threshold_after_guidance() -> None:
    cond, uncond = _conds()
    x, sigma = _x(), torch.tensor([1.0, 1.0], dtype=torch.float64)
    raw = CFGDenoiser(ToyDenoiser(), 12.0)(x, sigma, GuidedCond(cond, uncond))
    thr = CFGDenoiser(ToyDenoiser(), 12.0, threshold=0.95)(x, sigma, GuidedCond(cond, uncond))
    torch.testing.assert_close(thr, dynamic_threshold(raw, 0.95))
    assert float(raw.abs().max()) > 1.5 and float(thr.abs().max()) <= 1 + 1e-12


def test_interval_switches_guidance_off_outside() -> None:
    cond, uncond = _conds()
    x = _x()
    gc = GuidedCond(cond, uncond)
    inner = ToyDenoiser()
    d = CFGDenoiser(inner, 5.0, interval=(0.5, 5.0))
    # outside (both above hi): a single cond-only call
    hi = torch.tensor([10.0, 10.0], dtype=torch.float64)
    torch.testing.assert_close(d(x, hi, gc), ToyDenoiser()(x, hi, cond))
    assert inner.batches == [B]
    # inside: guided, batched
    mid = torch.tensor([1.0, 1.0], dtype=torch.float64)
    torch.testing.assert_close(d(x, mid, gc), _by_hand(ToyDenoiser(), x, mid, cond, uncond, 5.0)[2])
    assert inner.batches == [B, 2 * B]
    # boundaries are inside; per-sample sigmas mix: sample 0 guided, sample 1 (below lo) not
    mixed = torch.tensor([0.5, 0.1], dtype=torch.float64)
    out = d(x, mixed, gc)
    x0_c, _, guided = _by_hand(ToyDenoiser(), x, mixed, cond, uncond, 5.0)
    torch.testing.assert_close(out[0], guided[0])
    torch.testing.assert_close(out[1], x0_c[1])


def test_cfg_errors_and_passthrough() -> None:
    inner = ToyDenoiser()
    d = CFGDenoiser(inner, 3.0)
    assert d.interpolation == VE and d.model_sampling == "toy-sampling"
    with pytest.raises(TypeError, match="GuidedCond"):
        d(_x(), torch.ones(B), _conds()[0])
    with pytest.raises(ValueError, match="uncond"):
        d(_x(), torch.ones(B), GuidedCond(_conds()[0]))
    with pytest.raises(ValueError, match="rescale"):
        CFGDenoiser(inner, 3.0, rescale=1.5)
    with pytest.raises(ValueError, match="interval"):
        CFGDenoiser(inner, 3.0, interval=(2.0, 1.0))
    with pytest.raises(ValueError, match="percentile"):
        CFGDenoiser(inner, 3.0, threshold=99.5)


@pytest.mark.parametrize("interp", [VE, FLOW], ids=lambda i: i.name)
def test_noised_start(interp) -> None:  # noqa: ANN001
    x0, n = _x(1), _x(2)
    s = torch.tensor([0.3, 0.8], dtype=torch.float64)
    out = noised_start(x0, n, s, interp)
    sb = s.reshape(-1, 1, 1, 1)
    expected = x0 + sb * n if interp == VE else (1 - sb) * x0 + sb * n
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(
        noised_start(x0, n, 0.3, interp),
        noised_start(x0, n, torch.full((B,), 0.3, dtype=torch.float64), interp),
    )
    if interp == FLOW:
        torch.testing.assert_close(noised_start(x0, n, 1.0, interp), n)  # sigma = 1: pure noise


@pytest.mark.parametrize("interp", [VE, FLOW], ids=lambda i: i.name)
def test_inpainting_keeps_known_pixels(interp) -> None:  # noqa: ANN001
    g = torch.Generator().manual_seed(5)
    known = torch.randn(B, C, H, W, generator=g, dtype=torch.float64)
    noise = torch.randn(B, C, H, W, generator=g, dtype=torch.float64)
    mask = torch.zeros(B, 1, H, W, dtype=torch.float64)
    mask[:, :, :, W // 2 :] = 1  # generate the right half
    seen: list[torch.Tensor] = []

    class Inner(ToyDenoiser):
        interpolation = interp

        def __call__(self, x, sigma, cond):  # noqa: ANN001
            seen.append(x.clone())
            return super().__call__(x, sigma, cond)

    d = InpaintDenoiser(Inner(), known, mask, noise)
    assert d.interpolation == interp
    cond = _conds()[0]
    sigmas = torch.tensor([0.9, 0.5, 0.2, 0.0], dtype=torch.float64) * (1 if interp == FLOW else 10)
    x = noised_start(torch.zeros_like(known), noise, sigmas[0], interp)
    for i in range(len(sigmas) - 1):  # Euler on dx/dsigma = (x - D(x)) / sigma
        s = sigmas[i].expand(B)
        x0 = d(x, s, cond)
        keep = mask == 0
        # the inner denoiser saw the known region noised to this sigma with the fixed noise
        torch.testing.assert_close(
            seen[-1][keep.expand_as(x)], noised_start(known, noise, s, interp)[keep.expand_as(x)]
        )
        # and the returned x0 is the known latent there, the inner prediction elsewhere
        assert torch.equal(x0[keep.expand_as(x0)], known[keep.expand_as(known)])
        x = x + (x - x0) / sigmas[i] * (sigmas[i + 1] - sigmas[i])
    left = (mask == 0).expand_as(x)
    torch.testing.assert_close(x[left], known[left], rtol=0, atol=1e-12)
    assert not torch.allclose(x[~left], known[~left])


def test_inpaint_mask_validation() -> None:
    known = torch.zeros(B, C, H, W)
    with pytest.raises(ValueError, match="dims"):
        InpaintDenoiser(ToyDenoiser(), known, torch.ones(H, W), known)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        InpaintDenoiser(ToyDenoiser(), known, torch.full((B, 1, H, W), 2.0), known)
