"""Upscale models (ESRGAN, Real-ESRGAN, SwinIR, HAT, DAT and the other architectures spandrel knows), run in
tiles.

The weights are read by latentworks' own safe loader (``checkpoints.io.load_state_dict``: ``.safetensors``;
pickled ``.pth``/``.pt``/``.ckpt`` only with ``allow_pickle=True``, and then with ``weights_only=True``);
spandrel (MIT, https://github.com/chaiNNer-org/chaiNNer/tree/main/backend/src/spandrel, the library ComfyUI uses)
detects the architecture from the tensors' names and shapes and builds the network. spandrel is an optional
dependency: ``pip install 'latentworks[upscale]'`` (it needs torchvision built for your torch).

Tiling: each ``tile`` x ``tile`` piece of the input is run with ``overlap`` pixels of the surrounding image as
context on every side, and only its centre is kept. Wherever the network's receptive field fits inside the
overlap (true for convolutional upscalers such as ESRGAN at the default 32 pixels), the result equals one pass
over the whole image, with no seams; memory grows with the tile, not the image.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from latentworks.checkpoints.io import load_state_dict

DEFAULT_TILE = 512
DEFAULT_OVERLAP = 32


def import_spandrel() -> Any:
    """The ``spandrel`` module, or an ImportError that says how to install it."""
    try:
        import spandrel
    except ImportError as e:
        missing = getattr(e, "name", None) or str(e)
        raise ImportError(
            f"upscale models need the spandrel library, which could not be imported ({missing} is missing). "
            "Install it with: pip install 'latentworks[upscale]' (spandrel also needs the torchvision build "
            "that matches your torch; for a CPU-only torch: pip install torchvision --index-url "
            "https://download.pytorch.org/whl/cpu)"
        ) from e
    except Exception as e:  # noqa: BLE001 - e.g. a CUDA torchvision next to a CPU torch fails inside its import
        raise ImportError(
            f"upscale models need spandrel, whose import failed ({type(e).__name__}: {e}); usually torchvision "
            "does not match torch: install the torchvision build for your torch (CPU-only torch: pip install "
            "torchvision --index-url https://download.pytorch.org/whl/cpu)"
        ) from e
    return spandrel


@dataclass(frozen=True)
class UpscaleModel:
    """A loaded upscale model: spandrel's ``ImageModelDescriptor`` (``.model`` is the network), its scale and
    architecture name, and the file it came from."""

    descriptor: Any
    path: Path

    @property
    def scale(self) -> int:
        return int(self.descriptor.scale)

    @property
    def architecture(self) -> str:
        return str(self.descriptor.architecture.name)

    @property
    def network(self) -> torch.nn.Module:
        return self.descriptor.model  # type: ignore[no-any-return]


def load_upscale_model(
    path: str | Path, *, allow_pickle: bool = False, device: str | torch.device = "cpu"
) -> UpscaleModel:
    """Load an upscale model file; its architecture is detected by spandrel.

    Raises FileNotFoundError for a missing file, ValueError for a pickle without ``allow_pickle``, a file that no
    architecture matches, or a model that is not an image-to-image upscaler (e.g. an inpainting model).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such upscale model file: {path}")
    spandrel = import_spandrel()
    state = load_state_dict(path, allow_pickle=allow_pickle)
    try:
        descriptor = spandrel.ModelLoader(device=torch.device(device)).load_from_state_dict(state)
    except spandrel.UnsupportedModelError:
        raise ValueError(
            f"{path}: not an upscale model architecture spandrel knows (ESRGAN, Real-ESRGAN, SwinIR, HAT, DAT, "
            "...); check that the file is an image upscaler"
        ) from None
    if not isinstance(descriptor, spandrel.ImageModelDescriptor):
        raise ValueError(
            f"{path}: a {descriptor.architecture.name} {descriptor.purpose} model, not an image upscaler "
            "(it needs a mask as well)"
        )
    descriptor.eval()
    return UpscaleModel(descriptor=descriptor, path=path)


def _starts(size: int, tile: int) -> list[int]:
    return list(range(0, size, tile))


def upscale_images(
    model: UpscaleModel,
    images: Tensor,
    *,
    tile: int | None = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
    callback: Callable[[int, int], object] | None = None,
) -> Tensor:
    """Upscale ``images`` (B, 3, H, W) in [0, 1] by ``model.scale`` -> (B, 3, H*s, W*s) in [0, 1], float32.

    ``tile``: input pixels per tile side (None or >= the image: one pass). ``overlap``: context pixels around
    each tile (see the module docstring). ``callback(done, total)`` is called after each tile (progress bars).
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W) in [0, 1], got shape {tuple(images.shape)}")
    if tile is not None and tile < 8:
        raise ValueError(f"tile must be at least 8 pixels (or None for one pass), got {tile}")
    if overlap < 0:
        raise ValueError(f"overlap must be >= 0 pixels, got {overlap}")
    d = model.descriptor
    p = next(model.network.parameters(), None)
    device = p.device if p is not None else torch.device("cpu")
    dtype = p.dtype if p is not None else torch.float32
    b, _, h, w = images.shape
    s = model.scale
    t = max(h, w) if tile is None else min(tile, max(h, w))
    ys, xs = _starts(h, t), _starts(w, t)
    total, done = b * len(ys) * len(xs), 0
    out = torch.empty(b, 3, h * s, w * s, dtype=torch.float32)
    with torch.no_grad():
        for i in range(b):
            for y0 in ys:
                for x0 in xs:
                    y1, x1 = min(y0 + t, h), min(x0 + t, w)
                    cy0, cx0 = max(0, y0 - overlap), max(0, x0 - overlap)
                    cy1, cx1 = min(h, y1 + overlap), min(w, x1 + overlap)
                    piece = images[i : i + 1, :, cy0:cy1, cx0:cx1].to(device, dtype)
                    up = (
                        d(piece).float().cpu()
                    )  # (1, 3, (cy1-cy0)*s, (cx1-cx0)*s), padding handled by spandrel
                    oy, ox = (y0 - cy0) * s, (x0 - cx0) * s
                    out[i, :, y0 * s : y1 * s, x0 * s : x1 * s] = up[
                        0, :, oy : oy + (y1 - y0) * s, ox : ox + (x1 - x0) * s
                    ]
                    done += 1
                    if callback is not None:
                        callback(done, total)
    return out


def tiles_for(height: int, width: int, tile: int | None) -> int:
    """How many tiles :func:`upscale_images` runs per image."""
    if tile is None or tile >= max(height, width):
        return 1
    return math.ceil(height / tile) * math.ceil(width / tile)
