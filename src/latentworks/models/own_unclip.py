"""Our own unCLIP decoder (issue 26): a text-to-image U-Net given image-embedding conditioning.

The decoder is the U-Net of a text-to-image model (``pooled_dim=0``) with SD 2.1 unCLIP's class embedding added:
``pooled_dim = 2D, num_time_ids = 0`` makes ``models.unet.embed_time`` add ``add_embed([augmented embedding,
sinusoidal(noise level)])`` (B, 2D) (``models.unclip.ImageEmbeddingAugmentor``) to the time embedding. The new
``add_embed`` starts with its last layer at zero, so at step 0 the decoder is exactly the base model (with or
without an image), and a missing image (``cond.extra["class_input"]`` absent: zeros) keeps text-only generation.
"""

from __future__ import annotations

from dataclasses import replace

from torch import nn

from latentworks.models.unet import UNet, UNetConfig


def decoder_config(base: UNetConfig, embed_dim: int) -> UNetConfig:
    """The config of the decoder made from a text-to-image U-Net ``base`` for ``embed_dim``-wide embeddings."""
    if base.pooled_dim != 0:
        if base.num_time_ids == 0 and base.pooled_dim == 2 * embed_dim:
            return base  # already a decoder for this width
        raise ValueError(
            f"unCLIP decoder: the base U-Net already reads a pooled vector (pooled_dim={base.pooled_dim}, "
            f"num_time_ids={base.num_time_ids}); start from a text-to-image model without one (e.g. 'default')"
        )
    if embed_dim < 2 or embed_dim % 2:
        raise ValueError(f"unCLIP decoder: the image embedding width must be even and >= 2, got {embed_dim}")
    return replace(base, pooled_dim=2 * embed_dim, num_time_ids=0)


def decoder_from_base(base: UNet, embed_dim: int) -> UNet:
    """A new decoder (float32) holding ``base``'s weights and a zero-output image-embedding path."""
    net = UNet(decoder_config(base.config, embed_dim))
    load_base_weights(net, base)
    return net


def load_base_weights(decoder: nn.Module, base: nn.Module) -> None:
    """Copy ``base``'s weights into ``decoder``; the decoder's own ``add_embed`` gets a zero last layer.
    Any other difference between the two is an error."""
    missing, unexpected = decoder.load_state_dict(base.state_dict(), strict=False)
    extra = [k for k in missing if not k.startswith("add_embed.")]
    if extra or unexpected:
        raise ValueError(
            "unCLIP decoder: the base U-Net does not match the decoder apart from the image-embedding path "
            f"(missing {extra[:4]}, unexpected {list(unexpected)[:4]})"
        )
    add_embed = getattr(decoder, "add_embed", None)
    if add_embed is None:
        raise ValueError("unCLIP decoder: the decoder config has no image-embedding path (pooled_dim=0)")
    if missing:  # a new path (not a decoder fine-tuned again): zero output at step 0
        nn.init.zeros_(add_embed.fc2.weight)
        nn.init.zeros_(add_embed.fc2.bias)
