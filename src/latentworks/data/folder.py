"""An image folder with captions: ``cat.png`` + ``cat.txt`` (same stem) per item.

Images are composited on white (if they have alpha), centre-cropped to a square and resized to
``size``; the whole folder is loaded into an ``ArrayDataset``. Errors name the offending file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from latentworks.data.arrays import ArrayDataset

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


class DatasetError(ValueError):
    """A dataset folder or file is missing, empty or unreadable."""


def to_rgb_square(img: Image.Image, size: int) -> np.ndarray:
    """Composite on white, centre-crop to square, resize to (size, size); uint8 (size, size, 3)."""
    if img.mode in ("RGBA", "LA", "P"):
        img = img.convert("RGBA")
        bg = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(bg, img)
    img = img.convert("RGB")
    w, h = img.size
    s = min(w, h)
    img = img.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
    if s != size:
        img = img.resize((size, size), Image.Resampling.LANCZOS if s > size else Image.Resampling.BICUBIC)
    return np.asarray(img, dtype=np.uint8)


HELDOUT_LIMIT = 64  # at most this many images of a folder are held out


def heldout_count(n: int) -> int:
    """How many of a folder's ``n`` images are held out: 1 in 20 (at least 1, at most ``HELDOUT_LIMIT``), none
    of a single image. train-vae reports PSNR/SSIM on them and 'eval autoencoder' scores them by default."""
    return 0 if n < 2 else min(HELDOUT_LIMIT, max(1, n // 20))


def image_files(folder: Path) -> list[Path]:
    """The image files of ``folder`` in the order :func:`load_image_folder` loads them (file-name order)."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def load_image_folder(folder: str | Path, size: int = 64, default_caption: str | None = None) -> ArrayDataset:
    """Load every image in ``folder`` with its same-name ``.txt`` caption.

    The first ``heldout_count(N)`` images in file-name order form the held-out split (``extra["heldout"]``,
    so ``split("train")`` / ``split("heldout")`` work as for a ``.npz``; none for a single image).

    A missing caption file is an error unless ``default_caption`` is given; an empty caption file is
    always an error (write "" explicitly nowhere: delete the image or give it a caption).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"dataset folder not found: {folder}")
    files = image_files(folder)
    if not files:
        raise DatasetError(
            f"{folder}: no images found (looked for {', '.join(IMAGE_SUFFIXES)}); "
            "put image files with same-name .txt captions there"
        )
    images, captions = [], []
    for p in files:
        txt = p.with_suffix(".txt")
        if txt.is_file():
            caption = txt.read_text(encoding="utf-8").strip()
            if not caption:
                raise DatasetError(f"{txt}: caption file is empty; write a caption for {p.name}")
        elif default_caption is not None:
            caption = default_caption
        else:
            raise DatasetError(f"{p}: no caption file {txt.name} next to it; add one (same name, .txt)")
        try:
            with Image.open(p) as im:
                im.load()
                images.append(to_rgb_square(im, size))
        except (UnidentifiedImageError, OSError) as e:
            raise DatasetError(f"{p}: cannot read image ({e}); fix or remove the file") from None
        captions.append(caption)
    extra = {}
    if (k := heldout_count(len(images))) > 0:
        extra["heldout"] = np.arange(len(images)) < k
    meta = {"source": str(folder), "resolution": size}
    return ArrayDataset(np.stack(images), captions, extra, metadata=meta)


def load_dataset(path: str | Path, size: int = 64, split: str = "all") -> ArrayDataset:
    """A ``.npz`` dataset file (see ``data.arrays``) or an image folder."""
    from latentworks.data.arrays import load_npz

    path = Path(path)
    if path.is_dir():
        ds = load_image_folder(path, size)
        if split != "all" and "heldout" not in ds.extra:
            raise DatasetError(f"{path}: a folder of one image has no {split!r} split; use split 'all'")
        return ds.split(split)
    if not path.exists():
        raise DatasetError(
            f"dataset not found: {path} (give a .npz from 'latentworks data emoji' or a folder)"
        )
    return load_npz(path).split(split)
