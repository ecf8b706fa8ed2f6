"""Key map: Stability AI's single-file MM-DiT layout (SD3 / SD3.5) <-> our :class:`~latentworks.models.mmdit.MMDiT`.

SAI files store the transformer under ``model.diffusion_model.`` (full checkpoints) or bare (component
files); these functions take the component state dict *without* that prefix. The SAI layout is already
ours up to names: fused ``qkv``, adaLN chunks in (shift, scale, gate, ...) order, the last block's
``context_block`` with (shift, scale) only, so every rule is a ``copy`` over the shared engine of
:mod:`latentworks.checkpoints.keymaps.sd3_diffusers`:

    x_embedder.proj -> patch_embed             pos_embed -> pos_embed (1, N, D)
    t_embedder.mlp.{0,2} -> time_embed.{in,out}_layer
    y_embedder.mlp.{0,2} -> pooled_embed.{in,out}_layer
    context_embedder -> context_embed          final_layer.adaLN_modulation.1 -> final_layer.modulation.linear
    joint_blocks.{i}.x_block.adaLN_modulation.1 -> blocks.{i}.x_mod.linear
    joint_blocks.{i}.x_block.attn.{qkv, proj, ln_q, ln_k} -> blocks.{i}.x_attn.{qkv, proj, q_norm, k_norm}
    joint_blocks.{i}.x_block.attn2.* -> blocks.{i}.x_attn2.*   (SD3.5 Medium "MMDiT-X" blocks)
    joint_blocks.{i}.x_block.mlp.{fc1, fc2} -> blocks.{i}.x_mlp.{fc1, fc2}
    joint_blocks.{i}.context_block.* -> blocks.{i}.context_{mod, attn, mlp}.*
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from latentworks.checkpoints.keymaps.sd3_diffusers import KeyRule, apply_rules, expected_shapes
from latentworks.models.mmdit import MMDiT, MMDiTConfig


def _linear(ours: str, theirs: str) -> list[KeyRule]:
    return [KeyRule(f"{ours}.{p}", (f"{theirs}.{p}",)) for p in ("weight", "bias")]


def _attention(ours: str, theirs: str, qk_norm: bool, with_proj: bool) -> list[KeyRule]:
    rules = _linear(f"{ours}.qkv", f"{theirs}.qkv")
    if qk_norm:
        rules += [KeyRule(f"{ours}.q_norm.weight", (f"{theirs}.ln_q.weight",))]
        rules += [KeyRule(f"{ours}.k_norm.weight", (f"{theirs}.ln_k.weight",))]
    if with_proj:
        rules += _linear(f"{ours}.proj", f"{theirs}.proj")
    return rules


def sd3_sai_rules(config: MMDiTConfig) -> list[KeyRule]:
    """The full table for ``config`` (depth, qk-norm and dual-attention blocks decide which keys exist)."""
    qk = config.qk_norm is not None
    rules = [
        *_linear("patch_embed", "x_embedder.proj"),
        KeyRule("pos_embed", ("pos_embed",)),
        *_linear("time_embed.in_layer", "t_embedder.mlp.0"),
        *_linear("time_embed.out_layer", "t_embedder.mlp.2"),
        *_linear("pooled_embed.in_layer", "y_embedder.mlp.0"),
        *_linear("pooled_embed.out_layer", "y_embedder.mlp.2"),
        *_linear("context_embed", "context_embedder"),
        *_linear("final_layer.modulation.linear", "final_layer.adaLN_modulation.1"),
        *_linear("final_layer.linear", "final_layer.linear"),
    ]
    for i in range(config.depth):
        ours, x, ctx = f"blocks.{i}", f"joint_blocks.{i}.x_block", f"joint_blocks.{i}.context_block"
        pre_only = i == config.depth - 1
        rules += _linear(f"{ours}.x_mod.linear", f"{x}.adaLN_modulation.1")
        rules += _attention(f"{ours}.x_attn", f"{x}.attn", qk, True)
        if i in config.dual_attention_layers:
            rules += _attention(f"{ours}.x_attn2", f"{x}.attn2", qk, True)
        rules += _linear(f"{ours}.x_mlp.fc1", f"{x}.mlp.fc1")
        rules += _linear(f"{ours}.x_mlp.fc2", f"{x}.mlp.fc2")
        rules += _linear(f"{ours}.context_mod.linear", f"{ctx}.adaLN_modulation.1")
        rules += _attention(f"{ours}.context_attn", f"{ctx}.attn", qk, not pre_only)
        if not pre_only:
            rules += _linear(f"{ours}.context_mlp.fc1", f"{ctx}.mlp.fc1")
            rules += _linear(f"{ours}.context_mlp.fc2", f"{ctx}.mlp.fc2")
    return rules


def mmdit_sai_module_map(config: MMDiTConfig) -> dict[str, str]:
    """``{our_module: sai_module}`` (every rule is a rename of one module's parameters)."""
    return {
        r.ours.rpartition(".")[0]: r.theirs[0].rpartition(".")[0]
        for r in sd3_sai_rules(config)
        if "." in r.ours
    }


def mmdit_sai_to_ours(state_dict: Mapping[str, Tensor], config: MMDiTConfig) -> dict[str, Tensor]:
    """SAI single-file MM-DiT state dict (no ``model.diffusion_model.`` prefix) -> ours (``strict=True``).

    Raises KeyError naming missing or unexpected keys, ValueError naming a tensor with the wrong shape.
    """
    shapes = expected_shapes(MMDiT, config)
    return apply_rules(state_dict, sd3_sai_rules(config), shapes, to_ours=True, layout="SAI MM-DiT")


def ours_to_mmdit_sai(state_dict: Mapping[str, Tensor], config: MMDiTConfig) -> dict[str, Tensor]:
    """Our MMDiT state dict -> SAI single-file layout (prepend ``model.diffusion_model.`` for a full file)."""
    shapes = expected_shapes(MMDiT, config)
    return apply_rules(state_dict, sd3_sai_rules(config), shapes, to_ours=False, layout="SAI MM-DiT")
