"""The IF U-Net against diffusers' UNet2DConditionModel (IF variant) on identical random weights, and its key map."""

from __future__ import annotations

import pytest
import torch

from latentworks.checkpoints.keymaps.if_diffusers import (
    if_config_from_diffusers,
    if_config_to_diffusers,
    if_unet_from_diffusers,
    if_unet_to_diffusers,
)
from latentworks.diffusion.conditioning import CONCAT_KEY, Conditioning
from latentworks.models.deepfloyd_if import NOISE_LEVEL_KEY, PRESETS, IFUNet
from support.if_fixtures import T5_DIM, tiny_if_unet

pytest.importorskip("diffusers")


@pytest.mark.parametrize("stage", [1, 2])
def test_if_unet_matches_diffusers(stage: int) -> None:
    theirs = tiny_if_unet(stage=stage)
    config = if_config_from_diffusers(dict(theirs.config))
    assert config == PRESETS["tiny" if stage == 1 else "tiny-sr"]  # every diffusers field read into ours
    ours = IFUNet(config)
    state = if_unet_from_diffusers(theirs.state_dict(), config)
    ours.load_state_dict(state)
    back = if_unet_to_diffusers(state, config)
    assert back.keys() == theirs.state_dict().keys()
    assert all(torch.equal(back[k], v) for k, v in theirs.state_dict().items())
    g = torch.Generator().manual_seed(stage)
    x, tokens = torch.randn(2, 3, 16, 16, generator=g), torch.randn(2, 7, T5_DIM, generator=g)
    t = torch.tensor([500.0, 20.0])
    extra, kwargs, x_in = {}, {}, x
    if stage == 2:
        low, level = torch.randn(2, 3, 16, 16, generator=g), torch.tensor([250, 100])
        extra, kwargs, x_in = (
            {CONCAT_KEY: low, NOISE_LEVEL_KEY: level},
            {"class_labels": level},
            torch.cat([x, low], 1),
        )
    with torch.no_grad():
        got = ours(x, t, Conditioning(tokens=tokens, extra=extra))
        want = theirs(x_in, t, encoder_hidden_states=tokens, **kwargs).sample
    assert got.shape == (2, 6, 16, 16)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_config_round_trips_and_presets_load_in_diffusers() -> None:
    from diffusers import UNet2DConditionModel

    for name, config in PRESETS.items():
        cfg = if_config_to_diffusers(config, sample_size=16)
        assert if_config_from_diffusers(cfg) == config, name
        theirs = UNet2DConditionModel(**{k: v for k, v in cfg.items() if not k.startswith("_")})
        assert sum(p.numel() for p in theirs.parameters()) == sum(
            p.numel() for p in IFUNet(config).parameters()
        )


def test_sd_unet_configs_and_missing_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="are not IF's"):
        if_config_from_diffusers(
            {"down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"], "block_out_channels": [32, 64]}
        )
    with pytest.raises(ValueError, match="class_embed_type='projection' is not supported"):
        cfg = if_config_to_diffusers(PRESETS["tiny"])
        if_config_from_diffusers({**cfg, "class_embed_type": "projection"})
    sr = IFUNet(PRESETS["tiny-sr"])
    cond = Conditioning(tokens=torch.zeros(1, 3, T5_DIM))
    with pytest.raises(ValueError, match="upsampled low-resolution image"):
        sr(torch.zeros(1, 3, 16, 16), torch.tensor([1.0]), cond)
    with pytest.raises(ValueError, match="noise_level"):
        sr(
            torch.zeros(1, 3, 16, 16),
            torch.tensor([1.0]),
            cond.with_extra(**{CONCAT_KEY: torch.zeros(1, 3, 16, 16)}),
        )
