"""Our Z-Image against diffusers' ZImageTransformer2DModel on identical random weights.

The diffusers side is called the way its ZImagePipeline calls it: latents as a list of (C, 1, H, W), the
caption states of each prompt with padding dropped (``prompt_embeds[i][mask[i]]``), ``t = (1000 - 1000 sigma)
/ 1000`` and the output negated. Ours takes batched latents, ``t = sigma`` and a masked Conditioning.

The full-width test runs the released widths (3840 = 30 heads x 128, FFN 10240, RoPE axes (32, 48, 48), Qwen3-4B
states 2560 wide) with one main, one noise-refiner and one context-refiner block; sizes are chosen so every
padding path runs (80 image tokens -> 96, captions of 20 and 45 tokens -> 32 and 64).
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from latentworks.checkpoints.keymaps.zimage_comfy import ours_to_zimage_comfy, zimage_comfy_to_ours
from latentworks.checkpoints.keymaps.zimage_diffusers import (
    zimage_config_from_diffusers,
    zimage_config_to_diffusers,
    zimage_from_diffusers,
    zimage_to_diffusers,
)
from latentworks.diffusion.conditioning import Conditioning
from latentworks.models.zimage import PRESETS, ZImage, ZImageConfig

diffusers = pytest.importorskip("diffusers")

TOLERANCE = 1e-3  # relative max error: max |ours - theirs| / max |theirs|
# diffusers fixes the timestep MLP's hidden width to 1024 (the tiny preset's FFN width is already dim * 8/3)
TINY_DIFFUSERS = replace(PRESETS["tiny"], time_hidden_dim=1024)


def _reference(config: ZImageConfig, seed: int = 0) -> torch.nn.Module:
    """diffusers' model for ``config`` (built from our config map) with informative random weights."""
    kwargs = {k: v for k, v in zimage_config_to_diffusers(config).items() if not k.startswith("_")}
    torch.manual_seed(seed)
    ref = diffusers.ZImageTransformer2DModel(**kwargs).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if p.ndim == 1 and "norm" in name:  # default ones would hide a norm mix-up
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=g))
            elif "pad_token" in name or p.ndim == 1:  # pad tokens and biases start at zero or tiny
                p.copy_(torch.randn(p.shape, generator=g) * (1.0 if "pad_token" in name else 0.1))
            elif "adaLN_modulation" in name:  # large enough that scales and gates matter
                p.mul_(4.0)
    return ref


def _theirs(ref: torch.nn.Module, x: torch.Tensor, sigma: torch.Tensor, cond: Conditioning) -> torch.Tensor:
    assert cond.mask is not None
    caps = [cond.tokens[i][cond.mask[i]] for i in range(x.shape[0])]
    out = ref(list(x.unsqueeze(2).unbind(0)), (1000 - 1000 * sigma) / 1000, caps, return_dict=False)[0]
    return -torch.stack(out).squeeze(2)


def _ours(ref: torch.nn.Module, config: ZImageConfig) -> ZImage:
    with torch.device("meta"):
        ours = ZImage(config)
    ours.load_state_dict(zimage_from_diffusers(ref.state_dict(), config), strict=True, assign=True)
    return ours.eval()


def _relative_max_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return ((got - expected).abs().max() / expected.abs().max()).item()


def _inputs(config: ZImageConfig, h: int, w: int, lengths: list[int], seed: int = 2) -> tuple:
    g = torch.Generator().manual_seed(seed)
    b, n = len(lengths), max(lengths) + 3  # three more padding slots than the longest prompt
    x = torch.randn(b, config.in_channels, h, w, generator=g)
    tokens = torch.randn(b, n, config.context_dim, generator=g)
    mask = torch.arange(n)[None] < torch.tensor(lengths)[:, None]
    sigma = torch.tensor([0.75, 0.25, 0.5][:b])
    return x, sigma, Conditioning(tokens=tokens, mask=mask)


@pytest.mark.slow
def test_zimage_matches_diffusers_at_full_width() -> None:
    config = ZImageConfig(depth=1, refiner_depth=1)  # the released widths, depth reduced
    assert (config.width, config.num_heads, config.ffn_dim, config.axes_dim) == (
        3840,
        30,
        10240,
        (32, 48, 48),
    )
    ref = _reference(config)
    assert zimage_config_from_diffusers(dict(ref.config)) == config
    ours = _ours(ref, config)
    x, sigma, cond = _inputs(config, 16, 20, [20, 45])
    with torch.no_grad():
        expected = _theirs(ref, x, sigma, cond)
        got = ours(x, sigma, cond)
    err = _relative_max_error(got, expected)
    print(f"Z-Image full width: relative max error {err:.2e}")
    assert got.shape == expected.shape == x.shape
    assert expected.std() > 0.1
    assert err <= TOLERANCE


@pytest.mark.parametrize(("h", "w", "lengths"), [(6, 10, [3, 9]), (8, 8, [8, 8]), (2, 14, [1, 17, 5])])
def test_tiny_zimage_matches_diffusers_with_masks_and_odd_sizes(h: int, w: int, lengths: list[int]) -> None:
    config = TINY_DIFFUSERS
    ref = _reference(config, seed=3)
    ours = _ours(ref, config)
    x, sigma, cond = _inputs(config, h, w, lengths)
    with torch.no_grad():
        err = _relative_max_error(ours(x, sigma, cond), _theirs(ref, x, sigma, cond))
    assert err <= TOLERANCE


def test_padding_and_batch_neighbours_do_not_change_a_sample() -> None:
    """A sample's output depends on its real caption tokens only: not on what sits in masked slots, where the
    mask puts them, or which samples share its batch."""
    config = PRESETS["tiny"]
    torch.manual_seed(0)
    model = ZImage(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(
                torch.randn_like(p) * 0.2 + (1.0 if p.ndim == 1 and p.shape[0] == config.head_dim else 0.0)
            )
    x, sigma, cond = _inputs(config, 6, 10, [5, 11])
    with torch.no_grad():
        batch = model(x, sigma, cond)
        alone = model(x[:1], sigma[:1], Conditioning(tokens=cond.tokens[:1, :5]))
        junk = cond.tokens.clone()
        junk[0, 5:] = 1e3  # masked slots of sample 0
        moved_tokens = torch.cat([junk[:1, 5:], cond.tokens[:1, :5]], dim=1)  # real tokens after the padding
        moved_mask = torch.arange(moved_tokens.shape[1])[None] >= moved_tokens.shape[1] - 5
        moved = model(x[:1], sigma[:1], Conditioning(tokens=moved_tokens, mask=moved_mask))
    assert batch.abs().max() > 0.1
    torch.testing.assert_close(batch[:1], alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(moved, alone, atol=1e-5, rtol=1e-5)


def test_zimage_key_maps_round_trip() -> None:
    config = PRESETS["tiny"]
    torch.manual_seed(0)
    state = {k: torch.randn_like(v) for k, v in ZImage(config).state_dict().items()}
    for to_theirs, to_ours in ((zimage_to_diffusers, zimage_from_diffusers),
                               (ours_to_zimage_comfy, zimage_comfy_to_ours)):  # fmt: skip
        theirs = to_theirs(state, config)
        back = to_ours(theirs, config)
        assert back.keys() == state.keys()
        assert all(torch.equal(back[k], state[k]) for k in state)
        assert to_theirs(back, config).keys() == theirs.keys()


def test_our_diffusers_keys_are_diffusers_own_names() -> None:
    """Our diffusers map writes exactly the tensor names and shapes diffusers' model has (small width)."""
    config = TINY_DIFFUSERS
    ref = _reference(config)
    ours = {k: tuple(v.shape) for k, v in zimage_to_diffusers(ZImage(config).state_dict(), config).items()}
    assert ours == {k: tuple(v.shape) for k, v in ref.state_dict().items()}


def test_single_file_layout_refuses_unmapped_keys_and_drops_norm_final() -> None:
    config = PRESETS["tiny"]
    theirs = ours_to_zimage_comfy(ZImage(config).state_dict(), config)
    assert "layers.0.attention.qkv.weight" in theirs and "layers.0.adaLN_modulation.0.weight" in theirs
    zimage_comfy_to_ours({**theirs, "norm_final.weight": torch.ones(config.width)}, config)
    with pytest.raises(KeyError, match="unexpected"):
        zimage_comfy_to_ours({**theirs, "layers.0.surprise.weight": torch.ones(1)}, config)
    del theirs["cap_pad_token"]
    with pytest.raises(KeyError, match="missing"):
        zimage_comfy_to_ours(theirs, config)


def test_config_validation_says_what_to_change() -> None:
    with pytest.raises(ValueError, match="RoPE axes must cover each head"):
        ZImageConfig(num_heads=32)  # 3840 / 32 = 120-wide heads, but the axes cover 128
    with pytest.raises(ValueError, match="divisible"):
        ZImageConfig(num_heads=7)
    with pytest.raises(ValueError, match="cannot be written for diffusers"):
        zimage_config_to_diffusers(PRESETS["tiny"])
