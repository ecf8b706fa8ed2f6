"""ControlNet files written by save_controlnet (train-controlnet's output): diffusers layout plus the config as
metadata, read back by the ordinary loader (layout detected from the keys)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from latentworks.diffusion.conditioning import Conditioning
from latentworks.families.controlnet import CONFIG_METADATA, load_controlnet, save_controlnet
from latentworks.models.unet import UNetConfig
from support.controlnet import tiny_controlnet

# Attention heads 8 wide and 4 GroupNorm groups: what SD's shape rules would not guess (64-wide heads, 32 groups).
UNET = UNetConfig(
    in_channels=8, out_channels=8, channels=(16, 32), layers_per_block=1, transformer_depth=(0, 1),
    mid_transformer_depth=1, num_heads=None, head_dim=8, context_dim=24, norm_groups=4,
)  # fmt: skip


def test_save_then_load_gives_the_same_network(tmp_path) -> None:
    net = tiny_controlnet(UNET, hint_channels=(16, 32, 96), seed=4)  # a 4x hint, as for the default model
    path = tmp_path / "cn.safetensors"
    save_controlnet(net, path, {"base": "default"})
    keys = load_file(str(path)).keys()
    assert "controlnet_cond_embedding.conv_in.weight" in keys and "controlnet_mid_block.weight" in keys
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert meta["base"] == "default" and json.loads(meta[CONFIG_METADATA])["unet"]["head_dim"] == 8

    loaded = load_controlnet(path)
    assert loaded.config == net.config
    theirs = loaded.state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in net.state_dict().items())
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(2, 8, 4, 4, generator=g), torch.tensor([10.0, 500.0])
    cond = Conditioning(tokens=torch.randn(2, 3, 24, generator=g))
    hint = torch.rand(2, 3, 16, 16, generator=g)
    with torch.no_grad():
        a, b = net(x, t, cond, hint), loaded(x, t, cond, hint)
    assert all(torch.equal(p, q) for p, q in zip(a.down, b.down, strict=True))
    assert a.mid is not None and b.mid is not None and torch.equal(a.mid, b.mid)


def test_damaged_config_metadata_is_refused_with_the_file_name(tmp_path) -> None:
    path = tmp_path / "cn.safetensors"
    save_controlnet(tiny_controlnet(UNET, seed=1), path)
    save_file(load_file(str(path)), str(path), {CONFIG_METADATA: "{not json"})
    with pytest.raises(ValueError, match=r"cn\.safetensors: its 'latentworks.controlnet' metadata"):
        load_controlnet(path)
