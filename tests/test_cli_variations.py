"""``latentworks variations IMG``: PNGs from a tiny unCLIP folder that equal the pipeline with the same class
input, and a clear error for a model that is not unCLIP."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from latentworks.cli import main
from latentworks.models.clip_vision import ClipVision
from latentworks.models.unclip import ImageEmbeddingAugmentor, noise_level_of
from latentworks.pipelines import Pipeline
from support.unclip import tiny_unclip_pipe

pytest.importorskip("diffusers")


def test_variations_writes_the_pipelines_images(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder, pipe = tiny_unclip_pipe(tmp_path)
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (20, 28, 3), dtype=np.uint8)).save(
        tmp_path / "p.png"
    )
    argv = ["variations", str(tmp_path / "p.png"), "--model", str(folder), "--count", "2", "--seed", "7"]
    argv += ["--steps", "2", "--width", "16", "--height", "16", "--noise-augmentation", "0.25"]
    argv += ["-o", str(tmp_path / "out")]
    with pytest.warns(UserWarning):  # 16 px is far from the native 768 px
        assert main(argv) == 0
    written = sorted((tmp_path / "out").glob("*.png"))
    assert [p.name for p in written] == ["p-variation-7.png", "p-variation-8.png"]
    assert str(written[0]) in capsys.readouterr().out

    image = torch.from_numpy(np.asarray(Image.open(tmp_path / "p.png"), dtype=np.float32) / 255)[None]
    embeds = ClipVision.from_state_dict(pipe.image_encoder.state_dict()).encode(image).image_embeds  # type: ignore[attr-defined]
    augment = ImageEmbeddingAugmentor(pipe.image_normalizer.mean, pipe.image_normalizer.std)  # type: ignore[attr-defined]
    noise = torch.randn(embeds.shape, generator=torch.Generator().manual_seed(7))
    class_input = augment(embeds, noise_level_of(0.25), noise)
    want = Pipeline.from_pretrained(folder)(
        "", seed=7, batch=2, steps=2, width=16, height=16, class_input=class_input
    )
    for path, im in zip(written, want.images, strict=True):
        assert np.abs(np.asarray(Image.open(path)).astype(int) - np.asarray(im).astype(int)).max() <= 1


def test_variations_refuses_a_model_that_is_not_unclip(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    Image.new("RGB", (8, 8)).save(tmp_path / "p.png")
    assert main(["variations", str(tmp_path / "p.png"), "--model", "default", "-o", str(tmp_path)]) == 2
    assert "variations need an SD 2.1 unCLIP checkpoint" in capsys.readouterr().err
