import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from latentworks.data import emoji
from latentworks.data.arrays import load_npz

SUBCATEGORIES = [
    {"unified": "1F34E", "subcategory": "food-fruit"},
    {
        "unified": "1F44B",
        "subcategory": "hand-fingers-open",
        "skin_variations": {"1F3FB": {"unified": "1F44B-1F3FB"}},
    },
]

LABELS = [
    {"hexcode": "1F34E", "label": "red apple", "tags": ["apple", "fruit", "red"]},
    {
        "hexcode": "1F44B",
        "label": "waving hand",
        "tags": ["bye", "hello"],
        "skins": [{"hexcode": "1F44B-1F3FB", "label": "waving hand: light skin tone"}],
    },
    {"hexcode": "2764-FE0F", "label": "red heart", "tags": ["love"]},
]


def _png(color, alpha=255):
    buf = io.BytesIO()
    Image.new("RGBA", (64, 64), (*color, alpha)).save(buf, "PNG")
    return buf.getvalue()


def _tgz(path, files):
    with tarfile.open(path, "w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(f"package/{name}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


@pytest.fixture
def fake_cache(tmp_path):
    c = tmp_path / "npm"
    c.mkdir()
    name, ver = emoji.LABELS_PACKAGE
    _tgz(c / f"{name}-{ver}.tgz", {"package.json": b"{}", "en/data.json": json.dumps(LABELS).encode()})
    for style, (name, ver) in emoji.PACKAGES.items():
        files = {
            "package.json": b"{}",
            "emoji.json": json.dumps(SUBCATEGORIES).encode(),
            f"img/{style}/64/1f34e.png": _png((255, 0, 0)),
            f"img/{style}/64/1f44b.png": _png((0, 0, 255)),
            f"img/{style}/64/1f44b-1f3fb.png": _png((0, 255, 0), alpha=0),  # transparent -> white
            f"img/{style}/64/2764-fe0f.png": _png((200, 0, 0)),
            f"img/{style}/64/ffff.png": _png((1, 2, 3)),  # no label -> skipped
        }
        _tgz(c / f"{name}-{ver}.tgz", files)
    return c


def test_build_from_fake_npm_tree(fake_cache, tmp_path, monkeypatch):
    monkeypatch.setattr(emoji.shutil, "which", lambda _: None)  # prove npm is never called
    ds = emoji.build_emoji_dataset(cache_dir=fake_cache, size=32)
    assert len(ds) == 8 and ds.images.shape == (8, 32, 32, 3)
    caps = dict(zip(zip(ds.extra["hexcodes"], ds.extra["styles"]), ds.captions))
    assert (
        caps[("1F34E", "twitter")] == "red apple, fruit, twitter style"
    )  # tag "apple"/"red" in label dropped
    assert caps[("2764", "google")] == "red heart, love, google style"
    assert caps[("1F44B-1F3FB", "google")].startswith("waving hand: light skin tone")
    i = ds.captions.index(caps[("1F44B-1F3FB", "google")])
    assert (ds.images[i] == 255).all()  # transparent composited on white
    j = ds.captions.index(caps[("1F34E", "google")])
    assert tuple(ds.images[j, 5, 5]) == (255, 0, 0)
    assert "CC-BY-4.0" in ds.metadata["licenses"]["twitter"] and "MIT" in ds.metadata["licenses"]["emojibase"]
    out = tmp_path / "emoji.npz"
    ds.save_npz(out)
    back = load_npz(out)
    assert np.array_equal(back.images, ds.images) and back.captions == ds.captions
    assert back.metadata == ds.metadata
    # the caption's parts, for caption augmentation and user-form evaluation
    from latentworks.data.captions import CaptionParts, caption_parts

    parts = dict(zip(zip(back.extra["hexcodes"], back.extra["styles"]), caption_parts(back.extra, len(back))))
    assert parts[("1F34E", "twitter")] == CaptionParts("red apple", ("fruit",), "twitter")
    assert parts[("2764", "google")].caption() == caps[("2764", "google")]


def test_heldout_groups_all_variants(fake_cache):
    # With permille=1000 every emoji is held out; find a permille that splits the waving hand group.
    ds = emoji.build_emoji_dataset(cache_dir=fake_cache, heldout_permille=500)
    groups = {}
    for h, held in zip(ds.extra["hexcodes"], ds.extra["heldout"]):
        groups.setdefault(h.split("-")[0], set()).add(bool(held))
    assert all(len(v) == 1 for v in groups.values())  # every style/skin tone of an emoji on one side
    assert emoji.heldout_key("1F44B-FE0F") == emoji.heldout_key("1f44b")


def test_heldout_fraction_is_about_five_percent():
    keys = [f"{c:X}" for c in range(0x1F300, 0x1F300 + 2000)]
    frac = np.mean([emoji.heldout_key(k) for k in keys])
    assert 0.035 < frac < 0.065


def test_unknown_style(fake_cache):
    with pytest.raises(emoji.DatasetError, match="unknown emoji style 'apple'"):
        emoji.build_emoji_dataset(styles=["apple"], cache_dir=fake_cache)


@pytest.mark.skipif(
    not (emoji.default_cache_dir() / f"{emoji.LABELS_PACKAGE[0]}-{emoji.LABELS_PACKAGE[1]}.tgz").exists(),
    reason="npm cache absent (run 'latentworks data emoji' once)",
)
def test_real_npm_cache_labels():
    pkg = emoji.fetch_npm_package(*emoji.LABELS_PACKAGE, emoji.default_cache_dir())
    entries = emoji.read_emojibase(pkg / "en" / "data.json")
    assert entries["1F34E"].label == "red apple"
    assert entries["1F44B-1F3FB"].base == "1F44B"


def test_subcategories_come_from_emoji_datasource(fake_cache):
    ds = emoji.build_emoji_dataset(cache_dir=fake_cache, size=16)
    sub = dict(zip(ds.extra["hexcodes"], ds.extra["subcategories"]))
    # a skin variant takes its base's subcategory; an emoji emoji.json does not list gets ''
    assert sub == {
        "1F34E": "food-fruit",
        "1F44B": "hand-fingers-open",
        "1F44B-1F3FB": "hand-fingers-open",
        "2764": "",
    }
