"""The prompt-following classifier: it learns labels from real images, a model that draws the prompted
thing scores like the real images, one that draws something else scores near zero, and styles are only
scored on prompts that name one."""

from __future__ import annotations

import numpy as np
import pytest

from latentworks.evaluation.classifier import fit_label_classifier, score_classifier

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (30, 60, 220)}


def shapes(n: int, seed: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """White 32 px images with one square or disc of a colour, at a random size and position."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:32, :32]
    images = np.full((n, 32, 32, 3), 255, np.uint8)
    shape_col, colour_col = [], []
    for i in range(n):
        shape = ("square", "circle")[i % 2]
        colour = list(COLOURS)[(i // 2) % 3]
        r = int(rng.integers(5, 10))
        cy, cx = (int(v) for v in rng.integers(r + 1, 31 - r, 2))
        if shape == "square":
            m = (abs(yy - cy) <= r) & (abs(xx - cx) <= r)
        else:
            m = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        images[i][m] = COLOURS[colour]
        shape_col.append(shape)
        colour_col.append(colour)
    return images, {"shapes": np.asarray(shape_col), "colours": np.asarray(colour_col)}


@pytest.fixture(scope="module")
def classifier():  # noqa: ANN201
    images, labels = shapes(192, seed=0)
    return fit_label_classifier(images, labels, seed=0, epochs=8, batch=32, width=16)


def test_classifier_learns_labels_from_real_images(classifier) -> None:  # noqa: ANN001
    images, labels = shapes(60, seed=1)  # images it never saw
    pred = classifier.predict(images)
    assert (pred["colours"] == labels["colours"]).mean() >= 0.9
    assert (pred["shapes"] == labels["shapes"]).mean() >= 0.8


def test_score_separates_a_faithful_model_from_an_unfaithful_one(classifier) -> None:  # noqa: ANN001
    real, labels = shapes(60, seed=2)
    faithful, _ = shapes(60, seed=3)  # same labels in the same order, other sizes and positions
    wrong = faithful[:, :, :, [1, 2, 0]]  # every colour channel rotated: red->blue, green->red, blue->green
    good = {s.column: s for s in score_classifier(classifier, real, faithful, labels)}
    bad = {s.column: s for s in score_classifier(classifier, real, wrong, labels)}
    assert good["colours"].generated >= 0.9 and good["colours"].real >= 0.9
    assert bad["colours"].generated <= 0.2
    assert bad["colours"].real == good["colours"].real  # the ceiling does not depend on the model
    assert abs(good["colours"].chance - 1 / 3) < 0.01 and good["colours"].n == 60


def test_a_mask_restricts_a_column_to_some_prompts(classifier) -> None:  # noqa: ANN001
    real, labels = shapes(12, seed=4)
    fake = real.copy()
    fake[6:] = fake[6:, :, :, [1, 2, 0]]  # the last six are wrong
    mask = np.arange(12) < 6
    (only_first,) = score_classifier(
        classifier, real, fake, {"colours": labels["colours"]}, {"colours": mask}
    )
    (all_of_them,) = score_classifier(classifier, real, fake, {"colours": labels["colours"]})
    assert only_first.n == 6 and only_first.generated > all_of_them.generated


def test_save_and_load_give_the_same_predictions(classifier, tmp_path) -> None:  # noqa: ANN001
    from latentworks.evaluation.classifier import LabelClassifier

    classifier.save(tmp_path / "c.safetensors")
    back = LabelClassifier.load(tmp_path / "c.safetensors")
    images, _ = shapes(20, seed=5)
    a, b = classifier.predict(images), back.predict(images)
    assert back.classes == classifier.classes and all((a[k] == b[k]).all() for k in a)
