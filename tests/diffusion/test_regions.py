"""Conditioning lists (diffusion/regions.py): areas, masks, strengths and timestep ranges blend per cell as
ComfyUI's calc_cond_batch defines, checked against hand-computed weights with toy denoisers whose output is
known in closed form."""

from __future__ import annotations

import math

import pytest
import torch

from latentworks.diffusion.denoisers import DiscreteModelSampling, FlowModelSampling
from latentworks.diffusion.guidance import (
    CFGDenoiser,
    DualCFGDenoiser,
    DualGuidedCond,
    GuidedCond,
    rescale_cfg_v,
)
from latentworks.diffusion.regions import (
    CondEntry,
    area_from_fractions,
    compose,
    entry_weight,
    mask_bounds,
    match_areas,
    percent_to_sigma,
    resize_mask,
    sigma_range_of,
)
from latentworks.diffusion.samplers import sample_euler


class ConstDenoiser:
    """D(x, sigma, cond) = cond[:, 0] everywhere (cond: (B, 1) tensor); records the crops it was called on."""

    def __init__(self) -> None:
        self.calls: list[tuple[tuple[int, ...], list[float]]] = []

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        self.calls.append((tuple(x.shape), cond[:, 0].tolist()))
        return cond[:, 0].reshape(-1, 1, 1, 1).to(x.dtype).expand_as(x).clone()


class ScaleDenoiser:
    """D(x, sigma, cond) = x * cond[:, 0]: the output at a cell depends on x there only."""

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return x * cond[:, 0].reshape(-1, 1, 1, 1).to(x.dtype)


def c(v: float, b: int = 1) -> torch.Tensor:
    return torch.full((b, 1), v, dtype=torch.float64)


def sig(b: int = 1, s: float = 1.0) -> torch.Tensor:
    return torch.full((b,), s, dtype=torch.float64)


def test_area_entry_only_changes_its_region_and_sees_only_its_crop() -> None:
    x = torch.randn(1, 4, 32, 32, dtype=torch.float64)
    full = (CondEntry(c(2.0)),)
    with_area = (*full, CondEntry(c(7.0), area=(12, 16, 8, 4)))  # h 12, w 16 at y 8, x 4
    (alone,) = compose(ScaleDenoiser(), x, sig(), [full])
    (both,) = compose(ScaleDenoiser(), x, sig(), [with_area])
    outside = torch.ones(32, 32, dtype=torch.bool)
    outside[8:20, 4:20] = False
    assert torch.equal(both[..., outside], alone[..., outside])
    assert not torch.allclose(both[..., 8:20, 4:20], alone[..., 8:20, 4:20])
    d = ConstDenoiser()
    compose(d, x, sig(), [with_area])
    assert sorted(shape for shape, _ in d.calls) == [(1, 4, 12, 16), (1, 4, 32, 32)]


def test_area_blend_weights_with_feathered_inner_edges() -> None:
    """Full entry (value 1) + area entry (value 5) at y 0, x 8 of a 16x32 latent, 16 x 16 cells: the area's
    left and right edges are inside the latent, so they fade in over min(8, 16 // 4) = 4 columns with
    weights 1/4, 2/4, 3/4, 1; its top and bottom touch the border and are not faded."""
    x = torch.zeros(1, 1, 16, 32, dtype=torch.float64)
    (out,) = compose(ConstDenoiser(), x, sig(), [(CondEntry(c(1.0)), CondEntry(c(5.0), area=(16, 16, 0, 8)))])
    ramp = [0.25, 0.5, 0.75] + [1.0] * 10 + [0.75, 0.5, 0.25]
    for j in range(32):
        w = ramp[j - 8] if 8 <= j < 24 else 0.0
        expected = (1.0 + 5.0 * w) / (1.0 + w)
        assert torch.allclose(out[0, 0, :, j], torch.full((16,), expected, dtype=torch.float64)), j


def test_strength_weights_and_uncovered_cells_are_zero() -> None:
    x = torch.zeros(1, 1, 8, 8, dtype=torch.float64)
    entries = (CondEntry(c(1.0), area=(8, 4, 0, 0), strength=3.0), CondEntry(c(4.0), area=(8, 8, 0, 0)))
    (out,) = compose(ConstDenoiser(), x, sig(), [entries])
    # left half: (3 * 1 + 1 * 4) / 4; the 8x8 area covers the latent, so it has no faded edge. The 8x4
    # area's right edge is inner: min(8, 4 // 4) = 1 column, weight 1 (no visible fade).
    assert torch.allclose(out[..., :4], torch.full_like(out[..., :4], 7.0 / 4.0))
    assert torch.allclose(out[..., 4:], torch.full_like(out[..., 4:], 4.0))
    (only_left,) = compose(ConstDenoiser(), x, sig(), [entries[:1]])
    assert torch.equal(only_left[..., 4:], torch.zeros_like(only_left[..., 4:]))  # ComfyUI: uncovered = 0


def test_mask_weights_blend_per_cell() -> None:
    x = torch.zeros(2, 1, 4, 4, dtype=torch.float64)
    mask = torch.rand(1, 4, 4, dtype=torch.float64)
    entries = (CondEntry(c(1.0, 2)), CondEntry(c(9.0, 2), mask=mask * 0.5, strength=2.0))
    (out,) = compose(ConstDenoiser(), x, sig(2), [entries])
    w = mask[0] * 0.5 * 2.0
    assert torch.allclose(out[0, 0], (1.0 + 9.0 * w) / (1.0 + w))
    assert torch.allclose(out[1, 0], (1.0 + 9.0 * w) / (1.0 + w))


def test_mask_with_area_uses_the_crop_of_the_mask_and_no_feather() -> None:
    x = torch.zeros(1, 1, 16, 16, dtype=torch.float64)
    mask = torch.zeros(1, 16, 16, dtype=torch.float64)
    mask[0, 5:7, 3:12] = 1.0
    area = mask_bounds(mask)
    assert area == (8, 9, 5, 3)  # height grown to the 8-cell minimum, width 9
    (rows, cols), weight = entry_weight(CondEntry(c(1.0), area=area, mask=mask), x)  # type: ignore[misc]
    assert (rows, cols) == (slice(5, 13), slice(3, 12))
    assert torch.equal(weight[0, 0], mask[0, 5:13, 3:12])
    assert mask_bounds(torch.zeros(1, 4, 4)) == (8, 8, 0, 0)


def test_fraction_area_and_mask_resize() -> None:
    assert area_from_fractions((0.5, 0.25, 0.5, 0.75), (64, 96)) == (32, 24, 32, 72)
    assert area_from_fractions((0.0, 0.0, 0.0, 0.0), (10, 10)) == (1, 1, 0, 0)
    m = resize_mask(torch.ones(32, 32), (8, 8))
    assert m.shape == (1, 8, 8) and torch.equal(m, torch.ones(1, 8, 8))


def test_area_is_clipped_to_the_latent() -> None:
    x = torch.zeros(1, 1, 8, 8, dtype=torch.float64)
    (rows, cols), _ = entry_weight(CondEntry(c(1.0), area=(8, 8, 4, 6)), x)  # type: ignore[misc]
    assert (rows, cols) == (slice(4, 8), slice(6, 8))
    assert entry_weight(CondEntry(c(1.0), area=(8, 8, 8, 0)), x) is None


def test_percent_to_sigma_follows_the_model_sampling() -> None:
    ms = DiscreteModelSampling()
    assert percent_to_sigma(ms, 0.0) == math.inf and percent_to_sigma(ms, 1.0) == 0.0
    assert percent_to_sigma(ms, 0.5) == pytest.approx(
        float(ms.sigma(torch.tensor(499.5, dtype=torch.float64)))
    )
    flow = FlowModelSampling(shift=3.0)
    # SD3's shift: sigma = s t / (1 + (s - 1) t) at t = 1 - percent
    assert percent_to_sigma(flow, 0.25) == pytest.approx(3 * 0.75 / (1 + 2 * 0.75))
    assert percent_to_sigma(flow, 0.0) == 1.0
    assert sigma_range_of(ms, 0.0, 1.0) is None


def test_timestep_range_switches_entries_at_the_right_step() -> None:
    """A 0-50% entry and a 50-100% entry: every step whose sigma is above sigma(50%) uses the first alone,
    every later step the second alone."""
    ms = DiscreteModelSampling()
    mid = percent_to_sigma(ms, 0.5)
    first = CondEntry(c(1.0), sigma_range=sigma_range_of(ms, 0.0, 0.5))
    second = CondEntry(c(2.0), sigma_range=sigma_range_of(ms, 0.5, 1.0))
    d = ConstDenoiser()
    sigmas = torch.tensor([14.6, 6.0, 2.5, 1.2, 0.6, 0.2, 0.0], dtype=torch.float64)
    seen: list[float] = []

    def record(x: torch.Tensor, s: torch.Tensor, cond: object) -> torch.Tensor:
        seen.append(float(s[0]))
        return d(x, s, cond)  # type: ignore[arg-type]

    guided = CFGDenoiser(record, 1.0)  # type: ignore[arg-type]
    sample_euler(
        guided, torch.zeros(1, 1, 2, 2, dtype=torch.float64), sigmas, cond=GuidedCond((first, second))
    )
    used = [vals[0] for _, vals in d.calls]
    assert used == [1.0 if s >= mid else 2.0 for s in seen]
    assert 1.0 in used and 2.0 in used


def test_single_entry_list_is_bit_identical_to_the_plain_path() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 4, 8, 8)
    cond, uncond = torch.randn(2, 1), torch.randn(2, 1)
    for scale in (1.0, 4.5):
        plain = CFGDenoiser(ScaleDenoiser(), scale)(x, torch.ones(2), GuidedCond(cond, uncond))  # type: ignore[arg-type]
        listed = CFGDenoiser(ScaleDenoiser(), scale)(  # type: ignore[arg-type]
            x, torch.ones(2), GuidedCond((CondEntry(cond),), (CondEntry(uncond),))
        )
        assert torch.equal(plain, listed)


def test_cfg_with_area_gets_an_opposite_uncond_area() -> None:
    """An area cond gets an uncond entry over the same area; both lists then blend with the same weights,
    so guidance inside the area is u + s (c - u) with the area's blend of cond values."""
    area = CondEntry(c(5.0), area=(4, 4, 0, 0))
    lists = match_areas([(CondEntry(c(1.0)), area), (CondEntry(c(-1.0)),)])
    assert lists[1] is not None and len(lists[1]) == 2 and lists[1][1].area == (4, 4, 0, 0)
    assert torch.equal(lists[1][1].cond, c(-1.0))
    x = torch.zeros(1, 1, 8, 8, dtype=torch.float64)
    out = CFGDenoiser(ConstDenoiser(), 3.0)(x, sig(), GuidedCond((CondEntry(c(1.0)), area), c(-1.0)))  # type: ignore[arg-type]
    # area cells 0..3 x 0..3: inner edges fade over 1 cell (4 // 4) with weight 1: cond (1 + 5) / 2 = 3
    assert torch.allclose(
        out[0, 0, :4, :4], torch.full((4, 4), -1.0 + 3.0 * (3.0 + 1.0), dtype=torch.float64)
    )
    assert torch.allclose(out[0, 0, 4:, :], torch.full((4, 8), -1.0 + 3.0 * 2.0, dtype=torch.float64))


def test_dual_cfg_formulas() -> None:
    x = torch.zeros(1, 1, 2, 2, dtype=torch.float64)
    cond = DualGuidedCond(c(3.0), c(2.0), c(0.5))
    regular = DualCFGDenoiser(ConstDenoiser(), 4.0, 2.0)(x, sig(), cond)  # type: ignore[arg-type]
    assert torch.allclose(regular, torch.full_like(x, 0.5 + 2.0 * (2.0 - 0.5) + 4.0 * (3.0 - 2.0)))
    nested = DualCFGDenoiser(ConstDenoiser(), 4.0, 2.0, nested=True)(x, sig(), cond)  # type: ignore[arg-type]
    text = 2.0 + 4.0 * (3.0 - 2.0)
    assert torch.allclose(nested, torch.full_like(x, 0.5 + 2.0 * (text - 0.5)))
    d = ConstDenoiser()
    one = DualCFGDenoiser(d, 1.0, 1.0)(x, sig(), cond)  # type: ignore[arg-type]
    assert torch.equal(one, torch.full_like(x, 3.0)) and len(d.calls) == 1  # cond1 alone, one call


def test_rescale_cfg_in_v_space() -> None:
    """RescaleCFG with multiplier 0 is plain CFG; with 1 the guided v has the conditional v's std."""
    torch.manual_seed(1)
    x, x0_c, x0_u = (torch.randn(2, 4, 8, 8, dtype=torch.float64) for _ in range(3))
    s = torch.tensor([2.0, 0.5], dtype=torch.float64)
    assert torch.allclose(rescale_cfg_v(x, s, x0_c, x0_u, 5.0, 0.0), x0_u + 5.0 * (x0_c - x0_u))
    out = rescale_cfg_v(x, s, x0_c, x0_u, 5.0, 1.0)
    sb = s.reshape(-1, 1, 1, 1)
    a, b = 1 / (sb**2 + 1), (sb**2 + 1).sqrt() / sb
    v_out, v_c = (a * x - out) * b, (a * x - x0_c) * b
    assert torch.allclose(v_out.std(dim=(1, 2, 3)), v_c.std(dim=(1, 2, 3)))


def test_rescale_cfg_on_flow_models_rescales_x0() -> None:
    """Flow models: RescaleCFG's guided x0 gets the conditional x0's per-sample std (multiplier 1)."""
    from latentworks.diffusion.denoisers import FLOW

    class FlowNoise:
        interpolation = FLOW

        def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
            return x * cond.reshape(-1, 1, 1, 1)

    torch.manual_seed(2)
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    cond = GuidedCond(
        torch.tensor([2.0, 3.0], dtype=torch.float64), torch.tensor([1.0, 0.5], dtype=torch.float64)
    )
    out = CFGDenoiser(FlowNoise(), 4.0, rescale_cfg=1.0)(x, sig(2, 0.5), cond)  # type: ignore[arg-type]
    x0_c = x * torch.tensor([2.0, 3.0], dtype=torch.float64).reshape(-1, 1, 1, 1)
    assert torch.allclose(out.std(dim=(1, 2, 3)), x0_c.std(dim=(1, 2, 3)))
    plain = CFGDenoiser(FlowNoise(), 4.0)(x, sig(2, 0.5), cond)  # type: ignore[arg-type]
    assert not torch.allclose(out, plain)


def test_crops_grow_to_the_networks_size_multiple() -> None:
    """A network that takes only even sizes (a DiT with patch 2) sees a 3x5 area at (6, 2) of a 9x7 latent in
    the 4x6 window at (5, 1) (grown, then shifted back from the border), and the result over the area is its
    part of that prediction."""
    seen: list[tuple[int, ...]] = []

    def even_only(x: torch.Tensor, sigma: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        assert x.shape[-2] % 2 == 0 and x.shape[-1] % 2 == 0, x.shape
        seen.append(tuple(x.shape))
        return x * cond[:, 0].reshape(-1, 1, 1, 1)

    x = torch.randn(1, 2, 9, 7, dtype=torch.float64)
    entries = (CondEntry(c(1.0), area=(3, 5, 6, 2), mask=torch.ones(1, 9, 7, dtype=torch.float64)),)
    (out,) = compose(even_only, x, sig(), [entries], multiple=2)  # type: ignore[arg-type]
    assert seen == [(1, 2, 4, 6)]
    assert torch.allclose(out[..., 6:9, 2:7], x[..., 6:9, 2:7])  # x * 1 where the area is
    assert not out[..., :6, :].any() and not out[..., :, :2].any()
    (full,) = compose(even_only, x, sig(), [(CondEntry(c(2.0)),)], multiple=2)  # odd latent: replicate-padded
    assert (1, 2, 10, 8) in seen and torch.allclose(full, 2 * x)
