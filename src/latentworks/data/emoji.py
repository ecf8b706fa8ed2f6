"""Build a captioned emoji dataset from npm packages (Noto/Google and Twemoji 64x64 PNGs).

Sources, fetched with ``npm pack <name>@<version>`` into a cache folder
(default ``~/.cache/latentworks/npm``) and unpacked there:

* ``emoji-datasource-google`` — Noto Color Emoji images, Apache-2.0.
* ``emoji-datasource-twitter`` — Twemoji images, CC-BY-4.0 (attribution required: "Twemoji by
  Twitter, Inc and other contributors, https://github.com/twitter/twemoji, CC-BY 4.0").
* ``emojibase-data`` (``en/data.json``) — labels and tags, MIT.

Images are matched to emojibase entries by code point sequence with U+FE0F dropped; skin-tone
variants are included. RGBA is composited on white. Captions: ``"<label>, <tag>, ..., <style> style"``.

Held-out split: fixed, by emoji. The key is the base emoji's code points (the emojibase entry a skin
tone belongs to); ``sha1(key) % 1000 < heldout_permille`` (default 50, ~5%) holds out that emoji in
every style and skin tone. It depends on nothing but the code points, so it never changes between
builds or machines.

Fluent flat SVGs (``@iconify-json/fluent-emoji-flat``) are not included: rasterising SVG needs
cairosvg/resvg, which are not dependencies of latentworks.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tarfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from latentworks.data.arrays import ArrayDataset
from latentworks.data.captions import TAG_SEPARATOR
from latentworks.data.folder import DatasetError, to_rgb_square

PACKAGES = {
    "google": ("emoji-datasource-google", "16.0.0"),
    "twitter": ("emoji-datasource-twitter", "16.0.0"),
}
LABELS_PACKAGE = ("emojibase-data", "17.0.0")
LICENSES = {
    "google": "Noto Emoji images: Apache-2.0 (Google), via npm emoji-datasource-google",
    "twitter": (
        "Twemoji images: CC-BY-4.0, Copyright Twitter, Inc and other contributors "
        "(https://github.com/twitter/twemoji), via npm emoji-datasource-twitter"
    ),
    "emojibase": "emojibase-data labels and tags: MIT (Miles Johnson)",
}
SKIN_TONES = {"1F3FB", "1F3FC", "1F3FD", "1F3FE", "1F3FF"}


def default_cache_dir() -> Path:
    return Path(os.environ.get("LATENTWORKS_NPM_CACHE", Path.home() / ".cache" / "latentworks" / "npm"))


def normalize_hex(code: str) -> str:
    """'1f44b-1f3fb' / '2764-FE0F' -> '1F44B-1F3FB' / '2764' (upper case, U+FE0F dropped)."""
    return "-".join(p for p in code.upper().replace("_", "-").split("-") if p and p != "FE0F")


def heldout_key(base_hex: str, permille: int = 50) -> bool:
    """Whether the emoji with base code points ``base_hex`` is in the held-out split."""
    h = hashlib.sha1(normalize_hex(base_hex).encode()).digest()
    return int.from_bytes(h[:4], "big") % 1000 < permille


def fetch_npm_package(name: str, version: str, cache_dir: Path, npm: str = "npm") -> Path:
    """``npm pack name@version`` into ``cache_dir`` (once) and unpack it; returns the package folder."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / f"{name}-{version}"
    if (target / "package.json").is_file():
        return target
    tgz = cache_dir / f"{name.lstrip('@').replace('/', '-')}-{version}.tgz"
    if not tgz.is_file():
        if shutil.which(npm) is None:
            raise DatasetError(
                f"{tgz} is not cached and '{npm}' is not installed; install Node.js/npm or put the "
                f"tarball from 'npm pack {name}@{version}' in {cache_dir}"
            )
        res = subprocess.run(
            [npm, "pack", f"{name}@{version}", "--silent"], cwd=cache_dir, capture_output=True, text=True
        )
        if res.returncode != 0 or not tgz.is_file():
            raise DatasetError(
                f"'npm pack {name}@{version}' failed in {cache_dir}: {res.stderr.strip()[-500:]}"
            )
    tmp = cache_dir / f".{target.name}.unpacking"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with tarfile.open(tgz) as tf:
            tf.extractall(tmp, filter="data")
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DatasetError(f"{tgz}: cannot unpack ({e}); delete it to download again") from None
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp / "package", target)
    shutil.rmtree(tmp, ignore_errors=True)
    return target


@dataclass(frozen=True)
class EmojiEntry:
    hexcode: str  # normalised, incl. skin tone
    base: str  # normalised hexcode of the base emoji (held-out key)
    label: str
    tags: tuple[str, ...]


def read_emojibase(path: Path) -> dict[str, EmojiEntry]:
    """Entries of emojibase ``en/data.json`` by normalised hexcode (skin variants included)."""
    if not path.is_file():
        raise DatasetError(f"emojibase labels not found: {path}")
    data = json.loads(path.read_text(encoding="utf-8"))
    out: dict[str, EmojiEntry] = {}
    for e in data:
        base = normalize_hex(e["hexcode"])
        tags = tuple(e.get("tags", ()))
        out[base] = EmojiEntry(base, base, e["label"], tags)
        for s in e.get("skins", ()) or ():
            h = normalize_hex(s["hexcode"])
            out[h] = EmojiEntry(h, base, s["label"], tags)
    return out


def read_subcategories(package: Path) -> dict[str, str]:
    """``{normalised hexcode: subcategory}`` from an emoji-datasource package's ``emoji.json`` (99
    subcategories such as ``face-smiling`` or ``animal-mammal``; skin variants share their base's), or
    ``{}`` when the package has no ``emoji.json``. Evaluation's prompt-following classifier uses it."""
    path = package / "emoji.json"
    if not path.is_file():
        return {}
    out: dict[str, str] = {}
    for e in json.loads(path.read_text(encoding="utf-8")):
        sub = str(e.get("subcategory", ""))
        out[normalize_hex(e["unified"])] = sub
        for v in (e.get("skin_variations") or {}).values():
            out[normalize_hex(v["unified"])] = sub
    return out


def make_caption(entry: EmojiEntry, style: str, num_tags: int = 2) -> str:
    tags = [t for t in entry.tags if t.lower() not in entry.label.lower()][:num_tags]
    return ", ".join([entry.label, *tags, f"{style} style"])


def build_emoji_dataset(
    styles: Iterable[str] = ("google", "twitter"),
    size: int = 64,
    cache_dir: str | Path | None = None,
    num_tags: int = 2,
    heldout_permille: int = 50,
    progress: Callable[[Iterable], Iterable] | None = None,
) -> ArrayDataset:
    """Fetch (if needed) and build the dataset; see the module docstring."""
    styles = list(styles)
    for s in styles:
        if s not in PACKAGES:
            raise DatasetError(f"unknown emoji style {s!r}; choose from {', '.join(PACKAGES)}")
    if size not in (16, 32, 64):
        raise DatasetError(f"size must be 16, 32 or 64 (the source images are 64x64), got {size}")
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    labels_dir = fetch_npm_package(*LABELS_PACKAGE, cache)
    entries = read_emojibase(labels_dir / "en" / "data.json")
    jobs: list[tuple[str, Path, EmojiEntry]] = []
    subcategories: dict[str, str] = {}
    versions = {"emojibase-data": LABELS_PACKAGE[1]}
    for style in styles:
        name, version = PACKAGES[style]
        versions[name] = version
        pkg = fetch_npm_package(name, version, cache)
        img_dir = pkg / "img" / style / "64"
        subcategories = {**read_subcategories(pkg), **subcategories}
        if not img_dir.is_dir():
            raise DatasetError(f"{pkg}: expected 64x64 images in {img_dir}")
        for p in sorted(img_dir.glob("*.png")):
            e = entries.get(normalize_hex(p.stem))
            if e is not None:
                jobs.append((style, p, e))
    if not jobs:
        raise DatasetError(f"no emoji images matched emojibase labels in {cache}")
    images, captions, hexcodes, style_col, held, labels, tags = [], [], [], [], [], [], []
    bases: list[str] = []
    it = progress(jobs) if progress is not None else jobs
    for style, p, e in it:
        try:
            with Image.open(p) as im:
                im.load()
                images.append(to_rgb_square(im, size))
        except OSError as err:
            raise DatasetError(f"{p}: cannot read image ({err})") from None
        captions.append(make_caption(e, style, num_tags))
        labels.append(e.label)
        tags.append(TAG_SEPARATOR.join(t for t in e.tags if t.lower() not in e.label.lower()))
        hexcodes.append(e.hexcode)
        bases.append(e.base)
        style_col.append(style)
        held.append(heldout_key(e.base, heldout_permille))
    metadata = {
        "name": "latentworks-emoji",
        "resolution": size,
        "styles": styles,
        "packages": versions,
        "licenses": {k: v for k, v in LICENSES.items() if k in styles or k == "emojibase"},
        "split": f"held out by base emoji: sha1(base code points, FE0F dropped) % 1000 < {heldout_permille}",
        "count": len(images),
        "heldout_count": int(sum(held)),
        "caption_format": "<label>, <up to N tags>, <style> style",
        "caption_parts": "extra columns labels, tags (joined by '|'), styles: see latentworks.data.captions",
    }
    return ArrayDataset(
        np.stack(images),
        captions,
        {
            "hexcodes": np.asarray(hexcodes, dtype=np.str_),
            "styles": np.asarray(style_col, dtype=np.str_),
            "heldout": np.asarray(held, dtype=bool),
            # the caption's parts, for training-time caption augmentation (data/captions.py)
            "labels": np.asarray(labels, dtype=np.str_),
            "tags": np.asarray(tags, dtype=np.str_),
            # emoji-datasource's subcategory ('' where unknown): a label for prompt-following classifiers
            "subcategories": np.asarray(
                [subcategories.get(h, subcategories.get(b, "")) for h, b in zip(hexcodes, bases)],
                dtype=np.str_,
            ),
        },
        metadata,
    )
