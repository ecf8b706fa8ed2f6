"""DiT: config validation, shapes, adaLN-Zero identity at init, text conditioning, and that it can learn."""

from __future__ import annotations

import copy

import pytest
import torch

from latentworks.diffusion.conditioning import Conditioning
from latentworks.models.dit import PRESETS, DiT, DiTConfig
from latentworks.nn.embeddings import sincos_2d_embedding


def _cond(config: DiTConfig, b: int = 2, length: int = 5, seed: int = 0) -> Conditioning:
    g = torch.Generator().manual_seed(seed)
    return Conditioning(
        tokens=torch.randn(b, length, config.context_dim or 1, generator=g),
        pooled=torch.randn(b, config.pooled_dim, generator=g) if config.pooled_dim else None,
    )


def _randomise(model: torch.nn.Module, seed: int = 0) -> None:
    """Replace every zero init with random values so the conditioning paths are live."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"width": 30, "num_heads": 4}, "divisible by num_heads"),
        ({"width": 6, "num_heads": 1}, "divisible by 4"),
        ({"sample_size": 15}, "not divisible by patch_size"),
        ({"depth": 0}, "depth must be >= 1"),
        ({"mlp_ratio": 0.0}, "mlp_ratio"),
        ({"context_dim": 0}, "context_dim"),
        ({"pos_embed": "rope"}, "pos_embed"),
    ],
)
def test_config_validation(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DiTConfig(**kwargs)


def test_config_is_frozen_and_keyword_only() -> None:
    config = DiTConfig()
    with pytest.raises(AttributeError):
        config.width = 8  # type: ignore[misc]
    with pytest.raises(TypeError):
        DiTConfig(4)  # type: ignore[misc]


@pytest.mark.parametrize("name", ["tiny", "emoji-dit-s", "emoji-dit-s-f8"])
def test_forward_shape_for_presets(name: str) -> None:
    config = PRESETS[name]
    model = DiT(config)
    _randomise(model)
    x = torch.randn(2, config.in_channels, config.sample_size, config.sample_size)
    out = model(x, torch.tensor([10.0, 900.0]), _cond(config))
    assert out.shape == x.shape
    assert torch.isfinite(out).all() and out.std() > 0


def test_each_block_is_identity_at_init_and_output_is_zero() -> None:
    config = PRESETS["tiny"]
    model = DiT(config)
    g = torch.Generator().manual_seed(1)
    tokens = torch.randn(2, 16, config.width, generator=g)
    c = torch.randn(2, config.width, generator=g)
    context = torch.randn(2, 5, config.context_dim, generator=g)
    for block in model.blocks:
        assert torch.equal(block(tokens, c, context, None), tokens)
    x = torch.randn(2, 4, 8, 8, generator=g)
    assert torch.equal(model(x, torch.tensor([1.0, 2.0]), _cond(config)), torch.zeros_like(x))
    # and the property is not vacuous: a non-zero modulation breaks it
    with torch.no_grad():
        model.blocks[0].modulation.linear.bias.fill_(0.5)
    assert not torch.allclose(model.blocks[0](tokens, c, context, None), tokens)


def test_masked_text_tokens_do_not_change_the_output() -> None:
    config = PRESETS["tiny"]
    model = DiT(config)
    _randomise(model)
    cond = _cond(config, length=6)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0]], dtype=torch.bool)
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([5.0, 500.0])
    out = model(x, t, Conditioning(tokens=cond.tokens, mask=mask, pooled=cond.pooled))
    scrambled = torch.where(mask[..., None], cond.tokens, torch.randn_like(cond.tokens) * 10)
    out2 = model(x, t, Conditioning(tokens=scrambled, mask=mask, pooled=cond.pooled))
    torch.testing.assert_close(out, out2)
    # without the mask the padding does matter
    out3 = model(x, t, Conditioning(tokens=scrambled, pooled=cond.pooled))
    assert not torch.allclose(out, out3)


def test_a_sample_without_real_tokens_gets_no_cross_attention() -> None:
    """A sample whose mask is all False comes out exactly as from the same DiT with its cross-attention
    layers removed, whatever its (masked) token values; a sample with real tokens does not."""
    config = PRESETS["tiny"]
    model = DiT(config)
    _randomise(model)
    without = copy.deepcopy(model)
    for block in without.blocks:
        block.cross_attn = None  # the reference: the same weights, no cross-attention at all
    cond = _cond(config, length=4)
    mask = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    x, t = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1)), torch.tensor([5.0, 5.0])
    with torch.no_grad():
        out = model(x, t, Conditioning(cond.tokens, mask, cond.pooled))
        ref = without(x, t, Conditioning(cond.tokens, mask, cond.pooled))
        other_tokens = cond.tokens.clone()
        other_tokens[1] = 100 * torch.randn(4, config.context_dim or 1)
        out_other = model(x, t, Conditioning(other_tokens, mask, cond.pooled))
    torch.testing.assert_close(out[1], ref[1], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(out_other[1], out[1], atol=1e-6, rtol=1e-6)
    assert (out[0] - ref[0]).abs().max() > 1e-2  # the real tokens of sample 0 are attended to


def test_text_and_pooled_and_time_all_change_the_output() -> None:
    config = PRESETS["tiny"]
    model = DiT(config)
    _randomise(model)
    x, t, cond = torch.randn(1, 4, 8, 8), torch.tensor([100.0]), _cond(config, b=1)
    base = model(x, t, cond)
    assert not torch.allclose(base, model(x, torch.tensor([101.0]), cond))
    assert not torch.allclose(base, model(x, t, Conditioning(cond.tokens + 1, pooled=cond.pooled)))
    assert not torch.allclose(base, model(x, t, Conditioning(cond.tokens, pooled=cond.pooled + 1)))


def test_missing_conditioning_is_reported() -> None:
    config = PRESETS["tiny"]
    model = DiT(config)
    x, t = torch.randn(1, 4, 8, 8), torch.tensor([1.0])
    with pytest.raises(ValueError, match="pooled"):
        model(x, t, Conditioning(tokens=torch.randn(1, 3, config.context_dim)))
    with pytest.raises(ValueError, match="context_dim"):
        model(x, t, Conditioning(tokens=torch.randn(1, 3, 7), pooled=torch.randn(1, config.pooled_dim)))
    with pytest.raises(ValueError, match="multiples of 2"):
        model(torch.randn(1, 4, 7, 8), t, _cond(config, b=1))


def test_unconditional_dit_needs_no_conditioning() -> None:
    config = DiTConfig(
        in_channels=3, sample_size=4, patch_size=1, width=16, depth=1, num_heads=2, context_dim=None
    )
    model = DiT(config)
    assert model(torch.randn(2, 3, 4, 4), torch.tensor([1.0, 2.0])).shape == (2, 3, 4, 4)


def test_position_embeddings_sincos_resizes_learned_refuses() -> None:
    config = PRESETS["tiny"]
    model = DiT(config)
    _randomise(model)
    assert model(torch.randn(1, 4, 12, 16), torch.tensor([3.0]), _cond(config, b=1)).shape == (1, 4, 12, 16)
    learned = DiT(DiTConfig(**{**config.__dict__, "pos_embed": "learned"}))
    assert any(n == "pos_embed" for n, _ in learned.named_parameters())
    with pytest.raises(ValueError, match="learned positions"):
        learned(torch.randn(1, 4, 12, 16), torch.tensor([3.0]), _cond(config, b=1))


def test_sincos_table_encodes_columns_then_rows() -> None:
    emb = sincos_2d_embedding(8, 3, 4)  # (12, 8)
    assert emb.shape == (12, 8)
    # channel 0 = sin(col * 1), channel 4 = sin(row * 1) for raster index row * 4 + col
    idx = torch.arange(12)
    torch.testing.assert_close(emb[:, 0], torch.sin((idx % 4).float()))
    torch.testing.assert_close(emb[:, 4], torch.sin((idx // 4).float()))


def test_tiny_dit_overfits_one_batch() -> None:
    torch.manual_seed(0)
    config = PRESETS["tiny"]
    model = DiT(config)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x, t, cond = torch.randn(4, 4, 8, 8), torch.tensor([1.0, 200.0, 400.0, 800.0]), _cond(config, b=4)
    target = torch.randn(4, 4, 8, 8)
    losses = []
    for _ in range(60):
        loss = (model(x, t, cond) - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
