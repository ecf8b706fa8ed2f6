"""Karlo (unCLIP) text-to-image: CLIP text -> prior -> image embedding -> 64 px decoder -> 64->256 super-resolution.

The pipeline composes library parts only (:mod:`latentworks.families.karlo` says what the model is): each stage
is a denoiser (:mod:`latentworks.diffusion.denoisers` / :mod:`latentworks.diffusion.learned_variance`) run by a
pure sampler on the stage's own sigmas (:func:`~latentworks.diffusion.learned_variance.spaced_sigmas`). The one
per-step mechanism is ``callback(stage, StepInfo)`` (the CLI's progress bars; returning False stops).

Randomness: one CPU generator per image, seeded by the project's one rule (``seeds_for``), from which every draw
of that image comes in the release's order: the prior's start noise, its step noise, the decoder's start noise,
its step noise, the super-resolution's start noise, its step noise. For one image this is exactly the stream of
diffusers' ``UnCLIPPipeline`` with ``generator=torch.Generator().manual_seed(seed)``; image i of a batch equals a
single run with seed ``seed + i``.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from latentworks import families
from latentworks.checkpoints.io import load_state_dict
from latentworks.checkpoints.keymaps import karlo as keymaps
from latentworks.diffusion.conditioning import Conditioning
from latentworks.diffusion.denoisers import DiscreteModelSampling, EpsDenoiser, X0Denoiser, make_betas
from latentworks.diffusion.guidance import CFGDenoiser, GuidedCond
from latentworks.diffusion.learned_variance import (
    ClampedDenoiser,
    GuidedVarianceDenoiser,
    LastStepDenoiser,
    LearnedRangeEpsDenoiser,
    sample_ddpm_learned_range,
    spaced_sigmas,
)
from latentworks.diffusion.samplers import StepInfo, gaussian_noise, sample_ddpm
from latentworks.families.karlo import DEFAULTS, KARLO, SCHEDULER_FOLDERS, STAGE_FOLDERS
from latentworks.models.pixel_unet import PixelUNet, PixelUNetConfig
from latentworks.models.prior import PriorConfig, PriorTransformer, TextProjConfig, UnCLIPTextProj
from latentworks.pipelines.sampling import seeds_for
from latentworks.pipelines.text_to_image import tensor_to_images

StageCallback = Callable[[str, StepInfo], Any]
STAGES = ("prior", "decoder", "super_res")
WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "model.safetensors")


@dataclass(frozen=True)
class StageSchedule:
    """One stage's DDPM settings, from its ``*_scheduler/scheduler_config.json`` (diffusers' ``UnCLIPScheduler``).

    Attributes:
        prediction: ``eps`` or ``x0`` (diffusers' ``epsilon`` / ``sample``).
        learned_variance: ``learned_range`` (the network chooses the variance) or ``fixed_small_log``.
        clip_range: x0 is clamped to [-clip_range, clip_range] each step; None: no clamp.
        num_timesteps: the training schedule's length (cosine betas).
    """

    prediction: str = "eps"
    learned_variance: bool = False
    clip_range: float | None = 1.0
    num_timesteps: int = 1000

    @classmethod
    def from_diffusers(cls, cfg: dict[str, Any], source: str) -> StageSchedule:
        if cfg.get("beta_schedule", "squaredcos_cap_v2") != "squaredcos_cap_v2":
            raise ValueError(
                f"{source}: beta_schedule must be squaredcos_cap_v2 (Karlo's), got {cfg['beta_schedule']!r}"
            )
        prediction = {"epsilon": "eps", "sample": "x0"}.get(cfg.get("prediction_type", "epsilon"))
        variance = cfg.get("variance_type", "fixed_small_log")
        if prediction is None or variance not in ("fixed_small_log", "learned_range"):
            raise ValueError(
                f"{source}: prediction_type {cfg.get('prediction_type')!r} / variance_type {variance!r} are not "
                "Karlo's (epsilon or sample; fixed_small_log or learned_range)"
            )
        clip = float(cfg.get("clip_sample_range", 1.0)) if cfg.get("clip_sample", True) else None
        return cls(prediction, variance == "learned_range", clip, int(cfg.get("num_train_timesteps", 1000)))


@dataclass
class KarloResult:
    """Images (256 px), the parameters that made them, per-image seeds, and the stages' outputs:
    ``pixels`` (B, 3, H, W) in [-1, 1], ``small`` (B, 3, 64, 64) the decoder's, ``image_embeddings`` (B, E)."""

    images: list[Image.Image]
    parameters: dict[str, Any]
    seeds: list[int]
    pixels: Tensor
    small: Tensor
    image_embeddings: Tensor
    timings: dict[str, float] = field(default_factory=dict)


# -- network adapters: (network input, timestep, cond) -> output, as the denoiser wrappers call them ----------


class _PriorNet(nn.Module):
    def __init__(self, prior: PriorTransformer) -> None:
        super().__init__()
        self.prior = prior

    def forward(self, x: Tensor, t: Tensor, cond: Conditioning) -> Tensor:
        assert cond.pooled is not None
        return self.prior(x, t, cond.pooled, cond.tokens, cond.mask)


class _DecoderNet(nn.Module):
    def __init__(self, unet: PixelUNet) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, x: Tensor, t: Tensor, cond: Conditioning) -> Tensor:
        return self.unet(x, t, cond.tokens, cond.mask, cond.extra["class_input"])


class _SuperResNet(nn.Module):
    def __init__(self, unet: PixelUNet) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, x: Tensor, t: Tensor, low_res: Tensor) -> Tensor:
        return self.unet(torch.cat([x, low_res.to(x)], dim=1), t)  # the upscaled image joins unscaled


# -- loading -----------------------------------------------------------------------------------------------


def is_karlo_folder(path: str | Path) -> bool:
    """A folder whose ``model_index.json`` names diffusers' ``UnCLIPPipeline``."""
    index = Path(path) / "model_index.json"
    if not index.is_file():
        return False
    try:
        data = json.loads(index.read_text())
    except (OSError, ValueError):
        return False
    return families.by_pipeline_class(data) is KARLO


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text()))
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{path} is missing; it is part of diffusers' UnCLIPPipeline layout"
        ) from None
    except ValueError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None


def _stage_folder(root: Path, name: str) -> Path:
    folder = root / name
    if not folder.is_dir():
        listing = ", ".join(f"{n}/" for n in (*STAGE_FOLDERS, *SCHEDULER_FOLDERS))
        raise FileNotFoundError(
            f"{root}: the Karlo stage folder {name}/ ({STAGE_FOLDERS.get(name, 'a scheduler config')}) is missing; "
            f"pass a complete UnCLIPPipeline folder ({listing}), e.g. a copy of kakaobrain/karlo-v1-alpha"
        )
    return folder


def _weights(folder: Path, *, dtype: torch.dtype, allow_pickle: bool) -> dict[str, Tensor]:
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return load_state_dict(folder / name, dtype=dtype)
    if (folder / "diffusion_pytorch_model.bin").is_file():
        return load_state_dict(folder / "diffusion_pytorch_model.bin", dtype=dtype, allow_pickle=allow_pickle)
    raise FileNotFoundError(
        f"{folder}: no weights; pass {folder / WEIGHT_FILES[0]} (diffusers' name for this component's weights)"
    )


def _class_of(cfg: dict[str, Any], expected: str, folder: Path) -> None:
    got = cfg.get("_class_name")
    if got is not None and got != expected:
        raise ValueError(
            f"{folder}: holds a {got}, but Karlo's {folder.name}/ is a {expected}; the stages come from different "
            "models: use the folders of one UnCLIPPipeline release"
        )


def _build(network: type[nn.Module], config: Any, state: dict[str, Tensor], device: Any, dtype: Any) -> Any:
    with torch.device("meta"):
        net = network(config)
    net.load_state_dict(state, strict=True, assign=True)
    return net.to(device=device, dtype=dtype).eval().requires_grad_(False)


NETWORK_CLASSES = {
    "prior": "PriorTransformer",
    "text_proj": "UnCLIPTextProjModel",
    "decoder": "UNet2DConditionModel",
    "super_res_first": "UNet2DModel",
    "super_res_last": "UNet2DModel",
}


@dataclass(frozen=True)
class KarloFolder:
    """What an ``UnCLIPPipeline`` folder's configs say (no weights read): each stage's folder and config."""

    root: Path
    folders: dict[str, Path]
    prior: PriorConfig
    text_proj: TextProjConfig
    unets: dict[str, PixelUNetConfig]  # decoder, super_res_first, super_res_last
    schedules: dict[str, StageSchedule]  # prior, decoder, super_res
    text_encoder: dict[str, Any]  # text_encoder/config.json
    decoder_size: int
    super_res_size: int


def read_karlo_folder(path: str | Path) -> KarloFolder:
    """Read and cross-check the configs of an ``UnCLIPPipeline`` folder.

    Raises:
        FileNotFoundError: a missing stage folder or config (the message names it and what it holds).
        ValueError: a stage that is not Karlo's, or stages whose widths do not fit (from different models).
    """
    root = Path(path)
    if not (root / "model_index.json").is_file():
        raise FileNotFoundError(f"{root}: no model_index.json; pass a diffusers UnCLIPPipeline folder")
    index = _read_json(root / "model_index.json")
    if families.by_pipeline_class(index) is not KARLO:
        raise ValueError(f"{root}: model_index.json names {index.get('_class_name')!r}, not UnCLIPPipeline")
    folders = {name: _stage_folder(root, name) for name in (*STAGE_FOLDERS, *SCHEDULER_FOLDERS)}
    schedules = {
        stage: StageSchedule.from_diffusers(
            _read_json(folders[f"{stage}_scheduler"] / "scheduler_config.json"),
            str(folders[f"{stage}_scheduler"] / "scheduler_config.json"),
        )
        for stage in STAGES
    }
    configs = {name: _read_json(folders[name] / "config.json") for name in NETWORK_CLASSES}
    for name, expected in NETWORK_CLASSES.items():
        _class_of(configs[name], expected, folders[name])
    src = {name: str(folders[name] / "config.json") for name in configs}
    unets = {
        name: keymaps.pixel_unet_config_from_diffusers(configs[name], source=src[name])
        for name in ("decoder", "super_res_first", "super_res_last")
    }
    found = KarloFolder(
        root=root,
        folders=folders,
        prior=keymaps.prior_config_from_diffusers(configs["prior"], source=src["prior"]),
        text_proj=keymaps.text_proj_config_from_diffusers(configs["text_proj"], source=src["text_proj"]),
        unets=unets,
        schedules=schedules,
        text_encoder=_read_json(folders["text_encoder"] / "config.json"),
        decoder_size=int(configs["decoder"].get("sample_size", 64)),
        super_res_size=int(configs["super_res_first"].get("sample_size", 256)),
    )
    _check_widths(found)
    return found


def _check_widths(k: KarloFolder) -> None:
    """Stages from different models do not fit together; say which two disagree and how."""
    p, tp, te = k.prior, k.text_proj, k.text_encoder
    d, s1, s2 = k.unets["decoder"], k.unets["super_res_first"], k.unets["super_res_last"]
    checks = [
        ("text_encoder/ projection_dim", te.get("projection_dim"), "prior/ embedding_dim", p.embedding_dim),
        ("text_encoder/ hidden_size", te.get("hidden_size"), "prior/ embedding_dim", p.embedding_dim),
        ("text_encoder/ max_position_embeddings", te.get("max_position_embeddings"), "prior/ num_embeddings",
         p.num_text_tokens),
        ("prior/ embedding_dim", p.embedding_dim, "text_proj/ clip_embeddings_dim", tp.embedding_dim),
        ("text_proj/ time_embed_dim", tp.time_embed_dim, "decoder/ time embedding width", d.time_embed_dim),
        ("text_proj/ cross_attention_dim", tp.context_dim, "decoder/ cross_attention_dim", d.context_dim),
        ("decoder/ in_channels", d.in_channels, "super_res_first/ in_channels / 2", s1.in_channels // 2),
    ]  # fmt: skip
    for a, va, b, vb in checks:
        if va != vb:
            raise ValueError(
                f"{k.root}: {a} is {va} but {b} is {vb}: the stages come from different models; "
                "use the folders of one UnCLIPPipeline release"
            )
    if s1 != s2:
        raise ValueError(
            f"{k.root}: super_res_first/ and super_res_last/ have different architectures; they must be "
            "the two super-resolution U-Nets of one release"
        )
    expected_out = 2 * d.in_channels if k.schedules["decoder"].learned_variance else d.in_channels
    if d.out_channels != expected_out:
        raise ValueError(
            f"{k.root}: decoder/ outputs {d.out_channels} channels but decoder_scheduler/ expects {expected_out} "
            "(variance_type learned_range doubles them); the stages come from different models"
        )


def _parameter_count(folder: Path) -> int:
    from safetensors import safe_open

    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            with safe_open(str(folder / name), framework="pt") as f:
                return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    raise FileNotFoundError(f"{folder}: no weights; pass {folder / WEIGHT_FILES[0]}")


def describe_karlo_folder(path: str | Path) -> str:
    """The stages of an ``UnCLIPPipeline`` folder, their sizes, schedules and parameter counts, from the configs
    and the weight files' headers alone (``latentworks info --model``)."""
    k = read_karlo_folder(path)
    n = {name: f"{_parameter_count(k.folders[name]):,}" for name in (*NETWORK_CLASSES, "text_encoder")}

    def how(stage: str) -> str:
        s = k.schedules[stage]
        var = "learned variance" if s.learned_variance else "posterior variance"
        clip = f", x0 clamped to +-{s.clip_range:g}" if s.clip_range is not None else ""
        return f"{s.prediction}-prediction, DDPM with {var}{clip}"

    d = DEFAULTS
    te = k.text_encoder
    return "\n".join(
        [
            f"model       {k.root.name}  ({k.root})",
            f"family      {KARLO.name}  ({KARLO.title})",
            f"stage 1     text encoder (text_encoder/): CLIP, width {te.get('hidden_size')}, "
            f"{te.get('num_hidden_layers')} layers, {n['text_encoder']} parameters",
            f"stage 2     prior (prior/): text -> CLIP image embedding ({k.prior.embedding_dim}), {n['prior']} "
            f"parameters; {how('prior')}; defaults {d['prior_steps']} steps, guidance {d['prior_guidance']:g}",
            f"stage 3     text projection (text_proj/): image embedding -> {k.text_proj.extra_tokens} context "
            f"tokens + time vector, {n['text_proj']} parameters",
            f"stage 4     decoder (decoder/): {k.decoder_size} px, {n['decoder']} parameters; {how('decoder')}; "
            f"defaults {d['decoder_steps']} steps, guidance {d['decoder_guidance']:g}",
            f"stage 5     super-resolution (super_res_first/, super_res_last/): {k.decoder_size} -> "
            f"{k.super_res_size} px, {n['super_res_first']} + {n['super_res_last']} parameters; {how('super_res')}; "
            f"default {d['super_res_steps']} steps, no guidance",
            f"resolution  [{k.super_res_size}, {k.super_res_size}]",
        ]
    )


class KarloPipeline:
    """Karlo's cascade over an ``UnCLIPPipeline`` folder.

    >>> pipe = KarloPipeline.from_pretrained("karlo-v1-alpha/")      # doctest: +SKIP
    >>> pipe("a photo of a red apple", seed=1).images[0]             # doctest: +SKIP
    """

    def __init__(
        self,
        *,
        tokenizer: Any,
        text_encoder: nn.Module,
        prior: PriorTransformer,
        text_proj: UnCLIPTextProj,
        decoder: PixelUNet,
        super_res_first: PixelUNet,
        super_res_last: PixelUNet,
        schedules: dict[str, StageSchedule],
        decoder_size: int,
        super_res_size: int,
        source: Path,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.tokenizer, self.text_encoder = tokenizer, text_encoder
        self.prior, self.text_proj, self.decoder = prior, text_proj, decoder
        self.super_res_first, self.super_res_last = super_res_first, super_res_last
        self.schedules, self.source = schedules, source
        self.decoder_size, self.super_res_size = decoder_size, super_res_size
        self.device, self.dtype = torch.device(device), dtype
        self.family = KARLO

    # -- loading -----------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        allow_pickle: bool = False,
    ) -> KarloPipeline:
        """Load an ``UnCLIPPipeline`` folder (every stage folder and the three scheduler configs); the configs
        are cross-checked (:func:`read_karlo_folder`) before any weight is read."""
        from transformers import CLIPTextModelWithProjection, CLIPTokenizer

        k = read_karlo_folder(path)

        def weights(name: str) -> dict[str, Tensor]:
            return _weights(k.folders[name], dtype=dtype, allow_pickle=allow_pickle)

        prior = _build(
            PriorTransformer, k.prior, keymaps.prior_from_diffusers(weights("prior"), k.prior), device, dtype
        )
        text_proj = _build(
            UnCLIPTextProj, k.text_proj, keymaps.text_proj_from_diffusers(weights("text_proj"), k.text_proj), device,
            dtype,
        )  # fmt: skip
        unets = {
            name: _build(
                PixelUNet,
                cfg,
                keymaps.pixel_unet_from_diffusers(weights(name), cfg, str(k.folders[name])),
                device,
                dtype,
            )  # fmt: skip
            for name, cfg in k.unets.items()
        }
        try:
            tokenizer = CLIPTokenizer.from_pretrained(str(k.folders["tokenizer"]), local_files_only=True)
            text_encoder = CLIPTextModelWithProjection.from_pretrained(
                str(k.folders["text_encoder"]), local_files_only=True, use_safetensors=not allow_pickle
            )
        except (OSError, ValueError) as e:
            raise ValueError(f"{k.root}: cannot read the CLIP tokenizer / text encoder: {e}") from None
        encoder: nn.Module = text_encoder  # transformers' own typing of .to() confuses mypy
        encoder = encoder.to(device=device, dtype=dtype).eval().requires_grad_(False)
        return cls(
            tokenizer=tokenizer,
            text_encoder=encoder,
            prior=prior,
            text_proj=text_proj,
            decoder=unets["decoder"],
            super_res_first=unets["super_res_first"],
            super_res_last=unets["super_res_last"],
            schedules=k.schedules,
            decoder_size=k.decoder_size,
            super_res_size=k.super_res_size,
            source=k.root,
            device=device,
            dtype=dtype,
        )

    # -- stages ------------------------------------------------------------------------------------------

    def encode_text(self, prompts: Sequence[str]) -> Conditioning:
        """CLIP text: tokens (B, 77, E) last hidden states, mask (B, 77), pooled (B, E) the projected embedding."""
        tok = self.tokenizer(
            list(prompts), padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True,
            return_tensors="pt",
        )  # fmt: skip
        with torch.no_grad():
            out = self.text_encoder(tok.input_ids.to(self.device))
        return Conditioning(
            tokens=out.last_hidden_state.to(self.dtype),
            mask=tok.attention_mask.bool().to(self.device),
            pooled=out.text_embeds.to(self.dtype),
        )

    def _sampling(self, stage: str) -> DiscreteModelSampling:
        return DiscreteModelSampling(make_betas("cosine", self.schedules[stage].num_timesteps))

    def _denoiser(self, stage: str, net: nn.Module, model_sampling: DiscreteModelSampling) -> Any:
        s = self.schedules[stage]
        if s.learned_variance:
            inner: Any = LearnedRangeEpsDenoiser(net, model_sampling)
        else:
            inner = (X0Denoiser if s.prediction == "x0" else EpsDenoiser)(net, model_sampling)
        return inner

    def _clamp(self, stage: str, denoiser: Any) -> Any:
        limit = self.schedules[stage].clip_range
        return denoiser if limit is None else ClampedDenoiser(denoiser, limit)

    def _run(
        self,
        stage: str,
        denoiser: Any,
        shape: tuple[int, ...],
        steps: int,
        cond: Any,
        generators: list[torch.Generator],
        callback: StageCallback | None,
    ) -> Tensor:
        sigmas = spaced_sigmas(self._sampling(stage), steps)
        # the release starts from unit noise in VP space: x_T = noise / sqrt(alpha_bar_T) in VE space
        start = torch.stack([torch.randn(shape, generator=g) for g in generators]).to(self.device)
        x = start * math.sqrt(1 + float(sigmas[0]) ** 2)
        noise = gaussian_noise(x, generators)
        hook = None if callback is None else (lambda info: callback(stage, info))
        sampler = sample_ddpm_learned_range if self.schedules[stage].learned_variance else sample_ddpm
        return sampler(denoiser, x, sigmas, cond=cond, noise=noise, callback=hook)

    def __call__(
        self,
        prompt: str | Sequence[str],
        negative_prompt: str = "",
        *,
        seed: int | None = None,
        batch: int = 1,
        prior_steps: int | None = None,
        decoder_steps: int | None = None,
        super_res_steps: int | None = None,
        prior_guidance: float | None = None,
        decoder_guidance: float | None = None,
        image_embeddings: Tensor | None = None,
        callback: StageCallback | None = None,
    ) -> KarloResult:
        """Generate ``batch`` images per prompt (defaults: :data:`~latentworks.families.karlo.DEFAULTS`).

        ``negative_prompt`` is the unconditional branch's text ("" as the release). ``image_embeddings``
        (B, E) skips the prior (image variations, interpolations between embeddings).
        """
        import time

        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        prompts = [p for p in prompts for _ in range(batch)]
        b = len(prompts)
        seed = random.randrange(2**31) if seed is None else int(seed)
        seeds = seeds_for(seed, b)
        generators = [torch.Generator().manual_seed(s) for s in seeds]
        steps = {
            "prior": int(prior_steps or DEFAULTS["prior_steps"]),
            "decoder": int(decoder_steps or DEFAULTS["decoder_steps"]),
            "super_res": int(super_res_steps or DEFAULTS["super_res_steps"]),
        }
        for stage, n in steps.items():
            if not 2 <= n <= 1000:
                raise ValueError(f"{stage} steps must be between 2 and 1000, got {n}")
        g_prior = DEFAULTS["prior_guidance"] if prior_guidance is None else float(prior_guidance)
        g_decoder = DEFAULTS["decoder_guidance"] if decoder_guidance is None else float(decoder_guidance)
        for name, g in (("prior", g_prior), ("decoder", g_decoder)):
            if not 0 <= g <= 100:
                raise ValueError(f"{name} guidance must be between 0 and 100, got {g}")
        # the release guides both stages whenever either scale is above 1 (one switch for the pipeline); given
        # image embeddings, only the decoder's counts (diffusers' UnCLIPImageVariationPipeline)
        guided = g_decoder > 1.0 or (image_embeddings is None and g_prior > 1.0)
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        text = self.encode_text(prompts)
        uncond = self.encode_text([negative_prompt] * b) if guided else None
        timings["text"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        if image_embeddings is None:
            sampling = self._sampling("prior")
            prior = self._clamp(
                "prior",
                CFGDenoiser(
                    self._denoiser("prior", _PriorNet(self.prior), sampling), g_prior if guided else 1
                ),
            )
            embed = self._run(
                "prior", prior, (self.prior.config.embedding_dim,), steps["prior"], GuidedCond(text, uncond),
                generators, callback,
            )  # fmt: skip
            image_embeddings = self.prior.denormalize(embed)
        else:
            image_embeddings = image_embeddings.to(self.device, self.dtype).expand(b, -1)
        timings["prior"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        context, class_input = self.text_proj(image_embeddings, text.pooled, text.tokens)
        extra = self.text_proj.config.extra_tokens
        pad = torch.ones(b, extra, dtype=torch.bool, device=self.device)
        assert text.mask is not None
        dec_cond = Conditioning(
            tokens=context, mask=torch.cat([pad, text.mask], 1), extra={"class_input": class_input}
        )
        dec_uncond = None
        if guided:
            assert uncond is not None and uncond.mask is not None
            u_context, u_class = self.text_proj(self.text_proj.uncond_image(b), uncond.pooled, uncond.tokens)
            dec_uncond = Conditioning(
                tokens=u_context, mask=torch.cat([pad, uncond.mask], 1), extra={"class_input": u_class}
            )
        sampling = self._sampling("decoder")
        decoder = self._clamp(
            "decoder",
            GuidedVarianceDenoiser(
                self._denoiser("decoder", _DecoderNet(self.decoder), sampling), g_decoder if guided else 1
            ),
        )
        size = self.decoder_size
        small = self._run(
            "decoder", decoder, (self.decoder.config.in_channels, size, size), steps["decoder"],
            GuidedCond(dec_cond, dec_uncond), generators, callback,
        ).clamp(-1, 1)  # fmt: skip
        timings["decoder"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        big = self.super_res_size
        upscaled = F.interpolate(small, size=[big, big], mode="bicubic", align_corners=False, antialias=True)
        sampling = self._sampling("super_res")
        sigmas = spaced_sigmas(sampling, steps["super_res"])
        super_res = self._clamp(
            "super_res",
            LastStepDenoiser(
                self._denoiser("super_res", _SuperResNet(self.super_res_first), sampling),
                self._denoiser("super_res", _SuperResNet(self.super_res_last), sampling),
                sigma_last=float(sigmas[-2]),
            ),
        )
        pixels = self._run(
            "super_res",
            super_res,
            (small.shape[1], big, big),
            steps["super_res"],
            upscaled,
            generators,
            callback,
        ).clamp(-1, 1)
        timings["super_res"] = time.perf_counter() - t0

        parameters = {
            "prompt": prompts[0] if len(set(prompts)) == 1 else prompts,
            "negative_prompt": negative_prompt,
            "model": str(self.source),
            "family": KARLO.name,
            "seed": seed,
            "batch": b,
            "prior_steps": steps["prior"],
            "decoder_steps": steps["decoder"],
            "super_res_steps": steps["super_res"],
            "prior_guidance": g_prior,
            "decoder_guidance": g_decoder,
            "width": big,
            "height": big,
        }
        return KarloResult(
            images=tensor_to_images(pixels),
            parameters=parameters,
            seeds=seeds,
            pixels=pixels,
            small=small,
            image_embeddings=image_embeddings,
            timings=timings,
        )
