"""Key map: diffusers ``SD3Transformer2DModel`` <-> our :class:`~latentworks.models.mmdit.MMDiT`.

The map is data: :func:`sd3_diffusers_rules` lists one :class:`KeyRule` per tensor of ours, naming the
diffusers tensor(s) it comes from and one of three reversible operations:

- ``copy``: same tensor;
- ``cat``: ours is the concatenation along dim 0 of theirs (our fused ``qkv`` = diffusers ``to_q, to_k, to_v``);
  the reverse splits with the sizes stored in the rule;
- ``swap``: the two halves along dim 0 are exchanged (diffusers' ``AdaLayerNormContinuous`` stores
  (scale, shift) where we, like the SAI reference, store (shift, scale)).

:func:`apply_rules` runs a table in either direction with strict checks (missing, unexpected and mis-shaped
keys raise errors that name the key). The engine is family-agnostic; the FLUX map reuses it.

Adding the SAI single-file layout (``model.diffusion_model.joint_blocks.{i}.x_block.attn.qkv`` ...) later is
another rules function over the same engine: its qkv, ``adaLN_modulation.1`` and ``final_layer`` tensors are
already in our layout (all ``copy`` rules, no swaps), and its ``context_block`` of the last block matches our
``context_mod`` (shift, scale) as is.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from latentworks.models.mmdit import MMDiT, MMDiTConfig


@dataclass(frozen=True)
class KeyRule:
    """One tensor of ours and where it lives in the other layout."""

    ours: str
    theirs: tuple[str, ...]
    op: Literal["copy", "cat", "swap"] = "copy"
    split: tuple[int, ...] = ()  # for "cat": sizes along dim 0 of each of ``theirs``


def expected_shapes(model_cls: type[torch.nn.Module], config: object) -> dict[str, tuple[int, ...]]:
    """Shapes of every tensor in ``model_cls(config).state_dict()``, built on the meta device (no memory)."""
    with torch.device("meta"):
        model = model_cls(config)  # type: ignore[call-arg]
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def apply_rules(
    state_dict: Mapping[str, Tensor],
    rules: Iterable[KeyRule],
    shapes: Mapping[str, tuple[int, ...]],
    *,
    to_ours: bool,
    layout: str,
) -> dict[str, Tensor]:
    """Convert ``state_dict`` with ``rules``: theirs -> ours (``to_ours=True``) or ours -> theirs.

    ``shapes`` are our model's tensor shapes; they are checked on our side in both directions. ``layout``
    names the other format in error messages. Every input key must be used exactly once.
    """
    rules = list(rules)
    out: dict[str, Tensor] = {}
    used: set[str] = set()
    missing: list[str] = []

    def shape_error(key: str, got: tuple[int, ...], want: tuple[int, ...], side: str) -> ValueError:
        return ValueError(
            f"{side} tensor {key!r} has shape {got}, expected {want}: the checkpoint does not match this "
            "model config (wrong preset or a different model family?)"
        )

    for rule in rules:
        want = shapes[rule.ours]
        if to_ours:
            if any(k not in state_dict for k in rule.theirs):
                missing.extend(k for k in rule.theirs if k not in state_dict)
                continue
            parts = [state_dict[k] for k in rule.theirs]
            used.update(rule.theirs)
            if rule.op == "cat":
                for k, part, size in zip(rule.theirs, parts, rule.split, strict=True):
                    if part.shape[0] != size:
                        raise shape_error(k, tuple(part.shape), (size, *want[1:]), layout)
                tensor = torch.cat(parts, dim=0)
            elif rule.op == "swap":
                tensor = swap_halves(parts[0])
            else:
                tensor = parts[0]
            if tuple(tensor.shape) != want:
                raise shape_error(", ".join(rule.theirs), tuple(tensor.shape), want, layout)
            out[rule.ours] = tensor
        else:
            if rule.ours not in state_dict:
                missing.append(rule.ours)
                continue
            tensor = state_dict[rule.ours]
            used.add(rule.ours)
            if tuple(tensor.shape) != want:
                raise shape_error(rule.ours, tuple(tensor.shape), want, "our")
            if rule.op == "cat":
                for k, part in zip(rule.theirs, torch.split(tensor, list(rule.split), dim=0), strict=True):
                    out[k] = part
            elif rule.op == "swap":
                out[rule.theirs[0]] = swap_halves(tensor)
            else:
                out[rule.theirs[0]] = tensor
    if missing:
        side = layout if to_ours else "our"
        raise KeyError(f"{len(missing)} {side} tensors missing, e.g. {missing[:5]}")
    unexpected = sorted(set(state_dict) - used)
    if unexpected:
        side = layout if to_ours else "our"
        raise KeyError(f"{len(unexpected)} unexpected {side} tensors, e.g. {unexpected[:5]}")
    return out


def swap_halves(t: Tensor) -> Tensor:
    """Exchange the two halves along dim 0 (AdaLN-Zero final layers: (shift, scale) <-> (scale, shift))."""
    a, b = t.chunk(2, dim=0)
    return torch.cat([b, a], dim=0)


def _attention_rules(
    ours: str, theirs: str, suffix: str, d: int, qk_norm: bool, proj: str | None
) -> list[KeyRule]:
    """Our StreamAttention ``ours`` <- diffusers Attention projections ``theirs.{to_|add_}{q,k,v}...``."""
    if suffix == "":  # image stream: to_q / to_k / to_v / to_out.0 / norm_q / norm_k
        q, k, v, nq, nk = "to_q", "to_k", "to_v", "norm_q", "norm_k"
    else:  # text stream: add_q_proj / ... / to_add_out / norm_added_q / norm_added_k
        q, k, v, nq, nk = "add_q_proj", "add_k_proj", "add_v_proj", "norm_added_q", "norm_added_k"
    rules = [
        KeyRule(f"{ours}.qkv.{p}", tuple(f"{theirs}.{n}.{p}" for n in (q, k, v)), "cat", (d, d, d))
        for p in ("weight", "bias")
    ]
    if qk_norm:
        rules += [KeyRule(f"{ours}.q_norm.weight", (f"{theirs}.{nq}.weight",))]
        rules += [KeyRule(f"{ours}.k_norm.weight", (f"{theirs}.{nk}.weight",))]
    if proj is not None:
        rules += [KeyRule(f"{ours}.proj.{p}", (f"{theirs}.{proj}.{p}",)) for p in ("weight", "bias")]
    return rules


def _linear(ours: str, theirs: str, op: Literal["copy", "swap"] = "copy") -> list[KeyRule]:
    return [KeyRule(f"{ours}.{p}", (f"{theirs}.{p}",), op) for p in ("weight", "bias")]


def sd3_diffusers_rules(config: MMDiTConfig) -> list[KeyRule]:
    """The full table for ``config`` (depth, qk-norm and dual-attention blocks decide which keys exist)."""
    d = config.width
    qk = config.qk_norm is not None
    rules = [
        *_linear("patch_embed", "pos_embed.proj"),
        KeyRule("pos_embed", ("pos_embed.pos_embed",)),
        *_linear("time_embed.in_layer", "time_text_embed.timestep_embedder.linear_1"),
        *_linear("time_embed.out_layer", "time_text_embed.timestep_embedder.linear_2"),
        *_linear("pooled_embed.in_layer", "time_text_embed.text_embedder.linear_1"),
        *_linear("pooled_embed.out_layer", "time_text_embed.text_embedder.linear_2"),
        *_linear("context_embed", "context_embedder"),
        *_linear("final_layer.modulation.linear", "norm_out.linear", "swap"),
        *_linear("final_layer.linear", "proj_out"),
    ]
    for i in range(config.depth):
        ours, theirs = f"blocks.{i}", f"transformer_blocks.{i}"
        pre_only = i == config.depth - 1
        rules += _linear(f"{ours}.x_mod.linear", f"{theirs}.norm1.linear")
        rules += _attention_rules(f"{ours}.x_attn", f"{theirs}.attn", "", d, qk, "to_out.0")
        if i in config.dual_attention_layers:
            rules += _attention_rules(f"{ours}.x_attn2", f"{theirs}.attn2", "", d, qk, "to_out.0")
        rules += _linear(f"{ours}.x_mlp.fc1", f"{theirs}.ff.net.0.proj")
        rules += _linear(f"{ours}.x_mlp.fc2", f"{theirs}.ff.net.2")
        rules += _linear(
            f"{ours}.context_mod.linear", f"{theirs}.norm1_context.linear", "swap" if pre_only else "copy"
        )
        rules += _attention_rules(
            f"{ours}.context_attn", f"{theirs}.attn", "added", d, qk, None if pre_only else "to_add_out"
        )
        if not pre_only:
            rules += _linear(f"{ours}.context_mlp.fc1", f"{theirs}.ff_context.net.0.proj")
            rules += _linear(f"{ours}.context_mlp.fc2", f"{theirs}.ff_context.net.2")
    return rules


def sd3_from_diffusers(state_dict: Mapping[str, Tensor], config: MMDiTConfig) -> dict[str, Tensor]:
    """diffusers ``SD3Transformer2DModel`` state dict -> ours (load with ``strict=True``)."""
    shapes = expected_shapes(MMDiT, config)
    return apply_rules(state_dict, sd3_diffusers_rules(config), shapes, to_ours=True, layout="diffusers SD3")


def sd3_to_diffusers(state_dict: Mapping[str, Tensor], config: MMDiTConfig) -> dict[str, Tensor]:
    """Our MMDiT state dict -> diffusers ``SD3Transformer2DModel`` layout."""
    shapes = expected_shapes(MMDiT, config)
    return apply_rules(state_dict, sd3_diffusers_rules(config), shapes, to_ours=False, layout="diffusers SD3")
