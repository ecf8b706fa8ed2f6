"""Text-to-image (and image-to-image) pipeline: text encoder -> guided denoiser -> sampler -> VAE.

The pipeline is thin: it composes library parts and exposes one per-step mechanism, ``callback``,
which the CLI progress bar, server previews and cancellation all use.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import random
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from latentworks.diffusion.conditioning import Conditioning
from latentworks.diffusion.guidance import check_interval
from latentworks.diffusion.samplers import SAMPLERS, StepInfo
from latentworks.diffusion.schedules import SCHEDULERS, get_sigmas
from latentworks.families.load import read_checkpoint
from latentworks.models.qwenimage import REFERENCE_LATENTS
from latentworks.models.qwenimage_vae import AnyAutoencoder
from latentworks.pipelines.families import (
    add_conditioning_extras,
    behaviour_of,
    cfg_scale,
    model_sampling_for,
    release_schedule,
)
from latentworks.pipelines.loading import ModelFolder, load_model_folder
from latentworks.pipelines.sampling import denoise_latents, seeds_for


@dataclass(frozen=True)
class PipelineStep:
    """What the per-step callback receives."""

    i: int
    total: int
    sigma: float
    sigma_next: float
    latent: Tensor  # (B, C, h, w) current sample, model space
    denoised: Tensor  # (B, C, h, w) current x0 prediction, model space
    preview: Callable[[], Tensor]  # cheap RGB preview of ``denoised``: uint8 (B, h, w, 3)


class ResolutionWarning(UserWarning):
    """A size far from the model's native one (pixel count off by more than 25%): larger sizes repeat the
    subject in tiles, smaller ones lose it. ``native`` and ``requested`` are (height, width)."""

    def __init__(self, model: str, native: tuple[int, int], requested: tuple[int, int]) -> None:
        (h0, w0), (h, w) = native, requested
        look = "tiled" if h * w > h0 * w0 else "degraded"
        super().__init__(
            f"the {model} model draws {w0}x{h0} images; {w}x{h} gives {look} results. "
            f"Use width={w0}, height={h0} (its native size)"
        )
        self.model, self.native, self.requested, self.look = model, native, requested, look


@dataclass
class PipelineResult:
    images: list[Image.Image]
    parameters: dict[str, Any]  # everything needed to reproduce the run
    seeds: list[int]
    latents: Tensor | None = None
    timings: dict[str, float] = field(default_factory=dict)


def images_to_tensor(images: list[Image.Image], size: tuple[int, int]) -> Tensor:
    """PIL images -> (B, 3, H, W) in [-1, 1]; RGBA is composited on white; resized to ``size`` (h, w)."""
    out = []
    for im in images:
        if im.mode in ("RGBA", "LA", "P"):
            im = im.convert("RGBA")
            bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
            im = Image.alpha_composite(bg, im)
        im = im.convert("RGB")
        if im.size != (size[1], size[0]):
            im = im.resize((size[1], size[0]), Image.Resampling.LANCZOS)
        out.append(torch.from_numpy(np.asarray(im, dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1)
    return torch.stack(out)


def resize_for_edit(image: Image.Image, area: int) -> Image.Image:
    """An editing model's input image resized to ``area`` pixels at its aspect ratio, sides rounded to
    multiples of 32, Lanczos (diffusers' ``calculate_dimensions`` + ``VaeImageProcessor.resize``), as RGB."""
    ratio = image.width / image.height
    w = math.sqrt(area * ratio)
    width, height = max(32, round(w / 32) * 32), max(32, round(w / ratio / 32) * 32)
    return image.convert("RGB").resize((width, height), Image.Resampling.LANCZOS)


def tensor_to_images(x: Tensor) -> list[Image.Image]:
    """(B, 3, H, W) in [-1, 1] -> PIL images."""
    arr = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in arr]


class Pipeline:
    """Text-to-image pipeline over a latentworks model folder.

    >>> pipe = Pipeline.from_pretrained("default")          # doctest: +SKIP
    >>> pipe("a red apple, google style", seed=1).images[0]  # doctest: +SKIP
    """

    def __init__(
        self,
        model: ModelFolder,
        text_encoder: Any,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        offload: str = "none",
    ) -> None:
        from latentworks.pipelines.memory import Offloader

        self.model = model
        self.text_encoder = text_encoder
        self.device = torch.device(device)
        self.dtype = dtype
        # "model": each network sits on `device` only while it runs (text encoders, denoiser, VAE in turn)
        self.offloader = Offloader(device=self.device, mode=offload)  # type: ignore[arg-type]
        self.offloader.offload(*self._networks())
        self.vae_tile: int | None = None  # decode in tiles of this many latent pixels (None: one piece)
        self.behaviour = behaviour_of(model.meta.get("family"))

    @property
    def vae(self) -> AnyAutoencoder:
        """The model's autoencoder; a clear error for a denoiser loaded without one."""
        if self.model.vae is None:
            raise ValueError(
                f"{self.model.path} was loaded without a VAE: pass one (API: vae=PATH; CLI: --vae FILE)"
            )
        return self.model.vae

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path = "default",
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        models_dir: str | Path | None = None,
        vae: str | Path | None = None,
        text_encoders: list[str | Path] | tuple[str | Path, ...] = (),
        tokenizer: str | Path | None = None,
        prediction: str | None = None,
        allow_pickle: bool = False,
        offload: str = "none",
    ) -> Pipeline:
        """Load a latentworks model folder (``default`` = the embedded model), a single checkpoint file
        (SD 1.x/2.x/XL, SD3, FLUX; family detected from its tensors) or a diffusers folder.

        ``vae``, ``text_encoders`` (CLIP/T5 files) and ``tokenizer`` (T5's tokenizer.json) add components a
        checkpoint lacks (FLUX files hold only the transformer). ``prediction`` overrides the detected
        objective (``eps`` | ``v``), for SD 2.x files detection cannot tell apart. Pickled files are refused
        unless ``allow_pickle``. ``offload="model"`` keeps each network on ``device`` only while it runs
        (for GPUs with less memory than the whole model needs).
        """
        from latentworks.pipelines.loading import (
            model_from_parts,
            resolve_checkpoint,
            text_encoder_from_parts,
        )

        source = resolve_checkpoint(name_or_path, models_dir)
        if source is not None:
            parts = read_checkpoint(
                source,
                vae=vae,
                text_encoders=text_encoders,
                tokenizer=tokenizer,
                prediction=prediction,
                dtype=dtype,
                allow_pickle=allow_pickle,
            )
            home = "cpu" if offload == "model" else device
            model = model_from_parts(parts, device=home, dtype=dtype)
            te = text_encoder_from_parts(parts, device=home, dtype=dtype)
            return cls(model, te, device=device, dtype=dtype, offload=offload)
        if vae is not None or text_encoders or tokenizer is not None or prediction is not None:
            raise ValueError(
                f"{name_or_path}: vae/text_encoders/tokenizer/prediction apply to checkpoint files and "
                "diffusers folders, not to latentworks model folders (which are complete)"
            )
        model = load_model_folder(name_or_path, device=device, dtype=dtype, models_dir=models_dir)
        te_spec = model.meta.get("text_encoder", {"kind": "minilm"})
        if te_spec.get("kind") != "minilm":
            raise ValueError(
                f"{model.path}: unsupported text encoder {te_spec.get('kind')!r} (known: minilm)"
            )
        from latentworks.models.text.minilm import MiniLMTextEncoder

        te = MiniLMTextEncoder(max_length=int(te_spec.get("max_length", 32)), device=device)
        return cls(model, te, device=device, dtype=dtype, offload=offload)

    # -- parts -------------------------------------------------------------------------------------

    def _text_networks(self) -> list[torch.nn.Module]:
        encoder = getattr(self.text_encoder, "base", self.text_encoder)  # through a LoRA wrapper
        modules = getattr(encoder, "modules", None)
        return list(modules().values()) if callable(modules) else []

    def _networks(self) -> list[torch.nn.Module]:
        vae = [self.model.vae] if self.model.vae is not None else []
        return [*self._text_networks(), self.model.denoiser_net, *vae]

    def encode_prompts(
        self, prompts: list[str], edit: tuple[Image.Image, Tensor] | None = None
    ) -> Conditioning:
        """The prompts' conditioning; with ``edit`` (the resized input image and its model-space latents, from
        an editing model's ``image=``) the text encoder reads the image too and the latents ride along as
        ``extra["reference_latents"]``."""
        with contextlib.ExitStack() as stack:
            for m in self._text_networks():
                stack.enter_context(self.offloader.use(m))
            if edit is None:
                return self.text_encoder.encode(prompts).to(self.device, self.dtype)
            picture, latents = edit
            recipe = self.behaviour.edit_text
            assert recipe is not None  # checked by _edit_input
            cond = self.text_encoder.encode_with_image(prompts, [picture] * len(prompts), recipe)
        refs = latents.expand(len(prompts), *latents.shape[1:])
        return cond.to(self.device, self.dtype).with_extra(**{REFERENCE_LATENTS: refs.to(self.device)})

    def _edit_input(
        self, image: Image.Image, init_image: Image.Image | list[Image.Image] | None
    ) -> tuple[Image.Image, Tensor]:
        """(the input image resized as the release does, its model-space latents (1, C, h, w))."""
        name = str(self.model.meta.get("name", self.model.path))
        recipe = self.behaviour.edit_text
        if recipe is None or not hasattr(self.text_encoder, "encode_with_image"):
            raise ValueError(
                f"{name} does not take an input image (image= / --image): only editing models such as "
                "Qwen-Image-Edit do; for image-to-image use init_image= (CLI: --init-image)"
            )
        if init_image is not None:
            raise ValueError("give either image= (editing) or init_image= (image-to-image), not both")
        picture = resize_for_edit(image, self.behaviour.edit_area)
        return picture, self.encode_images([picture], (picture.height, picture.width))

    # -- LoRA --------------------------------------------------------------------------------------

    def load_lora(
        self, path: str | Path, strength: float = 1.0, *, strength_text: float | None = None
    ) -> dict[str, list[str]]:
        """Add a LoRA (kohya/A1111 or diffusers/PEFT ``.safetensors``) with its own strengths.

        Nothing is copied: the LoRA is applied to the networks only while sampling and encoding and
        removed afterwards, so several LoRAs stack and :meth:`unload_loras` restores the model exactly.
        Returns the LoRA keys that matched no module, per target (``unet``, ``text``, ...); a file where
        nothing matches is an error naming it.
        """
        from latentworks.checkpoints.lora import add_lora

        text_strength = strength if strength_text is None else strength_text
        self.model, self.text_encoder, unmatched = add_lora(
            self.model, self.text_encoder, path, strength, text_strength
        )
        return unmatched

    def unload_loras(self) -> None:
        """Forget every LoRA added with :meth:`load_lora` (the weights were never changed between runs)."""
        self.model = dataclasses.replace(self.model, loras=())
        self.text_encoder = getattr(self.text_encoder, "base", self.text_encoder)

    def encode_images(self, images: list[Image.Image], size: tuple[int, int]) -> Tensor:
        """Images -> model-space latents (posterior mode, then the latent format's scale/shift)."""
        x = images_to_tensor(images, size).to(self.device, self.dtype)
        with torch.no_grad(), self.offloader.use(self.vae):
            z = self.vae.encode(x).mode()
        return self.model.latent_format.process_in(z.float())

    def decode_latents(self, z: Tensor) -> list[Image.Image]:
        """Model-space latents -> images; an fp16/bf16 VAE that overflows is re-run in fp32, and
        ``self.vae_tile`` decodes large images in tiles."""
        from latentworks.pipelines import memory

        with torch.no_grad(), self.offloader.use(self.vae):
            raw = self.model.latent_format.process_out(z)
            x = memory.decode_latents(self.vae, raw, tile=self.vae_tile)
        return tensor_to_images(x)

    # -- generation --------------------------------------------------------------------------------

    def __call__(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None = None,
        *,
        steps: int | None = None,
        guidance: float | None = None,
        sampler: str | None = None,
        scheduler: str | None = None,
        seed: int | None = None,
        batch: int = 1,
        width: int | None = None,
        height: int | None = None,
        init_image: Image.Image | list[Image.Image] | None = None,
        image: Image.Image | None = None,
        strength: float = 1.0,
        callback: Callable[[PipelineStep], Any] | None = None,
        sampler_options: dict[str, Any] | None = None,
        guidance_interval: tuple[float, float] | None = None,
    ) -> PipelineResult:
        """Generate ``batch`` images per prompt.

        Image i uses seed ``seed + i`` (``pipelines.sampling.seeds_for``, as the KSampler node and training
        previews do): it equals a single run with that seed. With ``init_image``,
        generation starts from the encoded image noised to the level ``strength`` selects (1 = pure
        noise, 0 = the image back up to VAE error). ``callback`` gets a ``PipelineStep`` after each
        step; returning False cancels (the result then holds the partially denoised images).
        ``guidance_interval`` ``(sigma_lo, sigma_hi)`` applies guidance only at those noise levels
        (Kynkaanniemi et al. 2024: guidance at high noise costs variety, at low noise it does little);
        default: the model's ``defaults["guidance_interval"]``, else every step. Steps outside it skip
        the unconditional half of the batch.
        """
        d = self.model.defaults
        steps = int(steps if steps is not None else d.get("steps", 20))
        guidance = float(guidance if guidance is not None else d.get("guidance", 5.0))
        sampler = sampler or d.get("sampler", "euler")
        scheduler = scheduler or d.get("scheduler", "normal")
        interval = guidance_interval if guidance_interval is not None else d.get("guidance_interval")
        if interval is not None:
            interval = check_interval(interval)  # fail before encoding prompts, not mid-sampling
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; choose one of: {', '.join(SAMPLERS)}")
        if scheduler not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {scheduler!r}; choose one of: {', '.join(SCHEDULERS)}")
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        if batch < 1:
            raise ValueError(f"batch must be at least 1, got {batch}")
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"strength must be in [0, 1], got {strength}")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts:
            raise ValueError("give at least one prompt")
        negs = (
            negative_prompt if isinstance(negative_prompt, list) else [negative_prompt or ""] * len(prompts)
        )
        if len(negs) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(negs)} negative prompts")
        h0, w0 = self.model.resolution
        edit = None
        if image is not None:  # an editing model: the input image sets the default size
            edit = self._edit_input(image, init_image)
            h0, w0 = edit[0].height, edit[0].width
        height, width = int(height or h0), int(width or w0)
        f = self.vae.config.downsample_factor
        if height % f or width % f or height <= 0 or width <= 0:
            raise ValueError(
                f"width and height must be positive multiples of {f} (the VAE's factor), got {width}x{height}"
            )
        if abs(height * width / (h0 * w0) - 1) > 0.25:  # other aspect ratios at the native area are fine
            name = str(self.model.meta.get("name", self.model.path))
            warnings.warn(ResolutionWarning(name, (h0, w0), (height, width)), stacklevel=2)
        seed = random.randrange(2**31) if seed is None else int(seed)
        n = len(prompts) * batch
        seeds = seeds_for(seed, n)
        all_prompts = [p for p in prompts for _ in range(batch)]
        all_negs = [q for q in negs for _ in range(batch)]
        timings: dict[str, float] = {}
        t0 = time.perf_counter()

        cfg = cfg_scale(self.behaviour, guidance)
        b = self.behaviour
        cond = add_conditioning_extras(
            b, self.encode_prompts(all_prompts, edit), height=height, width=width, guidance=guidance
        )
        uncond = None
        if cfg != 1.0:
            neg = self.encode_prompts(all_negs, edit)
            uncond = add_conditioning_extras(
                b, neg, height=height, width=width, guidance=guidance, negative=True
            )
        timings["encode_text"] = time.perf_counter() - t0

        c = self.model.latent_format.channels
        shape = (n, c, height // f, width // f)
        denoise = strength if init_image is not None else 1.0
        ms = model_sampling_for(self.model, latent_height=height // f, latent_width=width // f)
        sigmas = get_sigmas(ms, scheduler, steps, denoise=denoise) if denoise > 0 else torch.zeros(1)
        sigmas = release_schedule(self.model, sigmas)
        if init_image is not None:
            imgs = init_image if isinstance(init_image, list) else [init_image]
            if len(imgs) not in (1, n):
                raise ValueError(f"give 1 or {n} init images, got {len(imgs)}")
            x0 = self.encode_images(imgs, (height, width))
            x0 = x0.expand(shape) if x0.shape[0] == 1 else x0
        else:
            x0 = torch.zeros(shape, device=self.device)

        cb = None
        if callback is not None:
            lf = self.model.latent_format

            def cb(info: StepInfo) -> object:
                return callback(
                    PipelineStep(
                        i=info.i,
                        total=info.total,
                        sigma=info.sigma,
                        sigma_next=info.sigma_next,
                        latent=info.x,
                        denoised=info.denoised,
                        preview=lambda: lf.preview(info.denoised),
                    )
                )

        t1 = time.perf_counter()
        model = self.model
        if model.guidance_norm is None and b.guidance_norm is not None:  # the release's CFG (Qwen-Image)
            model = dataclasses.replace(model, guidance_norm=b.guidance_norm)
        with self.offloader.use(self.model.denoiser_net):
            x = denoise_latents(
                model,
                x0,
                sigmas,
                seeds,
                cond,
                uncond,
                cfg,
                sampler,
                callback=cb,
                sampler_options=sampler_options,
                guidance_interval=interval,
            )
        timings["sample"] = time.perf_counter() - t1
        t2 = time.perf_counter()
        images = self.decode_latents(x)
        timings["decode"] = time.perf_counter() - t2
        params = {
            "prompt": prompts[0] if len(prompts) == 1 else prompts,
            "negative_prompt": negs[0] if len(negs) == 1 else negs,
            "steps": steps,
            "guidance": guidance,
            "guidance_interval": None if interval is None else list(interval),
            "sampler": sampler,
            "scheduler": scheduler,
            "seed": seed,
            "batch": batch,
            "width": width,
            "height": height,
            "strength": strength if init_image is not None else None,
            "model": self.model.meta.get("name", str(self.model.path)),
        }
        return PipelineResult(images=images, parameters=params, seeds=seeds, latents=x, timings=timings)
