"""Qwen-Image (Qwen team 2025): a 20B rectified-flow MM-DiT over 16-channel latents, prompted by the hidden
states of Qwen2.5-VL-7B (3584 wide).

Every block is a double-stream block (as FLUX's first stage and SD3's MM-DiT): image and text tokens keep
their own adaLN modulation, qkv, qk RMS-norm, output projection and MLP, and meet in one joint attention over
``[text; image]``. There are no single-stream blocks and no pooled vector: the conditioning vector is the
timestep embedding alone. The text states are RMS-normalised (learned weight) before ``txt_in``.

Positions are rotary over three axes ``(frame, row, column)`` with ``axes_dim = (16, 56, 56)`` channels per
axis of each 128-channel head ("MSRoPE"): image tokens sit at frame 0 and at grid coordinates *centred* on the
image (rows ``-(h - h // 2) .. h // 2 - 1``, columns likewise), and text token ``i`` sits at
``(s + i, s + i, s + i)`` with ``s = max(h // 2, w // 2)``, i.e. on the diagonal just past the image, as
diffusers' ``QwenEmbedRope(scale_rope=True)`` places them. Latents are packed 2x2 into 64-channel tokens
(channels ordered (c, ph, pw), :func:`latentworks.nn.patch.pack_latents`).

Contract: ``forward(x (B, 16, H, W), t (B,), cond) -> velocity (B, 16, H, W)`` with ``t = 1000 * sigma``
(diffusers passes ``sigma`` and scales by 1000 inside its timestep projection), ``cond.tokens`` (B, L, 3584)
Qwen2.5-VL states and ``cond.mask`` (B, L) True where a text token is real (padding keys are masked out of the
joint attention; image keys are always attended). ``cond.pooled`` is not used. H and W must be even.

Qwen-Image-Edit: ``cond.extra["reference_latents"]`` (B, 16, h, w), the input image's normalised latents, are
packed and appended to the image stream at RoPE frame 1 (diffusers' ``img_shapes`` second entry); the
prediction covers the noisy latent only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from latentworks.diffusion.conditioning import Conditioning
from latentworks.nn.attention import StreamAttention, attention
from latentworks.nn.embeddings import TIME_EMBED_DIM, timestep_embedding
from latentworks.nn.final import FinalLayer
from latentworks.nn.mlp import FeedForward, MLPEmbedder
from latentworks.nn.modulation import AdaLNModulation, gate, layer_norm, modulate
from latentworks.nn.norms import RMSNorm
from latentworks.nn.patch import pack_latents, unpack_latents
from latentworks.nn.rope import apply_rope, rope_frequencies

REFERENCE_LATENTS = "reference_latents"  # cond.extra key of Qwen-Image-Edit's input-image latents


def position_ids(
    h: int,
    w: int,
    text_len: int,
    device: torch.device | None = None,
    references: tuple[tuple[int, int], ...] = (),
) -> Tensor:
    """(text_len + h * w + sum of reference grids, 3) RoPE positions ``(frame, row, col)``: text tokens first,
    then the h x w packed image grid in raster order, then each reference image's grid (Qwen-Image-Edit) at
    frame 1, 2, ... (see the module docstring for the centred grids and the diagonal text, which starts past the
    largest grid)."""
    grids = []
    for frame, (gh, gw) in enumerate(((h, w), *references)):
        rows = torch.arange(gh, device=device) - (gh - gh // 2)  # -(h - h//2) .. h//2 - 1
        cols = torch.arange(gw, device=device) - (gw - gw // 2)
        grid_r, grid_c = torch.meshgrid(rows, cols, indexing="ij")
        grids.append(
            torch.stack([torch.full_like(grid_r, frame), grid_r, grid_c], dim=-1).reshape(gh * gw, 3)
        )
    start = max(max(gh // 2, gw // 2) for gh, gw in ((h, w), *references))
    text = (start + torch.arange(text_len, device=device))[:, None].expand(text_len, 3)
    return torch.cat([text, *grids])


@dataclass(frozen=True, kw_only=True)
class QwenImageConfig:
    """Shape of a Qwen-Image transformer (diffusers ``QwenImageTransformer2DModel`` names in comments)."""

    in_channels: int = 16  # latent channels before 2x2 packing (diffusers in_channels = 4 * this)
    out_channels: int | None = None  # None: same as in_channels (diffusers out_channels: latent channels)
    patch_size: int = 2  # packing size (diffusers patch_size)
    width: int = 3072  # num_attention_heads * attention_head_dim
    num_heads: int = 24  # num_attention_heads
    depth: int = 60  # num_layers: double-stream blocks
    mlp_ratio: float = 4.0  # diffusers FeedForward's default mult
    context_dim: int = 3584  # joint_attention_dim: Qwen2.5-VL-7B hidden size
    axes_dim: tuple[int, ...] = (16, 56, 56)  # axes_dims_rope: RoPE channels per (frame, row, col)
    theta: float = 10000.0

    def __post_init__(self) -> None:
        for name in ("in_channels", "patch_size", "width", "num_heads", "depth", "context_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"QwenImageConfig.{name} must be an int >= 1, got {value!r}")
        if self.out_channels is not None and self.out_channels < 1:
            raise ValueError(f"QwenImageConfig.out_channels must be >= 1 or None, got {self.out_channels}")
        if self.width % self.num_heads:
            raise ValueError(
                f"QwenImageConfig.width={self.width} is not divisible by num_heads={self.num_heads}"
            )
        if not isinstance(self.axes_dim, tuple) or len(self.axes_dim) != 3:
            raise ValueError(
                f"QwenImageConfig.axes_dim must be a tuple of 3 ints (frame, row, col), got {self.axes_dim!r}"
            )
        if any(d <= 0 or d % 2 for d in self.axes_dim):
            raise ValueError(
                f"QwenImageConfig.axes_dim entries must be positive and even, got {self.axes_dim}"
            )
        if sum(self.axes_dim) != self.head_dim:
            raise ValueError(
                f"QwenImageConfig.axes_dim {self.axes_dim} sums to {sum(self.axes_dim)} but the head dimension "
                f"is width / num_heads = {self.head_dim}; the RoPE axes must cover each head exactly"
            )
        if self.mlp_ratio <= 0:
            raise ValueError(f"QwenImageConfig.mlp_ratio must be > 0, got {self.mlp_ratio}")
        if self.theta <= 0:
            raise ValueError(f"QwenImageConfig.theta must be > 0, got {self.theta}")

    @property
    def output_channels(self) -> int:
        return self.in_channels if self.out_channels is None else self.out_channels

    @property
    def head_dim(self) -> int:
        return self.width // self.num_heads

    @property
    def mlp_hidden_dim(self) -> int:
        return int(self.width * self.mlp_ratio)


PRESETS: dict[str, QwenImageConfig] = {
    # the released Qwen/Qwen-Image transformer (transformer/config.json): 60 blocks, 24 x 128, about 20.4B
    "qwen-image": QwenImageConfig(),
    "tiny": QwenImageConfig(
        in_channels=4, width=64, num_heads=2, depth=2, context_dim=24, axes_dim=(8, 12, 12)
    ),
}


class QwenImageBlock(nn.Module):
    """One double-stream block: per-stream adaLN (shift, scale, gate for attention and for the MLP), joint
    attention over ``[text; image]`` with a key mask on text padding, per-stream MLP."""

    def __init__(self, config: QwenImageConfig) -> None:
        super().__init__()
        d, heads = config.width, config.num_heads
        self.img_mod = AdaLNModulation(d, d, 6, zero_init=True)
        self.img_attn = StreamAttention(d, heads, "rms_norm")
        self.img_mlp = FeedForward(d, config.mlp_hidden_dim)
        self.txt_mod = AdaLNModulation(d, d, 6, zero_init=True)
        self.txt_attn = StreamAttention(d, heads, "rms_norm")
        self.txt_mlp = FeedForward(d, config.mlp_hidden_dim)

    def forward(
        self, img: Tensor, txt: Tensor, vec: Tensor, freqs: Tensor, key_mask: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        # img: (B, N, D), txt: (B, L, D), vec: (B, D), freqs: (L+N, hd/2, 2), key_mask: (B, L+N) or None
        i_shift, i_scale, i_gate, i_shift_m, i_scale_m, i_gate_m = self.img_mod(vec)
        t_shift, t_scale, t_gate, t_shift_m, t_scale_m, t_gate_m = self.txt_mod(vec)
        qi, ki, vi = self.img_attn.qkv_tokens(modulate(layer_norm(img), i_shift, i_scale))  # (B, N, H, hd)
        qt, kt, vt = self.txt_attn.qkv_tokens(modulate(layer_norm(txt), t_shift, t_scale))  # (B, L, H, hd)
        # joined token-major (row copies), then viewed head-major (B, H, L+N, hd) for RoPE and attention
        q, k, v = (torch.cat(s, dim=1).transpose(1, 2) for s in ((qt, qi), (kt, ki), (vt, vi)))
        q, k = apply_rope(q, k, freqs)
        joint = attention(q, k, v, key_mask)  # (B, L+N, D)
        n_txt = txt.shape[1]
        txt_out, img_out = joint[:, :n_txt], joint[:, n_txt:]
        assert self.img_attn.proj is not None and self.txt_attn.proj is not None
        img = img + gate(self.img_attn.proj(img_out), i_gate)
        img = img + gate(self.img_mlp(modulate(layer_norm(img), i_shift_m, i_scale_m)), i_gate_m)
        txt = txt + gate(self.txt_attn.proj(txt_out), t_gate)
        txt = txt + gate(self.txt_mlp(modulate(layer_norm(txt), t_shift_m, t_scale_m)), t_gate_m)
        return img, txt


class QwenImage(nn.Module):
    """Qwen-Image transformer; see the module docstring."""

    def __init__(self, config: QwenImageConfig) -> None:
        super().__init__()
        self.config = config
        d, p = config.width, config.patch_size
        self.img_in = nn.Linear(config.in_channels * p * p, d)
        self.txt_norm = RMSNorm(config.context_dim, eps=1e-6)
        self.txt_in = nn.Linear(config.context_dim, d)
        self.time_in = MLPEmbedder(TIME_EMBED_DIM, d)
        self.blocks = nn.ModuleList([QwenImageBlock(config) for _ in range(config.depth)])
        self.final_layer = FinalLayer(d, p * p * config.output_channels)

    def forward(self, x: Tensor, t: Tensor, cond: Conditioning) -> Tensor:
        cfg = self.config
        if x.ndim != 4 or x.shape[1] != cfg.in_channels:
            raise ValueError(f"Qwen-Image expects latents (B, {cfg.in_channels}, H, W), got {tuple(x.shape)}")
        b, _, height, width = x.shape
        p = cfg.patch_size
        if height % p or width % p:
            raise ValueError(
                f"Qwen-Image packs {p}x{p} latent patches, so latent height and width must be multiples of {p}; "
                f"got {height}x{width} (image sizes must be multiples of {8 * p} pixels)"
            )
        if cond.tokens.shape[-1] != cfg.context_dim:
            raise ValueError(
                f"Qwen-Image expects cond.tokens (B, L, {cfg.context_dim}) (Qwen2.5-VL hidden states), "
                f"got {tuple(cond.tokens.shape)}"
            )
        if cond.tokens.shape[0] != b:
            raise ValueError(f"cond.tokens batch {cond.tokens.shape[0]} != latent batch {b}")
        t = t.expand(b) if t.ndim == 0 else t
        dtype = self.img_in.weight.dtype
        img = self.img_in(pack_latents(x, p).to(dtype))  # (B, N, D)
        txt = self.txt_in(self.txt_norm(cond.tokens.to(dtype)))  # (B, L, D)
        vec = self.time_in(timestep_embedding(t, TIME_EMBED_DIM).to(dtype))  # (B, D)

        n_img = img.shape[1]
        refs = cond.extra.get(REFERENCE_LATENTS)
        grids: tuple[tuple[int, int], ...] = ()
        if refs is not None:  # Qwen-Image-Edit: the input image's latents join the image stream
            if refs.ndim != 4 or refs.shape[1] != cfg.in_channels or refs.shape[-2] % p or refs.shape[-1] % p:
                raise ValueError(
                    f"cond.extra[{REFERENCE_LATENTS!r}] must be (B, {cfg.in_channels}, h, w) latents with h, w "
                    f"multiples of {p}, got {tuple(refs.shape)}"
                )
            img = torch.cat([img, self.img_in(pack_latents(refs.to(device=x.device, dtype=dtype), p))], dim=1)
            grids = ((refs.shape[-2] // p, refs.shape[-1] // p),)
        n_txt = txt.shape[1]
        ids = position_ids(height // p, width // p, n_txt, device=x.device, references=grids)  # (L+N, 3)
        freqs = rope_frequencies(ids, cfg.axes_dim, cfg.theta)  # (L+N, hd/2, 2)
        key_mask = None  # an all-real mask is dropped so SDPA may pick its fused kernels (as diffusers does)
        if cond.mask is not None and not bool(cond.mask.bool().all()):
            image_keys = torch.ones(b, img.shape[1], dtype=torch.bool, device=x.device)
            key_mask = torch.cat([cond.mask.to(device=x.device, dtype=torch.bool), image_keys], dim=1)

        for block in self.blocks:
            img, txt = block(img, txt, vec, freqs, key_mask)
        out = self.final_layer(img[:, :n_img], vec)  # (B, N, p*p*C_out): the noisy latent's tokens only
        return unpack_latents(out, height, width, p)
