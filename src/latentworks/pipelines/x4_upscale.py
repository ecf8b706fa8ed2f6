"""Stable Diffusion's x4 latent upscaler (:mod:`latentworks.families.sd_upscaler`): an image and a prompt in, the
image redrawn at four times its size out. Standalone (``latentworks upscale IMG --model X4 --prompt ...``) and as
DeepFloyd IF's stage III (:mod:`latentworks.pipelines.cascade`).

One run, as diffusers' ``StableDiffusionUpscalePipeline`` does it::

    low-res RGB (B, 3, h, w) in [-1, 1] --DDPM q(x_t | x_0) at step noise_level--> low  (low_res_scheduler/)
    latent x_T (B, 4, h, w) --DDIM (scheduler/), v-prediction U-Net on [x_t, low] with class label noise_level,
                                classifier-free guidance on the CLIP states of prompt / negative prompt-->
    latent x_0 --/ scaling_factor, VAE decoder--> (B, 3, 4h, 4w) in [-1, 1]

Sampling goes through the project's parts: the U-Net becomes a denoiser (:func:`make_denoiser`) on the scheduler's
discrete schedule, guidance is :class:`~latentworks.diffusion.guidance.CFGDenoiser` (cond and uncond in one call,
``x0_u + w (x0_c - x0_u)``, the same combination diffusers applies to v), and DDIM with eta 0 is
:func:`~latentworks.diffusion.samplers.sample_ddim` on the sigmas of diffusers' DDIM timesteps. DDIM's last step
goes to ``alphas_cumprod[0]`` rather than to clean data when ``set_alpha_to_one`` is false (the release's
setting), so the schedule ends at that sigma, not at 0, exactly as diffusers does.

Randomness is passed in: :meth:`X4Upscaler.run` takes the start latent and the augmentation noise;
``__call__`` derives them from per-sample seeds.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor, nn

from latentworks.checkpoints.diffusers_folder import read_json, read_weights
from latentworks.checkpoints.io import build_on_meta
from latentworks.checkpoints.keymaps.diffusers_configs import (
    unet_config_from_diffusers,
    vae_config_from_diffusers,
)
from latentworks.checkpoints.keymaps.sd_diffusers import unet_from_diffusers, vae_from_diffusers
from latentworks.diffusion.conditioning import CONCAT_KEY, Conditioning
from latentworks.diffusion.ddpm import SPACINGS, ddpm_timesteps
from latentworks.diffusion.denoisers import DiscreteModelSampling, make_betas, make_denoiser
from latentworks.diffusion.guidance import CFGDenoiser, GuidedCond
from latentworks.diffusion.noise import derive_seed, seeded_noise
from latentworks.diffusion.samplers import StepCallback, sample_ddim
from latentworks.families.sd_upscaler import (
    FOLDERS,
    MAX_NOISE_LEVEL,
    PIPELINE_CLASS,
    SCALE,
    SD_X4_UPSCALER,
    is_x4_upscaler_folder,
    looks_like_x4_unet,
)
from latentworks.models.autoencoder import Autoencoder
from latentworks.models.unet import CLASS_LABEL_KEY, UNet
from latentworks.pipelines.sampling import seeds_for

# diffusers' beta_schedule -> make_betas kind
BETA_SCHEDULES = {"scaled_linear": "scaled_linear", "linear": "linear", "squaredcos_cap_v2": "cosine"}
PREDICTIONS = {"epsilon": "eps", "v_prediction": "v"}

# --------------------------------------------------------------------------------------------------
# Schedules read from the folder
# --------------------------------------------------------------------------------------------------


def _betas(cfg: Mapping[str, Any], source: str) -> Tensor:
    schedule = cfg.get("beta_schedule", "linear")
    if schedule not in BETA_SCHEDULES or cfg.get("trained_betas") is not None:
        raise ValueError(
            f"{source}: beta_schedule {schedule!r} is not supported; expected one of {list(BETA_SCHEDULES)}"
        )
    return make_betas(
        BETA_SCHEDULES[schedule], int(cfg.get("num_train_timesteps", 1000)),
        float(cfg.get("beta_start", 0.0001)), float(cfg.get("beta_end", 0.02)),
    )  # fmt: skip


@dataclass(frozen=True)
class X4Scheduler:
    """What ``scheduler/scheduler_config.json`` says about sampling: the discrete schedule, the prediction, the
    timestep spacing and offset, DDIM's final level (``set_alpha_to_one``) and x0 clipping."""

    sampling: DiscreteModelSampling
    prediction: str  # "eps" | "v"
    spacing: str
    offset: int
    alpha_to_one: bool
    clip: float | None
    class_name: str

    @classmethod
    def read(cls, cfg: Mapping[str, Any], *, source: str) -> X4Scheduler:
        prediction = cfg.get("prediction_type", "epsilon")
        if prediction not in PREDICTIONS:
            raise ValueError(
                f"{source}: prediction_type {prediction!r} is not supported; expected epsilon or v_prediction"
            )
        if cfg.get("thresholding", False):
            raise ValueError(f"{source}: thresholding is not supported for the x4 upscaler's scheduler")
        spacing = str(cfg.get("timestep_spacing", "leading"))
        if spacing not in SPACINGS:
            raise ValueError(
                f"{source}: timestep_spacing {spacing!r} is not supported; expected one of {SPACINGS}"
            )
        return cls(
            sampling=DiscreteModelSampling(_betas(cfg, source)),
            prediction=PREDICTIONS[prediction],
            spacing=spacing,
            offset=int(cfg.get("steps_offset", 0)),
            alpha_to_one=bool(cfg.get("set_alpha_to_one", True)),
            clip=float(cfg.get("clip_sample_range", 1.0)) if cfg.get("clip_sample", True) else None,
            class_name=str(cfg.get("_class_name", "DDIMScheduler")),
        )

    def sigmas(self, steps: int) -> Tensor:
        """Descending sigmas of diffusers' DDIM timesteps for ``steps`` steps, then the level DDIM's last step
        lands on: step ``t_last - N // steps`` when it is >= 0, else 0 (``set_alpha_to_one``) or step 0."""
        n = self.sampling.num_timesteps
        ts = ddpm_timesteps(steps, n, self.spacing, self.offset)
        table = self.sampling.sigmas  # (N,) float64
        last = ts[-1] - n // steps
        final = table[last] if last >= 0 else (table.new_zeros(()) if self.alpha_to_one else table[0])
        return torch.cat([table[torch.as_tensor(ts)], final.reshape(1)])


class _Clamped:
    """A denoiser whose x0 is clamped to [-r, r] (diffusers' ``clip_sample``; off in the release)."""

    def __init__(self, inner: CFGDenoiser, r: float) -> None:
        self.inner, self.r = inner, r

    @property
    def interpolation(self) -> Any:
        return self.inner.interpolation

    def __call__(self, x: Tensor, sigma: Tensor, cond: Any = None) -> Tensor:
        return self.inner(x, sigma, cond).clamp(-self.r, self.r)


# --------------------------------------------------------------------------------------------------
# CLIP prompt encoding (diffusers' encode_prompt for this pipeline)
# --------------------------------------------------------------------------------------------------


class ClipPromptEncoder:
    """Prompts -> CLIP last hidden states (B, 77, width): padded to the tokenizer's ``model_max_length``,
    truncated beyond, no attention mask (unless the text encoder's config asks for one)."""

    def __init__(self, model: nn.Module, tokenizer: Any) -> None:
        self.model, self.tokenizer = model, tokenizer

    @torch.no_grad()
    def __call__(self, prompts: Sequence[str]) -> Tensor:
        tok = self.tokenizer(
            list(prompts), padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True,
            return_tensors="pt",
        )  # fmt: skip
        device = next(self.model.parameters()).device
        mask = (
            tok.attention_mask.to(device) if getattr(self.model.config, "use_attention_mask", False) else None
        )
        return self.model(tok.input_ids.to(device), attention_mask=mask)[0]  # (B, 77, width)


# --------------------------------------------------------------------------------------------------
# The pipeline
# --------------------------------------------------------------------------------------------------


def _check_folder(root: Path, option: str) -> dict[str, Any]:
    """The folder's ``model_index.json`` (or {}), after checking that every component file is there."""
    if not root.is_dir():
        raise FileNotFoundError(
            f"{option}: no such folder: {root}; pass a Stable Diffusion x4 upscaler folder ({PIPELINE_CLASS}, "
            "e.g. stabilityai/stable-diffusion-x4-upscaler)"
        )
    if not is_x4_upscaler_folder(root):
        index = root / "model_index.json"
        what = (
            f"a {read_json(index, 'model_index.json').get('_class_name')!r} folder"
            if index.is_file()
            else "not a diffusers folder (no model_index.json)"
        )
        raise ValueError(
            f"{option}: {root} is {what}, not the Stable Diffusion x4 upscaler ({PIPELINE_CLASS}) this option "
            "takes; stages of different families cannot be combined"
        )
    for name, (file, what) in FOLDERS.items():
        if not (root / name / file).is_file():
            raise FileNotFoundError(
                f"{option} {root}: the x4 upscaler folder lacks {root / name / file} ({what}); copy the whole "
                f"'{name}' folder of the release (stabilityai/stable-diffusion-x4-upscaler)"
            )
    index_file = root / "model_index.json"
    return read_json(index_file, "model_index.json") if index_file.is_file() else {}


@dataclass
class X4Result:
    """Upscaled images, the same as (B, 3, 4h, 4w) in [-1, 1], the seeds and the generation parameters."""

    images: list[Image.Image]
    pixels: Tensor
    seeds: list[int]
    parameters: dict[str, Any] = field(default_factory=dict)


class X4Upscaler:
    """The x4 upscaler read from its diffusers folder.

    >>> up = X4Upscaler.from_pretrained("stable-diffusion-x4-upscaler")  # doctest: +SKIP
    >>> up(Image.open("cat-128.png"), "a white cat", seed=1).images[0].size  # doctest: +SKIP
    (512, 512)
    """

    def __init__(
        self,
        path: Path,
        unet: UNet,
        vae: Autoencoder,
        scaling_factor: float,
        text: ClipPromptEncoder,
        scheduler: X4Scheduler,
        low_res: DiscreteModelSampling,
        max_noise_level: int,
    ) -> None:
        self.path, self.unet, self.vae, self.scaling_factor = path, unet, vae, scaling_factor
        self.text, self.scheduler, self.low_res, self.max_noise_level = (
            text,
            scheduler,
            low_res,
            max_noise_level,
        )
        self.family = SD_X4_UPSCALER

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        option: str = "--model",
    ) -> X4Upscaler:
        """Read every component of the folder; ``option`` names the command-line option in error messages."""
        root = Path(path)
        index = _check_folder(root, option)
        unet_cfg = read_json(root / "unet" / "config.json", "the U-Net config")
        if not looks_like_x4_unet(unet_cfg):
            raise ValueError(
                f"{option} {root}: {root / 'unet' / 'config.json'} is not the x4 upscaler's U-Net (it needs "
                "num_class_embeds and in_channels = out_channels + 3)"
            )
        config = unet_config_from_diffusers(unet_cfg, source=str(root / "unet" / "config.json"))
        unet = build_on_meta(
            UNet, config, unet_from_diffusers(read_weights(root / "unet", dtype=dtype, device=device), config),
            dtype=dtype, device=device,
        )  # fmt: skip
        vae_config, scale, _shift = vae_config_from_diffusers(
            read_json(root / "vae" / "config.json", "the VAE config"),
            source=str(root / "vae" / "config.json"),
        )
        vae = build_on_meta(
            Autoencoder, vae_config,
            vae_from_diffusers(read_weights(root / "vae", dtype=dtype, device=device), vae_config),
            dtype=dtype, device=device,
        )  # fmt: skip
        if vae_config.latent_channels + 3 != config.in_channels:
            raise ValueError(
                f"{option} {root}: the VAE's {vae_config.latent_channels} latent channels + 3 image channels do "
                f"not make the U-Net's {config.in_channels} input channels"
            )
        scheduler = X4Scheduler.read(
            read_json(root / "scheduler" / "scheduler_config.json", "the scheduler config"),
            source=str(root / "scheduler" / "scheduler_config.json"),
        )
        low_file = root / "low_res_scheduler" / "scheduler_config.json"
        low_res = DiscreteModelSampling(
            _betas(read_json(low_file, "the low-res noise schedule"), str(low_file))
        )
        from transformers import CLIPTextModel, CLIPTokenizer

        try:
            tokenizer = CLIPTokenizer.from_pretrained(str(root / "tokenizer"), local_files_only=True)
            text_encoder = CLIPTextModel.from_pretrained(str(root / "text_encoder"), local_files_only=True)
        except (OSError, ValueError) as e:
            raise ValueError(f"{option} {root}: cannot read the CLIP tokenizer / text encoder: {e}") from None
        encoder: nn.Module = text_encoder
        encoder = encoder.to(device=device, dtype=dtype or torch.float32).eval().requires_grad_(False)
        max_level = int(index.get("max_noise_level", MAX_NOISE_LEVEL))
        return cls(root, unet.eval(), vae.eval(), scale, ClipPromptEncoder(encoder, tokenizer), scheduler, low_res,
                   max_level)  # fmt: skip

    @property
    def device(self) -> torch.device:
        return self.unet.conv_in.weight.device

    def conditionings(
        self, prompts: Sequence[str], negatives: Sequence[str]
    ) -> tuple[Conditioning, Conditioning]:
        """(cond, uncond) from the CLIP states of the prompts and the negative prompts (one encoder call)."""
        states = self.text([*prompts, *negatives])
        n = len(prompts)
        return Conditioning(tokens=states[:n]), Conditioning(tokens=states[n:])

    def check_noise_level(self, noise_level: int) -> None:
        if not 0 <= noise_level <= self.max_noise_level:
            raise ValueError(
                f"noise_level must be a step in [0, {self.max_noise_level}] (the folder's max_noise_level), "
                f"got {noise_level}"
            )

    @torch.no_grad()
    def run(
        self,
        image: Tensor,
        cond: Conditioning,
        uncond: Conditioning,
        start: Tensor,
        augment_noise: Tensor,
        *,
        steps: int,
        guidance: float,
        noise_level: int,
        callback: StepCallback | None = None,
    ) -> Tensor:
        """Upscale ``image`` (B, 3, h, w) in [-1, 1] with unit Gaussian ``start`` (B, 4, h, w) (the DDIM start
        latent) and ``augment_noise`` (B, 3, h, w) (the low-res image's noise): (B, 3, 4h, 4w) in [-1, 1]."""
        self.check_noise_level(noise_level)
        factor = self.unet.config.downsample_factor
        b, _, h, w = image.shape
        if h % factor or w % factor:
            raise ValueError(
                f"the x4 upscaler's U-Net needs an input image whose sides are multiples of {factor}, got {w}x{h}"
            )
        device = self.device
        abar = float(self.low_res.alphas_cumprod[noise_level])
        low = abar**0.5 * image.float().to(device) + (1 - abar) ** 0.5 * augment_noise.float().to(device)
        labels = torch.full((b,), noise_level, dtype=torch.long, device=device)
        extra = {CONCAT_KEY: low, CLASS_LABEL_KEY: labels}  # the U-Net concatenates `low` to its input
        guided = GuidedCond(cond.with_extra(**extra).to(device), uncond.with_extra(**extra).to(device))
        s = self.scheduler
        denoiser: Any = CFGDenoiser(make_denoiser(self.unet, s.prediction, s.sampling), guidance)
        if s.clip is not None:
            denoiser = _Clamped(denoiser, s.clip)
        sigmas = s.sigmas(steps)
        x = start.float().to(device) * float((1 + sigmas[0] ** 2) ** 0.5)  # VP x_T -> VE scale
        x = sample_ddim(denoiser, x, sigmas, cond=guided, callback=callback)
        latent = x / float((1 + sigmas[-1] ** 2) ** 0.5)  # VE -> VP: diffusers' latents after the last step
        vae_dtype = self.vae.decoder.conv_in.weight.dtype
        return self.vae.decode((latent / self.scaling_factor).to(vae_dtype)).float()

    @torch.no_grad()
    def __call__(
        self,
        image: Image.Image | Sequence[Image.Image] | Tensor,
        prompt: str | Sequence[str] = "",
        negative_prompt: str | Sequence[str] = "",
        *,
        seed: int | None = None,
        steps: int | None = None,
        guidance: float | None = None,
        noise_level: int | None = None,
        callback: StepCallback | None = None,
    ) -> X4Result:
        """Upscale PIL images (resized down to multiples of the VAE's factor, bicubic, as diffusers) or a tensor
        (B, 3, h, w) in [-1, 1]. One prompt for all images or one per image. Sample i uses seed ``seed + i``:
        its start latent from the seed itself, its augmentation noise from stream 1."""
        pixels = images_to_pixels(image, multiple=self.vae.config.downsample_factor)
        b = pixels.shape[0]
        prompts = [prompt] * b if isinstance(prompt, str) else list(prompt)
        negs = [negative_prompt] * b if isinstance(negative_prompt, str) else list(negative_prompt)
        if len(prompts) != b or len(negs) != b:
            raise ValueError(f"got {b} images but {len(prompts)} prompts and {len(negs)} negative prompts")
        defaults = self.family.generation.defaults
        steps = int(steps or defaults["steps"])
        guidance = float(defaults["guidance"] if guidance is None else guidance)
        level = int(defaults["noise_level"] if noise_level is None else noise_level)
        seed = random.randrange(2**31) if seed is None else int(seed)
        seeds = seeds_for(seed, b)
        cond, uncond = self.conditionings(prompts, negs)
        h, w = pixels.shape[-2:]
        channels = self.vae.config.latent_channels
        start = seeded_noise((channels, h, w), seeds, device=self.device)
        augment = seeded_noise((3, h, w), [derive_seed(s, 1) for s in seeds], device=self.device)
        out = self.run(
            pixels, cond, uncond, start, augment, steps=steps, guidance=guidance, noise_level=level,
            callback=callback,
        )  # fmt: skip
        params = {
            "prompt": prompts[0] if len(set(prompts)) == 1 else prompts,
            "negative_prompt": negs[0] if len(set(negs)) == 1 else negs,
            "model": self.path.name, "family": self.family.name, "steps": steps, "guidance": guidance,
            "noise_level": level, "sampler": "ddim", "seed": seed, "width": w * SCALE, "height": h * SCALE,
        }  # fmt: skip
        return X4Result(images=pixels_to_images(out), pixels=out, seeds=seeds, parameters=params)


def images_to_pixels(image: Image.Image | Sequence[Image.Image] | Tensor, *, multiple: int) -> Tensor:
    """PIL images -> (B, 3, h, w) in [-1, 1], each side rounded down to ``multiple`` with a bicubic resize (as
    diffusers' image processor); a tensor is taken as it is (B, 3, h, w) in [-1, 1]."""
    if isinstance(image, Tensor):
        if image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(
                f"expected an image tensor (B, 3, h, w) in [-1, 1], got shape {tuple(image.shape)}"
            )
        return image.float()
    images = [image] if isinstance(image, Image.Image) else list(image)
    if not images:
        raise ValueError("no image to upscale")
    w, h = (v - v % multiple for v in images[0].size)
    if w < multiple or h < multiple:
        raise ValueError(
            f"the image is too small to upscale: {images[0].size}, at least {multiple} px a side"
        )
    arrays = []
    for im in images:
        im = im.convert("RGB")
        if im.size != (w, h):
            im = im.resize((w, h), resample=Image.Resampling.BICUBIC)
        arrays.append(torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).reshape(h, w, 3))
    x = torch.stack(arrays).permute(0, 3, 1, 2).float() / 255.0  # (B, 3, h, w) in [0, 1]
    return x * 2 - 1


def pixels_to_images(x: Tensor) -> list[Image.Image]:
    """(B, 3, H, W) in [-1, 1] -> PIL images (rounded to 8 bits)."""
    arr = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in arr]


def describe_x4_folder(path: str | Path) -> str:
    """``latentworks info --model`` for an x4 upscaler folder: what it is, its parts and how to run it."""
    root = Path(path)
    index = _check_folder(root, "--model")
    unet_cfg = read_json(root / "unet" / "config.json", "the U-Net config")
    config = unet_config_from_diffusers(unet_cfg, source=str(root / "unet" / "config.json"))
    vae_cfg = read_json(root / "vae" / "config.json", "the VAE config")
    vae_config, scale, _ = vae_config_from_diffusers(vae_cfg, source=str(root / "vae" / "config.json"))
    sched = X4Scheduler.read(
        read_json(root / "scheduler" / "scheduler_config.json", "the scheduler config"),
        source=str(root / "scheduler"),
    )
    text = read_json(root / "text_encoder" / "config.json", "the text encoder config")
    weights = read_weights(root / "unet")
    count = sum(int(torch.Size(t.shape).numel()) for t in weights.values())
    family = SD_X4_UPSCALER
    lines = [
        f"model       {root.name}  ({root})",
        f"family      {family.name}  ({family.title})",
        f"pipeline    {PIPELINE_CLASS}: image in, {SCALE}x larger image out (also DeepFloyd IF's stage III)",
        f"parameters  unet {count:,}  channels {list(config.channels)}  in {config.in_channels} "
        f"(latent {vae_config.latent_channels} + low-res RGB 3)  noise-level labels {config.num_classes}",
        f"vae         {vae_config.downsample_factor}x, {vae_config.latent_channels} latent channels, "
        f"scaling {scale:g}",
        f"text        CLIP ({text.get('hidden_size')} wide, {text.get('num_hidden_layers')} layers), last hidden states",
        f"sampling    {sched.class_name} (run as DDIM, eta 0), {sched.prediction}-prediction, {sched.spacing} "
        f"spacing; low-res image noised by low_res_scheduler/ (max noise level "
        f"{int(index.get('max_noise_level', MAX_NOISE_LEVEL))})",
        f"defaults    {dict(family.generation.defaults)}",
        "run         latentworks upscale IMG --model THIS --prompt TEXT   or, after DeepFloyd IF stages I and II: "
        "latentworks generate PROMPT --model IF-I --upscaler IF-II --latent-upscaler THIS",
    ]
    return "\n".join(lines)


ProgressFn = Callable[[int, int], None]
