"""Small fixtures shared by the training tests (tiny real models, a hash text encoder)."""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from latentworks.diffusion.conditioning import Conditioning


class HashTextEncoder:
    """Deterministic stand-in text encoder: each word -> a fixed random vector. Fast, no weights."""

    def __init__(self, dim: int = 16, max_length: int = 4) -> None:
        self._dim, self._max_length = dim, max_length

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def max_length(self) -> int:
        return self._max_length

    def encode(self, prompts: list[str]) -> Conditioning:
        toks = torch.zeros(len(prompts), self._max_length, self._dim)
        mask = torch.zeros(len(prompts), self._max_length, dtype=torch.bool)
        for i, p in enumerate(prompts):
            words = ["<s>", *p.split()][: self._max_length]
            for j, w in enumerate(words):
                seed = int.from_bytes(hashlib.sha1(w.encode()).digest()[:4], "little")
                toks[i, j] = torch.randn(self._dim, generator=torch.Generator().manual_seed(seed))
                mask[i, j] = True
        pooled = torch.nn.functional.normalize((toks * mask[..., None]).sum(1), dim=-1)
        return Conditioning(tokens=toks, mask=mask, pooled=pooled)


def make_latent_cache(
    path, n: int = 16, channels: int = 4, size: int = 8, seed: int = 0, identical: bool = False
):
    from latentworks.pipelines.latents import save_latent_cache

    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(1 if identical else n, channels, size, size, generator=g).expand(n, -1, -1, -1).clone()
    std = torch.full_like(mean, 0.05)
    captions = [["red apple", "blue car", "green tree", "grinning face"][i % 4] for i in range(n)]
    return save_latent_cache(path, mean, std, captions, {"vae_run": ""})


def make_square_images(path, n: int = 24, size: int = 16, seed: int = 0):
    from latentworks.data.arrays import ArrayDataset

    rng = np.random.default_rng(seed)
    imgs = np.full((n, size, size, 3), 255, np.uint8)
    for i in range(n):
        x0, y0 = rng.integers(0, size // 2, 2)
        imgs[i, y0 : y0 + size // 2, x0 : x0 + size // 2] = rng.integers(0, 255, 3)
    held = np.zeros(n, bool)
    held[:4] = True
    ArrayDataset(imgs, [f"square {i}" for i in range(n)], {"heldout": held}).save_npz(path)


class BatchSensitiveEncoder(HashTextEncoder):
    """A HashTextEncoder whose output for a prompt also depends (by ~1e-4) on the other prompts of the
    batch, as a real encoder's does through batched-matmul rounding (MiniLM: 1.8e-6). A caption memo that
    encodes captions in groups then holds different numbers depending on the order of first use."""

    def encode(self, prompts: list[str]) -> Conditioning:
        c = super().encode(prompts)
        wiggle = 1e-4 * (sum(len(p) for p in prompts) % 7 + len(prompts))
        return Conditioning(tokens=c.tokens + wiggle, mask=c.mask, pooled=c.pooled)
