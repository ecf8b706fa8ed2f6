"""Per-job resource budgets: how large an image, a batch or a latent a job may create, and how long it may run.

A :class:`JobBudgets` travels in each job's :class:`~latentworks.graph.executor.ExecutionContext`
(``ctx.budgets``); nodes check it *before* they allocate (``ctx.check_pixels(...)``,
``ctx.check_latent(...)``), so an over-budget request fails as a node error naming the node, the input
and the limit, instead of exhausting the server's memory. Plain integers only: no torch here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_MAX_IMAGE_PIXELS = 4096 * 4096  # 16.8 MP: the editor's largest EmptyLatentImage
DEFAULT_MAX_BATCH_PIXELS = 4 * 4096 * 4096  # 67 MP over the batch: an IMAGE of 768 MiB in float32
DEFAULT_MAX_LATENT_ELEMENTS = (
    2**24
)  # 16.8 M latent values (64 MiB in float32), batch included: 4 x 4096^2 at f8 x 16
DEFAULT_MAX_JOB_SECONDS = 1800.0  # 30 minutes of wall time per job


_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_bytes(text: str | int) -> int:
    """'4GB', '512MiB', '1.5G', '800M' or a plain number of bytes -> bytes. Units are binary (G = 2**30)
    whether written G, GB or GiB, as ComfyUI and nvidia-smi count GPU memory."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", str(text), re.IGNORECASE)
    if m is None:
        raise ValueError(f"{text!r} is not a size; write e.g. 8G, 512M, 4GB, 512MiB or 1000000 (bytes)")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


class BudgetExceeded(ValueError):
    """A node was asked to create something larger than its job's budget allows (a node error)."""


@dataclass(frozen=True, kw_only=True)
class JobBudgets:
    """Limits one job runs under; ``None`` (or 0 on the command line) switches a limit off.

    Attributes:
        max_image_pixels: width x height of any one image a node creates, loads or decodes (and of an
            uploaded image, whose size is read from its header before decoding).
        max_batch_pixels: width x height x batch size of a batch of images.
        max_latent_elements: batch x channels x height x width of a latent a sampler materialises.
        max_job_seconds: wall time a job may run; it then ends with an error at the next check (between
            nodes, sampler steps or network blocks).
    """

    max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS
    max_batch_pixels: int | None = DEFAULT_MAX_BATCH_PIXELS
    max_latent_elements: int | None = DEFAULT_MAX_LATENT_ELEMENTS
    max_job_seconds: float | None = DEFAULT_MAX_JOB_SECONDS

    def __post_init__(self) -> None:
        for name in ("max_image_pixels", "max_batch_pixels", "max_latent_elements", "max_job_seconds"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"JobBudgets.{name} must be positive or None (no limit), got {value}")

    @classmethod
    def unlimited(cls) -> JobBudgets:
        """No limits at all (library use, tests)."""
        return cls(
            max_image_pixels=None, max_batch_pixels=None, max_latent_elements=None, max_job_seconds=None
        )

    def pixels_error(self, width: int, height: int, batch: int = 1) -> str | None:
        """Why an image batch of that size is over budget (a sentence naming the limit), or None if it fits."""
        per_image = int(width) * int(height)
        if self.max_image_pixels is not None and per_image > self.max_image_pixels:
            return (
                f"{width} x {height} = {per_image:,} pixels is over this server's limit of "
                f"{self.max_image_pixels:,} pixels per image (serve --max-image-pixels)"
            )
        total = per_image * int(batch)
        if self.max_batch_pixels is not None and total > self.max_batch_pixels:
            return (
                f"{batch} images of {width} x {height} = {total:,} pixels is over this server's limit of "
                f"{self.max_batch_pixels:,} pixels per batch (serve --max-batch-pixels)"
            )
        return None

    def latent_error(self, shape: tuple[int, ...]) -> str | None:
        """Why a latent of ``shape`` (B, C, h, w) is over budget, or None if it fits."""
        elements = 1
        for n in shape:
            elements *= int(n)
        if self.max_latent_elements is not None and elements > self.max_latent_elements:
            dims = " x ".join(str(int(n)) for n in shape)
            return (
                f"a latent of {dims} = {elements:,} values is over this server's limit of "
                f"{self.max_latent_elements:,} (serve --max-latent-elements)"
            )
        return None
