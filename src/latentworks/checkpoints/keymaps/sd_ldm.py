"""Key maps between our SD U-Net / KL autoencoder and the original LDM ("CompVis") single-file layout.

Single-file SD 1.x / 2.x / SDXL checkpoints store the U-Net under ``model.diffusion_model.`` and the VAE
under ``first_stage_model.`` (or ``vae.``). The functions here work on *component* state dicts, without
that prefix: strip it first (``checkpoints.detect`` reports it).

LDM U-Net layout (``L = layers_per_block``, ``n`` levels):
    input_blocks.0.0                  conv_in
    input_blocks.{1 + i(L+1) + j}.0   down.{i}.resnets.{j}      (.1 its transformer, when level i has one)
    input_blocks.{(i+1)(L+1)}.0.op    down.{i}.downsample.conv   (every level but the last)
    middle_block.{0,1,2}              mid.res1, mid.transformer, mid.res2  (middle_block.1 = res2 without one)
    output_blocks.{i(L+1) + j}.0      up.{i}.resnets.{j}        (.1 transformer; .1 or .2 ``conv`` upsample)
    time_embed.{0,2}, label_emb.0.{0,2} (SDXL), out.{0,2}
    ResBlock: in_layers.{0,2}, emb_layers.1, out_layers.{0,3}, skip_connection
    transformer blocks: the same names as diffusers (attn1.to_q ... ff.net.2, norm1..3)

LDM VAE layout: ``encoder.down.{i}.block.{j}``, ``encoder.down.{i}.downsample``, ``{en,de}coder.mid.block_1 /
attn_1 / block_2``, ``decoder.up.{n-1-k}.block.{j}`` (LDM numbers decoder levels by resolution, we number
them in the order they run), ResBlock ``nin_shortcut``, attention ``norm, q, k, v, proj_out`` stored as
1x1 convolutions (reshaped to our linear layers and back).

Everything is a rename: shapes never change (except the 1x1-conv attention), so the expected shape of every
key is the shape in our model built on the ``meta`` device.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from latentworks.checkpoints.keymaps.sd_diffusers import (
    convert,
    key_table,
    model_shapes,
    nest,
    transformer_map,
)
from latentworks.models.autoencoder import AutoencoderConfig
from latentworks.models.unet import UNetConfig

# Sub-module renames inside one block (ours -> LDM); params (weight/bias) are appended.
UNET_RESBLOCK = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "skip": "skip_connection",
}
VAE_RESBLOCK = {
    "norm1": "norm1",
    "conv1": "conv1",
    "norm2": "norm2",
    "conv2": "conv2",
    "skip": "nin_shortcut",
}
VAE_ATTENTION = {"norm": "norm", "q": "q", "k": "k", "v": "v", "out": "proj_out"}
_CONV_ATTENTION = ("q", "k", "v", "proj_out")  # LDM modules stored as 1x1 convs: (C, C, 1, 1)


def unet_ldm_module_map(config: UNetConfig) -> dict[str, str]:
    """``{our_module: ldm_module}`` for every module with parameters in ``UNet(config)``.

    LDM module names are what kohya/A1111 LoRAs for SDXL use (``lora_unet_input_blocks_4_1_...``).
    """
    n, per = len(config.channels), config.layers_per_block
    m: dict[str, str] = {
        "conv_in": "input_blocks.0.0",
        "time_embed.fc1": "time_embed.0",
        "time_embed.fc2": "time_embed.2",
        "norm_out": "out.0",
        "conv_out": "out.2",
    }
    if config.has_added_conditioning:
        m |= {"add_embed.fc1": "label_emb.0.0", "add_embed.fc2": "label_emb.0.2"}
    idx = 1
    for i in range(n):
        depth = config.transformer_depth[i]
        for j in range(per):
            m |= nest(f"down.{i}.resnets.{j}", f"input_blocks.{idx}.0", UNET_RESBLOCK)
            if depth:
                m |= transformer_map(f"down.{i}.transformers.{j}", f"input_blocks.{idx}.1", depth)
            idx += 1
        if i < n - 1:
            m[f"down.{i}.downsample.conv"] = f"input_blocks.{idx}.0.op"
            idx += 1
    m |= nest("mid.res1", "middle_block.0", UNET_RESBLOCK)
    if config.mid_transformer_depth:
        m |= transformer_map("mid.transformer", "middle_block.1", config.mid_transformer_depth)
        m |= nest("mid.res2", "middle_block.2", UNET_RESBLOCK)
    else:
        m |= nest("mid.res2", "middle_block.1", UNET_RESBLOCK)
    idx = 0
    for i in range(n):
        depth = config.transformer_depth[n - 1 - i]
        for j in range(per + 1):
            m |= nest(f"up.{i}.resnets.{j}", f"output_blocks.{idx}.0", UNET_RESBLOCK)
            if depth:
                m |= transformer_map(f"up.{i}.transformers.{j}", f"output_blocks.{idx}.1", depth)
            if j == per and i < n - 1:
                m[f"up.{i}.upsample.conv"] = f"output_blocks.{idx}.{2 if depth else 1}.conv"
            idx += 1
    return m


def _vae_mid(ours: str, theirs: str) -> dict[str, str]:
    return (
        nest(f"{ours}.res1", f"{theirs}.block_1", VAE_RESBLOCK)
        | nest(f"{ours}.attn", f"{theirs}.attn_1", VAE_ATTENTION)
        | nest(f"{ours}.res2", f"{theirs}.block_2", VAE_RESBLOCK)
    )


def vae_ldm_module_map(config: AutoencoderConfig) -> dict[str, str]:
    """``{our_module: ldm_module}`` for every module with parameters in ``Autoencoder(config)``."""
    n = len(config.channels)
    m: dict[str, str] = {"encoder.conv_in": "encoder.conv_in"}
    for i in range(n):
        for j in range(config.layers_per_block):
            m |= nest(f"encoder.down.{i}.resnets.{j}", f"encoder.down.{i}.block.{j}", VAE_RESBLOCK)
        m[f"encoder.down.{i}.downsample.conv"] = f"encoder.down.{i}.downsample.conv"
    m |= _vae_mid("encoder.mid", "encoder.mid")
    m |= {
        "encoder.norm_out": "encoder.norm_out",
        "encoder.conv_out": "encoder.conv_out",
        "quant_conv": "quant_conv",
        "post_quant_conv": "post_quant_conv",
        "decoder.conv_in": "decoder.conv_in",
    }
    m |= _vae_mid("decoder.mid", "decoder.mid")
    for k in range(n):
        level = n - 1 - k  # LDM numbers decoder levels by resolution (up.0 = full size, runs last)
        for j in range(config.layers_per_block + 1):
            m |= nest(f"decoder.up.{k}.resnets.{j}", f"decoder.up.{level}.block.{j}", VAE_RESBLOCK)
        m[f"decoder.up.{k}.upsample.conv"] = f"decoder.up.{level}.upsample.conv"
    m |= {"decoder.norm_out": "decoder.norm_out", "decoder.conv_out": "decoder.conv_out"}
    return m


def unet_ldm_to_ours(
    sd: Mapping[str, Tensor], config: UNetConfig, *, strict: bool = True
) -> dict[str, Tensor]:
    """LDM U-Net state dict (no ``model.diffusion_model.`` prefix) -> ours (``UNet(config).load_state_dict``).

    Raises KeyError naming missing (or, when ``strict``, unexpected) keys and ValueError on a wrong shape.
    """
    table = key_table(config, unet_ldm_module_map(config))
    shapes = model_shapes(config)
    inverse = {theirs: ours for ours, theirs in table.items()}
    return convert(sd, inverse, {t: shapes[o] for t, o in inverse.items()}, source="LDM U-Net", strict=strict)


def ours_to_unet_ldm(
    sd: Mapping[str, Tensor], config: UNetConfig, *, strict: bool = True
) -> dict[str, Tensor]:
    """Our U-Net state dict -> LDM names (prepend ``model.diffusion_model.`` for a full single file)."""
    table = key_table(config, unet_ldm_module_map(config))
    return convert(sd, table, model_shapes(config), source="latentworks U-Net", strict=strict)


def vae_ldm_to_ours(
    sd: Mapping[str, Tensor], config: AutoencoderConfig, *, strict: bool = True
) -> dict[str, Tensor]:
    """LDM VAE state dict (no ``first_stage_model.`` prefix) -> ours; 1x1-conv attention becomes linear."""
    table = key_table(config, vae_ldm_module_map(config))
    shapes = model_shapes(config)
    inverse = {theirs: ours for ours, theirs in table.items()}
    return convert(
        sd,
        inverse,
        {t: shapes[o] for t, o in inverse.items()},
        source="LDM VAE",
        strict=strict,
        reshape_singletons=True,
    )


def ours_to_vae_ldm(
    sd: Mapping[str, Tensor], config: AutoencoderConfig, *, strict: bool = True
) -> dict[str, Tensor]:
    """Our autoencoder state dict -> LDM names, attention projections as (C, C, 1, 1) convs like the originals."""
    table = key_table(config, vae_ldm_module_map(config))
    out = convert(sd, table, model_shapes(config), source="latentworks VAE", strict=strict)
    for key, tensor in out.items():
        module, _, param = key.rpartition(".")
        if param == "weight" and ".attn_1." in key and module.rpartition(".")[2] in _CONV_ATTENTION:
            out[key] = tensor.reshape(*tensor.shape, 1, 1)  # (C, C) -> (C, C, 1, 1)
    return out
