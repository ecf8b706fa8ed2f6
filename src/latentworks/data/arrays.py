"""An in-memory captioned image dataset stored as one compact ``.npz`` file.

File layout (``save_npz``/``load_npz``): ``images`` uint8 (N, H, W, 3), ``captions`` str (N,),
optional per-item string/number arrays (e.g. ``styles``, ``hexcodes``, ``heldout``), and
``metadata``: a JSON string (source packages, versions, licences, split rule).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor


@dataclass
class ArrayDataset:
    """Captioned images held in memory. ``ds[i] -> (image (3, H, W) float in [-1, 1], caption)``."""

    images: np.ndarray  # (N, H, W, 3) uint8
    captions: list[str]
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim != 4 or self.images.shape[-1] != 3:
            raise ValueError(
                f"images must be uint8 (N, H, W, 3), got {self.images.dtype} {self.images.shape}"
            )
        if len(self.captions) != len(self.images):
            raise ValueError(f"{len(self.captions)} captions for {len(self.images)} images")
        for k, v in self.extra.items():
            if len(v) != len(self.images):
                raise ValueError(f"extra[{k!r}] has {len(v)} entries for {len(self.images)} images")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def resolution(self) -> int:
        return int(self.images.shape[1])

    def __getitem__(self, i: int) -> tuple[Tensor, str]:
        return images_to_tensor(self.images[i : i + 1])[0], self.captions[i]

    def batch(self, idx: Sequence[int] | np.ndarray | Tensor) -> tuple[Tensor, list[str]]:
        """Images (B, 3, H, W) float32 in [-1, 1] and their captions."""
        idx = np.asarray(idx, dtype=np.int64)
        return images_to_tensor(self.images[idx]), [self.captions[int(j)] for j in idx]

    def subset(self, mask_or_idx: np.ndarray) -> ArrayDataset:
        idx = np.flatnonzero(mask_or_idx) if mask_or_idx.dtype == bool else np.asarray(mask_or_idx)
        return ArrayDataset(
            self.images[idx],
            [self.captions[int(j)] for j in idx],
            {k: v[idx] for k, v in self.extra.items()},
            dict(self.metadata),
        )

    def split(self, name: str) -> ArrayDataset:
        """``"train"``, ``"heldout"`` or ``"all"`` (needs a boolean ``extra["heldout"]`` for the first two)."""
        if name == "all":
            return self
        if "heldout" not in self.extra:
            raise ValueError(f"this dataset has no held-out split; use split='all' (asked for {name!r})")
        held = self.extra["heldout"].astype(bool)
        if name == "train":
            return self.subset(~held)
        if name == "heldout":
            return self.subset(held)
        raise ValueError(f"unknown split {name!r}; choose train, heldout or all")

    def save_npz(self, path: str | Path) -> None:
        import io

        from latentworks.atomic import atomic_write_bytes

        buf = io.BytesIO()
        arrays = {f"extra_{k}": v for k, v in self.extra.items()}
        fields: dict[str, Any] = {
            "images": self.images,
            "captions": np.asarray(self.captions, dtype=np.str_),
            "metadata": np.asarray(json.dumps(self.metadata)),
            **arrays,
        }
        np.savez_compressed(buf, **fields)
        atomic_write_bytes(buf.getvalue(), path)


def images_to_tensor(images: np.ndarray) -> Tensor:
    """uint8 (B, H, W, 3) -> float32 (B, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1


def load_npz(path: str | Path) -> ArrayDataset:
    """Load a dataset written by ``ArrayDataset.save_npz``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dataset file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            images = z["images"]
            captions = [str(c) for c in z["captions"]]
            metadata = json.loads(str(z["metadata"])) if "metadata" in z.files else {}
            extra = {k[len("extra_") :]: z[k] for k in z.files if k.startswith("extra_")}
    except (KeyError, ValueError, OSError) as e:
        raise ValueError(f"{path}: not a latentworks dataset file (.npz with images + captions): {e}") from e
    return ArrayDataset(images, captions, extra, metadata)


def downscale(images: np.ndarray, factor: int = 2) -> np.ndarray:
    """uint8 (N, H, W, 3) -> (N, H/factor, W/factor, 3) with PIL's Lanczos filter (``data.folder.to_rgb_square``)."""
    n, h, w, _ = images.shape
    if h % factor or w % factor:
        raise ValueError(f"images of {w}x{h} px cannot be downscaled by {factor}")
    size = (w // factor, h // factor)
    return np.stack(
        [np.asarray(Image.fromarray(im).resize(size, Image.Resampling.LANCZOS)) for im in images]
    ).reshape(n, h // factor, w // factor, 3)
