"""FLUX: RoPE properties, latent packing, config validation, shapes, parameter counts and the key map."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from latentworks.checkpoints.keymaps.flux_diffusers import (
    flux_diffusers_rules,
    flux_from_diffusers,
    flux_to_diffusers,
)
from latentworks.diffusion.conditioning import Conditioning
from latentworks.models.flux import PRESETS, Flux, FluxConfig, image_position_ids
from latentworks.nn.patch import pack_latents, unpack_latents
from latentworks.nn.rope import apply_rope, rope_frequencies

AXES = (4, 6, 6)


def _ids(*positions: tuple[int, int, int]) -> torch.Tensor:
    return torch.tensor(positions, dtype=torch.float32)


@settings(max_examples=30, deadline=None)
@given(
    m=st.integers(-50, 50), n=st.integers(-50, 50), shift=st.integers(-100, 100), axis=st.integers(0, 2),
    seed=st.integers(0, 2**16),
)  # fmt: skip
def test_rope_scores_depend_only_on_relative_position(
    m: int, n: int, shift: int, axis: int, seed: int
) -> None:
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(1, 1, 1, 16, generator=g, dtype=torch.float64), torch.randn(1, 1, 1, 16, generator=g)
    k = k.double()

    def score(a: int, b: int) -> torch.Tensor:
        pa, pb = [0, 0, 0], [0, 0, 0]
        pa[axis], pb[axis] = a, b
        rq, _ = apply_rope(q, q, rope_frequencies(_ids(tuple(pa)), AXES))
        rk, _ = apply_rope(k, k, rope_frequencies(_ids(tuple(pb)), AXES))
        return (rq * rk).sum()

    torch.testing.assert_close(score(m, n), score(m + shift, n + shift), atol=1e-5, rtol=1e-5)


def _rotate_by_hand(x: torch.Tensor, pos: torch.Tensor, theta: float = 10000.0) -> torch.Tensor:
    """Written from the definition: channel pair (2i, 2i+1) of axis a (owning AXES[a] consecutive channels,
    pair j inside it) turns by the 2x2 rotation of angle pos[a] * theta^(-2j / AXES[a]). x (head_dim,),
    pos (3,); float64."""
    out = x.clone()
    start = 0
    for a, dim in enumerate(AXES):
        for j in range(dim // 2):
            angle = float(pos[a]) * theta ** (-2 * j / dim)
            rot = torch.tensor(
                [[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]], dtype=torch.float64
            )
            c = start + 2 * j
            out[c : c + 2] = rot @ x[c : c + 2]
        start += dim
    return out


def test_rope_is_the_explicit_pairwise_rotation() -> None:
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 3, 5, 16, generator=g, dtype=torch.float64)
    k = torch.randn(2, 3, 5, 16, generator=g, dtype=torch.float64)
    ids = torch.randint(0, 30, (5, 3), generator=g)
    ids[0] = 0  # position 0 turns nothing
    rq, rk = apply_rope(q, k, rope_frequencies(ids, AXES))
    for x, rx in ((q, rq), (k, rk)):  # queries and keys each by their own token's position
        for b in range(2):
            for h in range(3):
                for n in range(5):
                    want = _rotate_by_hand(x[b, h, n], ids[n])
                    torch.testing.assert_close(rx[b, h, n], want, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(rq[:, :, 0], q[:, :, 0], atol=1e-6, rtol=0)  # float32 inside
    assert (rq[:, :, 1:] - q[:, :, 1:]).abs().amax() > 0.1  # the hand-made rotation is not trivial either
    # A per-sample (B, N, head_dim/2, 2) table rotates each sample by its own positions.
    ids_b = torch.stack([ids, ids.flip(0)])
    rq_b, _ = apply_rope(q, k, rope_frequencies(ids_b, AXES))
    torch.testing.assert_close(rq_b[0], rq[0])
    for h in range(3):  # sample 1, token 0 sits at the last token's position
        torch.testing.assert_close(rq_b[1, h, 0], _rotate_by_hand(q[1, h, 0], ids[4]), atol=1e-6, rtol=1e-6)


def test_rope_matches_diffusers() -> None:
    from diffusers.models.embeddings import apply_rotary_emb
    from diffusers.models.transformers.transformer_flux import FluxPosEmbed

    ids = torch.cat([torch.zeros(4, 3), image_position_ids(3, 5).float()])
    q = torch.randn(2, 2, ids.shape[0], 16)
    cos_sin = FluxPosEmbed(theta=10000, axes_dim=list(AXES))(ids)
    expected = apply_rotary_emb(q, cos_sin, sequence_dim=2)
    got, _ = apply_rope(q, q, rope_frequencies(ids, AXES, 10000.0))
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)


def test_rope_shape_errors() -> None:
    with pytest.raises(ValueError, match="position axes"):
        rope_frequencies(torch.zeros(3, 2), AXES)
    with pytest.raises(ValueError, match="even"):
        rope_frequencies(torch.zeros(3, 3), (3, 6, 7))
    with pytest.raises(ValueError, match="do not fit"):
        apply_rope(
            torch.zeros(1, 1, 4, 16), torch.zeros(1, 1, 4, 16), rope_frequencies(torch.zeros(5, 3), AXES)
        )


def test_pack_unpack_round_trip_and_diffusers_layout() -> None:
    from diffusers.pipelines.flux.pipeline_flux import FluxPipeline

    x = torch.randn(2, 16, 6, 10)
    packed = pack_latents(x)
    assert packed.shape == (2, 15, 64)
    torch.testing.assert_close(packed, FluxPipeline._pack_latents(x, 2, 16, 6, 10), atol=0, rtol=0)
    assert torch.equal(unpack_latents(packed, 6, 10), x)
    ids = FluxPipeline._prepare_latent_image_ids(2, 3, 5, x.device, x.dtype)
    assert torch.equal(image_position_ids(3, 5).float(), ids)
    with pytest.raises(ValueError, match="multiples of 2"):
        pack_latents(torch.randn(1, 16, 5, 4))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"axes_dim": (16, 56, 54)}, "sums to"),
        ({"axes_dim": (15, 57, 56)}, "even"),
        ({"width": 3001}, "divisible by num_heads"),
        ({"double_depth": 0, "single_depth": 0}, "at least one block"),
        ({"context_dim": 0}, "context_dim"),
    ],
)
def test_config_validation(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FluxConfig(**kwargs)


def _cond(config: FluxConfig, b: int = 2, guidance: bool = True) -> Conditioning:
    extra = {"guidance": torch.full((b,), 3.5)} if guidance else {}
    return Conditioning(
        torch.randn(b, 7, config.context_dim), pooled=torch.randn(b, config.pooled_dim), extra=extra
    )


def _randomise(model: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))


def test_forward_shape_and_guidance_matters() -> None:
    config = PRESETS["tiny"]
    model = Flux(config)
    _randomise(model)
    x, t, cond = torch.randn(2, 4, 6, 10), torch.tensor([1000.0, 300.0]), _cond(PRESETS["tiny"])
    out = model(x, t, cond)
    assert out.shape == x.shape and torch.isfinite(out).all()
    other = model(x, t, cond.with_extra(guidance=torch.full((2,), 1.0)))
    assert not torch.allclose(out, other)
    with pytest.raises(ValueError, match="guidance"):
        model(x, t, _cond(config, guidance=False))


def test_schnell_style_model_has_no_guidance_input() -> None:
    from dataclasses import replace

    config = replace(PRESETS["tiny"], guidance_embed=False)
    model = Flux(config)
    assert model.guidance_in is None
    assert model(torch.randn(1, 4, 4, 4), torch.tensor([500.0]), _cond(config, 1, False)).shape == (
        1,
        4,
        4,
        4,
    )


def test_image_positions_matter() -> None:
    """Swapping two image tokens moves their outputs with them only if RoPE saw no positions: it does."""
    config = PRESETS["tiny"]
    model = Flux(config)
    _randomise(model)
    x, t, cond = torch.randn(1, 4, 4, 4), torch.tensor([500.0]), _cond(config, 1)
    flipped = model(x.flip(-1), t, cond).flip(-1)
    assert not torch.allclose(model(x, t, cond), flipped, atol=1e-4)


def _meta_params(factory) -> int:  # noqa: ANN001
    with torch.device("meta"):
        model = factory()
    return sum(p.numel() for p in model.parameters())


def test_flux_dev_parameter_count() -> None:
    assert _meta_params(lambda: Flux(PRESETS["flux-dev"])) == 11_901_408_320


@pytest.mark.parametrize("name", ["flux-dev", "flux-schnell"])
def test_parameter_counts_match_diffusers(name: str) -> None:
    from diffusers import FluxTransformer2DModel

    c = PRESETS[name]
    ref = _meta_params(lambda: FluxTransformer2DModel(guidance_embeds=c.guidance_embed))
    assert _meta_params(lambda: Flux(c)) == ref


def test_key_map_round_trip_and_coverage() -> None:
    from diffusers import FluxTransformer2DModel

    config = PRESETS["tiny"]
    model = Flux(config)
    _randomise(model)
    ours = model.state_dict()
    theirs = flux_to_diffusers(ours, config)
    with torch.device("meta"):
        ref = FluxTransformer2DModel(
            in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=32, num_attention_heads=2,
            joint_attention_dim=24, pooled_projection_dim=16, guidance_embeds=True, axes_dims_rope=(8, 12, 12),
        )  # fmt: skip
    ref_shapes = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in theirs.items()} == ref_shapes
    assert {k for r in flux_diffusers_rules(config) for k in r.theirs} == set(ref_shapes)
    back = flux_from_diffusers(theirs, config)
    assert set(back) == set(ours) and all(torch.equal(back[k], v) for k, v in ours.items())
    # single-block linear1 = [q; k; v; mlp] with diffusers' proj_mlp last
    d = config.width
    assert torch.equal(
        theirs["single_transformer_blocks.0.proj_mlp.weight"], ours["single_blocks.0.linear1.weight"][3 * d :]
    )


def test_key_map_rejects_mismatched_config() -> None:
    from dataclasses import replace

    config = PRESETS["tiny"]
    theirs = flux_to_diffusers(Flux(config).state_dict(), config)
    with pytest.raises(KeyError, match="unexpected"):  # guidance weights present, schnell config
        flux_from_diffusers(theirs, replace(config, guidance_embed=False))
    with pytest.raises(KeyError, match="missing"):
        flux_from_diffusers(theirs, replace(config, double_depth=2))
