"""VAEDecodeTiled and VAEEncodeTiled with ComfyUI's schemas (``nodes.py``): the VAE works on overlapping tiles
so memory grows with the tile, not the image (``Autoencoder.tiled_decode`` / ``tiled_encode``).

``tile_size`` and ``overlap`` are in pixels, as in ComfyUI; an overlap above a quarter of the tile is cut to
a quarter (ComfyUI's rule). ``temporal_size`` and ``temporal_overlap`` only matter for video VAEs, which
latentworks does not have; they are accepted so workflows carry over.
"""

from __future__ import annotations

from typing import Any

import torch

from latentworks.graph.types import NodeSpec, OutputSpec, input_spec
from latentworks.nodes.guards import interruptible, needs_fine_checks
from latentworks.nodes.payloads import Latent, VAEPayload
from latentworks.pipelines.memory import decode_latents


def _overlap(tile_size: int, overlap: int) -> int:
    return tile_size // 4 if tile_size < overlap * 4 else overlap


def _decode_tiled(
    ctx: Any,
    samples: Latent,
    vae: VAEPayload,
    tile_size: int,
    overlap: int,
    temporal_size: int = 64,
    temporal_overlap: int = 8,
) -> tuple[Any, ...]:
    if samples.samples is None:
        raise ValueError("VAEDecodeTiled got an empty latent; sample it first (KSampler)")
    b, _, h, w = samples.samples.shape
    f = vae.factor
    ctx.check_pixels(w * f, h * f, b, inputs="samples")  # before decoding
    p = next(vae.vae.parameters())
    z = vae.format_for(samples).process_out(samples.samples.to(p.device).float()).to(p.dtype)
    tile = max(1, int(tile_size) // f)
    cells = min(_overlap(int(tile_size), int(overlap)) // f, tile - 1)
    fine = needs_fine_checks(vae.vae, min(h, tile) * min(w, tile) * f * f)
    with torch.no_grad(), interruptible(ctx.check_cancelled, vae.vae, fine=fine):
        x = decode_latents(vae.vae, z, tile=tile, overlap=cells)  # (B, 3, H, W) in [-1, 1]
    return (((x.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).cpu(),)


def _encode_tiled(
    ctx: Any,
    pixels: torch.Tensor,
    vae: VAEPayload,
    tile_size: int,
    overlap: int,
    temporal_size: int = 64,
    temporal_overlap: int = 8,
) -> tuple[Any, ...]:
    lf = vae.format_for(None, action="encode images")
    f = vae.factor
    h, w = (pixels.shape[1] // f) * f, (pixels.shape[2] // f) * f
    if h == 0 or w == 0:
        raise ValueError(f"image {tuple(pixels.shape[1:3])} is smaller than the VAE factor {f}")
    p = next(vae.vae.parameters())
    x = pixels[:, :h, :w, :3].permute(0, 3, 1, 2).to(p.device, p.dtype) * 2 - 1
    tile = max(f, int(tile_size))
    ov = min(_overlap(tile, int(overlap)), tile - f)
    fine = needs_fine_checks(vae.vae, min(h, tile) * min(w, tile))
    with torch.no_grad(), interruptible(ctx.check_cancelled, vae.vae, fine=fine):
        z = vae.vae.tiled_encode(x, tile=tile, overlap=ov).float()
    return (Latent(samples=lf.process_in(z), factor=f),)


def vae_tiled_nodes() -> list[NodeSpec]:
    I = input_spec  # noqa: E741, N806

    temporal = (
        I(
            "temporal_size",
            "INT",
            default=64,
            min=8,
            max=4096,
            step=4,
            tooltip="Only used for video VAEs: Amount of frames to decode at a time.",
        ),
        I(
            "temporal_overlap",
            "INT",
            default=8,
            min=4,
            max=4096,
            step=4,
            tooltip="Only used for video VAEs: Amount of frames to overlap.",
        ),
    )
    return [
        NodeSpec(
            name="VAEDecodeTiled",
            display_name="VAE Decode (Tiled)",
            category="_for_testing",
            description="Decode a latent tile by tile (less memory for large images).",
            execute=_decode_tiled,
            inputs=(
                I("samples", "LATENT"),
                I("vae", "VAE"),
                I("tile_size", "INT", default=512, min=64, max=4096, step=32),
                I("overlap", "INT", default=64, min=0, max=4096, step=32),
                *temporal,
            ),
            outputs=(OutputSpec(type="IMAGE"),),
        ),
        NodeSpec(
            name="VAEEncodeTiled",
            display_name="VAE Encode (Tiled)",
            category="_for_testing",
            description="Encode an image tile by tile (less memory for large images).",
            execute=_encode_tiled,
            inputs=(
                I("pixels", "IMAGE"),
                I("vae", "VAE"),
                I("tile_size", "INT", default=512, min=64, max=4096, step=64),
                I("overlap", "INT", default=64, min=0, max=4096, step=32),
                *temporal,
            ),
            outputs=(OutputSpec(type="LATENT"),),
        ),
    ]
