"""Seeded noise: per-sample seeds make a batch equal to single runs."""

from __future__ import annotations

import pytest
import torch

from latentworks.diffusion.noise import SeededNoiseSampler, derive_seed, seeded_noise

SHAPE = (4, 8, 8)


def test_row_i_is_randn_with_seed_i() -> None:
    seeds = [0, 42, 2**40 + 7]
    z = seeded_noise(SHAPE, seeds)
    assert z.shape == (3, *SHAPE) and z.dtype == torch.float32
    for i, s in enumerate(seeds):
        assert torch.equal(z[i], torch.randn(SHAPE, generator=torch.Generator().manual_seed(s)))


def test_batch_equals_single_runs_and_same_seed_same_noise() -> None:
    batch = seeded_noise(SHAPE, [5, 6, 7])
    for i, s in enumerate([5, 6, 7]):
        assert torch.equal(batch[i], seeded_noise(SHAPE, [s])[0])
    assert torch.equal(seeded_noise(SHAPE, 5), seeded_noise(SHAPE, [5]))
    assert not torch.equal(batch[0], batch[1])
    # the global RNG is neither used nor disturbed
    torch.manual_seed(0)
    a = torch.rand(3)
    torch.manual_seed(0)
    seeded_noise(SHAPE, [1, 2])
    assert torch.equal(torch.rand(3), a)


def test_dtype_is_a_cast_of_the_float32_draw() -> None:
    z32 = seeded_noise(SHAPE, [3])
    z64 = seeded_noise(SHAPE, [3], dtype=torch.float64)
    assert z64.dtype == torch.float64 and torch.equal(z64, z32.double())


def test_noise_sampler_batch_equals_single_runs_over_many_calls() -> None:
    seeds = [11, 12, 13]
    batch = SeededNoiseSampler(seeds, SHAPE)
    singles = [SeededNoiseSampler([s], SHAPE) for s in seeds]
    for step in range(4):
        nb = batch(torch.tensor(1.0), torch.tensor(0.5))
        assert nb.shape == (3, *SHAPE)
        for i, single in enumerate(singles):
            assert torch.equal(nb[i], single(1.0, 0.5)[0]), f"step {step}, sample {i}"


def test_noise_sampler_is_deterministic_and_fresh_each_call() -> None:
    a, b = SeededNoiseSampler([9], SHAPE), SeededNoiseSampler([9], SHAPE)
    first, second = a(), a()
    assert not torch.equal(first, second)
    assert torch.equal(first, b()) and torch.equal(second, b())


def test_noise_sampler_stream_is_independent_of_initial_noise() -> None:
    initial = seeded_noise(SHAPE, [21])
    assert not torch.equal(SeededNoiseSampler([21], SHAPE)(), initial)  # default stream 1
    assert torch.equal(SeededNoiseSampler([21], SHAPE, stream=0)(), initial)
    assert derive_seed(21, 0) == 21 and derive_seed(21, 1) != derive_seed(22, 1)
    assert 0 <= derive_seed(2**64 - 1, 3) < 2**64


def test_bad_seeds_are_rejected() -> None:
    with pytest.raises(ValueError, match="at least one"):
        seeded_noise(SHAPE, [])
    with pytest.raises(ValueError, match="ints"):
        seeded_noise(SHAPE, [1.5])  # type: ignore[list-item]
