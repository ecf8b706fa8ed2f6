"""Canny edge maps: the control images of an edge ControlNet, from OpenCV (``cv2.Canny``).

One implementation for everything that needs edges: the Canny node (``nodes.controlnet``), ControlNet training
(``training.controlnet``: the hint of each training image) and the edge-following measure
(``evaluation.control``). Images go to 8-bit luminance first (ITU-R BT.601 weights, as
``cv2.COLOR_RGB2GRAY``), then through OpenCV's Canny with the hysteresis thresholds given on ComfyUI's [0, 1]
scale (x 255). OpenCV is the optional dependency ``opencv-python`` (extra ``latentworks[control]``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor


def _cv2() -> Any:
    try:
        import cv2  # optional dependency: latentworks[control]
    except ImportError:
        raise RuntimeError(
            "Canny edges need OpenCV; install it with `pip install 'latentworks[control]'` (opencv-python)"
        ) from None
    return cv2


def luma_uint8(rgb: Tensor) -> np.ndarray:
    """RGB (B, 3, H, W) in [0, 1] -> 8-bit luminance (B, H, W) uint8 (BT.601: 0.299 R + 0.587 G + 0.114 B)."""
    if rgb.ndim != 4 or rgb.shape[1] != 3:
        raise ValueError(f"expected an RGB batch (B, 3, H, W), got shape {tuple(rgb.shape)}")
    luma = 0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2]
    return (luma.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


def canny_gray(gray: np.ndarray, low_threshold: float, high_threshold: float) -> np.ndarray:
    """Canny edges of 8-bit grey images (B, H, W) uint8 -> (B, H, W) bool (True = edge pixel).

    Thresholds are on ComfyUI's [0, 1] scale (x 255 for OpenCV's hysteresis thresholds).
    """
    if not 0.0 < low_threshold <= high_threshold:
        raise ValueError(
            f"Canny: low_threshold ({low_threshold}) must be > 0 and at most high_threshold ({high_threshold})"
        )
    if gray.ndim != 3 or gray.dtype != np.uint8:
        raise ValueError(f"Canny: expected uint8 grey images (B, H, W), got {gray.dtype} {gray.shape}")
    cv2 = _cv2()
    edges = [cv2.Canny(np.ascontiguousarray(g), low_threshold * 255.0, high_threshold * 255.0) for g in gray]
    return np.stack(edges) > 0 if edges else np.zeros(gray.shape, bool)


def canny_edges(rgb: Tensor, low_threshold: float, high_threshold: float) -> Tensor:
    """Canny edges of RGB images (B, 3, H, W) in [0, 1] -> (B, H, W) bool on ``rgb``'s device."""
    return torch.from_numpy(canny_gray(luma_uint8(rgb), low_threshold, high_threshold)).to(rgb.device)


def edge_hint(edges: Tensor) -> Tensor:
    """An edge map (B, H, W) bool -> the ControlNet hint (B, 3, H, W) float: 1 on edges, 0 elsewhere (white
    edges on black, as the Canny node outputs)."""
    return edges.float().unsqueeze(1).expand(-1, 3, -1, -1).contiguous()


def canny_hints(images: np.ndarray, low_threshold: float, high_threshold: float) -> Tensor:
    """Hints (N, 3, H, W) float in {0, 1} of uint8 RGB images (N, H, W, 3), as a dataset stores them."""
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"expected uint8 RGB images (N, H, W, 3), got {images.dtype} {images.shape}")
    rgb = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    return edge_hint(canny_edges(rgb, low_threshold, high_threshold))
