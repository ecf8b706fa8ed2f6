"""The Qwen-Image VAE against diffusers' ``AutoencoderKLQwenImage`` on identical random weights: the release's
widths (base 96, x(1, 2, 4, 4), 16 latent channels, temporal down/upsamplers present) with one residual block per
stage instead of two, on single frames. Weights go through ComfyUI's Wan-layout names and back, so the key map is
exercised as well."""

from __future__ import annotations

import pytest
import torch

from latentworks.checkpoints.keymaps.qwenimage_vae import (
    qwenimage_vae_to_wan,
    read_qwenimage_vae,
)
from latentworks.models.qwenimage_vae import QwenImageVAE

diffusers = pytest.importorskip("diffusers")


def _perturbed_vae(num_res_blocks: int, base_dim: int = 96) -> torch.nn.Module:
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKLQwenImage(base_dim=base_dim, z_dim=16, num_res_blocks=num_res_blocks).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # gammas start at 1: perturb every tensor so each one matters
        for p in vae.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
    return vae


def test_encode_decode_match_diffusers_at_real_widths() -> None:
    theirs = _perturbed_vae(num_res_blocks=1)
    sd = theirs.state_dict()
    config, ours_sd = read_qwenimage_vae(sd, {k: tuple(v.shape) for k, v in sd.items()}, source="diffusers")
    assert config.base_dim == 96 and config.dim_mult == (1, 2, 4, 4) and config.num_res_blocks == 1
    assert config.temporal_downsample == (False, True, True)
    # through ComfyUI's Wan names and back
    wan = qwenimage_vae_to_wan(ours_sd, config)
    assert "decoder.middle.0.residual.0.gamma" in wan and "encoder.downsamples.1.resample.1.weight" in wan
    config2, ours_sd2 = read_qwenimage_vae(wan, {k: tuple(v.shape) for k, v in wan.items()}, source="wan")
    assert config2 == config
    ours = QwenImageVAE(config).eval()
    ours.load_state_dict(ours_sd2, strict=True)

    x = torch.rand(1, 3, 32, 48, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        ref = theirs.encode(x[:, :, None]).latent_dist
        got = ours.encode(x)
        torch.testing.assert_close(got.mean, ref.mean[:, :, 0], rtol=0, atol=2e-5)
        torch.testing.assert_close(got.logvar, ref.logvar[:, :, 0], rtol=0, atol=2e-5)
        z = torch.randn(1, 16, 4, 6, generator=torch.Generator().manual_seed(3))
        ref_img = theirs.decode(z[:, :, None]).sample[:, :, 0]
        img = ours.decode(z)
    assert img.shape == (1, 3, 32, 48)
    err = (img - ref_img).abs().max().item()
    print(f"decode max abs diff {err:.3g}")
    assert err < 2e-5


def test_wan_layout_round_trip_is_exact_with_two_res_blocks() -> None:
    sd = _perturbed_vae(num_res_blocks=2, base_dim=8).state_dict()
    config, ours = read_qwenimage_vae(sd, {k: tuple(v.shape) for k, v in sd.items()}, source="t")
    assert config.num_res_blocks == 2
    wan = qwenimage_vae_to_wan(ours, config)
    # the release's decoder: 4 stages of 3 residual blocks, upsamplers at 3, 7, 11 (15 entries in all)
    assert "decoder.upsamples.11.resample.1.weight" in wan and "decoder.upsamples.14.residual.6.weight" in wan
    assert (
        "decoder.upsamples.3.time_conv.weight" in wan and "decoder.upsamples.11.time_conv.weight" not in wan
    )
    _, back = read_qwenimage_vae(wan, {k: tuple(v.shape) for k, v in wan.items()}, source="t")
    assert set(back) == set(sd) and all(torch.equal(back[k], sd[k]) for k in sd)
