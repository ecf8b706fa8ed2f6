"""Key map: diffusers ``QwenImageTransformer2DModel`` (and ComfyUI's single files) <-> our
:class:`~latentworks.models.qwenimage.QwenImage`.

Same rule engine as the SD3 and FLUX maps (:mod:`latentworks.checkpoints.keymaps.sd3_diffusers`). Ours fuses
each stream's q, k, v into one ``qkv`` (diffusers: ``attn.to_q/to_k/to_v`` for the image stream,
``attn.add_q_proj/add_k_proj/add_v_proj`` for the text stream); ``norm_out.linear`` is stored (scale, shift) by
diffusers and (shift, scale) by us. Everything else is a rename.

ComfyUI's single files (``qwen_image_bf16.safetensors``, ``qwen_image_fp8_e4m3fn.safetensors``) use the very
same tensor names, bare or under ``model.diffusion_model.``: ComfyUI's ``comfy/ldm/qwen_image/model.py`` builds
its module tree with diffusers' names (``transformer_blocks.N.attn.to_q``, ``img_mod.1``, ``img_mlp.net.0.proj``,
``norm_out.linear``, ``time_text_embed.timestep_embedder.linear_1``, ``txt_norm``), its model detection keys on
``txt_norm.weight``, and diffusers' own single-file loader maps ``QwenImageTransformer2DModel`` checkpoints with
the identity. So :func:`qwenimage_from_diffusers` also reads those files once the prefix is stripped.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from latentworks.checkpoints.keymaps.sd3_diffusers import KeyRule, apply_rules, expected_shapes
from latentworks.models.qwenimage import QwenImage, QwenImageConfig


def _linear(ours: str, theirs: str, op: str = "copy") -> list[KeyRule]:
    return [KeyRule(f"{ours}.{p}", (f"{theirs}.{p}",), op) for p in ("weight", "bias")]  # type: ignore[arg-type]


def qwenimage_diffusers_rules(config: QwenImageConfig) -> list[KeyRule]:
    """The full table for ``config``: one rule per tensor of ours."""
    d = config.width
    rules = [
        *_linear("img_in", "img_in"),
        KeyRule("txt_norm.weight", ("txt_norm.weight",)),
        *_linear("txt_in", "txt_in"),
        *_linear("time_in.in_layer", "time_text_embed.timestep_embedder.linear_1"),
        *_linear("time_in.out_layer", "time_text_embed.timestep_embedder.linear_2"),
        *_linear("final_layer.modulation.linear", "norm_out.linear", "swap"),
        *_linear("final_layer.linear", "proj_out"),
    ]
    for i in range(config.depth):
        ours, theirs = f"blocks.{i}", f"transformer_blocks.{i}"
        for stream, names in (
            ("img", ("to_q", "to_k", "to_v", "norm_q", "norm_k", "to_out.0")),
            ("txt", ("add_q_proj", "add_k_proj", "add_v_proj", "norm_added_q", "norm_added_k", "to_add_out")),
        ):
            q, k, v, nq, nk, out = names
            rules += [
                KeyRule(
                    f"{ours}.{stream}_attn.qkv.{p}",
                    tuple(f"{theirs}.attn.{n}.{p}" for n in (q, k, v)),
                    "cat",
                    (d, d, d),
                )
                for p in ("weight", "bias")
            ]
            rules += [
                KeyRule(f"{ours}.{stream}_attn.q_norm.weight", (f"{theirs}.attn.{nq}.weight",)),
                KeyRule(f"{ours}.{stream}_attn.k_norm.weight", (f"{theirs}.attn.{nk}.weight",)),
                *_linear(f"{ours}.{stream}_attn.proj", f"{theirs}.attn.{out}"),
                *_linear(f"{ours}.{stream}_mod.linear", f"{theirs}.{stream}_mod.1"),
                *_linear(f"{ours}.{stream}_mlp.fc1", f"{theirs}.{stream}_mlp.net.0.proj"),
                *_linear(f"{ours}.{stream}_mlp.fc2", f"{theirs}.{stream}_mlp.net.2"),
            ]
    return rules


def qwenimage_from_diffusers(state_dict: Mapping[str, Tensor], config: QwenImageConfig) -> dict[str, Tensor]:
    """diffusers ``QwenImageTransformer2DModel`` (or un-prefixed ComfyUI single-file) state dict -> ours."""
    shapes = expected_shapes(QwenImage, config)
    return apply_rules(
        state_dict, qwenimage_diffusers_rules(config), shapes, to_ours=True, layout="diffusers Qwen-Image"
    )


def qwenimage_to_diffusers(state_dict: Mapping[str, Tensor], config: QwenImageConfig) -> dict[str, Tensor]:
    """Our QwenImage state dict -> diffusers ``QwenImageTransformer2DModel`` layout (ComfyUI's names too)."""
    shapes = expected_shapes(QwenImage, config)
    return apply_rules(
        state_dict, qwenimage_diffusers_rules(config), shapes, to_ours=False, layout="diffusers Qwen-Image"
    )
