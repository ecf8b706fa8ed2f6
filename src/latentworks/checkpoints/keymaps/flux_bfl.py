"""Key map: Black Forest Labs' FLUX.1 single-file layout <-> our :class:`~latentworks.models.flux.Flux`.

BFL component files (``flux1-dev.safetensors``) are bare; all-in-one files put the transformer under
``model.diffusion_model.``; these functions take the state dict *without* that prefix. Our model keeps
BFL's structure (fused ``qkv``, single-block ``linear1``/``linear2``, adaLN chunks in BFL order), so every
rule is a ``copy`` and only names differ:

    {img,txt}_mod.lin -> {img,txt}_mod.linear        {img,txt}_mlp.{0,2} -> {img,txt}_mlp.{fc1,fc2}
    {img,txt}_attn.norm.{query,key}_norm.scale -> {img,txt}_attn.{q,k}_norm.weight
    single_blocks.{i}.modulation.lin -> .modulation.linear
    single_blocks.{i}.norm.{query,key}_norm.scale -> .{q,k}_norm.weight
    final_layer.adaLN_modulation.1 -> final_layer.modulation.linear   (both (shift, scale))
    img_in, txt_in, {time,vector,guidance}_in.{in,out}_layer, *.qkv, *.proj, linear1, linear2: identical
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from latentworks.checkpoints.keymaps.sd3_diffusers import KeyRule, apply_rules, expected_shapes
from latentworks.models.flux import Flux, FluxConfig


def _linear(ours: str, theirs: str) -> list[KeyRule]:
    return [KeyRule(f"{ours}.{p}", (f"{theirs}.{p}",)) for p in ("weight", "bias")]


def flux_bfl_rules(config: FluxConfig) -> list[KeyRule]:
    """The full table for ``config`` (depths and the guidance embedder decide which keys exist)."""
    rules = [*_linear("img_in", "img_in"), *_linear("txt_in", "txt_in")]
    embedders = ["time_in", "vector_in"] + (["guidance_in"] if config.guidance_embed else [])
    for name in embedders:
        rules += _linear(f"{name}.in_layer", f"{name}.in_layer")
        rules += _linear(f"{name}.out_layer", f"{name}.out_layer")
    rules += _linear("final_layer.modulation.linear", "final_layer.adaLN_modulation.1")
    rules += _linear("final_layer.linear", "final_layer.linear")
    for i in range(config.double_depth):
        b = f"double_blocks.{i}"
        for s in ("img", "txt"):
            rules += _linear(f"{b}.{s}_mod.linear", f"{b}.{s}_mod.lin")
            rules += _linear(f"{b}.{s}_attn.qkv", f"{b}.{s}_attn.qkv")
            rules += [
                KeyRule(f"{b}.{s}_attn.q_norm.weight", (f"{b}.{s}_attn.norm.query_norm.scale",)),
                KeyRule(f"{b}.{s}_attn.k_norm.weight", (f"{b}.{s}_attn.norm.key_norm.scale",)),
            ]
            rules += _linear(f"{b}.{s}_attn.proj", f"{b}.{s}_attn.proj")
            rules += _linear(f"{b}.{s}_mlp.fc1", f"{b}.{s}_mlp.0")
            rules += _linear(f"{b}.{s}_mlp.fc2", f"{b}.{s}_mlp.2")
    for i in range(config.single_depth):
        b = f"single_blocks.{i}"
        rules += _linear(f"{b}.linear1", f"{b}.linear1")
        rules += _linear(f"{b}.linear2", f"{b}.linear2")
        rules += [
            KeyRule(f"{b}.q_norm.weight", (f"{b}.norm.query_norm.scale",)),
            KeyRule(f"{b}.k_norm.weight", (f"{b}.norm.key_norm.scale",)),
        ]
        rules += _linear(f"{b}.modulation.linear", f"{b}.modulation.lin")
    return rules


def flux_bfl_module_map(config: FluxConfig) -> dict[str, str]:
    """``{our_module: bfl_module}`` for every module with parameters (kohya FLUX LoRAs use BFL names).

    The RMS norms map too, though their parameter is ``weight`` in ours and ``scale`` in BFL's.
    """
    return {r.ours.rpartition(".")[0]: r.theirs[0].rpartition(".")[0] for r in flux_bfl_rules(config)}


def flux_bfl_to_ours(state_dict: Mapping[str, Tensor], config: FluxConfig) -> dict[str, Tensor]:
    """BFL FLUX state dict (no ``model.diffusion_model.`` prefix) -> ours (load with ``strict=True``).

    Raises KeyError naming missing or unexpected keys, ValueError naming a tensor with the wrong shape.
    """
    shapes = expected_shapes(Flux, config)
    return apply_rules(state_dict, flux_bfl_rules(config), shapes, to_ours=True, layout="BFL FLUX")


def ours_to_flux_bfl(state_dict: Mapping[str, Tensor], config: FluxConfig) -> dict[str, Tensor]:
    """Our Flux state dict -> BFL single-file layout."""
    shapes = expected_shapes(Flux, config)
    return apply_rules(state_dict, flux_bfl_rules(config), shapes, to_ours=False, layout="BFL FLUX")
