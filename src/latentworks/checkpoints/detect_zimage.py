"""A Z-Image transformer's config from the tensor shapes of a released single file (ComfyUI layout).

Everything but the RoPE split and theta is visible in shapes: width and patch channels from ``x_embedder``,
head size from the qk-norm weights, depths from the block indices, FFN and timestep-MLP widths from their
weights. Key names are those of :mod:`latentworks.checkpoints.keymaps.zimage_comfy`.
"""

from __future__ import annotations

from collections.abc import Mapping

from latentworks.checkpoints.detect import indices
from latentworks.models.zimage import ZImageConfig

# Present in Z-Image's single files (prefix stripped). Lumina 2's NextDiT shares ``cap_embedder.1`` but gates its
# blocks through ``adaLN_modulation.1`` (SiLU first); Z-Image's block modulation is ``adaLN_modulation.0``.
ZIMAGE_MARKER = "cap_embedder.1.weight"
ZIMAGE_MARKER_2 = "layers.0.adaLN_modulation.0.weight"
PATCH_SIZE = 2  # every release; the patch size is not separable from the channel count in shapes


def _rope_axes(head_dim: int) -> tuple[int, int, int]:
    """The release's (32, 48, 48) split of a 128-wide head, scaled to ``head_dim`` (not visible in shapes)."""
    if head_dim == 128:
        return (32, 48, 48)
    first = 2 * max(1, round(head_dim / 8))
    rest = (head_dim - first) // 2
    if rest % 2:
        first, rest = first + 2, rest - 1
    return (first, rest, rest)


def zimage_config_from_comfy(s: Mapping[str, tuple[int, ...]], source: str) -> ZImageConfig:
    """A Z-Image transformer's config from its (un-prefixed) single-file shapes.

    Raises:
        ValueError: a key the layout needs is missing or shapes disagree, naming the key and the file.
    """
    what = "a Z-Image transformer"

    def need(key: str) -> tuple[int, ...]:
        if key not in s:
            raise ValueError(
                f"{source}: looks like {what} but lacks {key!r}; the file is incomplete or not {what}"
            )
        return tuple(s[key])

    width, patch_channels = need("x_embedder.weight")  # (D, p * p * C)
    head_dim = need("layers.0.attention.q_norm.weight")[0]
    modulation = need("layers.0.adaLN_modulation.0.weight")  # (4D, adaln_dim)
    t_hidden, _ = need("t_embedder.mlp.0.weight")  # (time_hidden, 256)
    if modulation[0] != 4 * width or modulation[1] != min(width, 256):
        raise ValueError(
            f"{source}: layers.0.adaLN_modulation.0.weight has shape {modulation}, expected "
            f"({4 * width}, {min(width, 256)}) for width {width}; not a Z-Image transformer"
        )
    if width % head_dim:
        raise ValueError(f"{source}: width {width} is not a multiple of the head size {head_dim}")
    refiners = indices(s, "noise_refiner.")
    if refiners != indices(s, "context_refiner."):
        raise ValueError(
            f"{source}: {len(refiners)} noise_refiner blocks but {len(indices(s, 'context_refiner.'))} "
            "context_refiner blocks; Z-Image has as many of each"
        )
    return ZImageConfig(
        in_channels=patch_channels // (PATCH_SIZE * PATCH_SIZE),
        patch_size=PATCH_SIZE,
        width=width,
        num_heads=width // head_dim,
        depth=len(indices(s, "layers.")),
        refiner_depth=len(refiners),
        ffn_dim=need("layers.0.feed_forward.w1.weight")[0],
        context_dim=need("cap_embedder.1.weight")[1],
        time_hidden_dim=t_hidden,
        axes_dim=_rope_axes(head_dim),
    )
