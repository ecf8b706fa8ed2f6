import numpy as np
import pytest
from PIL import Image

from latentworks.data.folder import DatasetError, load_dataset, load_image_folder


def _img(path, color=(10, 20, 30), size=(40, 30)):
    Image.new("RGB", size, color).save(path)


def test_loads_and_crops(tmp_path):
    _img(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("a cat\n")
    _img(tmp_path / "b.jpg", (200, 100, 0), (30, 30))
    (tmp_path / "b.txt").write_text("a dog")
    ds = load_image_folder(tmp_path, size=16)
    assert ds.captions == ["a cat", "a dog"] and ds.images.shape == (2, 16, 16, 3)
    assert tuple(ds.images[0, 8, 8]) == (10, 20, 30)
    x, cap = ds[1]
    assert x.shape == (3, 16, 16) and abs(x[0, 0, 0].item() - (200 / 127.5 - 1)) < 0.02


def test_empty_folder(tmp_path):
    (tmp_path / "notes.md").write_text("x")
    with pytest.raises(DatasetError, match="no images found"):
        load_image_folder(tmp_path)


def test_missing_caption_names_file(tmp_path):
    _img(tmp_path / "a.png")
    with pytest.raises(DatasetError, match=r"a\.png.*a\.txt"):
        load_image_folder(tmp_path)


def test_empty_caption(tmp_path):
    _img(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("  \n")
    with pytest.raises(DatasetError, match=r"a\.txt: caption file is empty"):
        load_image_folder(tmp_path)


def test_unreadable_image(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not a png")
    (tmp_path / "bad.txt").write_text("x")
    with pytest.raises(DatasetError, match=r"bad\.png: cannot read image"):
        load_image_folder(tmp_path)


def test_missing_dataset(tmp_path):
    with pytest.raises(DatasetError, match="dataset not found"):
        load_dataset(tmp_path / "nope.npz")


def test_npz_split(tmp_path):
    from latentworks.data.arrays import ArrayDataset

    ds = ArrayDataset(
        np.zeros((4, 8, 8, 3), np.uint8), list("abcd"), {"heldout": np.array([0, 1, 0, 1], bool)}
    )
    ds.save_npz(tmp_path / "d.npz")
    assert load_dataset(tmp_path / "d.npz", split="heldout").captions == ["b", "d"]
    assert load_dataset(tmp_path / "d.npz", split="train").captions == ["a", "c"]
