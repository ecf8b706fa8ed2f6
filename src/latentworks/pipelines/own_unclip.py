"""Our own unCLIP (issue 26), trained on the emoji data by ``latentworks train-unclip``.

Three stages, as DALL-E 2 (Ramesh et al. 2022) arranges them, in one latentworks model folder:

- **image encoder** (``models.image_encoder``): image -> unit-length embedding (B, D), trained contrastively
  against the frozen MiniLM captions (a small CLIP);
- **prior** (``models.emoji_prior``): caption -> image embedding, a flow-matching diffusion model over (B, D);
- **decoder**: the folder's own U-Net, which adds the noise-augmented embedding to its time embedding
  (``models.own_unclip``) and still reads the caption's tokens.

``model.json`` holds the decoder as any model folder does, plus a ``"unclip"`` entry::

    "unclip": {"image_encoder": {"file": "image_encoder.safetensors", "config": {...}},
               "prior": {"file": "prior.safetensors", "config": {...}, "prediction": "flow",
                         "sampling": {"kind": "flow", "shift": 1.0}},          # optional
               "defaults": {"noise_augmentation": 0.0, "prior_steps": 25, "prior_guidance": 2.0}}

A folder without the prior still makes variations (image -> encoder -> decoder); text -> image says which stage
is missing. The decoder alone loads as an ordinary text-to-image model (no image: zeros, as SD 2.1 unCLIP).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from latentworks.checkpoints.io import load_state_dict, save_file_atomic
from latentworks.diffusion.conditioning import Conditioning
from latentworks.diffusion.denoisers import ModelSampling, sampling_spec_from_dict
from latentworks.diffusion.schedules import get_sigmas
from latentworks.models.configs import config_from_dict, config_to_dict
from latentworks.models.emoji_prior import EmbeddingPrior, EmbeddingPriorConfig
from latentworks.models.image_encoder import ImageEncoder, ImageEncoderConfig
from latentworks.models.unclip import ImageEmbeddingAugmentor, slerp
from latentworks.pipelines.loading import resolve_model_path
from latentworks.pipelines.sampling import NetworkModel, denoise_latents, seeds_for
from latentworks.pipelines.unclip import image_class_input

UNCLIP_KEY = "unclip"  # the model.json entry
ENCODER_FILE = "image_encoder.safetensors"
PRIOR_FILE = "prior.safetensors"
DEFAULTS: dict[str, Any] = {"noise_augmentation": 0.0, "prior_steps": 25, "prior_guidance": 2.0}
PRIOR_SAMPLER, PRIOR_SCHEDULER = "euler", "simple"


class MissingStageError(ValueError):
    """A stage the request needs is not in the model folder."""


def sample_prior(
    prior: EmbeddingPrior,
    model_sampling: ModelSampling,
    cond: Conditioning,
    uncond: Conditioning | None,
    seeds: list[int],
    *,
    steps: int = 25,
    guidance: float = 2.0,
    sampler: str = PRIOR_SAMPLER,
    scheduler: str = PRIOR_SCHEDULER,
) -> Tensor:
    """Unit-length image embeddings (B, D) for the captions of ``cond`` (B rows with ``pooled``), sampled with
    the project's samplers (``pipelines.sampling.denoise_latents``: sample i starts from ``seeds[i]``'s noise)
    and classifier-free guidance against ``uncond`` (the empty caption) when ``guidance != 1``."""
    device = prior.in_proj.weight.device
    model = NetworkModel(prior, "flow", model_sampling)
    sigmas = get_sigmas(model_sampling, scheduler, steps)
    x0 = torch.zeros(len(seeds), prior.config.embed_dim, device=device)
    u = None if uncond is None else uncond.to(device)
    with torch.no_grad():
        x = denoise_latents(model, x0, sigmas, seeds, cond.to(device), u, guidance, sampler)
    return torch.nn.functional.normalize(x.float() / prior.config.embed_scale, dim=-1)


def prior_model_sampling(spec: dict[str, Any] | None = None) -> ModelSampling:
    """The prior's model sampling (flow, shift 1 unless ``spec`` says otherwise)."""
    return sampling_spec_from_dict(spec or {"kind": "flow", "shift": 1.0}).model_sampling()


def image_to_tensor(image: Any, size: int) -> Tensor:
    """A PIL image (or an (H, W, 3) uint8 array) -> (1, 3, size, size) float32 in [-1, 1], resized with Lanczos
    (as ``latentworks data emoji`` makes its images) and composited on white when it has transparency."""
    from PIL import Image

    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    if image.mode in ("RGBA", "LA", "P"):
        rgba = image.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(bg, rgba)
    image = image.convert("RGB")
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.LANCZOS)
    arr = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1)[None].contiguous()


@dataclass
class OwnUnclip:
    """The image encoder and prior of an unCLIP model folder (the decoder is the folder's own U-Net, loaded by
    ``Pipeline.from_pretrained``)."""

    path: Path
    encoder: ImageEncoder
    prior: EmbeddingPrior | None
    prior_sampling: ModelSampling | None
    defaults: dict[str, Any] = field(default_factory=lambda: dict(DEFAULTS))

    @property
    def dim(self) -> int:
        return self.encoder.dim

    @property
    def augmentor(self) -> ImageEmbeddingAugmentor:
        """The decoder's noise augmentation (the encoder's embedding statistics)."""
        return ImageEmbeddingAugmentor(self.encoder.embed_mean, self.encoder.embed_std)

    def stages(self) -> list[str]:
        return ["image encoder"] + (["prior"] if self.prior is not None else []) + ["decoder"]

    @torch.no_grad()
    def embed_images(self, images: Tensor) -> Tensor:
        """(B, 3, S, S) in [-1, 1] -> (B, D) unit-length image embeddings."""
        return self.encoder.encode_image(images.to(self.encoder.image_proj.weight.device)).float().cpu()

    def embed_text(
        self, text_encoder: Any, prompts: list[str], seed: int, *, steps: int | None = None,
        guidance: float | None = None,
    ) -> Tensor:  # fmt: skip
        """(B, D) image embeddings for ``prompts`` from the prior (sample i: seed ``seed + i``)."""
        if self.prior is None or self.prior_sampling is None:
            raise MissingStageError(
                f"{self.path}: this unCLIP model has no prior stage (model.json 'unclip.prior', {PRIOR_FILE}), "
                "so it cannot turn text into an image embedding; it can still make variations of an image "
                "('latentworks variations IMG --model ...'); train the prior with 'latentworks train-unclip "
                "--stages prior' and add it"
            )
        cond = self._prior_text(text_encoder, prompts)
        g = self.defaults["prior_guidance"] if guidance is None else guidance
        uncond = self._prior_text(text_encoder, [""] * len(prompts)) if g != 1.0 else None
        return sample_prior(
            self.prior,
            self.prior_sampling,
            cond,
            uncond,
            seeds_for(seed, len(prompts)),
            steps=int(steps or self.defaults["prior_steps"]),
            guidance=float(g),
        ).cpu()

    def _prior_text(self, text_encoder: Any, prompts: list[str]) -> Conditioning:
        """The prior's conditioning for ``prompts``: MiniLM's, plus the image encoder's text embedding when the
        prior reads it (``models.emoji_prior``)."""
        cond = text_encoder.encode(prompts)
        if self.prior is not None and self.prior.config.text_embedding:
            from latentworks.models.emoji_prior import add_text_embedding

            cond = add_text_embedding(cond.to(self.encoder.image_proj.weight.device), self.encoder)
        return cond

    def class_input(
        self, embeds: Tensor, *, noise_augmentation: float | None = None, seed: int = 0
    ) -> Tensor:
        """(N, D) embeddings -> the decoder's (N, 2D) class input, noised to ``noise_augmentation`` in [0, 1]."""
        if embeds.ndim != 2 or embeds.shape[-1] != self.dim:
            raise ValueError(
                f"{self.path}: image embeddings must be (N, {self.dim}) for this model's encoder, got "
                f"{tuple(embeds.shape)}; make them with this model's own image encoder"
            )
        level = self.defaults["noise_augmentation"] if noise_augmentation is None else noise_augmentation
        if not 0.0 <= float(level) <= 1.0:
            raise ValueError(f"noise_augmentation must be in [0, 1], got {level}")
        return image_class_input(embeds, self.augmentor, noise_augmentation=float(level), seed=seed)


def interpolate(a: Tensor, b: Tensor, fractions: list[float]) -> Tensor:
    """Unit-length embeddings along the great circle from ``a`` (1, D) to ``b`` (1, D): one row per fraction."""
    rows = [torch.nn.functional.normalize(slerp(a, b, float(t)), dim=-1) for t in fractions]
    return torch.cat(rows)


def has_own_unclip(name_or_path: str | Path) -> bool:
    """True for a latentworks model folder whose model.json has an ``unclip`` entry."""
    try:
        path = resolve_model_path(name_or_path)
        return UNCLIP_KEY in json.loads((path / "model.json").read_text())
    except (FileNotFoundError, ValueError, OSError):
        return False


def load_own_unclip(name_or_path: str | Path, device: str | torch.device = "cpu") -> OwnUnclip:
    """The image encoder and (if present) the prior of an unCLIP model folder."""
    path = resolve_model_path(name_or_path)
    meta = json.loads((path / "model.json").read_text())
    entry = meta.get(UNCLIP_KEY)
    if entry is None or "image_encoder" not in entry:
        raise MissingStageError(
            f"{path}: not one of our unCLIP models (model.json has no 'unclip.image_encoder'); train one with "
            "'latentworks train-unclip' (docs/training.md)"
        )
    enc = ImageEncoder(config_from_dict(ImageEncoderConfig, entry["image_encoder"]["config"]))
    enc.load_state_dict(load_state_dict(path / entry["image_encoder"].get("file", ENCODER_FILE)), strict=True)
    enc.to(device).eval().requires_grad_(False)
    prior, sampling = None, None
    if "prior" in entry:
        p = entry["prior"]
        prior = EmbeddingPrior(config_from_dict(EmbeddingPriorConfig, p["config"]))
        prior.load_state_dict(load_state_dict(path / p.get("file", PRIOR_FILE)), strict=True)
        prior.to(device).eval().requires_grad_(False)
        if prior.config.embed_dim != enc.dim:
            raise ValueError(
                f"{path}: the prior makes {prior.config.embed_dim}-wide embeddings but the image encoder's are "
                f"{enc.dim}-wide; the two stages come from different runs"
            )
        sampling = prior_model_sampling(p.get("sampling"))
    return OwnUnclip(path, enc, prior, sampling, {**DEFAULTS, **entry.get("defaults", {})})


def add_own_unclip_stages(
    folder: str | Path,
    encoder: ImageEncoder,
    prior: EmbeddingPrior | None = None,
    *,
    prior_sampling: dict[str, Any] | None = None,
    defaults: dict[str, Any] | None = None,
) -> Path:
    """Write the encoder (and prior) into a model folder whose U-Net is the decoder, and its model.json entry."""
    folder = Path(folder)
    meta = json.loads((folder / "model.json").read_text())
    dn = meta.get("denoiser", {}).get("config", {})
    if dn.get("pooled_dim") != 2 * encoder.dim or dn.get("num_time_ids") != 0:
        raise ValueError(
            f"{folder}: its U-Net is not a decoder for {encoder.dim}-wide image embeddings (pooled_dim="
            f"{dn.get('pooled_dim')}, num_time_ids={dn.get('num_time_ids')}; expected {2 * encoder.dim} and 0)"
        )

    def tensors(m: torch.nn.Module) -> dict[str, Tensor]:
        return {k: v.detach().cpu().float().contiguous() for k, v in m.state_dict().items()}

    save_file_atomic(tensors(encoder), folder / ENCODER_FILE)
    entry: dict[str, Any] = {
        "image_encoder": {"file": ENCODER_FILE, "config": config_to_dict(encoder.config)},
        "defaults": {**DEFAULTS, **(defaults or {})},
    }
    if prior is not None:
        save_file_atomic(tensors(prior), folder / PRIOR_FILE)
        entry["prior"] = {
            "file": PRIOR_FILE,
            "config": config_to_dict(prior.config),
            "prediction": "flow",
            "sampling": prior_sampling or {"kind": "flow", "shift": 1.0},
        }
    meta[UNCLIP_KEY] = entry
    tmp = folder / "model.json.tmp"
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    tmp.replace(folder / "model.json")
    return folder


def decode_embeddings(
    pipe: Any,
    parts: OwnUnclip,
    embeds: Tensor,
    prompt: str,
    *,
    seed: int,
    same_seed: bool = False,
    noise_augmentation: float | None = None,
    **kw: Any,
) -> list[Any]:
    """Images (PIL) from image embeddings (N, D) with the decoder ``pipe`` (``Pipeline`` of the folder) and the
    text ``prompt``: image i uses seed ``seed + i``, or ``seed`` for all with ``same_seed`` (an interpolation,
    where only the embedding should change). ``kw`` goes to the pipeline (steps, guidance, width, height)."""
    n = embeds.shape[0]
    if same_seed:
        images = []
        for i in range(n):
            ci = parts.class_input(embeds[i : i + 1], noise_augmentation=noise_augmentation, seed=seed)
            images += pipe(prompt, seed=seed, batch=1, class_input=ci, **kw).images
        return images
    rows = [
        parts.class_input(embeds[i : i + 1], noise_augmentation=noise_augmentation, seed=seed + i)
        for i in range(n)
    ]
    return list(pipe(prompt, seed=seed, batch=n, class_input=torch.cat(rows), **kw).images)


@dataclass
class UnclipTextToImage:
    """Text -> prior -> embedding -> decoder behind the ``Pipeline`` call signature
    (``pipe(prompts, seed=, batch=, steps=, guidance=, ...)``), so code that drives a pipeline (e.g.
    ``evaluation.generation.evaluate_generation``) evaluates the whole unCLIP. Image i (prompt-major, as the
    pipeline orders them) gets prior seed and embedding-noise seed ``seed + i``; the decoder reads the prompt too
    (``decoder_text=False``: the empty prompt)."""

    pipe: Any
    parts: OwnUnclip
    noise_augmentation: float | None = None
    prior_steps: int | None = None
    prior_guidance: float | None = None
    decoder_text: bool = True

    def __call__(self, prompt: str | list[str], *, seed: int = 0, batch: int = 1, **kw: Any) -> Any:
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        texts = [p for p in prompts for _ in range(batch)]
        embeds = self.parts.embed_text(
            self.pipe.text_encoder, texts, seed, steps=self.prior_steps, guidance=self.prior_guidance
        )
        rows = [
            self.parts.class_input(embeds[i : i + 1], noise_augmentation=self.noise_augmentation, seed=s)
            for i, s in enumerate(seeds_for(seed, len(texts)))
        ]
        shown = prompts if self.decoder_text else [""] * len(prompts)
        return self.pipe(shown, seed=seed, batch=batch, class_input=torch.cat(rows), **kw)
