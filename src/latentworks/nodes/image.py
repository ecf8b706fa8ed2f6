"""Image nodes: VAEDecode, VAEEncode, VAEEncodeForInpaint, LoadImage, SaveImage, PreviewImage."""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, PngImagePlugin

from latentworks.graph.budgets import BudgetExceeded
from latentworks.graph.metadata import png_metadata
from latentworks.graph.types import NodeResult, NodeSpec, OutputSpec, input_spec
from latentworks.nodes.budgets import decoder_refused, file_fingerprint
from latentworks.nodes.devices import compute_device, on_device
from latentworks.nodes.guards import interruptible, needs_fine_checks
from latentworks.nodes.payloads import Latent, VAEPayload

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def _decode(ctx: Any, samples: Latent, vae: VAEPayload) -> tuple[Any, ...]:
    if samples.samples is None:
        raise ValueError("VAEDecode got an empty latent; sample it first (KSampler)")
    b, _, h, w = samples.samples.shape
    ctx.check_pixels(w * vae.factor, h * vae.factor, b, inputs="samples")  # before decoding
    p = next(vae.vae.parameters())
    device = compute_device(ctx, vae.vae)
    z = vae.format_for(samples).process_out(samples.samples.to(device).float()).to(p.dtype)
    fine = needs_fine_checks(vae.vae, h * w * vae.factor**2)  # the VAE works at pixel resolution
    with torch.no_grad(), on_device(ctx, vae.vae), interruptible(ctx.check_cancelled, vae.vae, fine=fine):
        x = vae.vae.decode(z).float()  # (B, 3, H, W) in [-1, 1]
    return (((x.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).cpu(),)  # IMAGE (B, H, W, 3) in [0, 1]


def _encode_pixels(ctx: Any, vae: VAEPayload, pixels: torch.Tensor) -> torch.Tensor:
    lf = vae.format_for(None, action="encode images")  # before the work: a VAELoader VAE has no format
    f = vae.factor
    h, w = (pixels.shape[1] // f) * f, (pixels.shape[2] // f) * f
    if h == 0 or w == 0:
        raise ValueError(f"image {tuple(pixels.shape[1:3])} is smaller than the VAE factor {f}")
    p = next(vae.vae.parameters())
    x = pixels[:, :h, :w, :3].permute(0, 3, 1, 2).to(compute_device(ctx, vae.vae), p.dtype) * 2 - 1
    fine = needs_fine_checks(vae.vae, h * w)  # the VAE works at pixel resolution
    with torch.no_grad(), on_device(ctx, vae.vae), interruptible(ctx.check_cancelled, vae.vae, fine=fine):
        z = vae.vae.encode(x).mode().float()
    return lf.process_in(z)


def _vae_encode(ctx: Any, pixels: torch.Tensor, vae: VAEPayload) -> tuple[Any, ...]:
    return (Latent(samples=_encode_pixels(ctx, vae, pixels), factor=vae.factor),)


def _vae_encode_inpaint(
    ctx: Any, pixels: torch.Tensor, vae: VAEPayload, mask: torch.Tensor, grow_mask_by: int
) -> tuple[Any, ...]:
    """ComfyUI's VAEEncodeForInpaint: grey out (0.5) the rounded mask's area, encode, and attach the mask grown
    by a ``grow_mask_by`` x ``grow_mask_by`` box (rounded) as the noise mask."""
    m = (mask if mask.ndim == 3 else mask[None]).float()[:, None]  # (B, 1, H, W)
    m = F.interpolate(m, size=pixels.shape[1:3], mode="bilinear").round()
    grown = m
    if grow_mask_by > 0:
        kernel = torch.ones(1, 1, grow_mask_by, grow_mask_by)
        pad = grow_mask_by // 2  # = ceil((k - 1) / 2); an even box grows one pixel more down/right
        grown = F.conv2d(m, kernel, padding=pad).clamp(0, 1)[..., : m.shape[-2], : m.shape[-1]].round()
    keep = (1 - m).permute(0, 2, 3, 1)  # (B, H, W, 1)
    pixels = (pixels[..., :3] - 0.5) * keep + 0.5
    return (Latent(samples=_encode_pixels(ctx, vae, pixels), noise_mask=grown, factor=vae.factor),)


def _safe_prefix(prefix: str) -> tuple[str, str]:
    """Split 'sub/dir/name' into (subfolder, name), refusing anything that climbs out."""
    parts = [p for p in re.split(r"[\\/]+", prefix) if p not in ("", ".")]
    if not parts or any(p == ".." for p in parts):
        raise ValueError(f"filename_prefix {prefix!r} must be a relative name without '..'")
    return "/".join(parts[:-1]), parts[-1]


def _save(
    ctx: Any,
    images: torch.Tensor,
    filename_prefix: str,
    folder_type: str,
    prompt: Any = None,
    extra_pnginfo: Any = None,
) -> NodeResult:
    root = Path(ctx.output_dir if folder_type == "output" else ctx.temp_dir or ctx.output_dir)
    sub, name = _safe_prefix(filename_prefix)
    folder = root / sub
    folder.mkdir(parents=True, exist_ok=True)
    info = PngImagePlugin.PngInfo()
    for key, text in png_metadata(prompt, extra_pnginfo).items():
        info.add_text(key, text)
    # The prefix is literal text (no glob: "[g]" must not match "g"); names are claimed with exclusive
    # create ("xb"), so an existing file is never overwritten.
    numbered = re.compile(re.escape(name) + r"_(\d+)_\.png")
    existing = [int(m.group(1)) for f in os.listdir(folder) if (m := numbered.fullmatch(f))]
    counter = max(existing, default=0) + 1
    results = []
    arr = (images.float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    for a in arr:
        while True:
            if folder_type == "output":
                fname, counter = f"{name}_{counter:05d}_.png", counter + 1
            else:
                fname = f"{name}_{uuid.uuid4().hex[:8]}.png"
            try:
                with open(folder / fname, "xb") as f:
                    Image.fromarray(a).save(f, format="PNG", pnginfo=info)
                break
            except FileExistsError:
                continue
        results.append({"filename": fname, "subfolder": sub, "type": folder_type})
    return NodeResult(outputs=(), ui={"images": results})


def _save_image(
    ctx: Any, images: torch.Tensor, filename_prefix: str, prompt: Any = None, extra_pnginfo: Any = None
) -> NodeResult:
    return _save(ctx, images, filename_prefix, "output", prompt, extra_pnginfo)


def _preview_image(
    ctx: Any, images: torch.Tensor, prompt: Any = None, extra_pnginfo: Any = None
) -> NodeResult:
    return _save(ctx, images, "preview", "temp", prompt, extra_pnginfo)


def list_inputs(input_dir: Path | None) -> list[str]:
    if input_dir is None or not Path(input_dir).is_dir():
        return []
    return sorted(p.name for p in Path(input_dir).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def _input_path(root: Path, image: str) -> Path:
    path = (root / image).resolve()
    if root.resolve() not in path.parents:
        raise ValueError(f"image {image!r} is outside the input folder")
    return path


def image_nodes(input_dir: Path | None) -> list[NodeSpec]:
    def load_image(ctx: Any, image: str) -> tuple[Any, ...]:
        path = _input_path(Path(ctx.input_dir or input_dir or "."), image)
        try:
            opened = Image.open(path)
        except Image.DecompressionBombError as e:  # PIL's own (process-wide) limit, far above ours by default
            problem = decoder_refused(e, ctx.budgets)
            raise BudgetExceeded(f"LoadImage (node {ctx.node_id}), input image {image!r}: {problem}") from e
        with opened:
            # The header's size, before load() decodes anything: a tiny PNG may claim 20000 x 20000 pixels.
            ctx.check_pixels(
                opened.width, opened.height, inputs=f"image {image!r}", advice="Use a smaller image."
            )
            rgba = ImageOps.exif_transpose(opened).convert("RGBA")
        a = np.array(rgba)  # (H, W, 4) uint8, writable; float32 only for what we keep
        pixels = torch.from_numpy(a[..., :3]).float().div_(255.0)[None]  # (1, H, W, 3)
        mask = torch.from_numpy(a[..., 3]).float().div_(-255.0).add_(1.0)[None]  # transparent = 1, as ComfyUI
        return (pixels, mask)

    def load_image_fingerprint(image: str) -> Any:
        # Keyed by content (ComfyUI hashes the file too): an input overwritten under the same name reloads.
        try:
            return file_fingerprint(_input_path(Path(input_dir or "."), image))
        except (ValueError, OSError):
            return None  # load_image reports the problem

    I = input_spec  # noqa: E741, N806

    hidden = (I("prompt", "PROMPT", hidden=True), I("extra_pnginfo", "EXTRA_PNGINFO", hidden=True))
    return [
        NodeSpec(
            name="VAEDecode",
            display_name="VAE Decode",
            category="latent",
            execute=_decode,
            description="Latents to pixels.",
            inputs=(I("samples", "LATENT"), I("vae", "VAE")),
            outputs=(OutputSpec(type="IMAGE"),),
        ),
        NodeSpec(
            name="VAEEncode",
            display_name="VAE Encode",
            category="latent",
            execute=_vae_encode,
            description="Pixels to latents (crops to a multiple of the VAE factor).",
            inputs=(I("pixels", "IMAGE"), I("vae", "VAE")),
            outputs=(OutputSpec(type="LATENT"),),
        ),
        NodeSpec(
            name="VAEEncodeForInpaint",
            display_name="VAE Encode (for Inpainting)",
            category="latent/inpaint",
            execute=_vae_encode_inpaint,
            description="Encode with the masked area greyed out and attach the mask as the noise mask.",
            inputs=(
                I("pixels", "IMAGE"),
                I("vae", "VAE"),
                I("mask", "MASK"),
                I("grow_mask_by", "INT", default=6, min=0, max=64),
            ),
            outputs=(OutputSpec(type="LATENT"),),
        ),
        NodeSpec(
            name="LoadImage",
            display_name="Load Image",
            category="image",
            execute=load_image,
            fingerprint=load_image_fingerprint,
            description="Load an uploaded image; its alpha channel becomes the mask.",
            inputs=(
                I("image", "COMBO", choices=lambda: list_inputs(input_dir), extra={"image_upload": True}),
            ),
            outputs=(OutputSpec(type="IMAGE"), OutputSpec(type="MASK")),
        ),
        NodeSpec(
            name="SaveImage",
            display_name="Save Image",
            category="image",
            execute=_save_image,
            output_node=True,
            description="Save PNGs to the output folder with the workflow in their text chunks.",
            inputs=(I("images", "IMAGE"), I("filename_prefix", "STRING", default="latentworks"), *hidden),
        ),
        NodeSpec(
            name="PreviewImage",
            display_name="Preview Image",
            category="image",
            execute=_preview_image,
            output_node=True,
            description="Show images without keeping them (temp folder).",
            inputs=(I("images", "IMAGE"), *hidden),
        ),
    ]
