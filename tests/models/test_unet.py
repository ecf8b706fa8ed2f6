"""SD U-Net: config validation, preset sizes, forward behaviour and the diffusers key map."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from latentworks.checkpoints.keymaps.sd_diffusers import unet_from_diffusers, unet_to_diffusers
from latentworks.diffusion.conditioning import Conditioning
from latentworks.models.unet import PRESETS, UNet, UNetConfig


def n_params(config: UNetConfig) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in UNet(config).parameters())


def tiny_xl() -> UNetConfig:
    return replace(PRESETS["tiny"], pooled_dim=12, time_id_dim=8, use_linear_projection=True)


# ---------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"channels": ()}, "non-empty tuple"),
        ({"channels": (320, 100, 1280, 1280)}, "norm_groups=32"),
        ({"transformer_depth": (1, 1, 1)}, "one depth per level"),
        ({"transformer_depth": (1, -1, 1, 0)}, ">= 0"),
        ({"num_heads": 8, "head_dim": 64}, "exactly one of num_heads"),
        ({"num_heads": None}, "exactly one of num_heads"),
        ({"num_heads": 7}, "num_heads=7 at level 0 must be a positive divisor of its width 320"),
        ({"num_heads": (8, 8)}, "needs 4 entries"),
        ({"num_heads": None, "head_dim": 48}, "head_dim=48"),
        ({"time_id_dim": 7}, "even"),
        ({"context_dim": 0}, "context_dim"),
        ({"dropout": 1.0}, "dropout"),
    ],
)
def test_config_rejects_bad_values_with_a_message(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        UNetConfig(**kwargs)


def test_heads_per_level() -> None:
    assert PRESETS["sd15"].heads_at(0) == (8, 40) and PRESETS["sd15"].heads_at(-1) == (8, 160)
    assert [PRESETS["sd2"].heads_at(i) for i in range(4)] == [(5, 64), (10, 64), (20, 64), (20, 64)]
    assert UNetConfig(num_heads=(2, 4, 8, 8)).heads_at(1) == (4, 160)


# ---------------------------------------------------------------- presets


def test_big_preset_parameter_counts() -> None:
    assert n_params(PRESETS["sd15"]) == 859_520_964
    assert n_params(replace(PRESETS["sd15"], in_channels=9)) == 859_520_964 + 5 * 320 * 9
    assert n_params(PRESETS["sd2"]) == 865_910_724
    assert n_params(PRESETS["sdxl"]) == 2_567_463_684
    assert n_params(PRESETS["sdxl-refiner"]) == 2_259_526_660


def test_emoji_preset_size() -> None:
    assert 20e6 <= n_params(PRESETS["emoji-s"]) <= 40e6
    assert PRESETS["emoji-s"].context_dim == 384


@pytest.mark.parametrize(("name", "size"), [("tiny", 8), ("emoji-s", 16)])
def test_small_presets_forward_shapes(name: str, size: int) -> None:
    torch.manual_seed(0)
    cfg = PRESETS[name]
    model = UNet(cfg).eval()
    x = torch.randn(2, cfg.in_channels, size, size)
    cond = Conditioning(tokens=torch.randn(2, 7, cfg.context_dim))
    with torch.no_grad():
        out = model(x, torch.tensor([10.0, 900.0]), cond)
    assert out.shape == (2, cfg.out_channels, size, size)
    assert torch.isfinite(out).all()


def test_inpainting_input_and_odd_latent_sizes() -> None:
    """9 input channels (latent, mask, masked-image latent) on an odd 9x7 latent: the output equals
    diffusers' UNet2DConditionModel on the same weights (which upsamples to each skip's size), and the
    mask and masked-image channels change it."""
    diffusers = pytest.importorskip("diffusers")
    cfg = replace(PRESETS["tiny"], in_channels=9)
    torch.manual_seed(0)
    ref = diffusers.UNet2DConditionModel(
        sample_size=8,
        in_channels=9,
        block_out_channels=[32, 64],
        down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"],
        up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"],
        layers_per_block=1,
        attention_head_dim=[2, 4],
        cross_attention_dim=24,
        norm_num_groups=8,
    ).eval()
    with torch.no_grad():  # diffusers zero-initialises the output conv; make every path visible
        for p in ref.parameters():
            p.add_(0.02 * torch.randn_like(p))
    model = UNet(cfg).eval()
    model.load_state_dict(unet_from_diffusers(ref.state_dict(), cfg), strict=True)
    g = torch.Generator().manual_seed(1)
    x, ctx = torch.randn(1, 9, 9, 7, generator=g), torch.randn(1, 3, 24, generator=g)
    with torch.no_grad():
        out = model(x, torch.tensor([5.0]), Conditioning(tokens=ctx))
        want = ref(x, torch.tensor([5.0]), encoder_hidden_states=ctx).sample
        other_mask = x.clone()
        other_mask[:, 4:] = torch.randn(1, 5, 9, 7, generator=g)
        out_other = model(other_mask, torch.tensor([5.0]), Conditioning(tokens=ctx))
    assert out.shape == (1, 4, 9, 7)
    assert ((out - want).norm() / want.norm()).item() < 1e-5
    assert (out - out_other).abs().max() > 1e-3


# ---------------------------------------------------------------- behaviour


def test_timestep_changes_the_output_and_batch_items_are_independent() -> None:
    torch.manual_seed(0)
    cfg = PRESETS["tiny"]
    model = UNet(cfg).eval()
    x = torch.randn(2, 4, 8, 8)
    cond = Conditioning(tokens=torch.randn(2, 5, cfg.context_dim))
    with torch.no_grad():
        a = model(x, torch.tensor([10.0, 500.0]), cond)
        b = model(x, torch.tensor([10.0, 20.0]), cond)
        single = model(x[:1], torch.tensor([10.0]), Conditioning(tokens=cond.tokens[:1]))
    assert torch.allclose(a[0], b[0], atol=1e-6) and torch.allclose(a[0], single[0], atol=1e-5)
    assert not torch.allclose(a[1], b[1], atol=1e-4)


def test_masked_tokens_do_not_affect_the_output() -> None:
    torch.manual_seed(0)
    cfg = PRESETS["tiny"]
    model = UNet(cfg).eval()
    x, t = torch.randn(1, 4, 8, 8), torch.tensor([300.0])
    tokens = torch.randn(1, 6, cfg.context_dim)
    mask = torch.tensor([[True, True, True, False, False, False]])
    changed_padding = tokens.clone()
    changed_padding[:, 3:] = torch.randn(1, 3, cfg.context_dim)
    changed_real = tokens.clone()
    changed_real[:, 0] = torch.randn(cfg.context_dim)
    with torch.no_grad():
        ref = model(x, t, Conditioning(tokens=tokens, mask=mask))
        padding = model(x, t, Conditioning(tokens=changed_padding, mask=mask))
        real = model(x, t, Conditioning(tokens=changed_real, mask=mask))
        truncated = model(x, t, Conditioning(tokens=tokens[:, :3]))
    assert torch.allclose(ref, padding, atol=1e-6)
    assert torch.allclose(ref, truncated, atol=1e-5)
    assert not torch.allclose(ref, real, atol=1e-4)


def test_added_conditioning_is_read_and_required() -> None:
    torch.manual_seed(0)
    cfg = tiny_xl()
    model = UNet(cfg).eval()
    x, t = torch.randn(1, 4, 8, 8), torch.tensor([300.0])
    tokens, pooled = torch.randn(1, 5, cfg.context_dim), torch.randn(1, 12)
    ids = torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]])
    with torch.no_grad():
        a = model(x, t, Conditioning(tokens=tokens, pooled=pooled, extra={"time_ids": ids}))
        b = model(x, t, Conditioning(tokens=tokens, pooled=pooled, extra={"time_ids": ids * 2}))
    assert not torch.allclose(a, b, atol=1e-4)
    with pytest.raises(ValueError, match="cond.pooled"):
        model(x, t, Conditioning(tokens=tokens))
    with pytest.raises(ValueError, match=r"time_ids \(1, 6\)"):
        model(x, t, Conditioning(tokens=tokens, pooled=pooled, extra={"time_ids": ids[:, :5]}))


def test_wrong_inputs_raise_with_a_message() -> None:
    model = UNet(PRESETS["tiny"])
    cond = Conditioning(tokens=torch.randn(1, 5, 24))
    with pytest.raises(ValueError, match=r"\(B, 4, H, W\)"):
        model(torch.randn(1, 3, 8, 8), torch.tensor([1.0]), cond)
    with pytest.raises(ValueError, match="cond.tokens"):
        model(torch.randn(1, 4, 8, 8), torch.tensor([1.0]), Conditioning(tokens=torch.randn(1, 5, 32)))
    with pytest.raises(ValueError, match="t must be"):
        model(torch.randn(1, 4, 8, 8), torch.tensor([1.0, 2.0]), cond)


def test_gradients_reach_every_parameter() -> None:
    torch.manual_seed(0)
    cfg = tiny_xl()
    model = UNet(cfg)
    cond = Conditioning(
        tokens=torch.randn(2, 5, cfg.context_dim),
        pooled=torch.randn(2, 12),
        extra={"time_ids": torch.rand(2, 6)},
    )
    model(torch.randn(2, 4, 8, 8), torch.tensor([3.0, 700.0]), cond).pow(2).mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


# ---------------------------------------------------------------- key map


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_key_map_round_trip_is_identity(name: str) -> None:
    cfg = PRESETS[name]
    with torch.device("meta"):
        sd = UNet(cfg).state_dict()
    theirs = unet_to_diffusers(sd, cfg)
    assert len(theirs) == len(sd)
    back = unet_from_diffusers(theirs, cfg)
    assert list(back) == list(sd)
    assert all(back[k] is sd[k] for k in sd)


DIFFUSERS_CONFIGS = {
    "sd15": dict(
        down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
        up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
        attention_head_dim=8,
        cross_attention_dim=768,
    ),
    "sdxl": dict(
        block_out_channels=[320, 640, 1280],
        down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
        transformer_layers_per_block=[1, 2, 10],
        attention_head_dim=[5, 10, 20],
        cross_attention_dim=2048,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
    ),
}


@pytest.mark.parametrize("name", sorted(DIFFUSERS_CONFIGS))
def test_key_map_targets_exactly_diffusers_names_and_shapes(name: str) -> None:
    diffusers = pytest.importorskip("diffusers")
    cfg = PRESETS[name]
    with torch.device("meta"):
        ref_sd = diffusers.UNet2DConditionModel(**DIFFUSERS_CONFIGS[name]).state_dict()
        theirs = unet_to_diffusers(UNet(cfg).state_dict(), cfg)
    assert set(theirs) == set(ref_sd)
    assert all(theirs[k].shape == ref_sd[k].shape for k in ref_sd)


def test_key_map_errors_name_the_key_and_the_shapes() -> None:
    cfg = PRESETS["tiny"]
    with torch.device("meta"):
        theirs = unet_to_diffusers(UNet(cfg).state_dict(), cfg)
    key = "up_blocks.0.attentions.1.transformer_blocks.0.attn2.to_k.weight"
    bad = {**theirs, key: torch.zeros(64, 32, device="meta")}
    with pytest.raises(ValueError, match=rf"'{key}'.*\(64, 32\), expected \(64, 24\)"):
        unet_from_diffusers(bad, cfg)
    # an SDXL-style checkpoint read with a config without added conditioning: unexpected keys
    with torch.device("meta"):
        xl = unet_to_diffusers(UNet(tiny_xl()).state_dict(), tiny_xl())
    with pytest.raises(KeyError, match="add_embedding"):
        unet_from_diffusers(xl, replace(tiny_xl(), pooled_dim=0))
    with pytest.raises(KeyError, match="add_embedding"):
        unet_from_diffusers(theirs, tiny_xl())


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_survive_json_config_round_trip(name: str) -> None:
    from latentworks.models.configs import config_from_dict, config_to_dict

    assert config_from_dict(UNetConfig, config_to_dict(PRESETS[name])) == PRESETS[name]
