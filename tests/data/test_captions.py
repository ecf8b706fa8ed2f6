"""Caption augmentation and user-form prompts (data/captions.py): the forms people type, drawn
reproducibly, and the dataset/latent-cache columns they come from."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from latentworks.data.arrays import ArrayDataset, load_npz
from latentworks.data.captions import (
    USER_FORMS,
    CaptionAugment,
    CaptionParts,
    caption_parts,
    user_prompt,
)

CAT = CaptionParts("cat face", ("cat", "face", "pet"), "google")


def draws(aug: CaptionAugment, parts: CaptionParts, n: int, seed: int = 0) -> list[str]:
    gen = torch.Generator().manual_seed(seed)
    return [aug(parts, gen) for _ in range(n)]


def test_training_format_round_trip() -> None:
    assert CAT.caption() == "cat face, cat, face, pet, google style"
    assert CAT.caption(tags=(), style=False) == "cat face"
    assert CaptionParts("rocket").caption() == "rocket"  # no tags, no style: the label


def test_augment_gives_every_user_form_at_roughly_its_rate() -> None:
    out = draws(CaptionAugment(), CAT, 4000)
    n = len(out)
    full = sum(o == CAT.caption() for o in out) / n
    label = sum(o == "cat face" for o in out) / n
    styled = sum(o.lower().endswith("google style") for o in out) / n
    upper = sum(o.isupper() for o in out) / n
    lower = sum(o == o.lower() and not o.isupper() and "Google" not in o for o in out)
    # the exact-format share: keep (0.2) x original case (0.75), plus the shuffled draws that happen to
    # keep all tags in order with the style; the label alone: label_only (0.2) x the non-upper cases
    # (0.95) plus the k=0, no-style draws
    assert 0.13 <= full <= 0.20
    assert 0.19 <= label <= 0.30
    assert 0.3 <= styled <= 0.8
    assert 0.03 <= upper <= 0.08
    assert lower > 0
    # tags appear shuffled: both orders of two tags occur
    assert any("cat face, face, cat" in o for o in out) and any("cat face, cat, face" in o for o in out)
    # never anything but the label, its tags and the style phrase
    allowed = {"cat face", "cat", "face", "pet", "google style"}
    assert all(set(p.strip().lower() for p in o.split(",")) <= allowed for o in out)


def test_augment_is_reproducible_and_seed_dependent() -> None:
    assert draws(CaptionAugment(), CAT, 50, seed=3) == draws(CaptionAugment(), CAT, 50, seed=3)
    assert draws(CaptionAugment(), CAT, 50, seed=3) != draws(CaptionAugment(), CAT, 50, seed=4)


def test_augment_off_settings_keep_the_caption() -> None:
    aug = CaptionAugment(keep=1.0, label_only=0.0, lower=0.0, upper=0.0)
    assert set(draws(aug, CAT, 20)) == {CAT.caption()}
    with pytest.raises(ValueError, match="keep \\+ label_only"):
        CaptionAugment(keep=0.7, label_only=0.5)


def test_user_prompts() -> None:
    assert user_prompt(CAT, "label") == "cat face"
    assert user_prompt(CAT, "label+style") == "cat face, google style"
    forms = {user_prompt(CAT, "label+tags", i) for i in range(6)}
    assert all(f.startswith("cat face, ") and "style" not in f for f in forms)
    assert len(forms) >= 3  # varied by index
    assert user_prompt(CaptionParts("x"), "label+tags") == "x"
    with pytest.raises(ValueError, match="unknown prompt form"):
        user_prompt(CAT, "nonsense")  # type: ignore[arg-type]
    assert USER_FORMS == ("label", "label+style", "label+tags")


def test_caption_parts_from_dataset_columns(tmp_path) -> None:
    ds = ArrayDataset(
        np.zeros((2, 4, 4, 3), np.uint8),
        ["cat face, cat, google style", "pizza, twitter style"],
        {
            "labels": np.asarray(["cat face", "pizza"]),
            "tags": np.asarray(["cat|face", ""]),
            "styles": np.asarray(["google", "twitter"]),
        },
    )
    ds.save_npz(tmp_path / "d.npz")
    back = load_npz(tmp_path / "d.npz")  # the columns survive the dataset file
    parts = caption_parts(back.extra, len(back))
    assert parts == [
        CaptionParts("cat face", ("cat", "face"), "google"),
        CaptionParts("pizza", (), "twitter"),
    ]
    assert caption_parts({}, 2) is None


def test_latent_cache_keeps_parts(tmp_path) -> None:
    from latentworks.pipelines.latents import load_latent_cache, save_latent_cache

    z = torch.randn(2, 4, 2, 2)
    parts = [CAT, CaptionParts("pizza", (), "twitter")]
    save_latent_cache(
        tmp_path / "c.safetensors", z, z.abs(), [CAT.caption(), "pizza, twitter style"], parts=parts
    )
    assert load_latent_cache(tmp_path / "c.safetensors").parts == parts
    save_latent_cache(tmp_path / "d.safetensors", z, z.abs(), ["a", "b"])
    assert load_latent_cache(tmp_path / "d.safetensors").parts is None
    with pytest.raises(ValueError, match="1 caption parts for 2 captions"):
        save_latent_cache(tmp_path / "e.safetensors", z, z.abs(), ["a", "b"], parts=[CAT])


def test_form_mix_counts() -> None:
    c = Counter(user_prompt(CAT, USER_FORMS[k % 3], k).count(",") for k in range(30))
    assert c[0] == 10  # label only
