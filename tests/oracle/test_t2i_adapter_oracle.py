"""Our T2I-Adapter against diffusers' T2IAdapter on identical random weights (float32, CPU): the features, and
the U-Net with them against UNet2DConditionModel's ``down_intrablock_additional_residuals``, for the SD 1.5
(``full_adapter``) and SDXL (``full_adapter_xl``) layouts at real widths with reduced depth."""

from __future__ import annotations

import gc

import pytest
import torch

from latentworks.checkpoints.keymaps.controlnet import (
    t2i_adapter_config_from_diffusers,
    t2i_adapter_from_diffusers,
)
from latentworks.checkpoints.keymaps.diffusers_configs import unet_config_from_diffusers
from latentworks.checkpoints.keymaps.sd_diffusers import unet_from_diffusers
from latentworks.diffusion.conditioning import Conditioning
from latentworks.models.t2i_adapter import T2IAdapter
from latentworks.models.unet import UNet

diffusers = pytest.importorskip("diffusers")

TOL = 1e-5

SD15_UNET = dict(
    block_out_channels=[320, 640, 1280, 1280],
    down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    layers_per_block=1,
    attention_head_dim=8,
    cross_attention_dim=768,
)
SDXL_UNET = dict(
    block_out_channels=[320, 640, 1280],
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    layers_per_block=1,
    transformer_layers_per_block=[1, 1, 1],
    attention_head_dim=[5, 10, 20],
    cross_attention_dim=2048,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def run(unet_kw: dict, adapter_kw: dict, *, latent: int, factor: int = 8) -> tuple[float, float]:
    torch.manual_seed(0)
    ref_ad = diffusers.T2IAdapter(**adapter_kw).eval()
    ref_unet = diffusers.UNet2DConditionModel(**unet_kw).eval()
    config = t2i_adapter_config_from_diffusers(
        {k: tuple(v.shape) for k, v in ref_ad.state_dict().items()}, "test"
    )
    ucfg = unet_config_from_diffusers(dict(ref_unet.config))
    with torch.device("meta"):
        ours, unet = T2IAdapter(config), UNet(ucfg)
    ours.load_state_dict(t2i_adapter_from_diffusers(ref_ad.state_dict(), config), strict=True, assign=True)
    unet.load_state_dict(unet_from_diffusers(ref_unet.state_dict(), ucfg), strict=True, assign=True)
    ours.check_model(unet)

    g = torch.Generator().manual_seed(1)
    b = 2
    x = torch.randn(b, 4, latent, latent, generator=g)
    t = torch.tensor([999.0, 321.5])
    ctx = torch.randn(b, 7, ucfg.context_dim, generator=g)
    hint = torch.rand(b, adapter_kw.get("in_channels", 3), factor * latent, factor * latent, generator=g)
    added, extra, pooled = None, {}, None
    if ucfg.has_added_conditioning:
        pooled = torch.randn(b, 1280, generator=g)
        time_ids = torch.tensor([[1024.0, 1024.0, 0.0, 0.0, 1024.0, 1024.0]] * b)
        added, extra = {"text_embeds": pooled, "time_ids": time_ids}, {"time_ids": time_ids}
    cond = Conditioning(tokens=ctx, pooled=pooled, extra=extra)
    with torch.no_grad():
        feats_ref = ref_ad(hint)
        res = ours(x, t, cond, hint)
        err_feat = max(rel_err(a, r) for a, r in zip(res.adapter, feats_ref, strict=True))
        scaled = res.scaled(0.6)
        out_ref = ref_unet(
            x, t, encoder_hidden_states=ctx, added_cond_kwargs=added,
            down_intrablock_additional_residuals=[f * 0.6 for f in feats_ref],
        ).sample  # fmt: skip
        plain = ref_unet(x, t, encoder_hidden_states=ctx, added_cond_kwargs=added).sample
        out = unet(x, t, cond, control=scaled)
    assert rel_err(out_ref, plain) > 100 * TOL  # the features do change the output
    err_unet = rel_err(out, out_ref)
    print(f"errors: features {err_feat:.2e}, unet+adapter {err_unet:.2e}")
    del ref_ad, ref_unet, ours, unet
    gc.collect()
    return err_feat, err_unet


def test_tiny_full_adapter_matches_diffusers() -> None:
    unet = dict(
        block_out_channels=[32, 64], down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D"], layers_per_block=1, attention_head_dim=[2, 4],
        cross_attention_dim=24, norm_num_groups=8,
    )  # fmt: skip
    adapter = dict(channels=[32, 64], num_res_blocks=2, downscale_factor=2, adapter_type="full_adapter")
    assert max(run(unet, adapter, latent=8, factor=2)) < TOL


@pytest.mark.slow
def test_sd15_full_adapter_matches_diffusers() -> None:
    adapter = dict(
        channels=[320, 640, 1280, 1280], num_res_blocks=1, downscale_factor=8, adapter_type="full_adapter"
    )
    assert max(run(SD15_UNET, adapter, latent=8)) < TOL


@pytest.mark.slow
def test_sd15_grey_adapter_matches_diffusers() -> None:
    adapter = dict(
        in_channels=1, channels=[320, 640, 1280, 1280], num_res_blocks=1, downscale_factor=8,
        adapter_type="full_adapter",
    )  # fmt: skip
    assert max(run(SD15_UNET, adapter, latent=8)) < TOL


@pytest.mark.slow
def test_sdxl_full_adapter_xl_matches_diffusers() -> None:
    adapter = dict(
        channels=[320, 640, 1280, 1280], num_res_blocks=1, downscale_factor=16, adapter_type="full_adapter_xl"
    )
    assert max(run(SDXL_UNET, adapter, latent=8)) < TOL
