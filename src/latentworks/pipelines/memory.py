"""Memory policy for running pipelines: which component sits on the compute device when, and a VAE
decode that survives low precision and large images.

* ``Offloader`` is the injected device manager. ``with offloader.use(vae): ...`` puts ``vae`` on the
  compute device for the block; in ``"model"`` mode it goes back to the offload device (CPU) afterwards,
  so only the component in use occupies accelerator memory. ``"none"`` keeps everything on the compute
  device (fastest when it all fits). It holds no global state: make one per job or pipeline.
* ``decode_latents`` decodes in tiles when asked or when the image is large (memory grows with the tile,
  not the image), and re-runs a float16/bfloat16 decode in float32 when it produced NaN or inf. The
  SDXL VAE is the known case: its activations exceed float16's 65504 and overflow to inf, which
  GroupNorm turns into NaN (diffusers ships ``force_upcast`` for the same reason).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from latentworks.models.autoencoder import Autoencoder
from latentworks.models.qwenimage_vae import QwenImageVAE

OffloadMode = Literal["none", "model"]
OFFLOAD_MODES: tuple[str, ...] = ("none", "model")
LOW_PRECISION = (torch.float16, torch.bfloat16)


@dataclass
class Offloader:
    """Keeps components on ``device`` only while they are used (``mode="model"``) or always (``"none"``).

    Args:
        device: the compute device ("cuda", "cuda:1", "cpu", ...).
        mode: ``"none"``: ``use`` moves a component to ``device`` and leaves it there. ``"model"``: each
            component moves to ``device`` on entering ``use`` and back to ``offload_device`` on leaving,
            unless it is listed in ``resident``.
        offload_device: where idle components wait (CPU RAM).
        resident: components that stay on ``device`` in every mode (e.g. a small VAE that is used at
            every preview).
    Attributes:
        moves: ``(component class name, device)`` per move made, oldest first; for logs and tests.
    """

    device: torch.device | str = "cpu"
    mode: OffloadMode = "model"
    offload_device: torch.device | str = "cpu"
    resident: tuple[nn.Module, ...] = ()
    moves: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.mode not in OFFLOAD_MODES:
            raise ValueError(f"Offloader mode must be one of {OFFLOAD_MODES}, got {self.mode!r}")
        self.device = torch.device(self.device)
        self.offload_device = torch.device(self.offload_device)

    @contextmanager
    def use(self, module: nn.Module) -> Iterator[nn.Module]:
        """Run the block with ``module`` on the compute device; yields the module."""
        self._move(module, self.device)  # type: ignore[arg-type]
        try:
            yield module
        finally:
            if self.mode == "model" and not any(module is r for r in self.resident):
                self._move(module, self.offload_device)  # type: ignore[arg-type]

    def offload(self, *modules: nn.Module) -> None:
        """Move idle ``modules`` to the offload device now (in ``"model"`` mode; a no-op for ``"none"``)."""
        if self.mode == "model":
            for m in modules:
                if not any(m is r for r in self.resident):
                    self._move(m, self.offload_device)  # type: ignore[arg-type]

    def _move(self, module: nn.Module, device: torch.device) -> None:
        if _device_of(module) == device:
            return
        module.to(device)
        self.moves.append((type(module).__name__, str(device)))


def _device_of(module: nn.Module) -> torch.device | None:
    for p in module.parameters():
        return p.device
    for b in module.buffers():
        return b.device
    return None


def _dtype_of(module: nn.Module) -> torch.dtype:
    for t in module.parameters():
        if t.is_floating_point():
            return t.dtype
    return torch.float32


def decode_latents(
    vae: Autoencoder | QwenImageVAE,
    z: Tensor,
    *,
    tile: int | None = None,
    overlap: int = 16,
    upcast_on_nonfinite: bool = True,
) -> Tensor:
    """Decode raw latents ``z`` (B, C, h, w) with ``vae``; returns float32 images (B, 3, h*f, w*f).

    ``z`` is cast to the VAE's device and dtype (the latent format's scale/shift is the caller's job).

    Args:
        tile: decode in ``tile`` x ``tile`` latent tiles (``Autoencoder.tiled_decode``); None: one piece.
        overlap: latent pixels shared by neighbouring tiles and blended with linear ramps.
        upcast_on_nonfinite: if a float16/bfloat16 VAE produced NaN or inf, warn (once per call site)
            and decode again with the VAE temporarily in float32; the VAE is restored afterwards.
    Raises:
        FloatingPointError: the decode is not finite even in float32 (broken weights or latents).
    """
    dtype = _dtype_of(vae)
    device = _device_of(vae) or z.device

    def run() -> Tensor:
        zz = z.to(device=device, dtype=_dtype_of(vae))
        with torch.no_grad():
            if tile is None:
                return vae.decode(zz)
            return vae.tiled_decode(zz, tile=tile, overlap=min(overlap, tile - 1))

    image = run()
    if not bool(torch.isfinite(image).all()):
        if not (upcast_on_nonfinite and dtype in LOW_PRECISION):
            raise FloatingPointError(
                f"VAE decode produced NaN/inf in {dtype}; the latents or VAE weights are broken "
                "(check the latent format's scale/shift and the checkpoint)"
            )
        warnings.warn(
            f"the VAE decode overflowed in {dtype} (NaN/inf); decoding again in float32. Load the VAE "
            "in float32 (or a fp16-fixed VAE such as madebyollin/sdxl-vae-fp16-fix) to skip the rerun.",
            RuntimeWarning,
            stacklevel=2,
        )
        vae.to(torch.float32)
        try:
            image = run()
        finally:
            vae.to(dtype)
        if not bool(torch.isfinite(image).all()):
            raise FloatingPointError(
                "VAE decode produced NaN/inf even in float32; the latents or VAE weights are broken "
                "(check the latent format's scale/shift and the checkpoint)"
            )
    return image.float()
