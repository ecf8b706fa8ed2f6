"""Key maps between our SD U-Net / KL autoencoder parameters and diffusers' folder layout.

The maps are data: ``unet_module_map(config)`` and ``vae_module_map(config)`` return ordered
``{our_module: diffusers_module}`` dicts generated from the config (nothing else), and every tensor
``<module>.<param>`` is renamed through them. Shapes never change, so the expected shape of every key
on either side is the shape in our model (built on the ``meta`` device, so it costs no memory).

Adding the original LDM single-file layout ("model.diffusion_model.*", "first_stage_model.*") means
writing ``unet_ldm_module_map`` / ``vae_ldm_module_map`` next to these and calling ``convert`` with them
(LDM stores the VAE attention projections as 1x1 convs: pass ``reshape_singletons=True``).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache

from torch import Tensor

from latentworks.checkpoints.keymaps.sd3_diffusers import expected_shapes
from latentworks.models.autoencoder import Autoencoder, AutoencoderConfig
from latentworks.models.unet import UNet, UNetConfig

# Sub-module renames inside one block (ours -> diffusers); params (weight/bias) are appended.
RESBLOCK = {
    "norm1": "norm1",
    "conv1": "conv1",
    "time_proj": "time_emb_proj",
    "norm2": "norm2",
    "conv2": "conv2",
    "skip": "conv_shortcut",
}
TRANSFORMER_BLOCK = {
    "norm1": "norm1",
    "self_attn.q": "attn1.to_q",
    "self_attn.k": "attn1.to_k",
    "self_attn.v": "attn1.to_v",
    "self_attn.out": "attn1.to_out.0",
    "norm2": "norm2",
    "cross_attn.q": "attn2.to_q",
    "cross_attn.k": "attn2.to_k",
    "cross_attn.v": "attn2.to_v",
    "cross_attn.out": "attn2.to_out.0",
    "norm3": "norm3",
    "ff.geglu": "ff.net.0.proj",
    "ff.out": "ff.net.2",
}
VAE_ATTENTION = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "out": "to_out.0"}


def nest(ours: str, theirs: str, table: Mapping[str, str]) -> dict[str, str]:
    return {f"{ours}.{a}": f"{theirs}.{b}" for a, b in table.items()}


def transformer_map(ours: str, theirs: str, depth: int) -> dict[str, str]:
    out = {f"{ours}.{m}": f"{theirs}.{m}" for m in ("norm", "proj_in", "proj_out")}
    for k in range(depth):
        out |= nest(f"{ours}.blocks.{k}", f"{theirs}.transformer_blocks.{k}", TRANSFORMER_BLOCK)
    return out


def unet_module_map(config: UNetConfig) -> dict[str, str]:
    """``{our_module: diffusers_module}`` for every module with parameters in ``UNet(config)``."""
    n = len(config.channels)
    m: dict[str, str] = {
        "conv_in": "conv_in",
        "time_embed.fc1": "time_embedding.linear_1",
        "time_embed.fc2": "time_embedding.linear_2",
        "norm_out": "conv_norm_out",
        "conv_out": "conv_out",
    }
    if config.num_classes:  # SD x4 upscaler: num_class_embeds (an nn.Embedding of the noise level)
        m["class_embed"] = "class_embedding"
    if config.has_added_conditioning and config.num_time_ids == 0:  # unCLIP: class_embed_type="projection"
        m |= {"add_embed.fc1": "class_embedding.linear_1", "add_embed.fc2": "class_embedding.linear_2"}
    elif config.has_added_conditioning:
        m |= {"add_embed.fc1": "add_embedding.linear_1", "add_embed.fc2": "add_embedding.linear_2"}
    for i in range(n):
        depth = config.transformer_depth[i]
        for j in range(config.layers_per_block):
            m |= nest(f"down.{i}.resnets.{j}", f"down_blocks.{i}.resnets.{j}", RESBLOCK)
            if depth:
                m |= transformer_map(f"down.{i}.transformers.{j}", f"down_blocks.{i}.attentions.{j}", depth)
        if i < n - 1:
            m[f"down.{i}.downsample.conv"] = f"down_blocks.{i}.downsamplers.0.conv"
    m |= nest("mid.res1", "mid_block.resnets.0", RESBLOCK)
    m |= transformer_map("mid.transformer", "mid_block.attentions.0", config.mid_transformer_depth)
    m |= nest("mid.res2", "mid_block.resnets.1", RESBLOCK)
    for i in range(n):
        depth = config.transformer_depth[n - 1 - i]
        for j in range(config.layers_per_block + 1):
            m |= nest(f"up.{i}.resnets.{j}", f"up_blocks.{i}.resnets.{j}", RESBLOCK)
            if depth:
                m |= transformer_map(f"up.{i}.transformers.{j}", f"up_blocks.{i}.attentions.{j}", depth)
        if i < n - 1:
            m[f"up.{i}.upsample.conv"] = f"up_blocks.{i}.upsamplers.0.conv"
    return m


def _vae_mid(ours: str, theirs: str) -> dict[str, str]:
    return (
        nest(f"{ours}.res1", f"{theirs}.resnets.0", RESBLOCK)
        | nest(f"{ours}.attn", f"{theirs}.attentions.0", VAE_ATTENTION)
        | nest(f"{ours}.res2", f"{theirs}.resnets.1", RESBLOCK)
    )


def vae_module_map(config: AutoencoderConfig) -> dict[str, str]:
    """``{our_module: diffusers_module}`` for every module with parameters in ``Autoencoder(config)``."""
    n = len(config.channels)
    m: dict[str, str] = {"encoder.conv_in": "encoder.conv_in"}
    for i in range(n):
        for j in range(config.layers_per_block):
            m |= nest(f"encoder.down.{i}.resnets.{j}", f"encoder.down_blocks.{i}.resnets.{j}", RESBLOCK)
        m[f"encoder.down.{i}.downsample.conv"] = f"encoder.down_blocks.{i}.downsamplers.0.conv"
    m |= _vae_mid("encoder.mid", "encoder.mid_block")
    m |= {
        "encoder.norm_out": "encoder.conv_norm_out",
        "encoder.conv_out": "encoder.conv_out",
        "quant_conv": "quant_conv",
        "post_quant_conv": "post_quant_conv",
        "decoder.conv_in": "decoder.conv_in",
    }
    m |= _vae_mid("decoder.mid", "decoder.mid_block")
    for i in range(n):
        for j in range(config.layers_per_block + 1):
            m |= nest(f"decoder.up.{i}.resnets.{j}", f"decoder.up_blocks.{i}.resnets.{j}", RESBLOCK)
        m[f"decoder.up.{i}.upsample.conv"] = f"decoder.up_blocks.{i}.upsamplers.0.conv"
    m |= {"decoder.norm_out": "decoder.conv_norm_out", "decoder.conv_out": "decoder.conv_out"}
    return m


@lru_cache(maxsize=16)
def model_shapes(config: UNetConfig | AutoencoderConfig) -> dict[str, tuple[int, ...]]:
    """Shapes of every tensor of our U-Net or autoencoder for ``config`` (built on the meta device)."""
    return expected_shapes(UNet if isinstance(config, UNetConfig) else Autoencoder, config)


def key_table(config: UNetConfig | AutoencoderConfig, module_map: Mapping[str, str]) -> dict[str, str]:
    """``{our_key: their_key}`` for every tensor of our model, through ``module_map``."""
    table = {}
    for key in model_shapes(config):
        module, _, param = key.rpartition(".")
        if module not in module_map:
            raise KeyError(
                f"internal: module {module!r} of {type(config).__name__} has no entry in the key map"
            )
        table[key] = f"{module_map[module]}.{param}"
    if len(set(table.values())) != len(table):
        raise KeyError("internal: the key map sends two of our keys to the same target key")
    return table


def _preview(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(repr(k) for k in keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def convert(
    sd: Mapping[str, Tensor],
    table: Mapping[str, str],
    shapes: Mapping[str, tuple[int, ...]],
    *,
    source: str,
    strict: bool = True,
    reshape_singletons: bool = False,
) -> dict[str, Tensor]:
    """Rename ``sd`` through ``table`` (source key -> target key), checking every shape.

    Args:
        shapes: expected shape of each *source* key (identical to the target's for pure renames).
        source: a name for the input layout used in errors ("diffusers U-Net", ...).
        strict: raise on keys of ``sd`` that the table does not know; False drops them.
        reshape_singletons: accept a tensor whose shape differs from the expected one only by size-1
            axes (1x1 conv vs linear) and reshape it.
    Raises:
        KeyError: keys missing from ``sd`` (or unexpected, when strict).
        ValueError: a tensor with the wrong shape (names the key, expected and actual shapes).
    """
    missing = [k for k in table if k not in sd]
    if missing:
        raise KeyError(
            f"{source} state dict lacks {len(missing)} keys the model needs: {_preview(missing)}; "
            "is it the right model family and config?"
        )
    unexpected = [k for k in sd if k not in table]
    if unexpected and strict:
        raise KeyError(
            f"{source} state dict has {len(unexpected)} keys this config does not use: {_preview(unexpected)}; "
            "check the config (or pass strict=False to drop them)"
        )
    out: dict[str, Tensor] = {}
    for src, dst in table.items():
        tensor = sd[src]
        expected = shapes[src]
        if tuple(tensor.shape) != expected:
            squeezable = [s for s in tensor.shape if s != 1] == [s for s in expected if s != 1]
            if not (reshape_singletons and squeezable):
                raise ValueError(
                    f"{source} key {src!r} (-> {dst!r}) has shape {tuple(tensor.shape)}, expected {expected}"
                )
            tensor = tensor.reshape(expected)
        out[dst] = tensor
    return out


def unet_from_diffusers(
    sd: Mapping[str, Tensor], config: UNetConfig, *, strict: bool = True
) -> dict[str, Tensor]:
    """diffusers ``UNet2DConditionModel`` state dict -> ours (load with ``UNet(config).load_state_dict``)."""
    table = key_table(config, unet_module_map(config))
    shapes = model_shapes(config)
    inverse = {theirs: ours for ours, theirs in table.items()}
    return convert(
        sd, inverse, {t: shapes[o] for t, o in inverse.items()}, source="diffusers U-Net", strict=strict
    )


def unet_to_diffusers(
    sd: Mapping[str, Tensor], config: UNetConfig, *, strict: bool = True
) -> dict[str, Tensor]:
    """Our U-Net state dict -> diffusers ``UNet2DConditionModel`` names."""
    table = key_table(config, unet_module_map(config))
    return convert(sd, table, model_shapes(config), source="latentworks U-Net", strict=strict)


def vae_from_diffusers(
    sd: Mapping[str, Tensor], config: AutoencoderConfig, *, strict: bool = True
) -> dict[str, Tensor]:
    """diffusers ``AutoencoderKL`` state dict -> ours (load with ``Autoencoder(config).load_state_dict``)."""
    table = key_table(config, vae_module_map(config))
    shapes = model_shapes(config)
    inverse = {theirs: ours for ours, theirs in table.items()}
    return convert(
        sd, inverse, {t: shapes[o] for t, o in inverse.items()}, source="diffusers VAE", strict=strict
    )


def vae_to_diffusers(
    sd: Mapping[str, Tensor], config: AutoencoderConfig, *, strict: bool = True
) -> dict[str, Tensor]:
    """Our autoencoder state dict -> diffusers ``AutoencoderKL`` names."""
    table = key_table(config, vae_module_map(config))
    return convert(sd, table, model_shapes(config), source="latentworks VAE", strict=strict)
