"""Masks for inpainting and outpainting: reading, growing, blurring, padding, compositing, and the extra input
channels of inpainting U-Nets.

Conventions (ComfyUI's and diffusers'): a mask is float in [0, 1] where 1 means "generate here" and 0 "keep".
Pixel masks are (B, 1, H, W); latent masks (B, 1, h, w). Images are (B, 3, H, W) in [-1, 1] unless a function
says otherwise. The pipeline (``Pipeline.__call__(image=, mask=)``) and the inpainting nodes share these.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor


def inpaint_channels(model: Any) -> int:
    """Extra input channels of a loaded model's denoiser (``model``: a ``ModelFolder``): 5 for SD 1.x/2.x/XL
    inpainting U-Nets (mask + masked image latent), 0 for regular models."""
    c = model.latent_format.channels
    return int(getattr(model.denoiser_net.config, "in_channels", c)) - c


class MaskSizeWarning(UserWarning):
    """A mask whose size differs from its image's: it was resized (bilinear) to the image's size."""


def mask_to_tensor(
    mask: Image.Image | Tensor | np.ndarray, size: tuple[int, int], *, what: str = "mask"
) -> Tensor:
    """A mask as (1, 1, H, W) float32 in [0, 1] at ``size`` (height, width).

    PIL images are read as greyscale (white = 1 = generate; an RGBA mask uses its luminance, not its alpha);
    arrays and tensors of shape (H, W), (1, H, W) or (1, 1, H, W) are taken as values in [0, 1]. A mask of
    another size is resized to ``size`` with a :class:`MaskSizeWarning` naming both sizes.
    """
    if isinstance(mask, Image.Image):
        m = torch.from_numpy(np.asarray(mask.convert("L"), dtype=np.float32) / 255.0)
    else:
        m = torch.as_tensor(np.asarray(mask) if isinstance(mask, np.ndarray) else mask).float()
    while m.ndim < 4:
        m = m[None]
    if m.ndim != 4 or m.shape[1] != 1:
        raise ValueError(f"{what} must be (H, W), (1, H, W) or (B, 1, H, W), got shape {tuple(m.shape)}")
    if not bool(torch.isfinite(m).all()) or float(m.min()) < 0 or float(m.max()) > 1:
        raise ValueError(f"{what} values must lie in [0, 1] (1 = generate, 0 = keep)")
    if tuple(m.shape[-2:]) != tuple(size):
        (h, w), (mh, mw) = size, m.shape[-2:]
        warnings.warn(
            MaskSizeWarning(
                f"the {what} is {mw}x{mh} but the image is {w}x{h}; the {what} was resized to {w}x{h}"
            ),
            stacklevel=2,
        )
        m = F.interpolate(m, size=tuple(size), mode="bilinear", align_corners=False).clamp(0, 1)
    return m


def grow_mask(mask: Tensor, pixels: int) -> Tensor:
    """Dilate ``mask`` (B, 1, H, W) by ``pixels`` (a square neighbourhood); negative values erode it."""
    if pixels == 0:
        return mask
    k = 2 * abs(pixels) + 1
    if pixels > 0:
        return F.max_pool2d(mask, k, stride=1, padding=abs(pixels))
    return -F.max_pool2d(-mask, k, stride=1, padding=abs(pixels))


def blur_mask(mask: Tensor, radius: float) -> Tensor:
    """Gaussian blur of ``mask`` (B, 1, H, W) with standard deviation ``radius`` pixels (0: unchanged).

    The kernel spans 3 standard deviations each side; borders are extended (replicate), so a mask that is 1
    up to the image edge stays 1 there.
    """
    if radius < 0:
        raise ValueError(f"mask blur radius must be >= 0, got {radius}")
    if radius == 0:
        return mask
    half = max(1, math.ceil(3 * radius))
    x = torch.arange(-half, half + 1, dtype=torch.float32)
    g = torch.exp(-(x**2) / (2 * radius**2))
    g = (g / g.sum()).to(mask)
    out = F.pad(mask, (half, half, 0, 0), mode="replicate")
    out = F.conv2d(out, g.view(1, 1, 1, -1))
    out = F.pad(out, (0, 0, half, half), mode="replicate")
    return F.conv2d(out, g.view(1, 1, -1, 1)).clamp(0, 1)


def outpaint_feather(
    height: int, width: int, top: int, bottom: int, left: int, right: int, feathering: int
) -> Tensor:
    """The mask over the original image's area when padding for outpainting, (height, width): 0 inside, rising
    as ((feathering - d) / feathering)**2 within ``feathering`` pixels of a padded edge, where d is the distance
    (ComfyUI's ImagePadForOutpaint convention: row i is i from the top and height - i from the bottom)."""
    t = torch.zeros(height, width, dtype=torch.float32)
    if not (feathering > 0 and feathering * 2 < height and feathering * 2 < width):
        return t
    i = torch.arange(height, dtype=torch.float32)[:, None].expand(height, width)
    j = torch.arange(width, dtype=torch.float32)[None, :].expand(height, width)
    big_h, big_w = torch.full_like(i, height), torch.full_like(j, width)
    d = torch.stack(
        [
            i if top else big_h,
            (height - i) if bottom else big_h,
            j if left else big_w,
            (width - j) if right else big_w,
        ]
    ).amin(0)
    v = (feathering - d) / feathering
    return torch.where(d < feathering, v * v, t)


def pad_for_outpaint(
    image: Tensor, left: int, top: int, right: int, bottom: int, feathering: int = 0
) -> tuple[Tensor, Tensor]:
    """Pad ``image`` (B, H, W, C) in [0, 1] with grey (0.5) for outpainting.

    Returns the padded image (B, H', W', C) and its mask (H', W'): 1 on the new border, 0 over the original
    image (feathered ``feathering`` pixels inwards from padded edges, see :func:`outpaint_feather`).
    """
    if min(left, top, right, bottom) < 0:
        raise ValueError(
            f"outpaint padding must be >= 0 pixels, got left={left} top={top} right={right} bottom={bottom}"
        )
    b, h, w, c = image.shape
    new_h, new_w = h + top + bottom, w + left + right
    out = torch.full((b, new_h, new_w, c), 0.5, dtype=torch.float32)
    out[:, top : top + h, left : left + w, :] = image
    mask = torch.ones(new_h, new_w, dtype=torch.float32)  # 1 = to generate
    mask[top : top + h, left : left + w] = outpaint_feather(h, w, top, bottom, left, right, feathering)
    return out, mask


def pad_image_for_outpaint(
    image: Image.Image, left: int, top: int, right: int, bottom: int, feathering: int = 0
) -> tuple[Image.Image, Image.Image]:
    """:func:`pad_for_outpaint` on a PIL image: the padded RGB image and its mask (mode ``L``, white = generate)."""
    x = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0)[None]
    padded, mask = pad_for_outpaint(x, left, top, right, bottom, feathering)
    arr = (padded[0] * 255).round().clamp(0, 255).to(torch.uint8).numpy()
    m = (mask * 255).round().clamp(0, 255).to(torch.uint8).numpy()
    return Image.fromarray(arr), Image.fromarray(m, mode="L")


def latent_mask(mask: Tensor, size: tuple[int, int]) -> Tensor:
    """A pixel mask (B, 1, H, W) at latent ``size`` (h, w) for the latent noise mask: the mean over each
    latent cell's pixels (area interpolation), so soft edges stay soft."""
    return F.interpolate(mask, size=tuple(size), mode="area").clamp(0, 1)


def masked_pixels(image: Tensor, mask: Tensor) -> Tensor:
    """The masked image an inpainting model is conditioned on: ``image`` (B, 3, H, W) in [-1, 1] with the area
    to generate (binarised mask >= 0.5) set to 0 (mid grey), as diffusers' StableDiffusionInpaintPipeline and
    ComfyUI's InpaintModelConditioning do."""
    return image * (mask < 0.5).to(image)


def inpaint_concat(mask: Tensor, masked_latent: Tensor) -> Tensor:
    """The extra input channels of an SD 1.x/2.x/XL inpainting U-Net, (B, 1 + C, h, w): the latent-size mask
    (B, 1, h, w) then the masked image's model-space latent (B, C, h, w) (the order of diffusers' and the
    original RunwayML inpainting model: ``cat([x, mask, masked_latent])``). Goes in
    ``Conditioning.extra[CONCAT_KEY]`` of both the prompt and the negative prompt."""
    if mask.shape[-2:] != masked_latent.shape[-2:]:
        raise ValueError(
            f"inpaint mask {tuple(mask.shape[-2:])} and masked latent {tuple(masked_latent.shape[-2:])} differ in size"
        )
    if mask.shape[0] != masked_latent.shape[0]:
        mask = mask.expand(masked_latent.shape[0], -1, -1, -1)
    return torch.cat([mask.to(masked_latent), masked_latent], dim=1)


def fill_concat(pixel_mask: Tensor, masked_latent: Tensor) -> Tensor:
    """The extra input channels of FLUX.1 Fill, (B, C + f*f, h, w): the masked image's latent (B, C, h, w), then
    the pixel mask (B, 1, f*h, f*w) folded into f*f channels per latent cell (channel ``i * f + j`` holds pixel
    (i, j) of each f x f block, diffusers' FluxFillPipeline order); packed 2x2 by the network with the latent."""
    h, w = masked_latent.shape[-2:]
    if (
        pixel_mask.shape[-2] % h
        or pixel_mask.shape[-1] % w
        or pixel_mask.shape[-2] // h != pixel_mask.shape[-1] // w
    ):
        raise ValueError(
            f"pixel mask {tuple(pixel_mask.shape[-2:])} is not a whole multiple of the latent {(h, w)}"
        )
    folded = F.pixel_unshuffle(pixel_mask.to(masked_latent), pixel_mask.shape[-2] // h)  # (B, f*f, h, w)
    if folded.shape[0] != masked_latent.shape[0]:
        folded = folded.expand(masked_latent.shape[0], -1, -1, -1)
    return torch.cat([masked_latent, folded], dim=1)


def model_inpaint_inputs(
    model: Any, pixel_mask: Tensor, masked_latent: Tensor, *, resize: str = "nearest"
) -> Tensor:
    """The extra input channels an inpainting ``model`` (a ``ModelFolder``) takes, from the pixel mask
    (B, 1, H, W), 1 = generate, and the masked image's model-space latent (B, C, h, w): :func:`inpaint_concat`
    for SD/SDXL inpainting U-Nets (the mask resized to the latent with ``resize``: ``nearest`` as diffusers,
    ``bilinear`` as ComfyUI), :func:`fill_concat` for FLUX Fill."""
    c, extra = masked_latent.shape[1], inpaint_channels(model)
    h, w = masked_latent.shape[-2:]
    if extra == c + 1:
        return inpaint_concat(F.interpolate(pixel_mask.float(), size=(h, w), mode=resize), masked_latent)
    f = pixel_mask.shape[-2] // h
    if extra == c + f * f:
        return fill_concat(pixel_mask.float(), masked_latent)
    raise ValueError(
        f"this model takes {extra} extra input channels; latentworks knows inpainting models with {c + 1} "
        f"(SD/SDXL inpainting) or {c + f * f} (FLUX Fill)"
    )


def composite(generated: Tensor, original: Tensor, mask: Tensor) -> Tensor:
    """``mask * generated + (1 - mask) * original``: the unmasked pixels of ``original`` pasted back over the
    result (all (B, C, H, W); the mask broadcasts over channels). Where the mask is 0 the output is the
    original exactly."""
    m = mask.to(generated)
    return torch.where(m == 0, original.to(generated), m * generated + (1 - m) * original.to(generated))
