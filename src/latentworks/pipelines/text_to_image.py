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
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from latentworks.diffusion.conditioning import CONCAT_KEY, Conditioning
from latentworks.diffusion.control import LatentHintEncoder
from latentworks.diffusion.guidance import check_interval
from latentworks.diffusion.samplers import SAMPLERS, StepInfo
from latentworks.diffusion.schedules import SCHEDULERS, get_sigmas
from latentworks.families.load import read_checkpoint
from latentworks.models.qwenimage import with_reference_latents
from latentworks.models.unet import CLASS_INPUT_KEY
from latentworks.pipelines.control import Control, attach_controls
from latentworks.pipelines.families import (
    add_conditioning_extras,
    behaviour_of,
    cfg_scale,
    model_sampling_for,
    release_schedule,
)
from latentworks.pipelines.inpaint import (
    blur_mask,
    grow_mask,
    inpaint_channels,
    latent_mask,
    mask_to_tensor,
    masked_pixels,
    model_inpaint_inputs,
)
from latentworks.pipelines.inpaint import composite as inpaint_composite
from latentworks.pipelines.loading import AnyAutoencoder, ModelFolder, load_model_folder
from latentworks.pipelines.sampling import denoise_latents, seeds_for
from latentworks.pipelines.upscale import UpscaleModel, load_upscale_model, upscale_images


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
        memory_budget: int | str | None = None,
    ) -> None:
        from latentworks.pipelines.memory import MemoryManager, parse_bytes

        self.model = model
        self.text_encoder = text_encoder
        self.device = torch.device(device)
        self.dtype = dtype
        # "model": each network sits on `device` only while it runs (text encoders, denoiser, VAE in turn);
        # a budget keeps at most that many bytes of weights there, streaming the blocks of a larger network
        budget = None if memory_budget is None else parse_bytes(memory_budget)
        self.offloader = MemoryManager(device=self.device, mode=offload, budget=budget)  # type: ignore[arg-type]
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
        memory_budget: int | str | None = None,
    ) -> Pipeline:
        """Load a latentworks model folder (``default`` = the embedded model), a single checkpoint file
        (SD 1.x/2.x/XL, SD3, FLUX; family detected from its tensors) or a diffusers folder.

        ``vae``, ``text_encoders`` (CLIP/T5 files) and ``tokenizer`` (T5's tokenizer.json) add components a
        checkpoint lacks (FLUX files hold only the transformer). ``prediction`` overrides the detected
        objective (``eps`` | ``v``), for SD 2.x files detection cannot tell apart. Pickled files are refused
        unless ``allow_pickle``. ``offload="model"`` keeps each network on ``device`` only while it runs
        (for GPUs with less memory than the whole model needs). ``memory_budget`` (bytes, or a size such as
        ``"4GB"`` / ``"512MiB"``) caps the weights on ``device``: networks that do not fit run block by block
        (``pipelines.memory.MemoryManager``), with the same results as without a budget.
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
            home = "cpu" if offload == "model" or memory_budget is not None else device
            model = model_from_parts(parts, device=home, dtype=dtype)
            te = text_encoder_from_parts(parts, device=home, dtype=dtype)
            return cls(model, te, device=device, dtype=dtype, offload=offload, memory_budget=memory_budget)
        if vae is not None or text_encoders or tokenizer is not None or prediction is not None:
            raise ValueError(
                f"{name_or_path}: vae/text_encoders/tokenizer/prediction apply to checkpoint files and "
                "diffusers folders, not to latentworks model folders (which are complete)"
            )
        home = "cpu" if memory_budget is not None else device
        model = load_model_folder(name_or_path, device=home, dtype=dtype, models_dir=models_dir)
        te_spec = model.meta.get("text_encoder", {"kind": "minilm"})
        if te_spec.get("kind") != "minilm":
            raise ValueError(
                f"{model.path}: unsupported text encoder {te_spec.get('kind')!r} (known: minilm)"
            )
        from latentworks.models.text.minilm import MiniLMTextEncoder

        te = MiniLMTextEncoder(max_length=int(te_spec.get("max_length", 32)), device=device)
        return cls(model, te, device=device, dtype=dtype, offload=offload, memory_budget=memory_budget)

    # -- parts -------------------------------------------------------------------------------------

    def _text_networks(self) -> list[torch.nn.Module]:
        encoder = getattr(self.text_encoder, "base", self.text_encoder)  # through a LoRA wrapper
        modules = getattr(encoder, "modules", None)
        return list(modules().values()) if callable(modules) else []

    def _networks(self) -> list[torch.nn.Module]:
        vae = [self.model.vae] if self.model.vae is not None else []
        return [*self._text_networks(), self.model.denoiser_net, *vae]

    def encode_prompts(
        self,
        prompts: list[str],
        edit: tuple[Image.Image, Tensor] | tuple[list[Image.Image], list[Tensor]] | None = None,
    ) -> Conditioning:
        """The prompts' conditioning; with ``edit`` (the resized input image and its model-space latents, from
        an editing model's ``edit_image=``) the text encoder reads the image too and the latents ride along as
        ``extra["reference_latents"]``. With lists (``edit_image=[a, b]``, Qwen-Image-Edit-2509) each image is
        read as "Picture N" and its latents become reference N (``reference_latents``, ``reference_latents.1``,
        ...)."""
        with contextlib.ExitStack() as stack:
            nets = self._text_networks()
            for m in nets:
                stack.enter_context(self.offloader.use(m))
            if getattr(self.text_encoder, "loras", None) and any(self.offloader.streaming(m) for m in nets):
                raise ValueError(
                    "LoRAs cannot be applied to a text encoder streamed block by block: raise the memory budget "
                    "(--memory-budget / memory_budget=) to fit it whole, or load the LoRA with strength_text=0"
                )
            if edit is None:
                return self.text_encoder.encode(prompts).to(self.device, self.dtype)
            picture, latents = edit
            recipe = self.behaviour.edit_plus_text if isinstance(picture, list) else self.behaviour.edit_text
            assert recipe is not None  # checked by _edit_input
            cond = self.text_encoder.encode_with_image(prompts, [picture] * len(prompts), recipe)
        refs = latents if isinstance(latents, list) else [latents]
        return with_reference_latents(cond.to(self.device, self.dtype), [r.to(self.device) for r in refs])

    def _edit_inputs(
        self, images: list[Image.Image], init_image: Image.Image | list[Image.Image] | None
    ) -> tuple[list[Image.Image], list[Tensor], tuple[int, int]]:
        """Several input images (Qwen-Image-Edit-2509, as diffusers' QwenImageEditPlusPipeline): each resized to
        the vision area for the text encoder and to the edit area for its latents (1, C, h, w); and the default
        output (height, width): the last image's edit size."""
        name = str(self.model.meta.get("name", self.model.path))
        recipe = self.behaviour.edit_plus_text
        if recipe is None or not hasattr(self.text_encoder, "encode_with_image"):
            raise ValueError(
                f"{name} does not take several images to edit (edit_image=[...]): only Qwen-Image-Edit-2509 "
                "style models do; give one image (edit_image=IMAGE) for single-image editing"
            )
        if init_image is not None:
            raise ValueError(
                "give either edit_image= (editing) or image= / init_image= (image-to-image), not both"
            )
        if not images:
            raise ValueError("edit_image=[] holds no image: give at least one image to edit")
        seen = [resize_for_edit(im, self.behaviour.edit_plus_vision_area) for im in images]
        encoded = [resize_for_edit(im, self.behaviour.edit_area) for im in images]
        latents = [self.encode_images([pic], (pic.height, pic.width)) for pic in encoded]
        return seen, latents, (encoded[-1].height, encoded[-1].width)

    def _edit_input(
        self, image: Image.Image, init_image: Image.Image | list[Image.Image] | None
    ) -> tuple[Image.Image, Tensor]:
        """(the input image resized as the release does, its model-space latents (1, C, h, w))."""
        name = str(self.model.meta.get("name", self.model.path))
        recipe = self.behaviour.edit_text
        if recipe is None or not hasattr(self.text_encoder, "encode_with_image"):
            raise ValueError(
                f"{name} does not take an image to edit (edit_image= / --image): only editing models such as "
                "Qwen-Image-Edit do; for image-to-image use image= (CLI: --init IMAGE)"
            )
        if init_image is not None:
            raise ValueError(
                "give either edit_image= (editing) or image= / init_image= (image-to-image), not both"
            )
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
        return self.encode_pixels(images_to_tensor(images, size))

    def encode_pixels(self, x: Tensor) -> Tensor:
        """Pixels (B, 3, H, W) in [-1, 1] -> model-space latents (B, C, H/f, W/f) (posterior mode)."""
        with torch.no_grad(), self.offloader.use(self.vae):
            z = self.vae.encode(x.to(self.device, self.dtype)).mode()
        return self.model.latent_format.process_in(z.float())

    def decode_pixels(self, z: Tensor) -> Tensor:
        """Model-space latents -> float32 pixels (B, 3, H, W) in [-1, 1] (unclamped); an fp16/bf16 VAE that
        overflows is re-run in fp32, and ``self.vae_tile`` decodes large images in tiles."""
        from latentworks.pipelines import memory

        with torch.no_grad(), self.offloader.use(self.vae):
            raw = self.model.latent_format.process_out(z)
            return memory.decode_latents(self.vae, raw, tile=self.vae_tile)

    def decode_latents(self, z: Tensor) -> list[Image.Image]:
        """Model-space latents -> images (see :meth:`decode_pixels`)."""
        return tensor_to_images(self.decode_pixels(z))

    @property
    def inpaint_channels(self) -> int:
        """Extra input channels of the denoiser: 5 for SD/SDXL inpainting U-Nets (mask + masked latent), else 0."""
        return inpaint_channels(self.model)

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
        image: Image.Image | list[Image.Image] | None = None,
        edit_image: Image.Image | list[Image.Image] | None = None,
        strength: float = 1.0,
        mask: Image.Image | Tensor | np.ndarray | None = None,
        mask_blur: float = 0.0,
        mask_grow: int = 0,
        composite: bool = False,
        noise_mask: bool | None = None,
        differential: bool = False,
        hires_scale: float = 1.0,
        hires_denoise: float = 0.5,
        hires_upscale: str | Path | UpscaleModel = "latent",
        hires_steps: int | None = None,
        callback: Callable[[PipelineStep], Any] | None = None,
        sampler_options: dict[str, Any] | None = None,
        guidance_interval: tuple[float, float] | None = None,
        control: list[Control | tuple[Any, ...]] | None = None,
        class_input: Tensor | None = None,
    ) -> PipelineResult:
        """Generate ``batch`` images per prompt.

        Image i uses seed ``seed + i`` (``pipelines.sampling.seeds_for``, as the KSampler node and training
        previews do): it equals a single run with that seed. With ``image`` (or its older name
        ``init_image``), generation starts from the encoded image noised to the level ``strength`` selects
        (1 = pure noise, 0 = the image back up to VAE error). ``callback`` gets a ``PipelineStep`` after each
        step; returning False cancels (the result then holds the partially denoised images).
        ``guidance_interval`` ``(sigma_lo, sigma_hi)`` applies guidance only at those noise levels
        (Kynkaanniemi et al. 2024: guidance at high noise costs variety, at low noise it does little);
        default: the model's ``defaults["guidance_interval"]``, else every step. Steps outside it skip
        the unconditional half of the batch. ``class_input`` (1 or N, D): a class-embedding model's input for the
        prompt (SD 2.1 unCLIP: ``latentworks.models.unclip.ImageEmbeddingAugmentor`` of a CLIP image embedding);
        the negative prompt gets zeros.

        ``edit_image`` (editing models, Qwen-Image-Edit): the image the prompt describes a change to; it is read
        by the text encoder's vision tower and its latents join the denoiser's sequence; the output takes its
        aspect ratio at the family's edit area unless ``width``/``height`` are given. A list of images
        (Qwen-Image-Edit-2509, as diffusers' ``QwenImageEditPlusPipeline``) is read as "Picture 1", "Picture 2", ...
        (each at the family's vision area) and each image's latents join the sequence at the next RoPE frame; the
        output takes the last image's aspect ratio.
        Inpainting (docs/editing.md): ``mask`` (PIL image, white = regenerate, or an (H, W) array in [0, 1]) over
        ``image`` regenerates the white area. Without ``width``/``height`` the image's own size is used (rounded
        down to the VAE factor); a mask of another size than the image is resized with a
        :class:`~latentworks.pipelines.inpaint.MaskSizeWarning`. ``mask_grow`` pixels dilate it (negative:
        erode), then ``mask_blur`` (Gaussian sigma, pixels) softens it. Any model inpaints through the latent
        noise mask (soft masks blend the kept latent back at every step, as ComfyUI's KSampler does);
        ``differential=True`` uses differential diffusion instead of blending (grey = change a little).
        Inpainting models (9-channel SD/SDXL U-Nets) also see the mask and the masked image's latent, as
        diffusers' StableDiffusionInpaintPipeline gives them; for them the noise mask is off by default
        (``noise_mask=True`` turns it on). ``composite=True`` pastes the unmasked pixels of the image back
        over the decoded result, so they are unchanged exactly.

        Hires fix (two passes): ``hires_scale > 1`` samples at the requested size, upscales the result by
        that factor (``hires_upscale``: ``"latent"`` = bilinear in latent space, ``"pixel"`` = decode, bicubic,
        encode, the path of an upscale model file for spandrel, or a loaded
        :class:`~latentworks.pipelines.upscale.UpscaleModel`) and samples again from it at
        ``hires_denoise`` with ``hires_steps`` (default: ``steps``).
        ``control``: ControlNets, each a ``Control(image, controlnet, strength, start, end, mode)`` or a tuple
        ``(image, controlnet[, strength[, start[, end[, mode]]]])`` (see :mod:`latentworks.pipelines.control`),
        applied to the prompt and the negative prompt; FLUX ControlNets read the image through this VAE.
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
        if image is not None and init_image is not None:
            raise ValueError("give the starting image once: image= (init_image= is its older name)")
        init_image = image if image is not None else init_image
        if mask is not None and init_image is None:
            raise ValueError("a mask needs the image it applies to: pass image= as well")
        if mask is None and (composite or differential or mask_blur or mask_grow or noise_mask):
            raise ValueError("composite, differential, mask_blur, mask_grow and noise_mask need a mask=")
        hires = _check_hires(hires_scale, hires_denoise, hires_upscale, hires_steps)
        if hires and mask is not None:
            raise ValueError("hires fix (hires_scale) and inpainting (mask) cannot be combined in one call")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts:
            raise ValueError("give at least one prompt")
        negs = (
            negative_prompt if isinstance(negative_prompt, list) else [negative_prompt or ""] * len(prompts)
        )
        if len(negs) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(negs)} negative prompts")
        imgs = None if init_image is None else (init_image if isinstance(init_image, list) else [init_image])
        f = self.vae.config.downsample_factor
        h0, w0 = self.model.resolution
        edit: tuple[Image.Image, Tensor] | tuple[list[Image.Image], list[Tensor]] | None = None
        if isinstance(edit_image, list):  # several input images (Qwen-Image-Edit-2509)
            seen, refs, (h0, w0) = self._edit_inputs(edit_image, init_image)
            edit = (seen, refs)
        elif edit_image is not None:  # an editing model: the input image sets the default size
            edit = self._edit_input(edit_image, init_image)
            h0, w0 = edit[0].height, edit[0].width
        if mask is not None and imgs and height is None and width is None:
            h0, w0 = max(f, imgs[0].height // f * f), max(f, imgs[0].width // f * f)  # the image's own size
        height, width = int(height or h0), int(width or w0)
        if height % f or width % f or height <= 0 or width <= 0:
            raise ValueError(
                f"width and height must be positive multiples of {f} (the VAE's factor), got {width}x{height}"
            )
        h_n, w_n = self.model.resolution
        if abs(height * width / (h_n * w_n) - 1) > 0.25:  # other aspect ratios at the native area are fine
            name = str(self.model.meta.get("name", self.model.path))
            warnings.warn(ResolutionWarning(name, (h_n, w_n), (height, width)), stacklevel=2)
        seed = random.randrange(2**31) if seed is None else int(seed)
        n = len(prompts) * batch
        seeds = seeds_for(seed, n)
        all_prompts = [p for p in prompts for _ in range(batch)]
        all_negs = [q for q in negs for _ in range(batch)]
        timings: dict[str, float] = {}
        t0 = time.perf_counter()

        cfg = cfg_scale(self.behaviour, guidance)
        b = self.behaviour
        raw_cond = self.encode_prompts(all_prompts, edit)
        if class_input is not None:
            rows = class_input.to(raw_cond.tokens.device).float()
            raw_cond = raw_cond.with_extra(
                **{CLASS_INPUT_KEY: rows.expand(n, -1) if rows.shape[0] == 1 else rows}
            )
        raw_uncond = self.encode_prompts(all_negs, edit) if cfg != 1.0 else None
        if class_input is not None and raw_uncond is not None and CLASS_INPUT_KEY not in raw_uncond.extra:
            # the negative prompt's "no image" (a family without class_input_dim, e.g. our own unCLIP folders):
            # zeros, so CFG's batched call keeps the key (Conditioning.cat drops keys one side lacks)
            zeros = torch.zeros(raw_uncond.batch_size, class_input.shape[-1], device=raw_uncond.tokens.device)
            raw_uncond = raw_uncond.with_extra(**{CLASS_INPUT_KEY: zeros})

        def conditionings(h: int, w: int) -> tuple[Conditioning, Conditioning | None]:
            c = add_conditioning_extras(b, raw_cond, height=h, width=w, guidance=guidance)
            u = None
            if raw_uncond is not None:
                u = add_conditioning_extras(
                    b, raw_uncond, height=h, width=w, guidance=guidance, negative=True
                )
            return c, u

        cond, uncond = conditionings(height, width)
        timings["encode_text"] = time.perf_counter() - t0
        cond, uncond, controls = attach_controls(
            cond, uncond, control or (), dtype=self.dtype, device=self.device,
            encoder=LatentHintEncoder(lambda pixels: self.encode_pixels(pixels * 2 - 1), f),
        )  # fmt: skip

        c = self.model.latent_format.channels
        lh, lw = height // f, width // f
        shape = (n, c, lh, lw)
        denoise = strength if init_image is not None else 1.0
        ms = model_sampling_for(self.model, latent_height=lh, latent_width=lw)
        sigmas = get_sigmas(ms, scheduler, steps, denoise=denoise) if denoise > 0 else torch.zeros(1)
        sigmas = release_schedule(self.model, sigmas)
        pixels = None  # (B, 3, H, W) in [-1, 1], the image at the output size
        if imgs is not None:
            if len(imgs) not in (1, n):
                raise ValueError(f"give 1 or {n} init images, got {len(imgs)}")
            pixels = images_to_tensor(imgs, (height, width))
            x0 = self.encode_pixels(pixels)
            x0 = x0.expand(shape) if x0.shape[0] == 1 else x0
        else:
            x0 = torch.zeros(shape, device=self.device)

        pixel_mask = None  # (1, 1, H, W) in [0, 1] after grow and blur
        if mask is not None:
            assert imgs is not None
            pixel_mask = self._pixel_mask(
                mask, (imgs[0].height, imgs[0].width), (height, width), mask_grow, mask_blur
            )
        if self.inpaint_channels:
            extra = self._inpaint_inputs(pixel_mask, pixels, (height, width)).expand(n, -1, -1, -1)
            cond = cond.with_extra(**{CONCAT_KEY: extra})
            uncond = None if uncond is None else uncond.with_extra(**{CONCAT_KEY: extra})
        use_noise_mask = pixel_mask is not None and (
            noise_mask if noise_mask is not None else not self.inpaint_channels
        )
        latent_noise_mask = None
        if use_noise_mask:
            assert pixel_mask is not None
            latent_noise_mask = latent_mask(pixel_mask, (lh, lw)).expand(n, 1, lh, lw).to(self.device)
        elif self.inpaint_channels and denoise == 1.0:
            x0 = torch.zeros(shape, device=self.device)  # full strength: pure noise, as diffusers starts

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
        with self.offloader.use(self.model.denoiser_net) as net:
            if self.model.loras and self.offloader.streaming(net):
                raise ValueError(
                    f"LoRAs cannot be applied to a network streamed block by block: a memory budget of "
                    f"{self.offloader.budget} bytes holds only part of it; raise --memory-budget "
                    "(memory_budget=) to fit the whole denoiser, or unload the LoRAs"
                )
            x = denoise_latents(
                model,
                x0,
                sigmas,
                seeds,
                cond,
                uncond,
                cfg,
                sampler,
                mask=latent_noise_mask,
                differential=differential,
                masked_from_noise=denoise == 1.0,
                callback=cb,
                sampler_options=sampler_options,
                guidance_interval=interval,
            )
        timings["sample"] = time.perf_counter() - t1
        if hires:
            t_h = time.perf_counter()
            height, width = (round(v * hires_scale / f) * f for v in (height, width))
            x_up = self._hires_upscale(x, (height, width), hires_upscale)
            cond2, uncond2 = conditionings(height, width)
            ms2 = model_sampling_for(self.model, latent_height=height // f, latent_width=width // f)
            sigmas2 = get_sigmas(ms2, scheduler, int(hires_steps or steps), denoise=hires_denoise)
            sigmas2 = release_schedule(self.model, sigmas2)
            with self.offloader.use(self.model.denoiser_net):
                x = denoise_latents(
                    model,
                    x_up,
                    sigmas2,
                    seeds,
                    cond2,
                    uncond2,
                    cfg,
                    sampler,
                    callback=cb,
                    sampler_options=sampler_options,
                    guidance_interval=interval,
                )
            timings["hires"] = time.perf_counter() - t_h
        t2 = time.perf_counter()
        out = self.decode_pixels(x)
        if composite and pixel_mask is not None and pixels is not None:
            out = inpaint_composite(out.clamp(-1, 1), pixels.to(out.device), pixel_mask.to(out.device))
        images = tensor_to_images(out)
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
        if mask is not None:
            params["inpaint"] = {
                "mask_blur": mask_blur,
                "mask_grow": mask_grow,
                "composite": composite,
                "noise_mask": bool(use_noise_mask),
                "differential": differential,
                "inpainting_model": bool(self.inpaint_channels),
            }
        if hires:
            params["hires"] = {
                "scale": hires_scale,
                "denoise": hires_denoise,
                "upscale": str(getattr(hires_upscale, "path", hires_upscale)),
                "steps": int(hires_steps or steps),
            }
        if controls:
            params["control"] = controls
        return PipelineResult(images=images, parameters=params, seeds=seeds, latents=x, timings=timings)

    @staticmethod
    def _pixel_mask(
        mask: Image.Image | Tensor | np.ndarray,
        image_size: tuple[int, int],
        size: tuple[int, int],
        grow: int,
        blur: float,
    ) -> Tensor:
        """The user's mask as (1, 1, H, W) in [0, 1] at the output ``size``: checked against the image's size
        (resized with a warning), resized with the image, then grown and blurred."""
        m = mask_to_tensor(mask, image_size)
        if tuple(m.shape[-2:]) != tuple(size):  # follows the image to the output size
            m = F.interpolate(m, size=size, mode="bilinear").clamp(0, 1)
        return blur_mask(grow_mask(m, int(grow)), float(blur))

    def _inpaint_inputs(
        self, pixel_mask: Tensor | None, pixels: Tensor | None, size: tuple[int, int]
    ) -> Tensor:
        """An inpainting model's own extra inputs, (1 or B, C', h, w) on the device: the binarised mask (nearest
        to latent size as diffusers; folded per latent cell for FLUX Fill) and the masked image's latent. With no
        mask everything is generated (a blank masked image)."""
        binary = (pixel_mask >= 0.5).float() if pixel_mask is not None else torch.ones(1, 1, *size)
        source = pixels if pixels is not None else torch.zeros(1, 3, *size)
        masked_latent = self.encode_pixels(masked_pixels(source, binary))
        return model_inpaint_inputs(self.model, binary.to(masked_latent.device), masked_latent).to(
            self.device
        )

    def _hires_upscale(self, x: Tensor, size: tuple[int, int], how: str | Path | UpscaleModel) -> Tensor:
        """The first pass's latents ``x`` upscaled to pixel ``size`` (H, W), back in model space."""
        f = self.vae.config.downsample_factor
        if how == "latent":
            return F.interpolate(x, size=(size[0] // f, size[1] // f), mode="bilinear", align_corners=False)
        px = self.decode_pixels(x).clamp(-1, 1)  # (B, 3, h, w)
        if how != "pixel":
            model = how if isinstance(how, UpscaleModel) else load_upscale_model(how)
            px = upscale_images(model, (px + 1) / 2) * 2 - 1  # the model works in [0, 1]
        px = F.interpolate(px, size=size, mode="bicubic", align_corners=False, antialias=True).clamp(-1, 1)
        return self.encode_pixels(px)


def _check_hires(scale: float, denoise: float, upscale: str | Path | UpscaleModel, steps: int | None) -> bool:
    """Validate the hires-fix options; True when a second pass is asked for."""
    if not 0 < scale <= 8:
        raise ValueError(f"hires_scale must be in (0, 8], got {scale}")
    if scale == 1.0:
        return False
    if not 0 < denoise <= 1:
        raise ValueError(f"hires_denoise must be in (0, 1], got {denoise}")
    if steps is not None and steps < 1:
        raise ValueError(f"hires_steps must be at least 1, got {steps}")
    if (
        not isinstance(upscale, UpscaleModel)
        and upscale not in ("latent", "pixel")
        and not Path(upscale).is_file()
    ):
        raise ValueError(
            f"hires_upscale must be 'latent', 'pixel' or the path of an upscale model file; no such file: {upscale}"
        )
    return True
