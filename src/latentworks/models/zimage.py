"""Z-Image (Tongyi-MAI 2025): S3-DiT, a single-stream diffusion transformer on FLUX's 16-channel latents.

Text and image tokens share one sequence. Before the main layers each stream is refined alone: image tokens
by ``noise_refiner`` blocks (timestep-modulated), Qwen3-4B caption states by ``context_refiner`` blocks (no
modulation). The main ``layers`` then run over ``[image; caption]`` per sample.

Every block is pre- and post-normed (RMSNorm before and after attention and the SwiGLU feed-forward) and,
when modulated, takes ``scale`` and a tanh ``gate`` for each branch from ``Linear(t_emb)`` (no shift, no SiLU
before the projection). The final layer is ``LayerNorm * (1 + Linear(SiLU(t_emb)))`` then a linear.

Sequences are padded to multiples of ``pad_multiple`` (32) tokens with learned pad tokens (``x_pad_token``,
``cap_pad_token``); the pad tokens are attended to like real tokens (as the release does). Positions are
3-axis RoPE ``(index, row, col)`` with theta 256: caption token ``j`` sits at ``(1 + j, 0, 0)`` over its padded
length ``P``; image token ``(r, c)`` at ``(P + 1, r, c)``; image pad tokens at ``(0, 0, 0)``.

Contract: ``forward(x (B, 16, H, W), t (B,), cond) -> velocity (B, 16, H, W)`` with ``t = sigma`` in [0, 1]
(ComfyUI's multiplier 1.0). The release's network is trained on the reversed clock and the negated velocity:
it embeds ``1000 * (1 - sigma)`` and predicts ``x0 - noise``; this module does both conversions, so its output
is the usual ``noise - x0`` (``x0 = x - sigma * v``). ``cond.tokens`` (B, L, 2560) are Qwen3-4B hidden states
(second to last layer), ``cond.mask`` (B, L) marks real tokens (None: all real); padding is dropped as the
release's pipeline does, so each sample sees only its own tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentworks.diffusion.conditioning import Conditioning
from latentworks.nn.attention import attention, split_heads
from latentworks.nn.embeddings import TIME_EMBED_DIM, timestep_embedding
from latentworks.nn.modulation import AdaLNModulation, layer_norm
from latentworks.nn.norms import RMSNorm
from latentworks.nn.patch import unpatchify
from latentworks.nn.rope import apply_rope, rope_frequencies

ADALN_MAX_DIM = 256  # the modulation input is min(width, 256) wide (the timestep MLP's output)


@dataclass(frozen=True, kw_only=True)
class ZImageConfig:
    """Shape of a Z-Image transformer (diffusers ``ZImageTransformer2DModel`` names in comments)."""

    in_channels: int = 16  # in_channels: latent channels (FLUX's VAE)
    patch_size: int = 2  # all_patch_size = (2,); the frame patch size is 1
    width: int = 3840  # dim
    num_heads: int = 30  # n_heads (n_kv_heads is the same: no grouped-query attention)
    depth: int = 30  # n_layers: main single-stream layers
    refiner_depth: int = 2  # n_refiner_layers: each of noise_refiner and context_refiner
    ffn_dim: int = 10240  # SwiGLU hidden width; diffusers derives it as int(dim / 3 * 8)
    context_dim: int = 2560  # cap_feat_dim: Qwen3-4B hidden size
    time_hidden_dim: int = 1024  # the timestep MLP's hidden width (fixed in the release)
    axes_dim: tuple[int, ...] = (32, 48, 48)  # axes_dims: RoPE channels per (index, row, col) axis
    theta: float = 256.0  # rope_theta
    norm_eps: float = 1e-5  # norm_eps: every RMSNorm
    time_scale: float = 1000.0  # t_scale: the embedder sees time_scale * (1 - sigma)
    pad_multiple: int = 32  # SEQ_MULTI_OF: caption and image sequences are padded to multiples of this

    def __post_init__(self) -> None:
        for name in ("in_channels", "patch_size", "width", "num_heads", "depth", "ffn_dim", "context_dim",
                     "time_hidden_dim", "pad_multiple"):  # fmt: skip
            if getattr(self, name) < 1:
                raise ValueError(f"ZImageConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.refiner_depth < 0:
            raise ValueError(f"ZImageConfig.refiner_depth must be >= 0, got {self.refiner_depth}")
        if self.width % self.num_heads:
            raise ValueError(
                f"ZImageConfig.width={self.width} is not divisible by num_heads={self.num_heads}"
            )
        if not isinstance(self.axes_dim, tuple) or len(self.axes_dim) != 3:
            raise ValueError(
                f"ZImageConfig.axes_dim must be a tuple of 3 entries (index, row, col), got {self.axes_dim!r}"
            )
        if any(d <= 0 or d % 2 for d in self.axes_dim):
            raise ValueError(f"ZImageConfig.axes_dim entries must be positive and even, got {self.axes_dim}")
        if sum(self.axes_dim) != self.head_dim:
            raise ValueError(
                f"ZImageConfig.axes_dim {self.axes_dim} sums to {sum(self.axes_dim)} but the head dimension is "
                f"width / num_heads = {self.head_dim}; the RoPE axes must cover each head exactly"
            )
        if self.theta <= 0 or self.time_scale <= 0 or self.norm_eps <= 0:
            raise ValueError(
                f"ZImageConfig.theta, time_scale and norm_eps must be > 0, got {self.theta}, "
                f"{self.time_scale}, {self.norm_eps}"
            )

    @property
    def head_dim(self) -> int:
        return self.width // self.num_heads

    @property
    def adaln_dim(self) -> int:
        return min(self.width, ADALN_MAX_DIM)


PRESETS: dict[str, ZImageConfig] = {
    # Tongyi-MAI/Z-Image-Turbo: 6.15B parameters
    "z-image-turbo": ZImageConfig(),
    "tiny": ZImageConfig(
        in_channels=4, width=64, num_heads=2, depth=2, refiner_depth=1, ffn_dim=170, context_dim=24,
        time_hidden_dim=32, axes_dim=(8, 12, 12),
    ),
}  # fmt: skip


class Attention(nn.Module):
    """Self-attention with a fused bias-free ``qkv``, per-head RMS qk-norm and RoPE."""

    def __init__(self, config: ZImageConfig) -> None:
        super().__init__()
        d = config.width
        self.num_heads = config.num_heads
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.q_norm = RMSNorm(config.head_dim, eps=config.norm_eps)
        self.k_norm = RMSNorm(config.head_dim, eps=config.norm_eps)
        self.out = nn.Linear(d, d, bias=False)

    def forward(self, x: Tensor, freqs: Tensor, mask: Tensor | None) -> Tensor:
        # x: (B, S, D); freqs: (B, S, hd/2, 2); mask: (B, S) True for real keys, or None
        q, k, v = (split_heads(t, self.num_heads) for t in self.qkv(x).chunk(3, dim=-1))  # (B, H, S, hd)
        q, k = apply_rope(self.q_norm(q), self.k_norm(k), freqs)
        return self.out(attention(q, k, v, mask))


class SwiGLU(nn.Module):
    """``w2(SiLU(w1 x) * w3 x)``, bias-free (Shazeer 2020)."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden_dim, bias=False)
        self.w2 = nn.Linear(hidden_dim, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden_dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class ZImageBlock(nn.Module):
    """Sandwich-normed attention + SwiGLU; ``modulated`` blocks scale and tanh-gate both branches by t."""

    def __init__(self, config: ZImageConfig, *, modulated: bool) -> None:
        super().__init__()
        d, eps = config.width, config.norm_eps
        self.attention = Attention(config)
        self.feed_forward = SwiGLU(d, config.ffn_dim)
        self.attention_norm1 = RMSNorm(d, eps=eps)
        self.attention_norm2 = RMSNorm(d, eps=eps)
        self.ffn_norm1 = RMSNorm(d, eps=eps)
        self.ffn_norm2 = RMSNorm(d, eps=eps)
        # (B, adaln_dim) -> scale_attn, gate_attn, scale_ffn, gate_ffn, each (B, D)
        self.modulation = nn.Linear(config.adaln_dim, 4 * d) if modulated else None

    def forward(self, x: Tensor, freqs: Tensor, mask: Tensor | None, t_emb: Tensor | None = None) -> Tensor:
        # x: (B, S, D); t_emb: (B, adaln_dim), required by modulated blocks
        if self.modulation is None:
            x = x + self.attention_norm2(self.attention(self.attention_norm1(x), freqs, mask))
            return x + self.ffn_norm2(self.feed_forward(self.ffn_norm1(x)))
        assert t_emb is not None
        scale_a, gate_a, scale_f, gate_f = self.modulation(t_emb)[:, None].chunk(4, dim=-1)  # (B, 1, D) each
        attn = self.attention(self.attention_norm1(x) * (1 + scale_a), freqs, mask)
        x = x + gate_a.tanh() * self.attention_norm2(attn)
        ffn = self.feed_forward(self.ffn_norm1(x) * (1 + scale_f))
        return x + gate_f.tanh() * self.ffn_norm2(ffn)


class TimestepMLP(nn.Module):
    """``fc2(SiLU(fc1(sinusoid(t))))``: 256 sinusoidal features -> time_hidden_dim -> adaln_dim."""

    def __init__(self, config: ZImageConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(TIME_EMBED_DIM, config.time_hidden_dim)
        self.fc2 = nn.Linear(config.time_hidden_dim, config.adaln_dim)

    def forward(self, t: Tensor) -> Tensor:  # (B,) -> (B, adaln_dim)
        emb = timestep_embedding(t, TIME_EMBED_DIM).to(self.fc1.weight.dtype)  # cos first, as the release
        return self.fc2(F.silu(self.fc1(emb)))


class FinalLayer(nn.Module):
    """``linear(LayerNorm(x) * (1 + Linear(SiLU(t_emb))))``: a scale-only adaLN before the output projection."""

    def __init__(self, config: ZImageConfig) -> None:
        super().__init__()
        d, p = config.width, config.patch_size
        self.modulation = AdaLNModulation(config.adaln_dim, d, 1)
        self.linear = nn.Linear(d, p * p * config.in_channels)

    def forward(self, x: Tensor, t_emb: Tensor) -> Tensor:  # (B, S, D) -> (B, S, p*p*C)
        (scale,) = self.modulation(t_emb)
        return self.linear(layer_norm(x) * (1 + scale[:, None]))


def _padded(n: int, multiple: int) -> int:
    return n + (-n) % multiple


class ZImage(nn.Module):
    """Z-Image's S3-DiT; see the module docstring."""

    def __init__(self, config: ZImageConfig) -> None:
        super().__init__()
        self.config = config
        d, p = config.width, config.patch_size
        self.x_embedder = nn.Linear(p * p * config.in_channels, d)
        self.t_embedder = TimestepMLP(config)
        self.cap_norm = RMSNorm(config.context_dim, eps=config.norm_eps)
        self.cap_embedder = nn.Linear(config.context_dim, d)
        self.x_pad_token = nn.Parameter(torch.zeros(1, d))
        self.cap_pad_token = nn.Parameter(torch.zeros(1, d))
        self.noise_refiner = nn.ModuleList(
            [ZImageBlock(config, modulated=True) for _ in range(config.refiner_depth)]
        )
        self.context_refiner = nn.ModuleList(
            [ZImageBlock(config, modulated=False) for _ in range(config.refiner_depth)]
        )
        self.layers = nn.ModuleList([ZImageBlock(config, modulated=True) for _ in range(config.depth)])
        self.final_layer = FinalLayer(config)

    def _caption(self, cond: Conditioning, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
        """Embedded caption tokens, real ones first, each sample padded with the pad token to a multiple of
        ``pad_multiple`` and the batch to the longest: (B, Lc, D), the key mask (B, Lc) and the padded
        lengths P (B,)."""
        tokens = cond.tokens
        b, n, _ = tokens.shape
        real = (
            torch.ones(b, n, dtype=torch.bool, device=tokens.device)
            if cond.mask is None
            else cond.mask.to(device=tokens.device).bool()
        )
        lengths = real.sum(dim=1)  # (B,)
        if int(lengths.min()) < 1:
            raise ValueError(
                "Z-Image needs at least one real caption token per sample; cond.mask marks none for sample "
                f"{int(lengths.argmin())} (an empty prompt still has its chat-template tokens)"
            )
        order = torch.sort((~real).to(torch.uint8), dim=1, stable=True).indices  # real tokens first, in order
        tokens = torch.gather(tokens, 1, order[..., None].expand(-1, -1, tokens.shape[-1]))
        padded = lengths + (-lengths) % self.config.pad_multiple  # (B,)
        cap_len = int(padded.max())
        if cap_len > n:
            tokens = torch.cat([tokens, tokens.new_zeros(b, cap_len - n, tokens.shape[-1])], dim=1)
        tokens = tokens[:, :cap_len]
        emb = self.cap_embedder(self.cap_norm(tokens.to(dtype)))  # (B, Lc, D)
        pos = torch.arange(cap_len, device=tokens.device)[None]  # (1, Lc)
        emb = torch.where((pos >= lengths[:, None])[..., None], self.cap_pad_token.to(emb.dtype), emb)
        return emb, pos < padded[:, None], padded

    def forward(self, x: Tensor, t: Tensor, cond: Conditioning) -> Tensor:
        cfg = self.config
        b, c, height, width = x.shape
        p = cfg.patch_size
        if c != cfg.in_channels or height % p or width % p:
            raise ValueError(
                f"Z-Image expects latents (B, {cfg.in_channels}, H, W) with H and W multiples of {p}, "
                f"got {tuple(x.shape)}"
            )
        if cond.tokens.shape[-1] != cfg.context_dim or cond.tokens.shape[0] != b:
            raise ValueError(
                f"Z-Image expects cond.tokens (B={b}, L, {cfg.context_dim}) (Qwen3-4B hidden states), "
                f"got {tuple(cond.tokens.shape)}"
            )
        t = t.expand(b) if t.ndim == 0 else t
        dtype = self.x_embedder.weight.dtype
        device = x.device
        # the release runs on the reversed clock: 0 is pure noise, 1 the clean image
        t_emb = self.t_embedder((1.0 - t.float()) * cfg.time_scale)  # (B, adaln_dim)

        # image tokens, channels ordered (ph, pw, c), padded with the pad token to a multiple of pad_multiple
        h, w = height // p, width // p
        n_img = h * w
        patches = x.reshape(b, c, h, p, w, p).permute(0, 2, 4, 3, 5, 1).reshape(b, n_img, p * p * c)
        img = self.x_embedder(patches.to(dtype))  # (B, N, D)
        n_img_padded = _padded(n_img, cfg.pad_multiple)
        img = torch.cat([img, self.x_pad_token.to(dtype).expand(b, n_img_padded - n_img, -1)], dim=1)

        cap, cap_mask, cap_padded = self._caption(cond, dtype)  # (B, Lc, D), (B, Lc), (B,)
        cap_len = cap.shape[1]

        # positions: caption (1 + j, 0, 0); image (P + 1, row, col) with P the sample's padded caption length
        rows, cols = torch.meshgrid(
            torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij"
        )
        grid = torch.stack([torch.zeros_like(rows), rows, cols], dim=-1).reshape(1, n_img, 3)
        offset = torch.zeros(b, 1, 3, dtype=torch.long, device=device)
        offset[:, 0, 0] = cap_padded + 1
        img_ids = grid + offset  # (B, N, 3)
        img_ids = torch.cat([img_ids, img_ids.new_zeros(b, n_img_padded - n_img, 3)], dim=1)  # (B, Ni, 3)
        cap_ids = torch.zeros(b, cap_len, 3, dtype=torch.long, device=device)
        cap_ids[..., 0] = torch.arange(1, cap_len + 1, device=device)
        img_freqs = rope_frequencies(img_ids, cfg.axes_dim, cfg.theta)  # (B, Ni, hd/2, 2)
        cap_freqs = rope_frequencies(cap_ids, cfg.axes_dim, cfg.theta)  # (B, Lc, hd/2, 2)

        for block in self.noise_refiner:
            img = block(img, img_freqs, None, t_emb)
        cap_keys = None if bool(cap_mask.all()) else cap_mask
        for block in self.context_refiner:
            cap = block(cap, cap_freqs, cap_keys)

        seq = torch.cat([img, cap], dim=1)  # (B, Ni + Lc, D): [image; caption; batch padding]
        freqs = torch.cat([img_freqs, cap_freqs], dim=1)
        mask = torch.cat([torch.ones(b, n_img_padded, dtype=torch.bool, device=device), cap_mask], dim=1)
        keys = None if bool(mask.all()) else mask
        for block in self.layers:
            seq = block(seq, freqs, keys, t_emb)
        out = self.final_layer(seq[:, :n_img], t_emb)  # (B, N, p*p*C)
        # the release predicts x0 - noise; the velocity of x_t = (1 - sigma) x0 + sigma noise is its negative
        return -unpatchify(out, h, w, p, c)
