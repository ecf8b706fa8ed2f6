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
prediction covers the noisy latent only. Qwen-Image-Edit-2509 (several input images): further references under
``reference_latents.1``, ``reference_latents.2`` (:func:`reference_latents`), each at the next frame (2, 3, ...)
as diffusers' ``QwenImageEditPlusPipeline`` places them. ``cond.extra["reference_latents_method"]`` (B,) codes
ComfyUI's FluxKontextMultiReferenceLatentMethod (:data:`REFERENCE_METHODS`):

- ``index`` (the default): frames 1, 2, ... at the grid's centre, as above;
- ``offset``: every reference at frame 1, each placed beside the ones before it (ComfyUI's layout: right of
  them when that keeps the union closer to square, else below);
- ``index_timestep_zero`` (Qwen-Image-Edit-2511): as ``index``, and the reference tokens' adaLN modulation reads
  the timestep embedding of t = 0 while the noisy tokens read the sampling timestep (diffusers'
  ``zero_cond_t=True``).
"""

from __future__ import annotations

from collections.abc import Sequence
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

REFERENCE_LATENTS = "reference_latents"  # cond.extra key of Qwen-Image-Edit's (first) input-image latents
REFERENCE_METHOD = "reference_latents_method"  # cond.extra key: (B,) index into REFERENCE_METHODS
REFERENCE_METHODS = ("index", "offset", "index_timestep_zero")
"""How reference latents are placed (ComfyUI's ``reference_latents_method`` values; see the module docstring)."""


def reference_key(i: int) -> str:
    """The ``cond.extra`` key of the i-th reference latent (0: ``reference_latents``, then ``.1``, ``.2``)."""
    return REFERENCE_LATENTS if i == 0 else f"{REFERENCE_LATENTS}.{i}"


def reference_latents(cond: Conditioning) -> list[Tensor]:
    """The reference latents a conditioning carries, in order (each (B, C, h, w)); [] for none."""
    out: list[Tensor] = []
    while reference_key(len(out)) in cond.extra:
        out.append(cond.extra[reference_key(len(out))])
    return out


def with_reference_latents(cond: Conditioning, latents: Sequence[Tensor]) -> Conditioning:
    """``cond`` with ``latents`` (each (B or 1, C, h, w)) appended after the references it already has."""
    first = len(reference_latents(cond))
    b = cond.batch_size
    extra = {
        reference_key(first + i): z.expand(b, *z.shape[1:]) if z.shape[0] == 1 else z
        for i, z in enumerate(latents)
    }
    return cond.with_extra(**extra)


def with_reference_method(cond: Conditioning, method: str) -> Conditioning:
    """``cond`` with its references placed by ``method`` (one of :data:`REFERENCE_METHODS`)."""
    if method not in REFERENCE_METHODS:
        raise ValueError(
            f"unknown reference latent method {method!r}; choose one of {', '.join(REFERENCE_METHODS)}"
        )
    code = torch.full((cond.batch_size,), REFERENCE_METHODS.index(method), device=cond.tokens.device)
    return cond.with_extra(**{REFERENCE_METHOD: code})


def reference_method(cond: Conditioning) -> str:
    """The method a (batched) conditioning's references are placed by; ``index`` when none is set."""
    code = cond.extra.get(REFERENCE_METHOD)
    if code is None:
        return REFERENCE_METHODS[0]
    codes = {int(c) for c in code.flatten().tolist()}
    if len(codes) != 1 or not 0 <= next(iter(codes)) < len(REFERENCE_METHODS):
        raise ValueError(
            f"cond.extra[{REFERENCE_METHOD!r}] must hold one method code for the whole batch (0..."
            f"{len(REFERENCE_METHODS) - 1}), got {sorted(codes)}: sample the prompt and the negative prompt with "
            "the same FluxKontextMultiReferenceLatentMethod"
        )
    return REFERENCE_METHODS[codes.pop()]


def offset_placements(grids: Sequence[tuple[int, int]]) -> tuple[tuple[int, int, int], ...]:
    """``(frame, row offset, col offset)`` per reference grid for the ``offset`` method: all at frame 1, each
    beside the union of the ones before it (ComfyUI's rule, on latent sizes: to the right when the reference is
    taller than it is wide relative to that union, else below). ``grids`` and offsets are in latent pixels;
    the offsets returned are in packed 2x2 tokens, rounded half up as ComfyUI does."""
    h = w = 0
    out = []
    for gh, gw in grids:
        dh, dw = (0, w) if gh + h > gw + w else (h, 0)
        h, w = max(h, gh + dh), max(w, gw + dw)
        out.append((1, (dh + 1) // 2, (dw + 1) // 2))
    return tuple(out)


def position_ids(
    h: int,
    w: int,
    text_len: int,
    device: torch.device | None = None,
    references: tuple[tuple[int, int], ...] = (),
    placements: tuple[tuple[int, int, int], ...] | None = None,
) -> Tensor:
    """(text_len + h * w + sum of reference grids, 3) RoPE positions ``(frame, row, col)``: text tokens first,
    then the h x w packed image grid in raster order, then each reference image's grid (Qwen-Image-Edit) at
    frame 1, 2, ... or at ``placements`` ``(frame, row offset, col offset)`` per reference (see the module
    docstring for the centred grids and the diagonal text, which starts past the largest grid)."""
    if placements is None:
        placements = tuple((i + 1, 0, 0) for i in range(len(references)))
    if len(placements) != len(references):
        raise ValueError(f"{len(references)} reference grids but {len(placements)} placements")
    grids = []
    for (frame, dr, dc), (gh, gw) in zip(((0, 0, 0), *placements), ((h, w), *references), strict=True):
        rows = torch.arange(gh, device=device) + dr - (gh - gh // 2)  # -(h - h//2) .. h//2 - 1 (+ offset)
        cols = torch.arange(gw, device=device) + dc - (gw - gw // 2)
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


def _modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """:func:`modulate` with per-sample (B, D) or per-token (B, N, D) shift and scale; x (B, N, D)."""
    return modulate(x, shift, scale) if shift.ndim == 2 else x * (1 + scale) + shift


def _gate(x: Tensor, g: Tensor) -> Tensor:
    """:func:`gate` with a per-sample (B, D) or per-token (B, N, D) gate; x (B, N, D)."""
    return gate(x, g) if g.ndim == 2 else x * g


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
        self,
        img: Tensor,
        txt: Tensor,
        vec: Tensor,
        freqs: Tensor,
        key_mask: Tensor | None,
        ref_vec: Tensor | None = None,
        n_noisy: int = 0,
    ) -> tuple[Tensor, Tensor]:
        # img: (B, N, D), txt: (B, L, D), vec: (B, D), freqs: (L+N, hd/2, 2), key_mask: (B, L+N) or None;
        # ref_vec (B, D): the image stream's tokens past the first n_noisy are modulated by it instead of vec
        img_mods = self.img_mod(vec)  # 6 x (B, D)
        if ref_vec is not None:  # per-token modulation: 6 x (B, N, D)
            n_ref = img.shape[1] - n_noisy
            img_mods = tuple(
                torch.cat([m[:, None].expand(-1, n_noisy, -1), z[:, None].expand(-1, n_ref, -1)], dim=1)
                for m, z in zip(img_mods, self.img_mod(ref_vec), strict=True)
            )
        i_shift, i_scale, i_gate, i_shift_m, i_scale_m, i_gate_m = img_mods
        t_shift, t_scale, t_gate, t_shift_m, t_scale_m, t_gate_m = self.txt_mod(vec)
        qi, ki, vi = self.img_attn.qkv_tokens(_modulate(layer_norm(img), i_shift, i_scale))  # (B, N, H, hd)
        qt, kt, vt = self.txt_attn.qkv_tokens(modulate(layer_norm(txt), t_shift, t_scale))  # (B, L, H, hd)
        # joined token-major (row copies), then viewed head-major (B, H, L+N, hd) for RoPE and attention
        q, k, v = (torch.cat(s, dim=1).transpose(1, 2) for s in ((qt, qi), (kt, ki), (vt, vi)))
        q, k = apply_rope(q, k, freqs)
        joint = attention(q, k, v, key_mask)  # (B, L+N, D)
        n_txt = txt.shape[1]
        txt_out, img_out = joint[:, :n_txt], joint[:, n_txt:]
        assert self.img_attn.proj is not None and self.txt_attn.proj is not None
        img = img + _gate(self.img_attn.proj(img_out), i_gate)
        img = img + _gate(self.img_mlp(_modulate(layer_norm(img), i_shift_m, i_scale_m)), i_gate_m)
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
        grids: list[tuple[int, int]] = []
        for i, refs in enumerate(
            reference_latents(cond)
        ):  # Qwen-Image-Edit: input images join the image stream
            if refs.ndim != 4 or refs.shape[1] != cfg.in_channels or refs.shape[-2] % p or refs.shape[-1] % p:
                raise ValueError(
                    f"cond.extra[{reference_key(i)!r}] must be (B, {cfg.in_channels}, h, w) latents with h, w "
                    f"multiples of {p}, got {tuple(refs.shape)}"
                )
            img = torch.cat([img, self.img_in(pack_latents(refs.to(device=x.device, dtype=dtype), p))], dim=1)
            grids.append((refs.shape[-2], refs.shape[-1]))
        method = reference_method(cond) if grids else "index"
        placements = offset_placements(grids) if method == "offset" else None
        ref_vec = None
        if method == "index_timestep_zero":  # the references read the embedding of t = 0
            ref_vec = self.time_in(timestep_embedding(torch.zeros_like(t), TIME_EMBED_DIM).to(dtype))
        n_txt = txt.shape[1]
        packed = tuple((gh // p, gw // p) for gh, gw in grids)
        ids = position_ids(
            height // p, width // p, n_txt, device=x.device, references=packed, placements=placements
        )  # (L+N, 3)
        freqs = rope_frequencies(ids, cfg.axes_dim, cfg.theta)  # (L+N, hd/2, 2)
        key_mask = None  # an all-real mask is dropped so SDPA may pick its fused kernels (as diffusers does)
        if cond.mask is not None and not bool(cond.mask.bool().all()):
            image_keys = torch.ones(b, img.shape[1], dtype=torch.bool, device=x.device)
            key_mask = torch.cat([cond.mask.to(device=x.device, dtype=torch.bool), image_keys], dim=1)

        for block in self.blocks:
            img, txt = block(img, txt, vec, freqs, key_mask, ref_vec, n_img)
        out = self.final_layer(img[:, :n_img], vec)  # (B, N, p*p*C_out): the noisy latent's tokens only
        return unpack_latents(out, height, width, p)
