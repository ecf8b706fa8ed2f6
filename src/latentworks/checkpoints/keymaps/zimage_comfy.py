"""Key map: Z-Image's released single files (``z_image_turbo_bf16.safetensors``, the layout ComfyUI loads
into its Lumina 2 ``NextDiT``) <-> our :class:`~latentworks.models.zimage.ZImage`.

The names were read from public sources, not guessed: diffusers' single-file converter
(``convert_z_image_transformer_checkpoint_to_diffusers`` in ``diffusers/loaders/single_file_utils.py``: it
renames ``x_embedder.`` -> ``all_x_embedder.2-1.``, ``final_layer.`` -> ``all_final_layer.2-1.``,
``.attention.out`` -> ``.attention.to_out.0``, ``.attention.{q,k}_norm`` -> ``.attention.norm_{q,k}``, splits
``.attention.qkv.weight`` into ``to_q/to_k/to_v`` and drops an unused ``norm_final.weight``; everything else,
``cap_embedder.{0,1}``, ``t_embedder.mlp.{0,2}``, ``layers.N.adaLN_modulation.0``, ``feed_forward.w{1,2,3}``,
``{attention,ffn}_norm{1,2}``, ``{x,cap}_pad_token``, keeps its name) and ComfyUI's model detection for
Z-Image (``comfy/model_detection.py`` reads ``cap_embedder.1.weight``, ``layers.0.feed_forward.w1.weight``,
``noise_refiner.0.attention.k_norm.weight``, ``layers.N.ffn_norm1.weight`` and ``cap_pad_token``).

Our parameter names are the release's except the timestep MLP (``t_embedder.fc1/fc2`` for ``mlp.0/.2``), the
caption norm (``cap_norm`` for ``cap_embedder.0``; ``cap_embedder`` for ``cap_embedder.1``) and the
modulation projections (``modulation`` for ``adaLN_modulation.0``, ``final_layer.modulation.linear`` for
``final_layer.adaLN_modulation.1``). Files may be bare or under ``model.diffusion_model.``; strip the prefix
before mapping.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from torch import Tensor

from latentworks.checkpoints.keymaps.sd3_diffusers import KeyRule, apply_rules, expected_shapes
from latentworks.models.zimage import ZImage, ZImageConfig

LAYOUT = "Z-Image single-file (ComfyUI)"
UNUSED_KEYS = ("norm_final.weight",)  # present in some exports, read by no forward pass (diffusers drops it)


class _Without(Mapping[str, Tensor]):
    """``base`` without ``keys``, read through (a lazily loaded file stays lazy)."""

    def __init__(self, base: Mapping[str, Tensor], keys: tuple[str, ...]) -> None:
        self.base, self.keys_left_out = base, keys

    def __getitem__(self, key: str) -> Tensor:
        if key in self.keys_left_out:
            raise KeyError(key)
        return self.base[key]

    def __iter__(self) -> Iterator[str]:
        return (k for k in self.base if k not in self.keys_left_out)

    def __len__(self) -> int:
        return sum(1 for _ in self)


def _linear(name: str, theirs: str | None = None, *, bias: bool = True) -> list[KeyRule]:
    params = ("weight", "bias") if bias else ("weight",)
    return [KeyRule(f"{name}.{p}", (f"{theirs or name}.{p}",)) for p in params]


def _block_rules(name: str, *, modulated: bool) -> list[KeyRule]:
    rules = [
        *_linear(f"{name}.attention.qkv", bias=False),
        *_linear(f"{name}.attention.q_norm", bias=False),
        *_linear(f"{name}.attention.k_norm", bias=False),
        *_linear(f"{name}.attention.out", bias=False),
        *(r for w in ("w1", "w2", "w3") for r in _linear(f"{name}.feed_forward.{w}", bias=False)),
        *(r for n in ("attention_norm1", "attention_norm2", "ffn_norm1", "ffn_norm2")
          for r in _linear(f"{name}.{n}", bias=False)),
    ]  # fmt: skip
    if modulated:
        rules += _linear(f"{name}.modulation", f"{name}.adaLN_modulation.0")
    return rules


def zimage_comfy_rules(config: ZImageConfig) -> list[KeyRule]:
    """The full table for ``config``."""
    rules = [
        *_linear("x_embedder"),
        *_linear("t_embedder.fc1", "t_embedder.mlp.0"),
        *_linear("t_embedder.fc2", "t_embedder.mlp.2"),
        KeyRule("cap_norm.weight", ("cap_embedder.0.weight",)),
        *_linear("cap_embedder", "cap_embedder.1"),
        KeyRule("x_pad_token", ("x_pad_token",)),
        KeyRule("cap_pad_token", ("cap_pad_token",)),
        *_linear("final_layer.modulation.linear", "final_layer.adaLN_modulation.1"),
        *_linear("final_layer.linear"),
    ]
    for i in range(config.refiner_depth):
        rules += _block_rules(f"noise_refiner.{i}", modulated=True)
        rules += _block_rules(f"context_refiner.{i}", modulated=False)
    for i in range(config.depth):
        rules += _block_rules(f"layers.{i}", modulated=True)
    return rules


def zimage_comfy_to_ours(state_dict: Mapping[str, Tensor], config: ZImageConfig) -> dict[str, Tensor]:
    """A released Z-Image single file's denoiser (prefix stripped) -> ours (load with ``strict=True``)."""
    shapes = expected_shapes(ZImage, config)
    return apply_rules(
        _Without(state_dict, UNUSED_KEYS), zimage_comfy_rules(config), shapes, to_ours=True, layout=LAYOUT
    )


def ours_to_zimage_comfy(state_dict: Mapping[str, Tensor], config: ZImageConfig) -> dict[str, Tensor]:
    """Our Z-Image state dict -> the released single-file layout (without the unused ``norm_final``)."""
    shapes = expected_shapes(ZImage, config)
    return apply_rules(state_dict, zimage_comfy_rules(config), shapes, to_ours=False, layout=LAYOUT)
