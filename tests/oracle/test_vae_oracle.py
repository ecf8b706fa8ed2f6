"""Our autoencoder against diffusers' AutoencoderKL on identical random weights (float32, CPU)."""

from __future__ import annotations

import gc

import pytest
import torch

from latentworks.checkpoints.keymaps.sd_diffusers import vae_from_diffusers, vae_to_diffusers
from latentworks.models.autoencoder import PRESETS, Autoencoder, AutoencoderConfig

diffusers = pytest.importorskip("diffusers")

TOL = 1e-5  # stricter than the 1e-4 target: the same op order gives ~0

SD = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
    block_out_channels=[128, 256, 512, 512],
    layers_per_block=2,
    latent_channels=4,
    norm_num_groups=32,
    sample_size=512,
)
SD3 = {**SD, "latent_channels": 16, "use_quant_conv": False, "use_post_quant_conv": False}
TINY = dict(
    down_block_types=["DownEncoderBlock2D"] * 2,
    up_block_types=["UpDecoderBlock2D"] * 2,
    block_out_channels=[16, 32],
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=8,
)


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return ((ours - ref).norm() / ref.norm()).item()


def compare(diffusers_kwargs: dict, config: AutoencoderConfig, size: int) -> dict[str, float]:
    torch.manual_seed(0)
    ref = diffusers.AutoencoderKL(**diffusers_kwargs).eval()
    with torch.device("meta"):
        ours = Autoencoder(config)
    ours.load_state_dict(vae_from_diffusers(ref.state_dict(), config), strict=True, assign=True)
    ours.eval()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(1, 3, size, size, generator=g) * 2 - 1
    with torch.no_grad():
        ref_post = ref.encode(x).latent_dist
        post = ours.encode(x)
        z = torch.randn(post.mean.shape, generator=g)
        errors = {
            "mean": rel_err(post.mean, ref_post.mean),
            "logvar": rel_err(post.logvar, ref_post.logvar),
            "decode": rel_err(ours.decode(z), ref.decode(z).sample),
        }
    # the converted weights also go back to exactly diffusers' state dict
    back = vae_to_diffusers(ours.state_dict(), config)
    ref_sd = ref.state_dict()
    assert back.keys() == ref_sd.keys()
    assert all(torch.equal(back[k], ref_sd[k]) for k in ref_sd)
    print(f"relative errors vs diffusers: {errors}")
    del ref, ours
    gc.collect()
    return errors


def test_tiny_matches_diffusers() -> None:
    errors = compare(TINY, PRESETS["tiny"], size=16)
    assert max(errors.values()) < TOL, errors


@pytest.mark.slow
def test_sd_full_size_matches_diffusers() -> None:
    errors = compare(SD, PRESETS["sd"], size=64)
    assert max(errors.values()) < TOL, errors


@pytest.mark.slow
def test_sd3_full_size_matches_diffusers() -> None:
    errors = compare(SD3, PRESETS["sd3"], size=64)
    assert max(errors.values()) < TOL, errors
