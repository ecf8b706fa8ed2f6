"""CLIP vision: config from shapes, the layouts people have, preprocessing vs transformers' CLIPImageProcessor."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

from latentworks.models.clip_vision import ClipVision, ClipVisionKeyError, normalize_clip_vision, preprocess
from support.unclip import to_open_clip


def tiny_clip_vision(seed: int = 0, act: str = "gelu") -> CLIPVisionModelWithProjection:
    torch.manual_seed(seed)
    config = CLIPVisionConfig(
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=3,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
        projection_dim=48,
        hidden_act=act,
    )
    return CLIPVisionModelWithProjection(config).eval()


@pytest.mark.parametrize("layout", ["transformers", "comfy-no-prefix", "open_clip"])
def test_every_layout_gives_transformers_outputs(layout: str) -> None:
    ref = tiny_clip_vision()
    sd = ref.state_dict()
    if layout == "comfy-no-prefix":
        sd = {k.removeprefix("vision_model."): v for k, v in sd.items()}
    elif layout == "open_clip":
        sd = to_open_clip(sd)
    ours = ClipVision.from_state_dict(sd)
    cfg = ours.model.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads) == (128, 3, 2)
    assert (cfg.image_size, cfg.patch_size, cfg.projection_dim, cfg.intermediate_size) == (32, 8, 48, 256)
    images = torch.rand(2, 40, 50, 3, generator=torch.Generator().manual_seed(1))
    got = ours.encode(images)
    with torch.no_grad():
        want = ref(pixel_values=preprocess(images, size=32), output_hidden_states=True)
    torch.testing.assert_close(got.image_embeds, want.image_embeds, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.last_hidden_state, want.last_hidden_state, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.penultimate_hidden_states, want.hidden_states[-2], atol=1e-5, rtol=1e-5)
    assert got.image_embeds.shape == (2, 48) and got.last_hidden_state.shape == (2, 17, 128)


def test_openai_vit_l_shape_reads_quick_gelu() -> None:
    from latentworks.models.clip_vision import clip_vision_config

    with torch.device("meta"):
        m = CLIPVisionModelWithProjection(
            CLIPVisionConfig(
                hidden_size=1024,
                intermediate_size=4096,
                num_hidden_layers=24,
                num_attention_heads=16,
                image_size=224,
                patch_size=14,
                projection_dim=768,
            )
        )
    cfg = clip_vision_config(normalize_clip_vision(m.state_dict()))
    assert (cfg.hidden_act, cfg.num_attention_heads, cfg.image_size, cfg.projection_dim) == (
        "quick_gelu",
        16,
        224,
        768,
    )


@pytest.mark.parametrize("hw", [(300, 400), (512, 256), (224, 224)])
def test_preprocess_matches_clip_image_processor(hw: tuple[int, int]) -> None:
    rng = np.random.default_rng(0)
    # a smooth image (resampling filters differ most on noise)
    yy, xx = np.mgrid[0 : hw[0], 0 : hw[1]]
    img = np.stack([np.sin(xx / 17.0), np.cos(yy / 23.0), np.sin((xx + yy) / 31.0)], -1) * 0.4 + 0.5
    img = np.clip(img + rng.normal(0, 0.01, img.shape), 0, 1)
    uint8 = (img * 255).round().astype(np.uint8)
    want = CLIPImageProcessor()(images=uint8, return_tensors="pt")["pixel_values"]  # (1, 3, 224, 224)
    got = preprocess(torch.from_numpy(uint8).float()[None] / 255, size=224)
    assert got.shape == want.shape == (1, 3, 224, 224)
    diff = (got - want).abs()
    assert diff.mean() < 0.01 and diff.max() < 0.1, (diff.mean(), diff.max())


def test_not_a_clip_vision_file_says_what_it_needs() -> None:
    with pytest.raises(ClipVisionKeyError, match="patch_embedding"):
        ClipVision.from_state_dict({"foo.weight": torch.zeros(1)})
