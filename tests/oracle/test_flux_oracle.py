"""Our FLUX against diffusers' FluxTransformer2DModel at full FLUX.1 width, on identical random weights.

Full width (3072 = 24 heads x 128), full RoPE axes (16, 56, 56), real text / pooled widths; one double- and
one single-stream block. The diffusers side is fed the way its pipeline does it (packed latents, explicit
position ids, ``sigma = t / 1000``); ours takes unpacked latents and ``t`` in [0, 1000].
"""

from __future__ import annotations

import gc

import pytest
import torch

from latentworks.checkpoints.keymaps.flux_diffusers import flux_from_diffusers
from latentworks.diffusion.conditioning import Conditioning
from latentworks.models.flux import PRESETS, Flux

diffusers = pytest.importorskip("diffusers")

pytestmark = pytest.mark.slow
TOLERANCE = 1e-4


@pytest.mark.parametrize("preset", ["flux-dev", "flux-schnell"])
def test_flux_matches_diffusers(preset: str) -> None:
    from dataclasses import replace

    config = replace(PRESETS[preset], double_depth=1, single_depth=1)
    torch.manual_seed(0)
    ref = diffusers.FluxTransformer2DModel(
        patch_size=1,
        in_channels=4 * config.in_channels,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=config.head_dim,
        num_attention_heads=config.num_heads,
        joint_attention_dim=config.context_dim,
        pooled_projection_dim=config.pooled_dim,
        guidance_embeds=config.guidance_embed,
        axes_dims_rope=config.axes_dim,
    ).eval()
    with torch.no_grad():  # informative norm weights (default ones would hide a q/k norm mix-up)
        for name, p in ref.named_parameters():
            if "norm" in name and p.ndim == 1 and "linear" not in name:
                p.normal_(1.0, 0.3)
    with torch.device("meta"):
        ours = Flux(config)
    ours.load_state_dict(flux_from_diffusers(ref.state_dict(), config), strict=True, assign=True)
    ours.eval()

    g = torch.Generator().manual_seed(1)
    b, h, w, n_txt = 2, 16, 24, 16
    x = torch.randn(b, 16, h, w, generator=g)
    t = torch.tensor([1000.0, 250.0])  # sigma = t/1000 exactly representable, so both sides see the same t
    tokens = torch.randn(b, n_txt, 4096, generator=g)
    pooled = torch.randn(b, 768, generator=g)
    guidance = torch.tensor([3.5, 1.0])
    # the diffusers side is packed and positioned by diffusers' own pipeline helpers, not ours
    from diffusers.pipelines.flux.pipeline_flux import FluxPipeline

    img_ids = FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, x.device, x.dtype)
    with torch.no_grad():
        expected_packed = ref(
            hidden_states=FluxPipeline._pack_latents(x, b, 16, h, w),
            encoder_hidden_states=tokens,
            pooled_projections=pooled,
            timestep=t / 1000,
            img_ids=img_ids,
            txt_ids=torch.zeros(n_txt, 3),
            guidance=guidance if config.guidance_embed else None,
        ).sample
        expected = FluxPipeline._unpack_latents(expected_packed, h * 8, w * 8, 8)  # pixel size, VAE factor
        extra = {"guidance": guidance} if config.guidance_embed else {}
        got = ours(x, t, Conditioning(tokens=tokens, pooled=pooled, extra=extra))
    err = ((got - expected).norm() / expected.norm()).item()
    print(f"{preset} relative error {err:.2e}")
    assert got.shape == expected.shape == x.shape
    assert expected.std() > 0.1
    assert err <= TOLERANCE
    del ref, ours
    gc.collect()
