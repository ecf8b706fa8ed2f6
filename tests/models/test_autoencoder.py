"""KL autoencoder: config validation, preset sizes, posterior maths, gradients and the diffusers key map."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from latentworks.checkpoints.keymaps.sd_diffusers import vae_from_diffusers, vae_to_diffusers
from latentworks.models.autoencoder import PRESETS, Autoencoder, AutoencoderConfig, DiagonalGaussian


def n_params(config: AutoencoderConfig) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in Autoencoder(config).parameters())


# ---------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"channels": ()}, "non-empty tuple"),
        ({"channels": [128, 256]}, "non-empty tuple"),
        ({"channels": (128, 100)}, "norm_groups=32"),
        ({"latent_channels": 0}, "latent_channels must be a positive int"),
        ({"layers_per_block": 0}, "layers_per_block"),
        ({"norm_eps": 0.0}, "norm_eps"),
    ],
)
def test_config_rejects_bad_values_with_a_message(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AutoencoderConfig(**kwargs)


def test_config_is_frozen_and_keyword_only() -> None:
    cfg = AutoencoderConfig()
    with pytest.raises(AttributeError):
        cfg.latent_channels = 8  # type: ignore[misc]
    with pytest.raises(TypeError):
        AutoencoderConfig(3)  # type: ignore[misc]


# ---------------------------------------------------------------- presets


def test_big_preset_parameter_counts() -> None:
    assert n_params(PRESETS["sd"]) == 83_653_863
    assert n_params(PRESETS["sdxl"]) == 83_653_863
    # SD3/FLUX: 16 latent channels widen conv_in/conv_out; no quant convs.
    assert n_params(PRESETS["sd3"]) == n_params(PRESETS["flux"]) == 83_819_683
    assert PRESETS["sd"].downsample_factor == PRESETS["sd3"].downsample_factor == 8
    with torch.device("meta"):
        keys = Autoencoder(PRESETS["sd3"]).state_dict().keys()
    assert not any("quant_conv" in k for k in keys)


@pytest.mark.parametrize(("name", "size"), [("tiny", 16), ("emoji-f4c4", 64)])
def test_small_presets_round_trip_shapes(name: str, size: int) -> None:
    cfg = PRESETS[name]
    model = Autoencoder(cfg).eval()
    x = torch.rand(2, 3, size, size) * 2 - 1
    with torch.no_grad():
        recon, posterior = model(x, generator=torch.Generator().manual_seed(0))
    h = size // cfg.downsample_factor
    assert posterior.mean.shape == posterior.logvar.shape == (2, cfg.latent_channels, h, h)
    assert recon.shape == x.shape
    assert torch.isfinite(recon).all()


def test_emoji_preset_is_f4_with_4_channels() -> None:
    cfg = PRESETS["emoji-f4c4"]
    assert cfg.downsample_factor == 4 and cfg.latent_channels == 4 and cfg.channels == (64, 128, 128)


def test_encode_and_decode_reject_wrong_shapes_with_a_message() -> None:
    model = Autoencoder(PRESETS["tiny"])
    with pytest.raises(ValueError, match="multiple of the downsampling factor 2"):
        model.encode(torch.zeros(1, 3, 15, 16))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model.encode(torch.zeros(1, 4, 16, 16))
    with pytest.raises(ValueError, match="latents"):
        model.decode(torch.zeros(1, 3, 8, 8))


# ---------------------------------------------------------------- posterior


def test_diagonal_gaussian_statistics_match_the_analytic_values() -> None:
    mean = torch.full((1, 2, 64, 64), 0.5)
    logvar = torch.full((1, 2, 64, 64), math.log(4.0))
    post = DiagonalGaussian(torch.cat([mean, logvar], dim=1))
    assert torch.equal(post.mode(), mean)
    assert torch.allclose(post.std, torch.full_like(mean, 2.0))
    samples = post.sample(torch.Generator().manual_seed(0))
    assert abs(samples.mean().item() - 0.5) < 0.05
    assert abs(samples.std().item() - 2.0) < 0.05
    # the same generator seed gives the same sample; another seed a different one
    assert torch.equal(samples, post.sample(torch.Generator().manual_seed(0)))
    assert not torch.equal(samples, post.sample(torch.Generator().manual_seed(1)))
    # KL(N(m, s^2) || N(0, 1)) = 0.5 * (m^2 + s^2 - 1 - log s^2) per element
    per_element = 0.5 * (0.25 + 4.0 - 1.0 - math.log(4.0))
    assert torch.allclose(post.kl(), torch.tensor([per_element * 2 * 64 * 64]))


def test_diagonal_gaussian_kl_is_zero_for_the_prior_and_logvar_is_clamped() -> None:
    assert torch.equal(DiagonalGaussian(torch.zeros(3, 8, 2, 2)).kl(), torch.zeros(3))
    moments = torch.cat([torch.zeros(1, 1, 1, 2), torch.tensor([[[[-100.0, 100.0]]]])], dim=1)
    post = DiagonalGaussian(moments)
    assert post.logvar.flatten().tolist() == [-30.0, 20.0]
    with pytest.raises(ValueError, match="2C"):
        DiagonalGaussian(torch.zeros(1, 3, 2, 2))


def test_gradients_flow_from_reconstruction_to_every_parameter() -> None:
    torch.manual_seed(0)
    model = Autoencoder(PRESETS["tiny"])
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    recon, posterior = model(x, generator=torch.Generator().manual_seed(0))
    loss = (recon - x).pow(2).mean() + 1e-6 * posterior.kl().mean()
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


# ---------------------------------------------------------------- key map


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_key_map_round_trip_is_identity(name: str) -> None:
    cfg = PRESETS[name]
    with torch.device("meta"):
        sd = Autoencoder(cfg).state_dict()
    theirs = vae_to_diffusers(sd, cfg)
    assert len(theirs) == len(sd)
    back = vae_from_diffusers(theirs, cfg)
    assert list(back) == list(sd)
    assert all(back[k] is sd[k] for k in sd)


@pytest.mark.parametrize("name", ["sd", "sd3", "tiny"])
def test_key_map_targets_exactly_diffusers_names(name: str) -> None:
    diffusers = pytest.importorskip("diffusers")
    cfg = PRESETS[name]
    n = len(cfg.channels)
    with torch.device("meta"):
        ref = diffusers.AutoencoderKL(
            down_block_types=["DownEncoderBlock2D"] * n,
            up_block_types=["UpDecoderBlock2D"] * n,
            block_out_channels=list(cfg.channels),
            layers_per_block=cfg.layers_per_block,
            latent_channels=cfg.latent_channels,
            norm_num_groups=cfg.norm_groups,
            use_quant_conv=cfg.use_quant_conv,
            use_post_quant_conv=cfg.use_post_quant_conv,
        )
        ours = Autoencoder(cfg)
    theirs = vae_to_diffusers(ours.state_dict(), cfg)
    ref_sd = ref.state_dict()
    assert set(theirs) == set(ref_sd)
    assert all(theirs[k].shape == ref_sd[k].shape for k in ref_sd)


def test_key_map_errors_name_the_key_and_the_shapes() -> None:
    cfg = PRESETS["tiny"]
    theirs = vae_to_diffusers(Autoencoder(cfg).state_dict(), cfg)
    bad = dict(theirs)
    bad["decoder.conv_out.weight"] = torch.zeros(3, 16, 5, 5)
    with pytest.raises(
        ValueError, match=r"'decoder.conv_out.weight'.*\(3, 16, 5, 5\), expected \(3, 16, 3, 3\)"
    ):
        vae_from_diffusers(bad, cfg)
    missing = {k: v for k, v in theirs.items() if k != "quant_conv.bias"}
    with pytest.raises(KeyError, match="quant_conv.bias"):
        vae_from_diffusers(missing, cfg)
    extra = {**theirs, "encoder.surprise.weight": torch.zeros(1)}
    with pytest.raises(KeyError, match="surprise"):
        vae_from_diffusers(extra, cfg)
    assert vae_from_diffusers(extra, cfg, strict=False).keys() == Autoencoder(cfg).state_dict().keys()
    # a config mismatch (16 latent channels read as 4) fails on shapes, not silently
    with pytest.raises(ValueError, match="expected"):
        vae_from_diffusers(theirs, replace(cfg, latent_channels=16))


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_survive_json_config_round_trip(name: str) -> None:
    from latentworks.models.configs import config_from_dict, config_to_dict

    assert config_from_dict(AutoencoderConfig, config_to_dict(PRESETS[name])) == PRESETS[name]


# ---------------------------------------------------------------- tiled decoding


def test_tiled_decode_equals_decode_for_a_local_decoder() -> None:
    """With a decoder that only looks at each latent pixel, any tiling must reproduce decode exactly."""
    torch.manual_seed(0)
    cfg = PRESETS["tiny"]
    model = Autoencoder(cfg)
    model.decoder = torch.nn.Sequential(  # type: ignore[assignment]
        torch.nn.Conv2d(cfg.latent_channels, 3, 1), torch.nn.Upsample(scale_factor=cfg.downsample_factor)
    )
    z = torch.randn(2, 4, 23, 17)
    with torch.no_grad():
        full = model.decode(z)
        for tile, overlap in [(8, 3), (5, 0), (16, 8)]:
            tiled = model.tiled_decode(z, tile=tile, overlap=overlap)
            assert tiled.shape == full.shape
            assert torch.allclose(tiled, full, atol=1e-6), (tile, overlap)


def test_tiled_decode_of_the_real_decoder() -> None:
    torch.manual_seed(0)
    model = Autoencoder(PRESETS["tiny"]).eval()
    z = torch.randn(1, 4, 24, 24)
    with torch.no_grad():
        full = model.decode(z)
        assert torch.equal(model.tiled_decode(z, tile=24), full)
        tiled = model.tiled_decode(z, tile=12, overlap=4)
    assert tiled.shape == full.shape
    # tiles see only their own GroupNorm statistics: close to, not equal to, the full decode
    assert ((tiled - full).norm() / full.norm()).item() < 0.5
    with pytest.raises(ValueError, match="overlap < tile"):
        model.tiled_decode(z, tile=8, overlap=8)
