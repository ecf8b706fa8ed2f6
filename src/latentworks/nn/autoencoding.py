"""Blocks the image autoencoders share: the diagonal Gaussian posterior and tiled decoding with blended seams."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0  # the clamp of LDM's DiagonalGaussianDistribution


class DiagonalGaussian:
    """A diagonal Gaussian over latents, from the encoder's (B, 2C, h, w) moments (mean first)."""

    def __init__(self, moments: Tensor) -> None:
        if moments.ndim < 2 or moments.shape[1] % 2:
            raise ValueError(f"DiagonalGaussian needs (B, 2C, ...) moments, got shape {tuple(moments.shape)}")
        self.mean, logvar = moments.chunk(2, dim=1)  # (B, C, h, w) each
        self.logvar = logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)

    @property
    def std(self) -> Tensor:
        return torch.exp(0.5 * self.logvar)

    @property
    def var(self) -> Tensor:
        return torch.exp(self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        """``mean + std * eps`` with eps drawn from ``generator`` (reparameterised: gradients flow)."""
        eps = torch.randn(
            self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype
        )
        return self.mean + self.std * eps

    def mode(self) -> Tensor:
        return self.mean

    def kl(self) -> Tensor:
        """KL(q || N(0, I)) per sample, summed over all latent elements -> (B,)."""
        dims = tuple(range(1, self.mean.ndim))
        return 0.5 * torch.sum(self.mean.pow(2) + self.var - 1.0 - self.logvar, dim=dims)


def tiled_decode(
    decode: Callable[[Tensor], Tensor], z: Tensor, tile: int, overlap: int, factor: int, out_channels: int
) -> Tensor:
    """Decode latents ``z`` (B, C, h, w) with ``decode`` in overlapping ``tile`` x ``tile`` latent tiles, blended
    with linear ramps over ``overlap`` latent pixels; ``factor`` is the decoder's upsampling, the result
    (B, ``out_channels``, h * factor, w * factor). A latent no larger than one tile is decoded in one piece.
    """
    if tile < 1 or not 0 <= overlap < tile:
        raise ValueError(f"tiled_decode needs tile >= 1 and 0 <= overlap < tile, got {tile=} {overlap=}")
    b, _, h, w = z.shape
    if h <= tile and w <= tile:
        return decode(z)
    f = factor
    ys, xs = tile_starts(h, tile, overlap), tile_starts(w, tile, overlap)
    out = z.new_zeros(b, out_channels, h * f, w * f)
    weight = z.new_zeros(1, 1, h * f, w * f)
    for y0 in ys:
        for x0 in xs:
            th, tw = min(tile, h - y0), min(tile, w - x0)
            image = decode(z[:, :, y0 : y0 + th, x0 : x0 + tw])  # (B, C, th*f, tw*f)
            ramp_y = blend_ramp(th * f, overlap * f, y0 > 0, y0 + th < h, z)
            ramp_x = blend_ramp(tw * f, overlap * f, x0 > 0, x0 + tw < w, z)
            mask = ramp_y[:, None] * ramp_x[None, :]  # (th*f, tw*f)
            region = (
                slice(None),
                slice(None),
                slice(y0 * f, (y0 + th) * f),
                slice(x0 * f, (x0 + tw) * f),
            )
            out[region] += image * mask
            weight[region] += mask
    return out / weight


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Tile offsets along one axis: stride ``tile - overlap``, the last tile flush with the end."""
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile, tile - overlap))
    return starts + [size - tile]


def blend_ramp(length: int, overlap: int, rise: bool, fall: bool, like: Tensor) -> Tensor:
    """Blend weights along one tile axis: linear ramps over ``overlap`` pixels on the sides with a neighbour."""
    weights = torch.ones(length, dtype=like.dtype, device=like.device)
    n = min(overlap, length)
    if n > 0:
        ramp = (torch.arange(n, dtype=like.dtype, device=like.device) + 0.5) / n  # (n,), in (0, 1)
        if rise:
            weights[:n] = torch.minimum(weights[:n], ramp)
        if fall:
            weights[-n:] = torch.minimum(weights[-n:], ramp.flip(0))
    return weights
