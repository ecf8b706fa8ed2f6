"""Model FID/KID plumbing: a 'model' that returns the real image for each caption scores FID ~ 0,
one that returns noise scores far worse, and the real-vs-real baseline uses other images."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from latentworks.data.arrays import ArrayDataset
from latentworks.evaluation.generation import (
    GenerationEval,
    evaluate_autoencoder_floor,
    evaluate_generation,
    prompt_following,
)
from latentworks.models.inception import InceptionFeatures


@pytest.fixture(scope="module")
def inception() -> InceptionFeatures:
    """One FID Inception for the module, at 75 px (the smallest it accepts; these are 32 px images): the
    299 px default made each test take 10-35 s on a CI core, for the same plumbing checks."""
    return InceptionFeatures(device="cpu", resize=75)


def make_dataset(n: int = 40) -> ArrayDataset:
    rng = np.random.default_rng(0)
    images = np.zeros((n, 32, 32, 3), np.uint8)
    for i in range(n):  # coloured squares of varying size and colour
        c = rng.integers(0, 256, 3)
        s = int(rng.integers(6, 16))
        images[i] = 255
        images[i, 16 - s : 16 + s, 16 - s : 16 + s] = c
    captions = [f"square {i}" for i in range(n)]
    return ArrayDataset(images=images, captions=captions, extra={}, metadata={})


class CopyPipe:
    """Returns the dataset image whose caption was asked for."""

    def __init__(self, ds: ArrayDataset, noise: bool = False) -> None:
        self.lookup = {c: im for c, im in zip(ds.captions, ds.images, strict=True)}
        self.noise = noise

    def __call__(self, prompts, **kw):  # noqa: ANN001, ANN003, ANN204
        rng = np.random.default_rng(kw.get("seed", 0))
        ims = [
            rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) if self.noise else self.lookup[p]
            for p in prompts
        ]
        return SimpleNamespace(images=[Image.fromarray(a) for a in ims])


def test_copy_model_scores_near_zero_and_noise_scores_badly(inception: InceptionFeatures) -> None:
    ds = make_dataset()
    good = evaluate_generation(CopyPipe(ds), ds, split="all", n=12, progress=False, model=inception)
    bad = evaluate_generation(
        CopyPipe(ds, noise=True), ds, split="all", n=12, progress=False, model=inception
    )
    # Identical sets: FID is 0 to round-off with the exact eigenvalue form (the sqrtm form needed a
    # tolerance of 1 here, and scipy 1.17's sqrtm took > 40 minutes on these rank-11 2048x2048 covariances).
    assert abs(good.fid) < 1e-6
    # The baseline compares against *other* real images, so it is worse than the copy, and far better
    # than noise; KID orders the three the same way.
    assert good.real_fid > good.fid + 1.0
    assert bad.fid > good.real_fid + 50
    assert good.kid < good.real_kid < bad.kid
    assert good.n == 12 and "| all | 12 |" in good.row()


def test_feature_cache_gives_the_same_figures_and_is_keyed_by_the_pixels(
    tmp_path, monkeypatch, inception
) -> None:  # noqa: ANN001
    import latentworks.evaluation.generation as gen

    ds = make_dataset()
    plain = evaluate_generation(
        CopyPipe(ds, noise=True), ds, split="all", n=12, progress=False, model=inception
    )
    first = evaluate_generation(
        CopyPipe(ds, noise=True),
        ds,
        split="all",
        n=12,
        progress=False,
        feature_cache=tmp_path,
        model=inception,
    )
    assert len(list(tmp_path.glob("inception-*.npy"))) == 2  # the picked real images and the others
    calls = []
    real_extract = gen.extract_features
    monkeypatch.setattr(gen, "extract_features", lambda x, m: calls.append(len(x)) or real_extract(x, m))
    again = evaluate_generation(
        CopyPipe(ds, noise=True),
        ds,
        split="all",
        n=12,
        progress=False,
        feature_cache=tmp_path,
        model=inception,
    )
    assert calls == [12]  # only the generated images were run through Inception
    assert plain == first == again
    # Other pixels, other entries: a changed dataset never reads stale features.
    ds.images[:] = 255 - ds.images
    evaluate_generation(
        CopyPipe(ds), ds, split="all", n=12, progress=False, feature_cache=tmp_path, model=inception
    )
    assert len(list(tmp_path.glob("inception-*.npy"))) == 4


class PixelAutoencoder:
    """``decode(encode(x).mode())``: x itself, or x averaged over 4x4 blocks (a lossy autoencoder)."""

    def __init__(self, lossy: bool) -> None:
        self.lossy = lossy

    def encode(self, x: torch.Tensor) -> SimpleNamespace:
        z = torch.nn.functional.avg_pool2d(x, 4) if self.lossy else x
        return SimpleNamespace(mode=lambda: z)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.interpolate(z, scale_factor=4, mode="nearest") if self.lossy else z


def test_autoencoder_floor_reconstructs_the_baseline_images(inception: InceptionFeatures) -> None:
    """A lossless autoencoder's floor *is* the real-vs-real baseline (it reconstructs the other images,
    against the same picks as evaluate_generation); a lossy one sits above it, with a finite PSNR."""
    ds = make_dataset()
    exact, psnr_exact = evaluate_autoencoder_floor(
        PixelAutoencoder(False), ds, split="all", n=12, model=inception
    )
    lossy, psnr_lossy = evaluate_autoencoder_floor(
        PixelAutoencoder(True), ds, split="all", n=12, model=inception
    )
    model = evaluate_generation(CopyPipe(ds), ds, split="all", n=12, progress=False, model=inception)
    assert exact.fid == exact.real_fid == model.real_fid and exact.kid == exact.real_kid
    assert psnr_exact > 90 and 10 < psnr_lossy < 40
    assert lossy.fid > lossy.real_fid + 5 and lossy.real_fid == model.real_fid


class DarkLossyAutoencoder(PixelAutoencoder):
    """Lossless on light images, 4x4 block averages on dark ones (one style reconstructs worse)."""

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        coarse = torch.nn.functional.interpolate(
            torch.nn.functional.avg_pool2d(z, 4), scale_factor=4, mode="nearest"
        )
        dark = z[:, :, :1, :1].mean(dim=1, keepdim=True) < 0  # the background (a corner) is dark
        return torch.where(dark, coarse, z)


def test_autoencoder_floor_per_style(inception: InceptionFeatures) -> None:
    """Per style, each style's reconstructions are scored against that style's picked images beside the
    same real-vs-real as evaluate_generation's per-style rows: a lossless autoencoder sits on it in both
    styles, one that loses detail only in the dark style sits above it only there."""
    ds = make_dataset(48)
    dark = np.arange(len(ds)) % 2 == 1
    ds.images[dark] = 255 - ds.images[dark]
    ds.extra["styles"] = np.where(dark, "dark", "light")
    exact, _ = evaluate_autoencoder_floor(PixelAutoencoder(False), ds, split="all", n=16, model=inception)
    lossy, _ = evaluate_autoencoder_floor(DarkLossyAutoencoder(False), ds, split="all", n=16, model=inception)
    model = evaluate_generation(CopyPipe(ds), ds, split="all", n=16, progress=False, model=inception)
    assert [g.split for g in exact.by_group] == ["all, dark", "all, light"]
    for e, m in zip(exact.by_group, model.by_group, strict=True):
        assert e.fid == e.real_fid == m.real_fid and e.n == m.n
    light, dark_row = lossy.by_group[1], lossy.by_group[0]
    assert light.fid == light.real_fid
    assert dark_row.fid > dark_row.real_fid + 5
    assert "| all, dark |" in lossy.row()


def test_prompt_following_finds_the_prompted_image_and_label(inception: InceptionFeatures) -> None:
    """The copy model's images are nearest to their own real image (100%); one that answers each prompt
    with another image of the same label rarely hits the prompted image but almost always its label; noise
    scores near chance; chance levels are 1/N and the sum of squared label frequencies."""
    ds = make_dataset()
    label = np.arange(len(ds)) % 2  # two classes: white border (even) vs its inverse (odd)
    ds.images[label == 1] = 255 - ds.images[label == 1]
    ds.extra["styles"] = label.astype(str)

    def answering(pick: Callable[[int], int]) -> CopyPipe:  # caption i -> the image of caption pick(i)
        pipe = CopyPipe(ds)
        pipe.lookup = {c: ds.images[pick(i) % len(ds)] for i, c in enumerate(ds.captions)}
        return pipe

    kw = {"split": "all", "n": 12, "progress": False, "model": inception}
    copy = evaluate_generation(CopyPipe(ds), ds, **kw).following
    look = evaluate_generation(answering(lambda i: i + 2), ds, **kw).following  # same label, other square
    wrong = evaluate_generation(answering(lambda i: i + 1), ds, **kw).following  # the other label
    noise = evaluate_generation(CopyPipe(ds, noise=True), ds, **kw).following
    assert copy is not None and look is not None and wrong is not None and noise is not None
    assert copy.same_image == 1.0 and copy.labels[0][:2] == ("styles", 1.0)
    # Other squares of the same class: rarely the prompted one, nearly always the prompted class; squares
    # of the other class: never the prompted one, rarely the prompted class.
    assert look.same_image < 0.25 and look.labels[0][1] >= 0.9
    assert wrong.same_image == 0.0 and wrong.labels[0][1] <= 0.1
    picked = ds.extra["styles"][np.random.default_rng(0).permutation(len(ds))[:12]]
    chance = sum((np.sum(picked == v) / 12) ** 2 for v in ("0", "1"))
    assert copy.same_image_chance == 1 / 12 and abs(copy.labels[0][2] - chance) < 1e-12
    assert noise.same_image <= 0.25
    assert "same image 100.0% (chance 8.3%); same styles 100.0%" in copy.line()


def test_prompt_following_refuses_mismatched_counts() -> None:
    with pytest.raises(ValueError, match="3 generated for 4 real"):
        prompt_following(np.ones((4, 8)), np.ones((3, 8)))


def test_row_shows_kid_to_five_decimals() -> None:
    # The KID budget is 0.005: four decimals would print +0.0050 for both 0.00496 and 0.00504.
    r = GenerationEval(split="train", n=1000, fid=31.0, kid=0.00512, real_fid=30.0, real_kid=0.00004)
    assert r.row() == "| train | 1000 | 31.00 | 0.00512 | 30.00 | 0.00004 | +1.00 | +0.00508 |"


def test_user_form_prompts_are_built_from_caption_parts(inception: InceptionFeatures) -> None:
    """'user' prompts cycle through label / label + style / label + tags built from the dataset's columns, a
    pipe that answers each user-form prompt with the right image scores like the copy model, and a dataset
    without the columns is refused with the way out."""
    from latentworks.evaluation.generation import prompt_texts

    base = make_dataset(12)
    labels = np.asarray([f"shape {i}" for i in range(12)])
    ds = ArrayDataset(
        base.images,
        [f"shape {i}, big, blue, flat style" for i in range(12)],
        {"labels": labels, "tags": np.asarray(["big|blue"] * 12), "styles": np.asarray(["flat"] * 12)},
    )
    pick = np.arange(6)
    assert prompt_texts(ds, pick, "user")[:3] == ["shape 0", "shape 1, flat style", "shape 2, big"]
    assert prompt_texts(ds, pick, "user")[5] == "shape 5, blue, big"  # one or two tags, rotating
    assert prompt_texts(ds, pick, "training") == ds.captions[:6]
    with pytest.raises(ValueError, match="rebuild the dataset"):
        prompt_texts(base, pick, "user")

    by_label = {str(lab): im for lab, im in zip(labels, ds.images, strict=True)}

    def answer(prompts, **kw):  # noqa: ANN001, ANN003, ANN202
        return SimpleNamespace(images=[Image.fromarray(by_label[p.split(",")[0]]) for p in prompts])

    r = evaluate_generation(answer, ds, split="all", n=12, progress=False, model=inception, prompts="user")
    assert r.split == "all, user prompts"
    assert r.fid < 1.0


def test_per_group_rows_and_classifier_scores(inception: InceptionFeatures) -> None:
    """With a styles column, each style gets its own row against the real images of that style; a copy
    model matches them exactly (FID ~ 0 per group) and the classifier scores it like the real images."""
    from latentworks.evaluation.classifier import LabelClassifier

    ds = make_dataset(48)
    styles = np.asarray(["a", "b"] * 24)
    ds = ArrayDataset(images=ds.images, captions=ds.captions, extra={"styles": styles}, metadata={})

    class Fixed(LabelClassifier):
        def predict(self, images, batch=500):  # noqa: ANN001, ANN201
            return {"styles": np.asarray(["a"] * len(images))}  # always "a": right on half the prompts

    r = evaluate_generation(
        CopyPipe(ds),
        ds,
        split="all",
        n=20,
        progress=False,
        model=inception,
        classifier=Fixed(net=None, classes={"styles": ("a", "b")}),  # type: ignore[arg-type]
    )
    assert [g.split.rsplit(", ", 1)[1] for g in r.by_group] == ["a", "b"]
    assert sum(g.n for g in r.by_group) == 20
    assert all(abs(g.fid) < 1e-6 for g in r.by_group)
    assert len(r.row().splitlines()) == 3
    (score,) = r.classified
    expected = float((styles[np.random.default_rng(0).permutation(48)[:20]] == "a").mean())
    assert score.column == "styles" and score.generated == score.real == pytest.approx(expected)
