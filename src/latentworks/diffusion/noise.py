"""Seeded noise: randomness is passed in, never ambient.

Each sample of a batch has its own seed and its own CPU ``torch.Generator``, so image i of a batch is
bit-identical to a single run with seed i, on any device and batch size. Noise is drawn in float32 on
the CPU and then moved/cast, so the same seed gives the same image on CPU and GPU.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

_MASK64 = (1 << 64) - 1


def _as_seeds(seeds: int | Sequence[int]) -> list[int]:
    seeds = [seeds] if isinstance(seeds, int) else list(seeds)
    if not seeds:
        raise ValueError("seeds must hold at least one seed (one per sample)")
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, int):
            raise ValueError(f"seeds must be Python ints, got {s!r}")
    return seeds


def derive_seed(seed: int, stream: int) -> int:
    """A seed for an independent random stream of ``seed`` (splitmix64 mix); stream 0 is ``seed``."""
    if stream == 0:
        return seed & _MASK64
    z = (seed + stream * 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def _generator(seed: int) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(seed & _MASK64)


def seeded_noise(
    shape: Sequence[int],
    seeds: int | Sequence[int],
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Unit Gaussian noise (B, *shape), B = len(seeds); row i is exactly
    ``torch.randn(shape, generator=torch.Generator().manual_seed(seeds[i]))`` cast to ``dtype``."""
    rows = [torch.randn(tuple(shape), generator=_generator(s)) for s in _as_seeds(seeds)]
    return torch.stack(rows).to(device=device, dtype=dtype)


class SeededNoiseSampler:
    """Fresh noise for stochastic (SDE / ancestral) samplers: ``noise(sigma, sigma_next) -> (B, *shape)``.

    One CPU generator per sample, seeded with ``derive_seed(seeds[i], stream)``; each call advances
    every generator by one draw, so a batch equals single runs of the same seeds and the sequence is
    reproducible. ``stream`` (default 1) keeps this noise independent of the initial noise drawn by
    ``seeded_noise`` from the same seeds (stream 0 would repeat it).
    """

    def __init__(
        self,
        seeds: int | Sequence[int],
        shape: Sequence[int],
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        stream: int = 1,
    ) -> None:
        self.seeds = _as_seeds(seeds)
        self.shape = tuple(shape)
        self.device, self.dtype = device, dtype
        self._generators = [_generator(derive_seed(s, stream)) for s in self.seeds]

    def __call__(
        self, sigma: Tensor | float | None = None, sigma_next: Tensor | float | None = None
    ) -> Tensor:
        rows = [torch.randn(self.shape, generator=g) for g in self._generators]
        return torch.stack(rows).to(device=self.device, dtype=self.dtype)  # (B, *shape)
