"""Our ControlNet against diffusers' ControlNetModel on identical random weights (float32, CPU).

The residuals must agree, and U-Net + ControlNet must agree with diffusers' UNet2DConditionModel given
``down_block_additional_residuals`` / ``mid_block_additional_residual``. Real SD 1.5 / SDXL widths with
reduced depth; the zero convs get random weights so the residuals are not trivially zero.
"""

from __future__ import annotations

import gc

import pytest
import torch

from latentworks.checkpoints.keymaps.controlnet import (
    controlnet_config_from_diffusers,
    controlnet_config_from_original,
    controlnet_from_diffusers,
    controlnet_from_original,
    controlnet_to_original,
)
from latentworks.checkpoints.keymaps.sd_diffusers import unet_from_diffusers
from latentworks.diffusion.conditioning import Conditioning
from latentworks.diffusion.control import ControlResiduals
from latentworks.models.controlnet import ControlNet
from latentworks.models.unet import UNet

diffusers = pytest.importorskip("diffusers")

TOL = 1e-5


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return ((ours - ref).norm() / ref.norm()).item()


TINY = dict(
    block_out_channels=[32, 64],
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"],
    layers_per_block=1,
    attention_head_dim=[2, 4],
    cross_attention_dim=24,
    norm_num_groups=8,
    conditioning_embedding_out_channels=(8, 16),
)
SD15 = dict(  # SD 1.5 widths, one ResBlock per level
    block_out_channels=[320, 640, 1280, 1280],
    down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    layers_per_block=1,
    attention_head_dim=8,
    cross_attention_dim=768,
)
SDXL = dict(  # SDXL widths and added conditioning, transformer depth (0, 1, 1)
    block_out_channels=[320, 640, 1280],
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    layers_per_block=1,
    transformer_layers_per_block=[1, 1, 1],
    attention_head_dim=[5, 10, 20],
    cross_attention_dim=2048,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)
UP = {
    "DownBlock2D": "UpBlock2D",
    "CrossAttnDownBlock2D": "CrossAttnUpBlock2D",
}


def _randomize(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Random weights for the zero-initialised convs (diffusers inits them to zero too)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "controlnet_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)


def run(
    kw: dict, *, size: int, tokens: int, factor: int, heads: dict | None = None
) -> tuple[float, float, float]:
    """(residual error, mid error, U-Net-with-control error) against diffusers."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    ref_cn = diffusers.ControlNetModel(**kw).eval()
    _randomize(ref_cn, gen)
    unet_kw = {k: v for k, v in kw.items() if k != "conditioning_embedding_out_channels"}
    unet_kw["up_block_types"] = [UP[b] for b in reversed(kw["down_block_types"])]
    ref_unet = diffusers.UNet2DConditionModel(**unet_kw).eval()

    shapes = {k: tuple(v.shape) for k, v in ref_cn.state_dict().items()}
    # Head counts and norm groups are not visible in shapes; real SD/SDXL files follow the rules detection uses.
    config = controlnet_config_from_diffusers(shapes, "test", unseen=heads)
    with torch.device("meta"):
        ours = ControlNet(config)
        unet = UNet(config.unet)
    ours.load_state_dict(controlnet_from_diffusers(ref_cn.state_dict(), config), strict=True, assign=True)
    unet.load_state_dict(unet_from_diffusers(ref_unet.state_dict(), config.unet), strict=True, assign=True)

    # The original layout round-trips, and for real SD heads reads back to the same config.
    original = controlnet_to_original(ours.state_dict(), config)
    back = controlnet_from_original(original, config)
    assert all(torch.equal(back[k], v) for k, v in ours.state_dict().items())
    if heads is None:
        assert (
            controlnet_config_from_original({k: tuple(v.shape) for k, v in original.items()}, "test")
            == config
        )

    g = torch.Generator().manual_seed(1)
    b = 2
    x = torch.randn(b, 4, size, size, generator=g)
    t = torch.tensor([999.0, 321.5])
    ctx = torch.randn(b, tokens, config.unet.context_dim, generator=g)
    hint = torch.rand(b, 3, size * factor, size * factor, generator=g)
    added, extra, pooled = None, {}, None
    if config.unet.has_added_conditioning:
        pooled = torch.randn(b, 1280, generator=g)
        time_ids = torch.tensor([[1024.0, 1024.0, 0.0, 0.0, 1024.0, 1024.0]] * b)
        added, extra = {"text_embeds": pooled, "time_ids": time_ids}, {"time_ids": time_ids}
    cond = Conditioning(tokens=ctx, pooled=pooled, extra=extra)
    with torch.no_grad():
        down_ref, mid_ref = ref_cn(
            x, t, encoder_hidden_states=ctx, controlnet_cond=hint, added_cond_kwargs=added, return_dict=False
        )
        res = ours(x, t, cond, hint)
        assert len(res.down) == len(down_ref)
        err_down = max(rel_err(a, r) for a, r in zip(res.down, down_ref, strict=True))
        assert res.mid is not None
        err_mid = rel_err(res.mid, mid_ref)
        scaled = ControlResiduals(res.down, res.mid).scaled(0.7)
        out_ref = ref_unet(
            x,
            t,
            encoder_hidden_states=ctx,
            added_cond_kwargs=added,
            down_block_additional_residuals=[r * 0.7 for r in down_ref],
            mid_block_additional_residual=mid_ref * 0.7,
        ).sample
        plain_ref = ref_unet(x, t, encoder_hidden_states=ctx, added_cond_kwargs=added).sample
        out = unet(x, t, cond, control=scaled)
    err_unet = rel_err(out, out_ref)
    # The control changes the output by much more than the tolerance, so the comparison above means something.
    assert rel_err(out_ref, plain_ref) > 100 * TOL
    print(f"errors: residuals {err_down:.2e}, mid {err_mid:.2e}, unet+control {err_unet:.2e}")
    del ref_cn, ref_unet, ours, unet
    gc.collect()
    return err_down, err_mid, err_unet


def test_tiny_controlnet_matches_diffusers() -> None:
    errs = run(TINY, size=8, tokens=5, factor=2, heads={"num_heads": None, "head_dim": 16, "norm_groups": 8})
    assert max(errs) < TOL


@pytest.mark.slow
def test_sd15_width_controlnet_matches_diffusers() -> None:
    errs = run(SD15, size=8, tokens=77, factor=8)
    assert max(errs) < TOL


@pytest.mark.slow
def test_sdxl_width_controlnet_matches_diffusers() -> None:
    errs = run(SDXL, size=8, tokens=77, factor=8)
    assert max(errs) < TOL
