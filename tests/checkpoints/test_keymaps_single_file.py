"""Single-file key maps (LDM U-Net / VAE, SAI MM-DiT, BFL FLUX): exact round trips, strictness, real names.

Large presets are checked without memory: every tensor is one distinct scalar expanded to its full shape
(stride 0), so a round trip that sends a tensor to the wrong key, or changes a shape, is caught exactly.
Real key names are pinned by a few well-known keys and counts of the released SD files; the oracle tests in
tests/oracle/test_single_file_oracle.py prove the mapping against diffusers' own converter.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from latentworks.checkpoints.keymaps import flux_bfl, sd3_sai, sd_ldm
from latentworks.checkpoints.keymaps.sd3_diffusers import expected_shapes
from latentworks.models import autoencoder, flux, mmdit, unet


def tagged(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """One distinct value per key, expanded to the key's shape without allocating it."""
    return {k: torch.full((1,) * len(s), float(i)).expand(s) for i, (k, s) in enumerate(shapes.items())}


def assert_same(back: dict[str, torch.Tensor], sd: dict[str, torch.Tensor]) -> None:
    assert back.keys() == sd.keys()
    for k, t in sd.items():
        assert back[k].shape == t.shape, k
        assert back[k].reshape(-1)[0].item() == t.reshape(-1)[0].item(), k


UNET_CONFIGS = {**unet.PRESETS, "sd15-inpaint": replace(unet.PRESETS["sd15"], in_channels=9)}
UNET_CONFIGS |= {"sdxl-inpaint": replace(unet.PRESETS["sdxl"], in_channels=9)}
UNET_CONFIGS |= {"no-mid-attention": replace(unet.PRESETS["tiny"], mid_transformer_depth=0)}


@pytest.mark.parametrize("name", list(UNET_CONFIGS))
def test_unet_ldm_round_trip(name: str) -> None:
    config = UNET_CONFIGS[name]
    sd = tagged(expected_shapes(unet.UNet, config))
    ldm = sd_ldm.ours_to_unet_ldm(sd, config)
    assert len(ldm) == len(sd)
    assert_same(sd_ldm.unet_ldm_to_ours(ldm, config), sd)


@pytest.mark.parametrize("name", list(autoencoder.PRESETS))
def test_vae_ldm_round_trip(name: str) -> None:
    config = autoencoder.PRESETS[name]
    sd = tagged(expected_shapes(autoencoder.Autoencoder, config))
    ldm = sd_ldm.ours_to_vae_ldm(sd, config)
    # LDM stores the mid-block attention projections as 1x1 convolutions.
    c = config.channels[-1]
    assert tuple(ldm["decoder.mid.attn_1.proj_out.weight"].shape) == (c, c, 1, 1)
    assert tuple(ldm["encoder.mid.attn_1.q.weight"].shape) == (c, c, 1, 1)
    assert_same(sd_ldm.vae_ldm_to_ours(ldm, config), sd)
    # Converted files with linear-shaped attention weights load too.
    flat = {k: v.reshape(v.shape[:2]) if ".attn_1." in k and v.ndim == 4 else v for k, v in ldm.items()}
    assert_same(sd_ldm.vae_ldm_to_ours(flat, config), sd)


@pytest.mark.parametrize("name", list(mmdit.PRESETS))
def test_mmdit_sai_round_trip(name: str) -> None:
    config = mmdit.PRESETS[name]
    sd = tagged(expected_shapes(mmdit.MMDiT, config))
    sai = sd3_sai.ours_to_mmdit_sai(sd, config)
    assert len(sai) == len(sd)
    assert_same(sd3_sai.mmdit_sai_to_ours(sai, config), sd)


@pytest.mark.parametrize("name", list(flux.PRESETS))
def test_flux_bfl_round_trip(name: str) -> None:
    config = flux.PRESETS[name]
    sd = tagged(expected_shapes(flux.Flux, config))
    bfl = flux_bfl.ours_to_flux_bfl(sd, config)
    assert len(bfl) == len(sd)
    assert_same(flux_bfl.flux_bfl_to_ours(bfl, config), sd)


def test_real_ldm_key_names_and_counts() -> None:
    """Key counts and names of the released SD 1.5 / SDXL single files (model.diffusion_model.*, first_stage_model.*)."""
    sd15 = sd_ldm.ours_to_unet_ldm(
        tagged(expected_shapes(unet.UNet, unet.PRESETS["sd15"])), unet.PRESETS["sd15"]
    )
    assert len(sd15) == 686
    for key, shape in {
        "input_blocks.0.0.weight": (320, 4, 3, 3),
        "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 768),
        "input_blocks.3.0.op.weight": (320, 320, 3, 3),
        "input_blocks.4.0.skip_connection.weight": (640, 320, 1, 1),
        "input_blocks.11.0.emb_layers.1.weight": (1280, 1280),
        "middle_block.1.proj_in.weight": (1280, 1280, 1, 1),
        "middle_block.2.out_layers.3.weight": (1280, 1280, 3, 3),
        "output_blocks.2.1.conv.weight": (1280, 1280, 3, 3),
        "output_blocks.5.2.conv.weight": (1280, 1280, 3, 3),
        "output_blocks.11.1.transformer_blocks.0.norm1.bias": (320,),
        "time_embed.2.weight": (1280, 1280),
        "out.2.weight": (4, 320, 3, 3),
    }.items():
        assert tuple(sd15[key].shape) == shape, key
    sdxl_cfg = unet.PRESETS["sdxl"]
    sdxl = sd_ldm.ours_to_unet_ldm(tagged(expected_shapes(unet.UNet, sdxl_cfg)), sdxl_cfg)
    assert len(sdxl) == 1680
    assert tuple(sdxl["label_emb.0.0.weight"].shape) == (1280, 2816)
    assert "input_blocks.7.1.transformer_blocks.9.ff.net.2.weight" in sdxl
    assert "output_blocks.2.2.conv.weight" in sdxl and "output_blocks.8.0.skip_connection.weight" in sdxl
    vae_cfg = autoencoder.PRESETS["sd"]
    vae = sd_ldm.ours_to_vae_ldm(tagged(expected_shapes(autoencoder.Autoencoder, vae_cfg)), vae_cfg)
    assert len(vae) == 248
    # LDM's decoder.up.3 is the lowest resolution (runs first): 512 channels, with an upsampler.
    assert tuple(vae["decoder.up.3.block.0.conv1.weight"].shape) == (512, 512, 3, 3)
    assert tuple(vae["decoder.up.0.block.0.nin_shortcut.weight"].shape) == (128, 256, 1, 1)
    assert (
        "decoder.up.0.upsample.conv.weight" not in vae and "encoder.down.3.downsample.conv.weight" not in vae
    )


def test_module_maps_for_lora() -> None:
    m = sd_ldm.unet_ldm_module_map(unet.PRESETS["sdxl"])
    assert (
        m["down.1.transformers.0.blocks.0.cross_attn.q"] == "input_blocks.4.1.transformer_blocks.0.attn2.to_q"
    )
    assert m["add_embed.fc1"] == "label_emb.0.0"
    f = flux_bfl.flux_bfl_module_map(flux.PRESETS["flux-dev"])
    assert f["double_blocks.3.img_mod.linear"] == "double_blocks.3.img_mod.lin"
    assert f["single_blocks.0.linear1"] == "single_blocks.0.linear1"
    assert f["double_blocks.0.txt_mlp.fc2"] == "double_blocks.0.txt_mlp.2"


def test_strict_errors_name_the_keys() -> None:
    config = unet.PRESETS["tiny"]
    ldm = sd_ldm.ours_to_unet_ldm(tagged(expected_shapes(unet.UNet, config)), config)
    missing = dict(ldm)
    del missing["middle_block.1.proj_out.weight"]
    with pytest.raises(KeyError, match="middle_block.1.proj_out.weight"):
        sd_ldm.unet_ldm_to_ours(missing, config)
    with pytest.raises(KeyError, match="label_emb.0.0.weight"):
        sd_ldm.unet_ldm_to_ours({**ldm, "label_emb.0.0.weight": torch.zeros(1)}, config)
    assert sd_ldm.unet_ldm_to_ours({**ldm, "extra.weight": torch.zeros(1)}, config, strict=False).keys() == (
        expected_shapes(unet.UNet, config).keys()
    )
    with pytest.raises(ValueError, match="out.2.weight"):
        sd_ldm.unet_ldm_to_ours({**ldm, "out.2.weight": torch.zeros(5, 32, 3, 3)}, config)

    mcfg = mmdit.PRESETS["tiny"]
    sai = sd3_sai.ours_to_mmdit_sai(tagged(expected_shapes(mmdit.MMDiT, mcfg)), mcfg)
    with pytest.raises(KeyError, match="joint_blocks.1.context_block.attn.qkv"):
        sd3_sai.mmdit_sai_to_ours({k: v for k, v in sai.items() if "1.context_block.attn.qkv" not in k}, mcfg)
    with pytest.raises(KeyError, match="unexpected"):
        sd3_sai.mmdit_sai_to_ours(
            {**sai, "joint_blocks.1.context_block.attn.proj.weight": torch.zeros(1)}, mcfg
        )
    with pytest.raises(ValueError, match="pos_embed"):
        sd3_sai.mmdit_sai_to_ours({**sai, "pos_embed": torch.zeros(1, 4, 32)}, mcfg)

    fcfg = flux.PRESETS["tiny"]
    bfl = flux_bfl.ours_to_flux_bfl(tagged(expected_shapes(flux.Flux, fcfg)), fcfg)
    # A schnell file (no guidance_in) is not a dev config: the error names the missing keys.
    with pytest.raises(KeyError, match="guidance_in"):
        flux_bfl.flux_bfl_to_ours({k: v for k, v in bfl.items() if not k.startswith("guidance_in")}, fcfg)
    with pytest.raises(KeyError, match="guidance_in"):
        flux_bfl.flux_bfl_to_ours(bfl, replace(fcfg, guidance_embed=False))
