"""MM-DiT: config validation, shapes, parameter counts of the real presets, and the diffusers key map."""

from __future__ import annotations

import pytest
import torch

from latentworks.checkpoints.keymaps.sd3_diffusers import (
    sd3_diffusers_rules,
    sd3_from_diffusers,
    sd3_to_diffusers,
)
from latentworks.diffusion.conditioning import Conditioning
from latentworks.models.mmdit import PRESETS, MMDiT, MMDiTConfig

TINY_QK_DUAL = MMDiTConfig(
    in_channels=4, sample_size=8, patch_size=2, width=32, depth=3, num_heads=2, context_dim=24,
    pooled_dim=16, pos_embed_max_size=8, qk_norm="rms_norm", dual_attention_layers=(0, 1),
)  # fmt: skip


def _cond(config: MMDiTConfig, b: int = 2, length: int = 5) -> Conditioning:
    return Conditioning(
        tokens=torch.randn(b, length, config.context_dim), pooled=torch.randn(b, config.pooled_dim)
    )


def _randomise(model: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"width": 100, "num_heads": 3}, "divisible by num_heads"),
        ({"qk_norm": "layer_norm"}, "qk_norm"),
        ({"dual_attention_layers": (0, 30)}, "outside"),
        ({"dual_attention_layers": [0]}, "tuple"),
        ({"sample_size": 512, "pos_embed_max_size": 192}, "pos_embed_max_size"),
        ({"pooled_dim": 0}, "pooled_dim"),
    ],
)
def test_config_validation(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MMDiTConfig(**kwargs)


@pytest.mark.parametrize("config", [PRESETS["tiny"], TINY_QK_DUAL], ids=["tiny", "qk-dual"])
def test_forward_shape_non_square(config: MMDiTConfig) -> None:
    model = MMDiT(config)
    _randomise(model)
    x = torch.randn(2, 4, 8, 12)
    out = model(x, torch.tensor([3.0, 900.0]), _cond(config))
    assert out.shape == x.shape and torch.isfinite(out).all() and out.std() > 0


def test_emoji_preset_runs_on_emoji_latents() -> None:
    config = PRESETS["emoji-mmdit-s"]
    model = MMDiT(config)
    x = torch.randn(1, 4, 16, 16)
    assert model(x, torch.tensor([500.0]), _cond(config, b=1)).shape == x.shape


def test_last_block_is_context_pre_only() -> None:
    model = MMDiT(PRESETS["tiny"])
    last, first = model.blocks[-1], model.blocks[0]
    assert last.context_mlp is None and last.context_attn.proj is None
    assert first.context_mlp is not None and first.context_attn.proj is not None


def test_position_grid_limits_are_reported() -> None:
    config = PRESETS["tiny"]
    model = MMDiT(config)
    with pytest.raises(ValueError, match="pos_embed_max_size"):
        model(torch.randn(1, 4, 18, 8), torch.tensor([1.0]), _cond(config, b=1))
    with pytest.raises(ValueError, match="cond.pooled"):
        model(torch.randn(1, 4, 8, 8), torch.tensor([1.0]), Conditioning(tokens=torch.randn(1, 2, 24)))


def test_sincos_table_matches_diffusers() -> None:
    from diffusers.models.embeddings import get_2d_sincos_pos_embed

    model = MMDiT(PRESETS["tiny"])
    m, base = PRESETS["tiny"].pos_embed_max_size, PRESETS["tiny"].sample_size // 2
    expected = get_2d_sincos_pos_embed(32, m, base_size=base, output_type="pt").float()
    torch.testing.assert_close(model.pos_embed[0], expected)


def _meta_params(model_factory) -> int:  # noqa: ANN001
    with torch.device("meta"):
        model = model_factory()
    return sum(p.numel() for p in model.parameters())


def test_sd3_medium_parameter_count() -> None:
    # The published SD3-Medium transformer size; also checked against diffusers below.
    assert _meta_params(lambda: MMDiT(PRESETS["sd3-medium"])) == 2_028_328_000


@pytest.mark.parametrize("name", ["sd3-medium", "sd3.5-large", "sd3.5-medium"])
def test_parameter_counts_match_diffusers(name: str) -> None:
    from diffusers import SD3Transformer2DModel

    c = PRESETS[name]
    ref_config = dict(
        sample_size=c.sample_size, patch_size=c.patch_size, in_channels=c.in_channels, num_layers=c.depth,
        attention_head_dim=c.head_dim, num_attention_heads=c.num_heads, joint_attention_dim=c.context_dim,
        caption_projection_dim=c.width, pooled_projection_dim=c.pooled_dim, out_channels=c.output_channels,
        pos_embed_max_size=c.pos_embed_max_size, qk_norm=c.qk_norm, dual_attention_layers=c.dual_attention_layers,
    )  # fmt: skip
    assert _meta_params(lambda: MMDiT(c)) == _meta_params(lambda: SD3Transformer2DModel(**ref_config))


@pytest.mark.parametrize("config", [PRESETS["tiny"], TINY_QK_DUAL], ids=["tiny", "qk-dual"])
def test_key_map_round_trip(config: MMDiTConfig) -> None:
    model = MMDiT(config)
    _randomise(model)
    ours = model.state_dict()
    theirs = sd3_to_diffusers(ours, config)
    assert any(k.endswith("attn.to_q.weight") for k in theirs)
    back = sd3_from_diffusers(theirs, config)
    assert set(back) == set(ours)
    for k, v in ours.items():
        assert torch.equal(back[k], v), k
    # the swap rules really swap: diffusers' norm_out stores (scale, shift)
    d = config.width
    assert torch.equal(theirs["norm_out.linear.bias"][:d], ours["final_layer.modulation.linear.bias"][d:])


def test_key_map_covers_the_diffusers_model_exactly() -> None:
    from diffusers import SD3Transformer2DModel

    c = TINY_QK_DUAL
    with torch.device("meta"):
        ref = SD3Transformer2DModel(
            sample_size=8, patch_size=2, in_channels=4, num_layers=3, attention_head_dim=16, num_attention_heads=2,
            joint_attention_dim=24, caption_projection_dim=32, pooled_projection_dim=16, out_channels=4,
            pos_embed_max_size=8, qk_norm="rms_norm", dual_attention_layers=(0, 1),
        )  # fmt: skip
    theirs_keys = {k for r in sd3_diffusers_rules(c) for k in r.theirs}
    assert theirs_keys == set(ref.state_dict())


def test_key_map_errors_name_the_key() -> None:
    config = PRESETS["tiny"]
    theirs = sd3_to_diffusers(MMDiT(config).state_dict(), config)
    bad = dict(theirs)
    bad["context_embedder.weight"] = torch.zeros(32, 25)
    with pytest.raises(ValueError, match="context_embedder.weight"):
        sd3_from_diffusers(bad, config)
    missing = {k: v for k, v in theirs.items() if k != "proj_out.bias"}
    with pytest.raises(KeyError, match="proj_out.bias"):
        sd3_from_diffusers(missing, config)
    with pytest.raises(KeyError, match="unexpected"):
        sd3_from_diffusers({**theirs, "extra.weight": torch.zeros(1)}, config)
    with pytest.raises(ValueError, match="shape"):
        sd3_from_diffusers(theirs, PRESETS["emoji-mmdit-s"])
