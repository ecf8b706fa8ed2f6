"""Conditioning passed from prompt encoders through guidance to denoising networks."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

CONCAT_KEY = "concat"
"""``Conditioning.extra`` key of channels an inpainting network concatenates to its (scaled) input, (B, C', h, w):
the mask and the masked image's latent for SD/SDXL inpainting U-Nets (``pipelines.inpaint.inpaint_concat``)."""


@dataclass(frozen=True)
class Conditioning:
    """What a text encoder (or other conditioner) hands to a denoising network.

    Attributes:
        tokens: per-token states, (B, L, D).
        mask: attention mask over ``tokens``, (B, L), True (or 1) where a token is real; None = all real.
        pooled: a pooled vector per sample, (B, P), or None.
        extra: named extra vectors, e.g. SDXL size ids ``{"time_ids": (B, 6)}`` or FLUX ``guidance``.
    """

    tokens: Tensor
    mask: Tensor | None = None
    pooled: Tensor | None = None
    extra: dict[str, Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.tokens.ndim != 3:
            raise ValueError(f"Conditioning.tokens must be (B, L, D), got shape {tuple(self.tokens.shape)}")
        b = self.tokens.shape[0]
        if self.mask is not None and tuple(self.mask.shape) != tuple(self.tokens.shape[:2]):
            raise ValueError(
                f"Conditioning.mask must be (B, L) = {tuple(self.tokens.shape[:2])}, got {tuple(self.mask.shape)}"
            )
        if self.pooled is not None and self.pooled.shape[0] != b:
            raise ValueError(f"Conditioning.pooled batch {self.pooled.shape[0]} != tokens batch {b}")
        for name, v in self.extra.items():
            if v.shape[0] != b:
                raise ValueError(f"Conditioning.extra[{name!r}] batch {v.shape[0]} != tokens batch {b}")

    @property
    def batch_size(self) -> int:
        return int(self.tokens.shape[0])

    def map(self, fn) -> Conditioning:  # noqa: ANN001 - fn: Tensor -> Tensor
        """Apply ``fn`` to every tensor (e.g. ``lambda t: t.to(device)`` or a batch repeat)."""
        return Conditioning(
            tokens=fn(self.tokens),
            mask=None if self.mask is None else fn(self.mask),
            pooled=None if self.pooled is None else fn(self.pooled),
            extra={k: fn(v) for k, v in self.extra.items()},
        )

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Conditioning:
        def move(t: Tensor) -> Tensor:
            if t.is_floating_point():
                return t.to(device=device, dtype=dtype)
            return t.to(device=device)

        return self.map(move)

    def repeat(self, n: int) -> Conditioning:
        """Repeat each sample ``n`` times along the batch (sample-major: a a b b)."""
        return self.map(lambda t: t.repeat_interleave(n, dim=0))

    def with_extra(self, **extra: Tensor) -> Conditioning:
        return replace(self, extra={**self.extra, **extra})

    @staticmethod
    def cat(items: list[Conditioning]) -> Conditioning:
        """Concatenate along the batch; token lengths are padded to the longest (mask marks padding)."""
        if not items:
            raise ValueError("Conditioning.cat needs at least one item")
        length = max(c.tokens.shape[1] for c in items)
        toks, masks = [], []
        for c in items:
            b, n, d = c.tokens.shape
            m = c.mask if c.mask is not None else torch.ones(b, n, dtype=torch.bool, device=c.tokens.device)
            if n < length:
                c_t = torch.cat([c.tokens, c.tokens.new_zeros(b, length - n, d)], dim=1)
                m = torch.cat(
                    [m.bool(), torch.zeros(b, length - n, dtype=torch.bool, device=m.device)], dim=1
                )
            else:
                c_t = c.tokens
            toks.append(c_t)
            masks.append(m.bool())
        any_mask = any(c.mask is not None for c in items) or any(c.tokens.shape[1] != length for c in items)
        pooled = None
        if all(c.pooled is not None for c in items):
            pooled = torch.cat([c.pooled for c in items], 0)  # type: ignore[misc]
        keys = set.intersection(*(set(c.extra) for c in items))
        return Conditioning(
            tokens=torch.cat(toks, 0),
            mask=torch.cat(masks, 0) if any_mask else None,
            pooled=pooled,
            extra={k: torch.cat([c.extra[k] for c in items], 0) for k in sorted(keys)},
        )
