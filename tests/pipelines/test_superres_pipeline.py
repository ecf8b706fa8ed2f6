"""The cascade: a base pipeline's images, then a super-resolution stage at twice the size."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from latentworks.diffusion.denoisers import FlowSamplingSpec
from latentworks.models.superres import PRESETS
from latentworks.models.unet import UNet
from latentworks.pipelines import Pipeline
from latentworks.pipelines.sampling import NetworkModel
from latentworks.pipelines.superres import BicubicStage, CascadePipeline, SuperResStage


def _stage(low_size: int = 16, context_dim: int = 384) -> SuperResStage:
    torch.manual_seed(0)
    net = UNet(dataclasses.replace(PRESETS["tiny-sr"], context_dim=context_dim)).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    model = NetworkModel(net, "flow", FlowSamplingSpec(shift=1.0).model_sampling())
    return SuperResStage(
        path=Path("tiny-sr"),
        model=model,
        low_size=low_size,
        size=2 * low_size,
        text_encoder={"name": "minilm", "max_length": 16},
    )


def test_the_cascade_doubles_the_size_and_is_seeded(tiny_pipe: Pipeline) -> None:
    pipe = CascadePipeline(tiny_pipe, _stage())
    first = tiny_pipe("red apple", seed=3, steps=2)
    r = pipe(["red apple", "blue car"], seed=3, steps=2, upscale_steps=2)
    assert [im.size for im in r.images] == [(32, 32), (32, 32)]
    assert r.parameters["width"] == 32 and r.parameters["upscale"]["steps"] == 2
    assert r.seeds == [3, 4]
    again = pipe(["red apple", "blue car"], seed=3, steps=2, upscale_steps=2)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(r.images, again.images))
    other = pipe("red apple", seed=4, steps=2, upscale_steps=2)
    assert not np.array_equal(np.asarray(r.images[0]), np.asarray(other.images[0]))
    assert first.images[0].size == (16, 16)


def test_bicubic_stage_upscales_the_base_images(tiny_pipe: Pipeline) -> None:
    first = tiny_pipe("red apple", seed=1, steps=2)
    r = CascadePipeline(tiny_pipe, BicubicStage(low_size=16, size=32))("red apple", seed=1, steps=2)
    low = torch.from_numpy(np.asarray(first.images[0], dtype=np.float32)).permute(2, 0, 1)[None] / 127.5 - 1
    want = F.interpolate(low, size=(32, 32), mode="bicubic", align_corners=False).clamp(-1, 1)
    want_u8 = ((want[0] + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    assert np.array_equal(np.asarray(r.images[0]), want_u8)


def test_stages_that_do_not_belong_together_are_refused(tiny_pipe: Pipeline) -> None:
    with pytest.raises(ValueError, match="do not belong together"):
        CascadePipeline(tiny_pipe, _stage(low_size=32))
    with pytest.raises(ValueError, match="different model families"):
        CascadePipeline(tiny_pipe, _stage(context_dim=16))
    with pytest.raises(ValueError, match="native size"):
        CascadePipeline(tiny_pipe, _stage())("red apple", width=32, height=32)
