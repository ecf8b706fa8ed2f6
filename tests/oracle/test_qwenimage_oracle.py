"""Our Qwen-Image transformer against diffusers' ``QwenImageTransformer2DModel`` on identical random weights.

The full-width test runs the released widths (24 heads x 128 = 3072, text width 3584, MLP ratio 4, RoPE axes
(16, 56, 56)) with two blocks instead of 60. The diffusers side is fed the way ``QwenImagePipeline`` feeds it:
latents packed by the pipeline's own ``_pack_latents``, ``img_shapes = [[(1, h/2, w/2)]] * B`` for its 3-axis
RoPE, text states with their mask, ``timestep = sigma``; ours takes unpacked latents, ``t = 1000 * sigma`` and a
:class:`Conditioning`. Pass: max |ours - diffusers| <= 1e-3 * max |diffusers|.
"""

from __future__ import annotations

import gc
from dataclasses import replace

import pytest
import torch

from latentworks.checkpoints.keymaps.qwenimage_diffusers import (
    qwenimage_from_diffusers,
    qwenimage_to_diffusers,
)
from latentworks.diffusion.conditioning import Conditioning
from latentworks.models.qwenimage import PRESETS, QwenImage, QwenImageConfig

diffusers = pytest.importorskip("diffusers")

TOLERANCE = 1e-3  # relative max error


def reference(config: QwenImageConfig, seed: int = 0) -> torch.nn.Module:
    """diffusers' model of ``config``'s shape with random weights (norm weights random too, so a q/k norm or a
    stream mix-up cannot hide behind all-ones weights)."""
    torch.manual_seed(seed)
    ref = diffusers.QwenImageTransformer2DModel(
        patch_size=config.patch_size,
        in_channels=config.in_channels * config.patch_size**2,
        out_channels=config.output_channels,
        num_layers=config.depth,
        attention_head_dim=config.head_dim,
        num_attention_heads=config.num_heads,
        joint_attention_dim=config.context_dim,
        axes_dims_rope=config.axes_dim,
    ).eval()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if "norm" in name and p.ndim == 1 and "linear" not in name:
                p.normal_(1.0, 0.3)
    return ref


def ours_from(ref: torch.nn.Module, config: QwenImageConfig) -> QwenImage:
    with torch.device("meta"):
        ours = QwenImage(config)
    ours.load_state_dict(qwenimage_from_diffusers(ref.state_dict(), config), strict=True, assign=True)
    return ours.eval()


def run_both(
    ref: torch.nn.Module,
    ours: QwenImage,
    x: torch.Tensor,
    t: torch.Tensor,
    tokens: torch.Tensor,
    mask: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(ours, diffusers) predictions (B, C, H, W); diffusers packed, positioned and unpacked by its pipeline."""
    from diffusers.pipelines.qwenimage.pipeline_qwenimage import QwenImagePipeline as Pipe

    b, c, h, w = x.shape
    with torch.no_grad():
        packed = ref(
            hidden_states=Pipe._pack_latents(x, b, c, h, w),
            encoder_hidden_states=tokens,
            encoder_hidden_states_mask=mask,
            timestep=t / 1000,
            img_shapes=[[(1, h // 2, w // 2)]] * b,
            return_dict=False,
        )[0]
        expected = Pipe._unpack_latents(packed, h * 8, w * 8, 8)[:, :, 0]  # (B, C, 1, H, W) -> (B, C, H, W)
        got = ours(x, t, Conditioning(tokens=tokens, mask=mask))
    return got, expected


def relative_max_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return ((got - expected).abs().max() / expected.abs().max()).item()


@pytest.mark.slow
def test_qwenimage_matches_diffusers_at_full_width() -> None:
    config = replace(PRESETS["qwen-image"], depth=2)
    ref = reference(config)
    ours = ours_from(ref, config)
    g = torch.Generator().manual_seed(1)
    b, h, w, n_txt = 2, 10, 14, 12  # a 5 x 7 token grid: odd, non-square (the centred RoPE grid's hard case)
    x = torch.randn(b, 16, h, w, generator=g)
    t = torch.tensor([1000.0, 250.0])  # sigma = t / 1000 exactly representable: both sides see the same t
    tokens = torch.randn(b, n_txt, 3584, generator=g)
    mask = torch.ones(b, n_txt, dtype=torch.bool)
    mask[1, 7:] = False  # the second prompt is 7 tokens long, padded to 12
    got, expected = run_both(ref, ours, x, t, tokens, mask)
    err = relative_max_error(got, expected)
    print(f"qwen-image full width, 2 blocks: relative max error {err:.2e}")
    assert got.shape == expected.shape == x.shape
    assert expected.std() > 0.05
    assert err <= TOLERANCE
    del ref, ours
    gc.collect()


@pytest.mark.parametrize("grid", [(1, 1), (3, 5), (4, 4), (7, 2)])
def test_tiny_qwenimage_matches_diffusers_on_odd_grids_and_masks(grid: tuple[int, int]) -> None:
    """Odd and non-square token grids move the centred RoPE grid and the text start ``max(h//2, w//2)``."""
    config = PRESETS["tiny"]
    ref = reference(config, seed=2)
    ours = ours_from(ref, config)
    g = torch.Generator().manual_seed(3)
    h, w = 2 * grid[0], 2 * grid[1]
    x = torch.randn(3, config.in_channels, h, w, generator=g)
    t = torch.tensor([1000.0, 500.0, 125.0])
    tokens = torch.randn(3, 6, config.context_dim, generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [1, 0, 1, 1, 0, 1]], dtype=torch.bool)
    got, expected = run_both(ref, ours, x, t, tokens, mask)
    assert expected.abs().max() > 0.1
    assert relative_max_error(got, expected) <= TOLERANCE


def test_padded_text_tokens_change_nothing() -> None:
    """Masked text tokens are invisible: their states may be anything, and the image prediction equals the one
    computed without them (text RoPE positions start at the same place either way)."""
    config = PRESETS["tiny"]
    ours = ours_from(reference(config, seed=4), config)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(1, config.in_channels, 6, 4, generator=g)
    t = torch.tensor([700.0])
    tokens = torch.randn(1, 4, config.context_dim, generator=g)
    padded = torch.cat([tokens, 100 * torch.randn(1, 5, config.context_dim, generator=g)], dim=1)
    mask = torch.tensor([[True] * 4 + [False] * 5])
    with torch.no_grad():
        short = ours(x, t, Conditioning(tokens=tokens))
        long = ours(x, t, Conditioning(tokens=padded, mask=mask))
        unmasked = ours(x, t, Conditioning(tokens=padded))
    torch.testing.assert_close(long, short, rtol=1e-5, atol=1e-5)
    assert (unmasked - short).abs().max() > 1e-3  # without the mask the padding does change the output


def test_key_map_round_trips_exactly() -> None:
    """ours -> diffusers -> ours is the identity, and the diffusers side has exactly diffusers' key set."""
    config = replace(PRESETS["tiny"], depth=3)
    torch.manual_seed(6)
    ours = QwenImage(config)
    with torch.no_grad():
        for p in ours.parameters():
            p.normal_()
    sd = ours.state_dict()
    theirs = qwenimage_to_diffusers(sd, config)
    assert set(theirs) == set(reference(config).state_dict())
    back = qwenimage_from_diffusers(theirs, config)
    assert set(back) == set(sd)
    for k, v in sd.items():
        assert torch.equal(back[k], v), k


def test_key_map_refuses_missing_and_unknown_keys() -> None:
    config = PRESETS["tiny"]
    theirs = qwenimage_to_diffusers(QwenImage(config).state_dict(), config)
    missing = {k: v for k, v in theirs.items() if k != "transformer_blocks.1.attn.add_k_proj.weight"}
    with pytest.raises(KeyError, match="add_k_proj"):
        qwenimage_from_diffusers(missing, config)
    with pytest.raises((KeyError, ValueError), match="pos_embed.extra"):
        qwenimage_from_diffusers({**theirs, "pos_embed.extra": torch.zeros(1)}, config)


def test_config_refuses_bad_shapes_and_forward_refuses_bad_inputs() -> None:
    with pytest.raises(ValueError, match="axes_dim"):
        QwenImageConfig(axes_dim=(16, 56, 40))
    with pytest.raises(ValueError, match="divisible"):
        QwenImageConfig(width=3072, num_heads=5)
    config = PRESETS["tiny"]
    model = QwenImage(config)
    tokens = torch.randn(1, 3, config.context_dim)
    with pytest.raises(ValueError, match="multiples of 2"):
        model(torch.randn(1, config.in_channels, 5, 4), torch.tensor([1.0]), Conditioning(tokens=tokens))
    with pytest.raises(ValueError, match="Qwen2.5-VL"):
        model(
            torch.randn(1, config.in_channels, 4, 4), torch.tensor([1.0]), Conditioning(torch.randn(1, 3, 7))
        )
