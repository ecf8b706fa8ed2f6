"""FLUX.1 ControlNets in the InstantX / Union style (diffusers' ``FluxControlNetModel``).

A shortened copy of the FLUX transformer (:mod:`latentworks.models.flux`: a few double-stream and single-stream
blocks, usually 5 + 10) reads the packed noisy latent plus the *VAE-encoded* control image, packed the same way
and added after the input projection through ``hint_in`` (diffusers' zero-initialised ``controlnet_x_embedder``).
After each block, a zero-initialised linear layer (``double_out.{i}`` / ``single_out.{i}``, diffusers'
``controlnet_blocks`` / ``controlnet_single_blocks``) maps the image tokens to a residual. The FLUX transformer
adds residual ``i // ceil(n_model / n_control)`` to the image tokens after each of its own double
(single) blocks (``Flux.forward(..., control=)``), as diffusers' ``FluxTransformer2DModel`` does.

Union ControlNets (InstantX FLUX.1-dev-Controlnet-Union, Shakker-Labs Union-Pro) add ``mode_embed`` (diffusers'
``controlnet_mode_embedder``, an ``nn.Embedding(num_modes, width)``): the chosen mode's embedding is one extra
text token in front of the prompt, at position id 0. Without a mode (ComfyUI's "auto") no token is added.

Contract: ``forward(x (B, C, h, w), t (B,), cond, hint (B, C, h, w)) -> ControlResiduals(double=, single=)``,
where ``x`` and ``t = 1000 * sigma`` are the FLUX transformer's own inputs and ``hint`` is the control image
encoded by the model's VAE into model-space latents (``hint_space = "latent"``: the
:class:`~latentworks.diffusion.control.ControlDenoiser` encodes it once per sampling run).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from latentworks.diffusion.conditioning import Conditioning
from latentworks.diffusion.control import ControlResiduals
from latentworks.models.flux import (
    GUIDANCE_SCALE_FACTOR,
    DoubleStreamBlock,
    Flux,
    FluxConfig,
    SingleStreamBlock,
    image_position_ids,
)
from latentworks.nn.embeddings import TIME_EMBED_DIM, timestep_embedding
from latentworks.nn.mlp import MLPEmbedder
from latentworks.nn.patch import pack_latents
from latentworks.nn.rope import rope_frequencies


@dataclass(frozen=True, kw_only=True)
class FluxControlNetConfig:
    """Architecture of a FLUX ControlNet.

    Attributes:
        flux: the transformer trunk (width, heads, text widths, RoPE axes, guidance embedding); its
            ``double_depth`` / ``single_depth`` are the ControlNet's own block counts (InstantX: 5 / 10), and
            its ``in_channels`` the latent channels (16) of both the noisy latent and the encoded hint.
        num_modes: size of the Union mode embedding (diffusers ``num_mode``); None for a single-task ControlNet.
    """

    flux: FluxConfig
    num_modes: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.flux, FluxConfig):
            raise ValueError(
                f"FluxControlNetConfig.flux must be a FluxConfig, got {type(self.flux).__name__}"
            )
        if self.num_modes is not None and self.num_modes < 1:
            raise ValueError(f"FluxControlNetConfig.num_modes must be >= 1 or None, got {self.num_modes}")


class FluxControlNet(nn.Module):
    """See the module docstring. Residuals are unscaled: the caller multiplies them by the strength."""

    hint_space = "latent"  # the hint is the control image encoded by the VAE, not pixels

    def __init__(self, config: FluxControlNetConfig) -> None:
        super().__init__()
        self.config = config
        self.source_name: str | None = None  # the file it was loaded from, for generation parameters
        f = config.flux
        d, p = f.width, f.patch_size
        self.img_in = nn.Linear(f.in_channels * p * p, d)
        self.hint_in = nn.Linear(f.in_channels * p * p, d)
        self.time_in = MLPEmbedder(TIME_EMBED_DIM, d)
        self.guidance_in = MLPEmbedder(TIME_EMBED_DIM, d) if f.guidance_embed else None
        self.vector_in = MLPEmbedder(f.pooled_dim, d)
        self.txt_in = nn.Linear(f.context_dim, d)
        self.mode_embed = nn.Embedding(config.num_modes, d) if config.num_modes is not None else None
        self.double_blocks = nn.ModuleList([DoubleStreamBlock(f) for _ in range(f.double_depth)])
        self.single_blocks = nn.ModuleList([SingleStreamBlock(f) for _ in range(f.single_depth)])
        self.double_out = nn.ModuleList([nn.Linear(d, d) for _ in range(f.double_depth)])
        self.single_out = nn.ModuleList([nn.Linear(d, d) for _ in range(f.single_depth)])
        for layer in [self.hint_in, *self.double_out, *self.single_out]:  # zero init: a no-op before training
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    @property
    def hint_factor(self) -> int:
        """Latent cells per latent cell: the hint arrives VAE-encoded at the latent's own size."""
        return 1

    @property
    def is_union(self) -> bool:
        return self.mode_embed is not None

    def check_model(self, network: object) -> None:
        """Raise a ValueError when this ControlNet cannot drive ``network`` (another family or size)."""
        f = self.config.flux
        if not isinstance(network, Flux):
            raise ValueError(
                f"this is a FLUX ControlNet but the model is a {type(network).__name__} (not FLUX); use a "
                "ControlNet made for the model's family (an SD1.5 ControlNet with SD1.5, SDXL with SDXL)"
            )
        m = network.config
        mine = (f.width, f.num_heads, f.context_dim, f.pooled_dim, f.axes_dim)
        theirs = (m.width, m.num_heads, m.context_dim, m.pooled_dim, m.axes_dim)
        if mine != theirs or f.in_channels != min(m.in_channels, m.output_channels):
            raise ValueError(
                "this FLUX ControlNet was made for another FLUX-style model: it has width "
                f"{f.width}, {f.num_heads} heads, text widths {f.context_dim}/{f.pooled_dim}, RoPE axes {f.axes_dim} "
                f"and {f.in_channels} latent channels, the model width {m.width}, {m.num_heads} heads, text widths "
                f"{m.context_dim}/{m.pooled_dim}, RoPE axes {m.axes_dim} and {m.output_channels} latent channels"
            )
        if f.double_depth > m.double_depth or f.single_depth > m.single_depth:
            raise ValueError(
                f"this FLUX ControlNet has {f.double_depth} double / {f.single_depth} single blocks, more than the "
                f"model's {m.double_depth} / {m.single_depth}; use a ControlNet made for this model"
            )

    def with_mode(self, mode: int | None) -> UnionMode:
        """This Union ControlNet with control mode ``mode`` (an index into its mode table; None = no mode
        token, ComfyUI's "auto"). The weights are shared."""
        if mode is not None and (self.config.num_modes is None or not 0 <= mode < self.config.num_modes):
            have = "no control modes" if self.config.num_modes is None else f"{self.config.num_modes} modes"
            raise ValueError(
                f"control mode {mode} is not available: this FLUX ControlNet has {have}"
                + ("" if self.config.num_modes is None else f" (0..{self.config.num_modes - 1})")
            )
        return UnionMode(self, mode)

    def _conditioning_vector(self, t: Tensor, cond: Conditioning, dtype: torch.dtype) -> Tensor:
        """time_in(t) [+ guidance_in(1000 * guidance)] + vector_in(pooled), (B, D), as in :class:`Flux`."""
        f = self.config.flux
        if cond.pooled is None or cond.pooled.shape[-1] != f.pooled_dim:
            got = None if cond.pooled is None else tuple(cond.pooled.shape)
            raise ValueError(
                f"FLUX ControlNet needs cond.pooled (B, {f.pooled_dim}) (pooled CLIP-L), got {got}"
            )
        vec = self.time_in(timestep_embedding(t, TIME_EMBED_DIM).to(dtype))
        if self.guidance_in is not None:
            if "guidance" not in cond.extra:
                raise ValueError(
                    "this FLUX ControlNet embeds the distilled guidance scale (FLUX.1-dev): pass "
                    "cond.extra['guidance'] (B,), e.g. 3.5"
                )
            g = cond.extra["guidance"].reshape(-1).float() * GUIDANCE_SCALE_FACTOR
            vec = vec + self.guidance_in(timestep_embedding(g, TIME_EMBED_DIM).to(dtype))
        return vec + self.vector_in(cond.pooled.to(dtype))

    def forward(
        self, x: Tensor, t: Tensor, cond: Conditioning, hint: Tensor, mode: int | None = None
    ) -> ControlResiduals:
        f = self.config.flux
        c = f.in_channels
        if x.ndim != 4 or x.shape[1] < c:
            raise ValueError(f"FLUX ControlNet expects x of shape (B, {c}, h, w), got {tuple(x.shape)}")
        x = x[
            :, :c
        ]  # a FLUX Fill model's input carries more channels after the latent; the ControlNet reads the latent
        if tuple(hint.shape) != tuple(x.shape):
            raise ValueError(
                f"FLUX ControlNet hint must be the VAE-encoded control image with the latent's shape "
                f"{tuple(x.shape)}, got {tuple(hint.shape)}"
            )
        if cond.tokens.shape[-1] != f.context_dim:
            raise ValueError(
                f"FLUX ControlNet expects cond.tokens (B, L, {f.context_dim}), got {tuple(cond.tokens.shape)}"
            )
        if mode is not None and self.mode_embed is None:
            raise ValueError("a control mode was given but this FLUX ControlNet is not a Union ControlNet")
        b, _, height, width = x.shape
        t = t.expand(b) if t.ndim == 0 else t
        dtype = self.img_in.weight.dtype
        p = f.patch_size
        img = self.img_in(pack_latents(x, p).to(dtype)) + self.hint_in(
            pack_latents(hint, p).to(dtype)
        )  # (B, N, D)
        txt = self.txt_in(cond.tokens.to(dtype))  # (B, L, D)
        if mode is not None:
            assert self.mode_embed is not None
            token = self.mode_embed(torch.full((b, 1), mode, dtype=torch.long, device=x.device))  # (B, 1, D)
            txt = torch.cat([token.to(dtype), txt], dim=1)
        vec = self._conditioning_vector(t, cond, dtype)  # (B, D)
        ids = torch.cat(
            [
                torch.zeros(txt.shape[1], 3, device=x.device, dtype=torch.long),
                image_position_ids(height // p, width // p, device=x.device),
            ]
        )  # (L+N, 3); the mode token sits at 0 like the text
        freqs = rope_frequencies(ids, f.axes_dim, f.theta)

        double = []
        for block, out in zip(self.double_blocks, self.double_out, strict=True):
            img, txt = block(img, txt, vec, freqs)
            double.append(out(img))
        n_txt = txt.shape[1]
        seq = torch.cat([txt, img], dim=1)
        single = []
        for block, out in zip(self.single_blocks, self.single_out, strict=True):
            seq = block(seq, vec, freqs)
            single.append(out(seq[:, n_txt:]))
        return ControlResiduals(double=tuple(double), single=tuple(single))


class UnionMode(nn.Module):
    """A Union :class:`FluxControlNet` with its control mode chosen (ComfyUI's SetUnionControlNetType): a control
    network itself, sharing the weights of ``net``."""

    hint_space = "latent"

    def __init__(self, net: FluxControlNet, mode: int | None) -> None:
        super().__init__()
        self.net = net
        self.mode = mode

    @property
    def config(self) -> FluxControlNetConfig:
        return self.net.config

    @property
    def source_name(self) -> str | None:
        return self.net.source_name

    @property
    def hint_factor(self) -> int:
        return self.net.hint_factor

    def check_model(self, network: object) -> None:
        self.net.check_model(network)

    def with_mode(self, mode: int | None) -> UnionMode:
        return self.net.with_mode(mode)

    def forward(self, x: Tensor, t: Tensor, cond: Conditioning, hint: Tensor) -> ControlResiduals:
        return self.net(x, t, cond, hint, mode=self.mode)


@torch.no_grad()
def randomize_zero_layers(model: FluxControlNet, generator: torch.Generator, std: float = 0.02) -> None:
    """Random weights for the zero-initialised layers (tests: a fresh ControlNet's residuals are exactly zero,
    which would hide any error downstream)."""
    for layer in [model.hint_in, *model.double_out, *model.single_out]:
        layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) * std)
        layer.bias.copy_(torch.randn(layer.bias.shape, generator=generator) * std)
