"""Training our own unCLIP on the emoji data (issue 26): image encoder, prior, decoder.

1. **Image encoder** (:func:`train_image_encoder`): ``models.image_encoder.ImageEncoder`` trained with CLIP's
   symmetric InfoNCE against the frozen text encoder's pooled caption embeddings, with the project's caption
   augmentation (``data.captions``: the label alone, shuffled tags, with or without the style, any case) so the
   forms people type map near their image. AdamW; a small loop of its own (contrastive, not diffusion), with the
   batch order and caption draws of the diffusion loop (``training.common``). At the end the training images'
   embedding statistics go into the encoder's ``embed_mean`` / ``embed_std`` buffers.
2. **Prior** (:func:`train_prior`): ``models.emoji_prior.EmbeddingPrior`` on the one diffusion loop
   (``training.diffusion.run_steps``): the "latents" are the training images' embeddings times ``sqrt(D)``
   (:class:`EmbeddingData`), the objective is rectified flow, captions are augmented and dropped (10%: the empty
   caption) for classifier-free guidance, EMA weights are what is saved.
3. **Decoder** (``latentworks train --task unclip``, ``training.diffusion``): the text-to-image U-Net given
   ``--init-from`` with a zero-initialised image-embedding path (``models.own_unclip``); each step adds the
   noise-augmented embedding of each training image (:class:`ImageEmbeddingConditioning`), dropped to "no image"
   with probability ``image_dropout`` so text-only generation keeps working.

Run folders::

    encoder/  config.json {"kind": "image-encoder", "model": {...}, "train": {...}}, image_encoder.safetensors,
              log.jsonl, loss.png
    prior/    config.json {"kind": "embedding-prior", ...}, prior.safetensors (EMA), log.jsonl, loss.png
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from latentworks.checkpoints.io import load_state_dict, save_file_atomic
from latentworks.data.arrays import ArrayDataset, images_to_tensor
from latentworks.data.captions import CaptionAugment, CaptionParts, caption_parts
from latentworks.diffusion.conditioning import Conditioning
from latentworks.diffusion.objective import DiffusionObjective
from latentworks.models.configs import config_from_dict
from latentworks.models.emoji_prior import EmbeddingPrior, EmbeddingPriorConfig
from latentworks.models.image_encoder import ImageEncoder, ImageEncoderConfig, contrastive_loss
from latentworks.models.unclip import ImageEmbeddingAugmentor
from latentworks.models.unet import CLASS_INPUT_KEY
from latentworks.training.common import RunLog, batch_indices, step_generator, to_jsonable, write_json
from latentworks.training.ema import EMA

CAPTION_STREAM = 1 << 20  # the caption generator's own stream, as training.diffusion draws it
ENCODER_KIND, PRIOR_KIND = "image-encoder", "embedding-prior"


class PooledCaptions:
    """Text conditioning per caption, memoised; unknown captions of a call are encoded together in one batch
    (fast on a CPU, where one call per caption is not). Unlike ``training.diffusion``'s one-by-one memo, the
    numbers may then depend on a caption's batch neighbours (~1e-6), so these stages do not promise a bit-exact
    resume (they have no --resume)."""

    def __init__(self, encoder: Any, device: torch.device, max_items: int = 50_000) -> None:
        self.encoder, self.device, self.max_items = encoder, device, max_items
        self.memo: dict[str, Conditioning] = {}

    def __call__(self, captions: list[str]) -> Conditioning:
        new = list(dict.fromkeys(c for c in captions if c not in self.memo))
        fresh: dict[str, Conditioning] = {}
        if new:
            cond = self.encoder.encode(new).map(lambda t: t.cpu())
            for i, c in enumerate(new):
                fresh[c] = cond.map(lambda t, i=i: t[i : i + 1])
                if len(self.memo) < self.max_items:
                    self.memo[c] = fresh[c]
        return Conditioning.cat([self.memo.get(c) or fresh[c] for c in captions]).to(self.device)


def load_split(path: str | Path, split: str = "train") -> ArrayDataset:
    """The ``split`` of a dataset file from ``latentworks data emoji`` (or an image folder)."""
    from latentworks.data.folder import load_dataset

    ds = load_dataset(path, split=split)
    if len(ds) == 0:
        raise ValueError(f"{path}: the {split!r} split holds no images")
    return ds


def _augmenter(parts: list[CaptionParts] | None, mode: str, where: Path) -> CaptionAugment | None:
    if mode == "off" or (mode == "auto" and parts is None):
        return None
    if parts is None:
        raise ValueError(
            f"{where}: caption augmentation 'on' needs the captions' parts (label, tags, style); rebuild the "
            "dataset with 'latentworks data emoji' or pass caption_augment='off'"
        )
    return CaptionAugment()


@torch.no_grad()
def embed_dataset(encoder: ImageEncoder, images: Tensor, batch_size: int = 256) -> Tensor:
    """Unit-length embeddings (N, D) float32 of images (N, 3, S, S) in [-1, 1]."""
    was = encoder.training
    encoder.eval()
    dev = encoder.image_proj.weight.device
    out = torch.cat([encoder.encode_image(images[i : i + batch_size].to(dev)).float().cpu()
                     for i in range(0, len(images), batch_size)])  # fmt: skip
    encoder.train(was)
    return out


# -- 1. the image encoder ---------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class EncoderTrainConfig:
    data: Path  # a dataset file ('latentworks data emoji'); its train split
    out: Path
    model: ImageEncoderConfig = field(default_factory=ImageEncoderConfig)
    steps: int = 600
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.01
    caption_augment: str = "auto"  # "auto" | "on" | "off"
    seed: int = 0
    log_every: int = 10
    device: str = "cpu"
    progress: bool = True
    max_seconds: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "data", Path(self.data))
        object.__setattr__(self, "out", Path(self.out))
        if self.steps < 1 or self.batch_size < 2 or self.log_every < 1:
            raise ValueError(
                f"encoder training needs steps >= 1, batch_size >= 2 (a contrastive batch) and log_every >= 1, "
                f"got {self.steps}, {self.batch_size}, {self.log_every}"
            )
        if self.caption_augment not in ("auto", "on", "off"):
            raise ValueError(f"caption_augment must be auto, on or off, got {self.caption_augment!r}")


@dataclass
class StageResult:
    step: int
    losses: list[float]
    run_dir: Path
    seconds_per_step: float


def train_image_encoder(cfg: EncoderTrainConfig, text_encoder: Any = None) -> StageResult:
    """Train the contrastive image encoder (module docstring, 1.); ``text_encoder`` defaults to MiniLM."""
    device = torch.device(cfg.device)
    if text_encoder is None:
        from latentworks.models.text.minilm import MiniLMTextEncoder

        text_encoder = MiniLMTextEncoder(device=device)
    if text_encoder.dim != cfg.model.text_dim:
        raise ValueError(
            f"the image encoder's text_dim is {cfg.model.text_dim} but the text encoder gives {text_encoder.dim}"
        )
    ds = load_split(cfg.data)
    if ds.resolution != cfg.model.image_size:
        raise ValueError(
            f"{cfg.data}: {ds.resolution} px images; the image encoder config takes {cfg.model.image_size} px"
        )
    images = images_to_tensor(ds.images)
    parts = caption_parts(ds.extra, len(ds))
    augment = _augmenter(parts, cfg.caption_augment, cfg.data)
    torch.manual_seed(cfg.seed)
    enc = ImageEncoder(cfg.model).to(device)
    opt = torch.optim.AdamW(enc.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    captions = PooledCaptions(text_encoder, device)
    cfg.out.mkdir(parents=True, exist_ok=True)
    log = RunLog(cfg.out)
    bar = None
    if cfg.progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, desc="train image encoder", unit="step", dynamic_ncols=True)
    losses: list[float] = []
    t0, step = time.perf_counter(), 0
    while step < cfg.steps:
        idx = batch_indices(step, len(ds), cfg.batch_size, cfg.seed)
        caps = [ds.captions[int(i)] for i in idx]
        if augment is not None and parts is not None:
            gen = step_generator(cfg.seed, step, CAPTION_STREAM)
            caps = [augment(parts[int(i)], gen) for i in idx]
        pooled = captions(caps).pooled
        assert pooled is not None, "the text encoder gives no pooled vector"
        loss = contrastive_loss(
            enc.encode_image(images[idx].to(device)), enc.encode_text(pooled), enc.logit_scale
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        losses.append(float(loss.detach()))
        if step % cfg.log_every == 0 or step == cfg.steps:
            log.log(step, loss=losses[-1])
            if bar is not None:
                bar.set_postfix(loss=f"{losses[-1]:.4f}")
        if bar is not None:
            bar.update(1)
        if cfg.max_seconds is not None and time.perf_counter() - t0 > cfg.max_seconds:
            break
    if bar is not None:
        bar.close()
    per_step = (time.perf_counter() - t0) / max(1, step)
    embeds = embed_dataset(enc, images)
    enc.embed_mean.copy_(embeds.mean(0))
    enc.embed_std.copy_(embeds.std(0).clamp_min(1e-4))
    save_encoder(enc, cfg.out, train=to_jsonable(cfg), step=step)
    log.plot("image encoder: contrastive loss")
    return StageResult(step, losses, cfg.out, per_step)


def save_encoder(enc: ImageEncoder, run: Path, *, train: Any = None, step: int = 0) -> None:
    run.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().float().contiguous() for k, v in enc.state_dict().items()}
    save_file_atomic(tensors, run / "image_encoder.safetensors", {"step": str(step), "kind": ENCODER_KIND})
    write_json(run / "config.json", {"kind": ENCODER_KIND, "model": to_jsonable(enc.config), "train": train})


def load_encoder_run(run: str | Path, device: str | torch.device = "cpu") -> ImageEncoder:
    """The image encoder of an encoder run folder (config.json + image_encoder.safetensors)."""
    import json

    run = Path(run)
    try:
        meta = json.loads((run / "config.json").read_text())
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{run}: no image encoder run here (config.json missing); train one with "
            "'latentworks train-unclip --stages encoder'"
        ) from None
    if meta.get("kind") != ENCODER_KIND:
        raise ValueError(f"{run}: config.json is a {meta.get('kind')!r} run, not an image encoder run")
    enc = ImageEncoder(config_from_dict(ImageEncoderConfig, meta["model"]))
    enc.load_state_dict(load_state_dict(run / "image_encoder.safetensors"), strict=True)
    return enc.to(device).eval().requires_grad_(False)


# -- 2. the prior -----------------------------------------------------------------------------------------


@dataclass
class EmbeddingData:
    """The prior's training examples, with a latent cache's interface for ``run_steps``: ``sample(idx)`` gives
    the image embeddings (B, D) times ``sqrt(D)``; ``captions`` / ``parts`` the captions."""

    embeds: Tensor  # (N, D) unit-length
    captions: list[str]
    scale: float
    parts: list[CaptionParts] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.captions)

    def sample(self, idx: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return self.embeds[idx] * self.scale


@dataclass(frozen=True, kw_only=True)
class PriorTrainConfig:
    """The prior's run; the loop fields are those ``run_steps`` reads."""

    data: Path
    encoder_run: Path
    out: Path
    model: EmbeddingPriorConfig | None = None  # default: EmbeddingPriorConfig(embed_dim=the encoder's)
    # the default model also reads the encoder's text embedding (models.emoji_prior); a given model decides itself
    text_embedding: bool = True
    steps: int = 2000
    batch_size: int = 128
    lr: float = 3e-4
    weight_decay: float = 0.01
    ema_decay: float = 0.999
    caption_dropout: float = 0.1
    caption_augment: str = "auto"
    grad_clip: float = 1.0
    mixed_precision: str = "no"
    seed: int = 0
    log_every: int = 10
    sample_every: int = 10**9  # no preview grid: an embedding is not a picture
    checkpoint_every: int = 500
    max_seconds: float | None = None
    device: str = "cpu"
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("data", "encoder_run", "out"):
            object.__setattr__(self, name, Path(getattr(self, name)))
        if not 0 <= self.caption_dropout < 1:
            raise ValueError(f"caption_dropout must be in [0, 1), got {self.caption_dropout}")
        for name in ("steps", "batch_size", "log_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"PriorTrainConfig.{name} must be >= 1, got {getattr(self, name)}")

    @property
    def latents(self) -> Path:  # what training.diffusion's caption augmentation names in its messages
        return self.data


def train_prior(cfg: PriorTrainConfig, text_encoder: Any = None) -> StageResult:
    """Train the diffusion prior on the one loop (module docstring, 2.)."""
    from latentworks.training.diffusion import StepLoop, _caption_augment, run_steps
    from latentworks.training.distributed import DistInfo

    device = torch.device(cfg.device)
    if text_encoder is None:
        from latentworks.models.text.minilm import MiniLMTextEncoder

        text_encoder = MiniLMTextEncoder(device=device)
    enc = load_encoder_run(cfg.encoder_run, device)
    mcfg = cfg.model or EmbeddingPriorConfig(
        embed_dim=enc.dim, text_dim=text_encoder.dim, text_embedding=cfg.text_embedding
    )
    if mcfg.embed_dim != enc.dim or mcfg.text_dim != text_encoder.dim:
        raise ValueError(
            f"prior config embed_dim={mcfg.embed_dim}, text_dim={mcfg.text_dim}; the image encoder gives "
            f"{enc.dim} and the text encoder {text_encoder.dim}"
        )
    ds = load_split(cfg.data)
    data = EmbeddingData(
        embed_dataset(enc, images_to_tensor(ds.images)),
        list(ds.captions),
        mcfg.embed_scale,
        caption_parts(ds.extra, len(ds)),
        {"dataset": str(cfg.data), "encoder_run": str(cfg.encoder_run)},
    )
    torch.manual_seed(cfg.seed)
    prior = EmbeddingPrior(mcfg).to(device)
    ema = EMA(prior, cfg.ema_decay)
    opt = torch.optim.AdamW(prior.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    objective = DiffusionObjective("flow")
    run = cfg.out
    run.mkdir(parents=True, exist_ok=True)
    run_config = {
        "kind": PRIOR_KIND,
        "model": to_jsonable(mcfg),
        "prediction": "flow",
        "sampling": objective.sampling.to_dict(),
        "encoder_run": str(cfg.encoder_run),
        "train": to_jsonable(cfg),
    }
    write_json(run / "config.json", run_config)

    def save(step: int) -> None:
        save_file_atomic(ema.state_dict(), run / "prior.safetensors", {"step": str(step), "kind": PRIOR_KIND})

    loop = StepLoop(
        cfg=cfg,
        info=DistInfo(),
        device=device,
        cache=data,
        encode=_prior_conditioning(PooledCaptions(text_encoder, device), enc, mcfg.text_embedding),
        augment=_caption_augment(cfg, data),  # type: ignore[arg-type]
        objective=objective,
        model=prior,
        net=prior,
        trainable=list(prior.parameters()),
        opt=opt,
        scaler=torch.amp.GradScaler(device.type, enabled=False),
        save=save,
        ema=ema,
        log=RunLog(run),
        title="prior (flow) loss",
    )
    t0 = time.perf_counter()
    step, losses = run_steps(loop, 0)
    return StageResult(step, losses, run, (time.perf_counter() - t0) / max(1, step))


def _prior_conditioning(encode: PooledCaptions, encoder: Any, text_embedding: bool) -> Any:
    """The prior's caption -> Conditioning: MiniLM's, plus the image encoder's text embedding when the prior
    reads it (``models.emoji_prior.add_text_embedding``)."""
    if not text_embedding:
        return encode
    from latentworks.models.emoji_prior import add_text_embedding

    return lambda captions: add_text_embedding(encode(captions), encoder)


def load_prior_run(
    run: str | Path, device: str | torch.device = "cpu"
) -> tuple[EmbeddingPrior, dict[str, Any]]:
    """The EMA prior of a prior run folder and its config.json."""
    import json

    run = Path(run)
    meta = json.loads((run / "config.json").read_text())
    if meta.get("kind") != PRIOR_KIND:
        raise ValueError(f"{run}: config.json is a {meta.get('kind')!r} run, not a prior run")
    prior = EmbeddingPrior(config_from_dict(EmbeddingPriorConfig, meta["model"]))
    prior.load_state_dict(load_state_dict(run / "prior.safetensors"), strict=True)
    return prior.to(device).eval().requires_grad_(False), meta


# -- 3. the decoder's conditioning ------------------------------------------------------------------------


@dataclass
class ImageEmbeddingConditioning:
    """Adds each training image's noise-augmented embedding to the decoder's conditioning (``StepLoop.condition``).

    ``embeds[i]`` (N, D) is the embedding of latent-cache row i (the dataset's train split, which the cache
    encodes in order). Per sample: with probability ``dropout`` no image (the key is left out: zeros, as at
    sampling without an image); else a noise level uniform in ``{0 .. round(999 * max_level)}`` (SD 2.1 unCLIP's
    noise augmentation, ``models.unclip``). Drawn from the step's generator after the objective's draws.
    """

    embeds: Tensor
    augmentor: ImageEmbeddingAugmentor
    max_level: float = 0.5
    dropout: float = 0.1

    def condition(self, cond: Conditioning, idx: Tensor, generator: torch.Generator) -> Conditioning:
        b = len(idx)
        keep = torch.rand(b, generator=generator) >= self.dropout
        top = round(999 * self.max_level)
        levels = torch.randint(0, top + 1, (b,), generator=generator)
        noise = torch.randn((b, self.augmentor.dim), generator=generator)
        rows = [
            self.augmentor(self.embeds[int(i)][None], int(lv), n[None]) if k else None
            for i, lv, n, k in zip(idx, levels, noise, keep)
        ]
        if not any(r is not None for r in rows):
            return cond
        zero = torch.zeros(1, 2 * self.augmentor.dim)
        x = torch.cat([zero if r is None else r for r in rows]).to(cond.tokens.device)
        return cond.with_extra(**{CLASS_INPUT_KEY: x})


def decoder_conditioning(
    encoder_run: str | Path, data: str | Path, captions: list[str], *, max_level: float, dropout: float
) -> ImageEmbeddingConditioning:
    """The decoder's per-step conditioning from an encoder run and the dataset the latent cache was built from
    (its train split; the captions must be the cache's, in order)."""
    enc = load_encoder_run(encoder_run)
    ds = load_split(data)
    if list(ds.captions) != list(captions):
        raise ValueError(
            f"--image-data {data}: its train split is not the data of the latent cache ({len(ds)} vs "
            f"{len(captions)} captions, or in another order); pass the dataset file the cache was built from"
        )
    if ds.resolution != enc.config.image_size:
        raise ValueError(
            f"{data}: {ds.resolution} px images; the image encoder takes {enc.config.image_size} px"
        )
    embeds = embed_dataset(enc, images_to_tensor(ds.images))
    if not 0 <= dropout < 1:
        raise ValueError(f"image_dropout must be in [0, 1), got {dropout}")
    return ImageEmbeddingConditioning(
        embeds, ImageEmbeddingAugmentor(enc.embed_mean, enc.embed_std), max_level, dropout
    )


def embedding_width(encoder_run: str | Path) -> int:
    return load_encoder_run(encoder_run).dim
