"""Resizing shared by the image and latent nodes, with ComfyUI's method names and crop rule.

Tensors are channels-first, (B, C, H, W). The methods are those ComfyUI's ``common_upscale`` offers:
"nearest-exact", "bilinear", "area", "bicubic" (``torch.nn.functional.interpolate``, align_corners=False),
"lanczos" (PIL on 8-bit images, as ComfyUI does) and "bislerp" (spherical interpolation of channel
vectors, for latents; width first, then height, as ComfyUI).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

IMAGE_METHODS = ("nearest-exact", "bilinear", "area", "bicubic", "lanczos")
LATENT_METHODS = ("nearest-exact", "bilinear", "area", "bicubic", "bislerp")
CROP_METHODS = ("disabled", "center")


def center_crop_to_aspect(x: Tensor, width: int, height: int) -> Tensor:
    """Crop (..., H, W) to the aspect ratio of width x height, removing equal margins (ComfyUI's "center")."""
    old_h, old_w = x.shape[-2], x.shape[-1]
    old_aspect, new_aspect = old_w / old_h, width / height
    dx = dy = 0
    if old_aspect > new_aspect:  # too wide: trim the sides
        dx = round((old_w - old_w * (new_aspect / old_aspect)) / 2)
    elif old_aspect < new_aspect:  # too tall: trim top and bottom
        dy = round((old_h - old_h * (old_aspect / new_aspect)) / 2)
    return x[..., dy : old_h - dy, dx : old_w - dx]


def _lanczos(x: Tensor, width: int, height: int) -> Tensor:
    # ComfyUI goes through 8-bit PIL images: clip to [0, 255], truncate to uint8, resize, divide by 255.
    out = []
    for img in x:
        a = np.clip(255.0 * img.detach().float().cpu().numpy(), 0, 255).astype(np.uint8)  # (C, H, W)
        if a.shape[0] in (3, 4):
            im = Image.fromarray(np.moveaxis(a, 0, -1)).resize((width, height), Image.Resampling.LANCZOS)
            r = np.moveaxis(np.asarray(im), -1, 0)
        else:  # one PIL "L" image per channel
            r = np.stack(
                [np.asarray(Image.fromarray(c).resize((width, height), Image.Resampling.LANCZOS)) for c in a]
            )
        out.append(torch.from_numpy(r.astype(np.float32) / 255.0))
    return torch.stack(out).to(x.device, x.dtype)


def _slerp_axis(x: Tensor, size: int, dim: int) -> Tensor:
    """Resize one spatial axis of (B, C, H, W) by spherical interpolation between the C-vectors of the two
    nearest source cells (half-pixel centres, as align_corners=False), with the norm interpolated linearly.

    ComfyUI's bislerp rule: nearly parallel neighbours (cosine > 1 - 1e-5) give the first one unchanged,
    nearly opposite ones (cosine < -1 + 1e-5) a linear blend; a zero vector counts as direction 0.
    """
    n = x.shape[dim]
    src = ((torch.arange(size, dtype=torch.float64) + 0.5) * n / size - 0.5).clamp(0, n - 1)
    lo = src.floor().long()
    hi = (lo + 1).clamp(max=n - 1)
    shape = [1, 1, 1, 1]
    shape[dim] = size
    t = (src - lo).to(x.dtype).to(x.device).view(shape)
    a, b = x.index_select(dim, lo.to(x.device)), x.index_select(dim, hi.to(x.device))
    na, nb = a.norm(dim=1, keepdim=True), b.norm(dim=1, keepdim=True)
    ua = torch.where(na > 0, a / na.where(na > 0, torch.ones_like(na)), torch.zeros_like(a))
    ub = torch.where(nb > 0, b / nb.where(nb > 0, torch.ones_like(nb)), torch.zeros_like(b))
    dot = (ua * ub).sum(1, keepdim=True)
    omega = dot.clamp(-1, 1).acos()
    so = omega.sin().where(omega.sin() != 0, torch.ones_like(omega))
    out = (((1 - t) * omega).sin() / so * ua + (t * omega).sin() / so * ub) * (na * (1 - t) + nb * t)
    out = torch.where(dot > 1 - 1e-5, a, out)
    return torch.where(dot < 1e-5 - 1, a * (1 - t) + b * t, out)


def resize(x: Tensor, width: int, height: int, method: str, crop: str = "disabled") -> Tensor:
    """Resize (B, C, H, W) to (B, C, height, width) with ComfyUI's method names; ``crop="center"`` first
    crops to the target aspect ratio."""
    if method not in IMAGE_METHODS + LATENT_METHODS:
        raise ValueError(
            f"unknown upscale_method {method!r}; choose one of {sorted(set(IMAGE_METHODS + LATENT_METHODS))}"
        )
    if crop not in CROP_METHODS:
        raise ValueError(f"unknown crop {crop!r}; choose one of {list(CROP_METHODS)}")
    if width < 1 or height < 1:
        raise ValueError(f"cannot resize to {width} x {height}; both sides must be at least 1")
    if crop == "center":
        x = center_crop_to_aspect(x, width, height)
    if method == "lanczos":
        return _lanczos(x, width, height)
    if method == "bislerp":
        return _slerp_axis(_slerp_axis(x.float(), width, 3), height, 2).to(x.dtype)
    kw = {"align_corners": False} if method in ("bilinear", "bicubic") else {}
    return F.interpolate(x, size=(height, width), mode=method, **kw)
