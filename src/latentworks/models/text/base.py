"""The text-encoder interface: prompts in, a ``Conditioning`` out."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from latentworks.diffusion.conditioning import Conditioning


@runtime_checkable
class TextEncoder(Protocol):
    """Turns prompts into conditioning for a denoising network.

    ``encode(prompts)`` returns ``Conditioning(tokens=(B, max_length, dim), mask=(B, max_length) bool,
    pooled=(B, pooled_dim))``. The empty prompt ``""`` is the unconditional embedding used by
    classifier-free guidance (and by caption dropout in training).
    """

    @property
    def dim(self) -> int:
        """Width D of the per-token states."""
        ...

    @property
    def max_length(self) -> int:
        """Number of token positions L (prompts are padded/truncated to it)."""
        ...

    def encode(self, prompts: list[str]) -> Conditioning: ...
