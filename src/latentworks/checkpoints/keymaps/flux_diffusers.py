"""Key map: diffusers ``FluxTransformer2DModel`` <-> our :class:`~latentworks.models.flux.Flux`.

Same rule engine as the SD3 map (:mod:`latentworks.checkpoints.keymaps.sd3_diffusers`). Our model keeps the
original BFL layout: fused ``qkv`` in double blocks, and in single blocks one ``linear1`` producing q, k, v
and the MLP input (diffusers splits it into ``attn.to_q/to_k/to_v`` and ``proj_mlp``, sizes D, D, D, 4D).
``norm_out.linear`` is stored (scale, shift) by diffusers and (shift, scale) by us.

Adding the BFL single-file layout later is one more rules function over the same engine, almost all
``copy``: our names differ from BFL's only at ``{img,txt}_attn.norm.{query,key}_norm.scale``
(ours ``{img,txt}_attn.{q,k}_norm.weight``), ``{img,txt}_mlp.{0,2}`` (ours ``.fc1/.fc2``),
``{img,txt}_mod.lin`` (ours ``.linear``), ``modulation.lin``, ``norm.{query,key}_norm.scale`` in single
blocks, ``final_layer.adaLN_modulation.1`` (ours ``final_layer.modulation.linear``, same order) and
``{time,vector,guidance}_in.{in,out}_layer`` (identical).
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from latentworks.checkpoints.keymaps.sd3_diffusers import KeyRule, apply_rules, expected_shapes
from latentworks.models.flux import Flux, FluxConfig


def _linear(ours: str, theirs: str, op: str = "copy") -> list[KeyRule]:
    return [KeyRule(f"{ours}.{p}", (f"{theirs}.{p}",), op) for p in ("weight", "bias")]  # type: ignore[arg-type]


def flux_diffusers_rules(config: FluxConfig) -> list[KeyRule]:
    """The full table for ``config``."""
    d, hidden = config.width, config.mlp_hidden_dim
    rules = [
        *_linear("img_in", "x_embedder"),
        *_linear("txt_in", "context_embedder"),
        *_linear("time_in.in_layer", "time_text_embed.timestep_embedder.linear_1"),
        *_linear("time_in.out_layer", "time_text_embed.timestep_embedder.linear_2"),
        *_linear("vector_in.in_layer", "time_text_embed.text_embedder.linear_1"),
        *_linear("vector_in.out_layer", "time_text_embed.text_embedder.linear_2"),
        *_linear("final_layer.modulation.linear", "norm_out.linear", "swap"),
        *_linear("final_layer.linear", "proj_out"),
    ]
    if config.guidance_embed:
        rules += _linear("guidance_in.in_layer", "time_text_embed.guidance_embedder.linear_1")
        rules += _linear("guidance_in.out_layer", "time_text_embed.guidance_embedder.linear_2")
    for i in range(config.double_depth):
        ours, theirs = f"double_blocks.{i}", f"transformer_blocks.{i}"
        for stream, names in (
            ("img", ("to_q", "to_k", "to_v", "norm_q", "norm_k", "to_out.0", "norm1", "ff")),
            ("txt", ("add_q_proj", "add_k_proj", "add_v_proj", "norm_added_q", "norm_added_k", "to_add_out",
                     "norm1_context", "ff_context")),
        ):  # fmt: skip
            q, k, v, nq, nk, out, mod, ff = names
            rules += [
                KeyRule(f"{ours}.{stream}_attn.qkv.{p}", tuple(f"{theirs}.attn.{n}.{p}" for n in (q, k, v)),
                        "cat", (d, d, d))
                for p in ("weight", "bias")
            ]  # fmt: skip
            rules += [
                KeyRule(f"{ours}.{stream}_attn.q_norm.weight", (f"{theirs}.attn.{nq}.weight",)),
                KeyRule(f"{ours}.{stream}_attn.k_norm.weight", (f"{theirs}.attn.{nk}.weight",)),
                *_linear(f"{ours}.{stream}_attn.proj", f"{theirs}.attn.{out}"),
                *_linear(f"{ours}.{stream}_mod.linear", f"{theirs}.{mod}.linear"),
                *_linear(f"{ours}.{stream}_mlp.fc1", f"{theirs}.{ff}.net.0.proj"),
                *_linear(f"{ours}.{stream}_mlp.fc2", f"{theirs}.{ff}.net.2"),
            ]
    for i in range(config.single_depth):
        ours, theirs = f"single_blocks.{i}", f"single_transformer_blocks.{i}"
        sources = ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")
        rules += [
            KeyRule(
                f"{ours}.linear1.{p}", tuple(f"{theirs}.{n}.{p}" for n in sources), "cat", (d, d, d, hidden)
            )
            for p in ("weight", "bias")
        ]
        rules += [
            KeyRule(f"{ours}.q_norm.weight", (f"{theirs}.attn.norm_q.weight",)),
            KeyRule(f"{ours}.k_norm.weight", (f"{theirs}.attn.norm_k.weight",)),
            *_linear(f"{ours}.linear2", f"{theirs}.proj_out"),
            *_linear(f"{ours}.modulation.linear", f"{theirs}.norm.linear"),
        ]
    return rules


def flux_from_diffusers(state_dict: Mapping[str, Tensor], config: FluxConfig) -> dict[str, Tensor]:
    """diffusers ``FluxTransformer2DModel`` state dict -> ours (load with ``strict=True``)."""
    shapes = expected_shapes(Flux, config)
    return apply_rules(
        state_dict, flux_diffusers_rules(config), shapes, to_ours=True, layout="diffusers FLUX"
    )


def flux_to_diffusers(state_dict: Mapping[str, Tensor], config: FluxConfig) -> dict[str, Tensor]:
    """Our Flux state dict -> diffusers ``FluxTransformer2DModel`` layout."""
    shapes = expected_shapes(Flux, config)
    return apply_rules(
        state_dict, flux_diffusers_rules(config), shapes, to_ours=False, layout="diffusers FLUX"
    )
