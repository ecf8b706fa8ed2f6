"""LoRA training: a frozen denoiser with trainable low-rank adapters, trained by the diffusion loop.

Each adapted layer ``W`` (a Linear, or a Conv2d) gains ``scale * up(down(x))`` on its output, with
``scale = alpha / rank`` (Hu et al. 2021, eq. 3; kohya's ``alpha``). ``down`` starts as torch's default
Linear/Conv init, ``up`` at zero, so step 0 is the base model. The base weights never change; the adapters
sit in forward hooks, so the base keeps its own module names and the update can be folded into the weights
later (``checkpoints.lora``: ``W' = W + strength * scale * up @ down``).

Which layers (as kohya's sd-scripts ``networks/lora.py`` does for U-Nets):

- U-Nets (our default model, SD 1.x/2.x, SDXL): every Linear and 1x1 Conv2d inside the spatial transformers
  (``proj_in``, attention ``q/k/v/out``, feed-forward, ``proj_out``); with ``conv_rank > 0`` also the 3x3
  convs of the ResNet blocks and the down/upsamplers (kohya's LoCon, ``conv_dim``/``conv_alpha``).
- DiTs (our DiT, SD3 MM-DiT, FLUX, Z-Image, Qwen-Image): every Linear inside the transformer's repeated
  blocks (its ``nn.ModuleList`` s), not the embedders or the final layer.

The file (:func:`lora_state_dict`) is in the kohya/ComfyUI layout: ``lora_unet_<module>.lora_down.weight``
(rank, in[, kh, kw]), ``.lora_up.weight`` (out, rank[, 1, 1]) and ``.alpha`` (a scalar), where ``<module>`` is
the layer's name, dots replaced by underscores, in the layout ComfyUI and kohya use for the family
(:func:`file_module_names`): diffusers names for SD 1.x/2.x and our default model (kohya SD1/2 LoRAs),
LDM names for SDXL (kohya's SDXL U-Net), BFL names for FLUX, SAI names for SD3, the released single file's
names for Z-Image (ComfyUI's), diffusers names for Qwen-Image (ComfyUI's too; our fused q/k/v becomes three
modules, :class:`FileModule`), our own names otherwise.

Training takes what each family needs from the model's data: its prediction and noise schedule, with a flow
model's time shift folded into the noise-level draw (:func:`training_logit_shift`), its text encoders, its
latent format, SDXL's size ids per image (:func:`image_geometry`) and FLUX's guidance input.

Run folder (``cfg.out``)::

    config.json                   {"kind": "lora", "base": ..., "family": ..., "prediction": ..., "sampling": ...,
                                   "lora": {"rank", "alpha", "conv_rank", "conv_alpha", "modules"}, "train": {...}}
    latents.safetensors           the data encoded by the base model's VAE (reused by --resume)
    lora.safetensors              the LoRA (what ``generate --lora`` and ComfyUI's LoraLoader read)
    checkpoints/last.safetensors  adapters + optimizer, for --resume
    samples/step_XXXXXXX.png, loss.png, log.jsonl
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from latentworks.checkpoints.io import save_file_atomic
from latentworks.diffusion.conditioning import Conditioning
from latentworks.diffusion.denoisers import FlowModelSampling, sampling_spec_from_dict
from latentworks.diffusion.objective import TRAINED_PREDICTIONS, DiffusionObjective
from latentworks.training.checkpoint import (
    grad_scaler_meta,
    load_grad_scaler,
    load_training_state,
    save_training_state,
)
from latentworks.training.common import RunLog, to_jsonable, write_json
from latentworks.training.distributed import cleanup, init_distributed, wrap_ddp
from latentworks.training.resume import LORA_RESUME, check_resume, read_run_config

FILE_PREFIX = "lora_unet_"  # kohya's prefix for denoiser layers (ComfyUI reads it for every family)


# ------------------------------------------------------------------------------------------- adapters


class LoraAdapter(nn.Module):
    """``scale * up(down(x))`` for one layer: ``down`` (rank, in[, kh, kw]) with the layer's stride and padding,
    ``up`` (out, rank[, 1, 1]) initialised to zero."""

    def __init__(self, layer: nn.Module, rank: int, alpha: float) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        self.rank, self.alpha, self.scale = rank, float(alpha), float(alpha) / rank
        self.down: nn.Linear | nn.Conv2d
        self.up: nn.Linear | nn.Conv2d
        if isinstance(layer, nn.Linear):
            self.down = nn.Linear(layer.in_features, rank, bias=False)
            self.up = nn.Linear(rank, layer.out_features, bias=False)
        elif isinstance(layer, nn.Conv2d):
            if layer.groups != 1:
                raise ValueError("LoRA on grouped convolutions is not supported")
            self.down = nn.Conv2d(
                layer.in_channels,
                rank,
                layer.kernel_size,  # type: ignore[arg-type]
                stride=layer.stride,  # type: ignore[arg-type]
                padding=layer.padding,  # type: ignore[arg-type]
                dilation=layer.dilation,  # type: ignore[arg-type]
                bias=False,
            )
            self.up = nn.Conv2d(rank, layer.out_channels, 1, bias=False)
        else:
            raise TypeError(f"LoRA adapts Linear and Conv2d layers, not {type(layer).__name__}")
        nn.init.zeros_(self.up.weight)

    def forward(self, x: Tensor) -> Tensor:
        return self.up(self.down(x)) * self.scale

    def delta(self) -> Tensor:
        """``scale * up @ down`` shaped like the adapted layer's weight (float32)."""
        down, up = self.down.weight.float(), self.up.weight.float()
        d = up.flatten(1) @ down.flatten(1)
        return (self.scale * d).reshape(up.shape[0], *down.shape[1:])


class LoraNetwork(nn.Module):
    """A frozen ``base`` network with :class:`LoraAdapter` s on the layers named in ``ranks``
    (``{our module name: (rank, alpha)}``). Calls go to ``base``; the adapters add their outputs through
    forward hooks, so ``base`` keeps its module names. ``adapters`` holds the only trainable parameters
    (keys: module names with ``.`` -> ``/``, since ModuleDict keys cannot hold dots)."""

    def __init__(self, base: nn.Module, ranks: Mapping[str, tuple[int, float]]) -> None:
        super().__init__()
        self.base = base.requires_grad_(False)
        layers = dict(base.named_modules())
        missing = [n for n in ranks if n not in layers]
        if missing:
            raise ValueError(f"LoRA targets not in the model: {missing[:5]}")
        self.adapters = nn.ModuleDict(
            {_key(n): LoraAdapter(layers[n], r, a) for n, (r, a) in ranks.items()}
        ).to(next(base.parameters()).device)
        self._hooks = [layers[n].register_forward_hook(self._hook(_key(n))) for n in ranks]

    def _hook(self, key: str) -> Callable[..., Tensor]:
        def hook(module: nn.Module, args: tuple[Tensor, ...], out: Tensor) -> Tensor:
            adapter = self.adapters[key]
            assert isinstance(adapter, LoraAdapter)
            return out + adapter(args[0].to(adapter.down.weight.dtype)).to(out.dtype)

        return hook

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.base(*args, **kwargs)

    def named_adapters(self) -> list[tuple[str, LoraAdapter]]:
        """``(our module name, adapter)`` pairs."""
        return [(_name(k), a) for k, a in self.adapters.items()]  # type: ignore[misc]

    def remove(self) -> None:
        """Detach the hooks: ``base`` computes as it did before."""
        for h in self._hooks:
            h.remove()
        self._hooks = []


def _key(name: str) -> str:
    return name.replace(".", "/")


def _name(key: str) -> str:
    return key.replace("/", ".")


# ---------------------------------------------------------------------------------------- which layers


def lora_targets(
    net: nn.Module, *, rank: int, alpha: float, conv_rank: int = 0, conv_alpha: float = 1.0
) -> dict[str, tuple[int, float]]:
    """``{our module name: (rank, alpha)}`` of the layers to adapt in ``net`` (see the module docstring)."""
    from latentworks.models.unet import UNet

    out: dict[str, tuple[int, float]] = {}
    in_blocks = _in_block_lists(net)
    for name, m in net.named_modules():
        if isinstance(net, UNet):
            in_transformer = ".transformers." in f".{name}" or name.startswith("mid.transformer.")
            if in_transformer and isinstance(m, nn.Linear):
                out[name] = (rank, alpha)
            elif in_transformer and isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1):
                out[name] = (rank, alpha)  # SD 1.x proj_in/proj_out
            elif conv_rank > 0 and isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1):
                if name not in ("conv_in", "conv_out"):  # ResNet blocks, down/upsamplers (kohya LoCon)
                    out[name] = (conv_rank, conv_alpha)
        elif isinstance(m, nn.Linear) and name in in_blocks:
            out[name] = (rank, alpha)
    if not out:
        raise ValueError(f"{type(net).__name__}: found no layers to put a LoRA on")
    return out


def _in_block_lists(net: nn.Module) -> set[str]:
    """Names of the modules inside ``net``'s ``nn.ModuleList`` s: a transformer's repeated blocks (DiT/SD3
    ``blocks``, FLUX ``double_blocks``/``single_blocks``, Z-Image ``layers`` and its refiners, Qwen-Image
    ``blocks``), as opposed to its embedders and final layer."""
    out: set[str] = set()
    for name, m in net.named_modules():
        if isinstance(m, nn.ModuleList):
            out.update(f"{name}.{sub}" for sub, _ in m.named_modules() if sub)
    return out


@dataclass(frozen=True)
class FileModule:
    """Where one of our adapted layers goes in the file: the file's module name (dotted, without the
    ``lora_unet_`` prefix) and, when the file's layout splits our layer into several (our fused q/k/v as
    diffusers' ``to_q``/``to_k``/``to_v``), the rows ``[start, stop)`` of our layer's output it holds. A LoRA
    on a fused layer splits exactly: the slice's update is ``up[start:stop] @ down``."""

    name: str
    rows: tuple[int, int] | None = None


def _from_module_map(module_map: Mapping[str, str]) -> dict[str, tuple[FileModule, ...]]:
    return {ours: (FileModule(theirs),) for ours, theirs in module_map.items()}


def _from_rules(rules: Iterable[Any]) -> dict[str, tuple[FileModule, ...]]:
    """``{our module: file modules}`` from a key map's rules (``KeyRule``): a ``copy`` rule names one module, a
    ``cat`` rule the row slices of ours; ``swap`` rules (halves exchanged, only outside the blocks) are left
    out, so those layers get no LoRA."""
    out: dict[str, tuple[FileModule, ...]] = {}
    for rule in rules:
        if not rule.ours.endswith(".weight"):
            continue
        ours = rule.ours[: -len(".weight")]
        if rule.op == "copy":
            out[ours] = (FileModule(rule.theirs[0][: -len(".weight")]),)
        elif rule.op == "cat":
            start, mods = 0, []
            for theirs, size in zip(rule.theirs, rule.split, strict=True):
                mods.append(FileModule(theirs[: -len(".weight")], (start, start + size)))
                start += size
            out[ours] = tuple(mods)
    return out


def file_module_names(net: nn.Module, family: str) -> dict[str, tuple[FileModule, ...]]:
    """``{our module name: where it goes in the file}`` in the layout kohya and ComfyUI use for ``family`` (a
    registered family name; see the module docstring). Layers missing from the map get no LoRA."""
    from latentworks.models.flux import Flux
    from latentworks.models.mmdit import MMDiT
    from latentworks.models.qwenimage import QwenImage
    from latentworks.models.unet import UNet
    from latentworks.models.zimage import ZImage

    if isinstance(net, UNet):
        # SDXL's U-Nets (the families with size conditioning) are named as in the original checkpoints, the
        # SD 1.x/2.x ones (and ours) as in diffusers: what kohya writes for each
        from latentworks.families import get as get_family

        try:
            size_conditioned = bool(get_family(family).generation.size_conditioning)
        except (KeyError, ValueError):
            size_conditioned = False
        if size_conditioned:
            from latentworks.checkpoints.keymaps.sd_ldm import unet_ldm_module_map

            return _from_module_map(unet_ldm_module_map(net.config))
        from latentworks.checkpoints.keymaps.sd_diffusers import unet_module_map

        return _from_module_map(unet_module_map(net.config))
    if isinstance(net, Flux):
        from latentworks.checkpoints.keymaps.flux_bfl import flux_bfl_module_map

        return _from_module_map(flux_bfl_module_map(net.config))
    if isinstance(net, MMDiT):
        from latentworks.checkpoints.keymaps.sd3_sai import mmdit_sai_module_map

        return _from_module_map(mmdit_sai_module_map(net.config))
    if isinstance(net, ZImage):  # the released single file's names, which ComfyUI's Lumina 2 model uses
        from latentworks.checkpoints.keymaps.zimage_comfy import zimage_comfy_rules

        return _from_rules(zimage_comfy_rules(net.config))
    if isinstance(net, QwenImage):  # diffusers names, which ComfyUI's Qwen-Image model uses
        from latentworks.checkpoints.keymaps.qwenimage_diffusers import qwenimage_diffusers_rules

        return _from_rules(qwenimage_diffusers_rules(net.config))
    return {n: (FileModule(n),) for n, _ in net.named_modules() if n}


def lora_state_dict(
    lora: LoraNetwork, names: Mapping[str, tuple[FileModule, ...]], dtype: torch.dtype = torch.float16
) -> dict[str, Tensor]:
    """The adapters as kohya/ComfyUI tensors: ``lora_unet_<file module, dots as _>.lora_down.weight`` /
    ``.lora_up.weight`` / ``.alpha`` (a 0-d tensor), in ``dtype``. ``names`` maps our module names to the
    file's (:func:`file_module_names`); a 1x1 conv keeps its 4-d shape, as kohya writes it. A layer the file
    splits (fused q/k/v) is written as one module per slice: the same ``down``, its rows of ``up``."""
    sd: dict[str, Tensor] = {}
    for ours, adapter in lora.named_adapters():
        if ours not in names:
            raise ValueError(f"no file name for LoRA module {ours!r}")
        down, up = adapter.down.weight.detach(), adapter.up.weight.detach()
        for mod in names[ours]:
            key = FILE_PREFIX + mod.name.replace(".", "_")
            rows = up if mod.rows is None else up[mod.rows[0] : mod.rows[1]]
            sd[f"{key}.lora_down.weight"] = down.to("cpu", dtype).contiguous()
            sd[f"{key}.lora_up.weight"] = rows.to("cpu", dtype).contiguous()
            sd[f"{key}.alpha"] = torch.tensor(adapter.alpha, dtype=dtype)
    return sd


# ------------------------------------------------------------------------------------------- training

SAVE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True, kw_only=True)
class LoraTrainConfig:
    """``latentworks train-lora``: a LoRA for ``base`` on the images of ``data``."""

    data: Path  # an image folder with same-name .txt captions, or a .npz from 'latentworks data emoji'
    out: Path
    base: str = "default"  # a model folder, 'default', a checkpoint file or a diffusers folder
    vae: Path | None = None  # for checkpoints without a VAE (FLUX transformer files)
    text_encoders: tuple[Path, ...] = ()  # CLIP/T5/Qwen files for checkpoints without them
    tokenizer: Path | None = None  # T5's tokenizer.json (SD3, FLUX), which cannot be downloaded here
    resolution: int | None = None  # image size (square); None: the base model's resolution
    rank: int = 8
    alpha: float = 8.0
    conv_rank: int = 0  # > 0: also LoCon on the U-Net's 3x3 convs
    conv_alpha: float = 1.0
    steps: int = 1000
    batch_size: int = 8
    lr: float = 1e-4
    weight_decay: float = 0.0
    caption_dropout: float = 0.0
    grad_clip: float = 1.0
    mixed_precision: str = "no"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    guidance: float = 3.5  # FLUX-dev's distilled-guidance input while training (other families ignore it)
    save_precision: str = "fp16"
    seed: int = 0
    log_every: int = 10
    sample_every: int = 500
    checkpoint_every: int = 500
    sample_prompts: tuple[str, ...] = ()  # () = the first four distinct captions of the data
    sample_steps: int = 20
    resume: bool = False
    device: str = "cpu"
    progress: bool = True
    max_seconds: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "data", Path(self.data))
        object.__setattr__(self, "out", Path(self.out))
        if self.rank < 1:
            raise ValueError(f"rank must be >= 1, got {self.rank}")
        if self.conv_rank < 0:
            raise ValueError(f"conv_rank must be >= 0 (0 = no conv LoRA), got {self.conv_rank}")
        if self.alpha <= 0 or self.conv_alpha <= 0:
            raise ValueError(f"alpha and conv_alpha must be > 0, got {self.alpha} and {self.conv_alpha}")
        if self.save_precision not in SAVE_DTYPES:
            raise ValueError(
                f"save_precision must be one of {', '.join(SAVE_DTYPES)}, got {self.save_precision!r}"
            )
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise ValueError(f"mixed_precision must be no, bf16 or fp16, got {self.mixed_precision!r}")
        if not 0 <= self.caption_dropout < 1:
            raise ValueError(f"caption_dropout must be in [0, 1), got {self.caption_dropout}")
        for name in ("steps", "batch_size", "log_every", "sample_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"LoraTrainConfig.{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class LoraResult:
    step: int
    losses: list[float]
    run_dir: Path
    lora_file: Path


def load_base(cfg: LoraTrainConfig, device: torch.device) -> Any:
    """The base model as a pipeline (networks, text encoder, family) in float32 on ``device``."""
    from latentworks.pipelines.text_to_image import Pipeline

    return Pipeline.from_pretrained(
        cfg.base,
        device=device,
        vae=cfg.vae,
        text_encoders=list(cfg.text_encoders) or (),
        tokenizer=cfg.tokenizer,
    )


def image_geometry(data: Path, size: int, images: Any) -> list[tuple[int, int, int, int]]:
    """Per image of the dataset: ``(original height, original width, crop top, crop left)``, the crop in pixels
    of the ``size`` x ``size`` training image (the centre square ``data.folder.to_rgb_square`` takes, as SDXL's
    training scripts give ``crop_top_left`` after resizing). ``images`` (N, H, W, 3) is the loaded dataset: a
    ``.npz`` holds its images at their stored size, uncropped."""
    from PIL import Image

    from latentworks.data.folder import image_files

    if not data.is_dir():
        return [(int(images.shape[1]), int(images.shape[2]), 0, 0)] * len(images)
    out = []
    for f in image_files(data):
        with Image.open(f) as im:
            w, h = im.size
        side = min(w, h)
        out.append((h, w, round((h - side) // 2 * size / side), round((w - side) // 2 * size / side)))
    if len(out) != len(images):
        raise ValueError(
            f"{data}: {len(out)} image files but {len(images)} images loaded; did the folder change?"
        )
    return out


def build_latent_cache(pipe: Any, cfg: LoraTrainConfig, path: Path, device: torch.device) -> Any:
    """Encode ``cfg.data`` with the base model's VAE into ``path`` (reused when it exists; its metadata keeps
    each image's geometry, :func:`image_geometry`) and return the cache in the model's latent space: the base
    model's latent format (scale and shift, or per-channel statistics) applied to the means and standard
    deviations, so the training latents are what the model samples in."""
    from latentworks.data.folder import load_dataset
    from latentworks.pipelines.latents import encode_dataset, load_latent_cache, save_latent_cache

    if not path.is_file():
        size = cfg.resolution or pipe.model.resolution[0]
        ds = load_dataset(cfg.data, size=size)
        mean, std = encode_dataset(pipe.vae, ds, batch_size=8, device=device, progress=cfg.progress)
        meta = {"data": str(cfg.data), "base": cfg.base, "resolution": size}
        save_latent_cache(
            path, mean, std, ds.captions, meta | {"image_geometry": image_geometry(cfg.data, size, ds.images)}
        )
    cache = load_latent_cache(path)
    # the format is affine per channel: process_in(z) = a * z + b, so a sample m + s * eps maps to
    # process_in(m) + |a| * s * eps (eps is symmetric)
    lf = pipe.model.latent_format
    zero = torch.zeros(1, cache.channels, 1, 1)
    a = (lf.process_in(zero + 1) - lf.process_in(zero)).abs()
    return dataclasses.replace(cache, mean=lf.process_in(cache.mean), std=cache.std * a, scale=1.0, shift=0.0)


def training_logit_shift(model_sampling: Any) -> float:
    """The offset to the logit-normal mean that makes training draw noise levels as the model's shifted flow
    schedule places them: a time shift ``s`` maps ``sigma`` to ``s * sigma / (1 + (s - 1) * sigma)`` =
    ``sigmoid(logit(sigma) + ln s)``, FLUX's exponential shift with ``mu`` to ``sigmoid(logit(sigma) + mu)``, so
    the shifted draw is the unshifted one with its mean moved by ``ln s`` or ``mu`` (SD3 trains with its shift,
    Esser et al. 2024 sec. 5.3.2; diffusers' SD3 LoRA script draws from the shifted table). 0 for discrete
    (eps/v) models and unshifted flow models."""
    if not isinstance(model_sampling, FlowModelSampling):
        return 0.0
    if model_sampling.mu is not None:
        return float(model_sampling.mu)
    return math.log(model_sampling.shift)


def train_lora(cfg: LoraTrainConfig, pipe: Any = None) -> LoraResult:
    """Train (or resume) a LoRA; see the module docstring. The loop is ``training.diffusion.run_steps``.

    ``pipe`` (a ``Pipeline``: networks, text encoder and family of the base model) defaults to loading
    ``cfg.base``; its denoiser is used in place, frozen, with the adapters hooked on during the run.
    """
    from latentworks.pipelines.families import add_conditioning_extras, model_sampling_for, size_conditioning
    from latentworks.training.diffusion import StepLoop, _CaptionCache, run_steps

    info = init_distributed(cfg.device)
    device = torch.device(
        cfg.device if not (cfg.device.startswith("cuda") and info.enabled) else f"cuda:{info.local_rank}"
    )
    try:
        run, ckpt = cfg.out, cfg.out / "checkpoints" / "last.safetensors"
        saved = read_run_config(run, LORA_RESUME) if cfg.resume else None
        changes = check_resume(saved, cfg, LORA_RESUME, run=run)
        if changes and info.is_main:
            print("--resume: changed from the saved config: " + "; ".join(changes))
        pipe = load_base(cfg, device) if pipe is None else pipe
        family = str(pipe.model.meta.get("family") or "latentworks")
        prediction = pipe.model.prediction
        if prediction not in TRAINED_PREDICTIONS:
            raise ValueError(
                f"{cfg.base}: cannot train a LoRA for this {family} model: it predicts {prediction!r}, and "
                f"train-lora's objective trains {', '.join(TRAINED_PREDICTIONS)}-prediction models only (every "
                "checkpoint family it loads: SD 1.x/2.x, SDXL, SD3, FLUX, Z-Image, Qwen-Image; and latentworks "
                "models trained with those objectives)"
            )
        run.mkdir(parents=True, exist_ok=True)
        cache = build_latent_cache(pipe, cfg, run / "latents.safetensors", device)
        net = pipe.model.denoiser_net.to(device).float()
        names = file_module_names(net, family)
        targets = {
            n: r
            for n, r in lora_targets(
                net, rank=cfg.rank, alpha=cfg.alpha, conv_rank=cfg.conv_rank, conv_alpha=cfg.conv_alpha
            ).items()
            if n in names
        }
        torch.manual_seed(cfg.seed)
        lora = LoraNetwork(net, targets)
        trainable = list(lora.adapters.parameters())
        opt = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
        spec = sampling_spec_from_dict(pipe.model.meta["denoiser"]["sampling"])
        # the model's flow shift at the training resolution (static for SD3, from the token count for FLUX)
        shift = training_logit_shift(
            model_sampling_for(pipe.model, latent_height=cache.size, latent_width=cache.size)
        )
        objective = DiffusionObjective(prediction, cfg.logit_mean + shift, cfg.logit_std, sampling=spec)
        scaler = torch.amp.GradScaler(device.type, enabled=cfg.mixed_precision == "fp16")
        step = 0
        if cfg.resume and ckpt.is_file():
            meta = load_training_state(
                ckpt, modules={"lora": lora.adapters}, optimizers={"lora": opt}, device=device
            )
            step = int(meta["step"])
            load_grad_scaler(scaler, meta)
            for group in opt.param_groups:
                group["lr"] = cfg.lr
        elif cfg.resume and info.is_main:
            print(f"--resume: no checkpoint at {ckpt}; starting from step 0")
        run_config = {
            "kind": "lora",
            "base": cfg.base,
            "family": family,
            "prediction": prediction,
            "sampling": objective.sampling.to_dict(),
            "noise_logit_mean": objective.logit_mean,
            "lora": {
                "rank": cfg.rank,
                "alpha": cfg.alpha,
                "conv_rank": cfg.conv_rank,
                "conv_alpha": cfg.conv_alpha,
                "modules": len(targets),
                "parameters": sum(p.numel() for p in trainable),
            },
            "train": to_jsonable(cfg),
        }
        if info.is_main:
            write_json(run / "config.json", run_config)
        log = RunLog(run, step) if info.is_main else None
        captions = _CaptionCache(pipe.text_encoder, device)
        size = cache.size * int(getattr(pipe.vae.config, "downsample_factor", 8) or 8)

        def encode(caps: list[str]) -> Conditioning:
            return add_conditioning_extras(
                pipe.behaviour, captions(caps), height=size, width=size, guidance=cfg.guidance
            )

        geometry = cache.metadata.get("image_geometry") or [(size, size, 0, 0)] * len(cache)

        def condition(cond: Conditioning, idx: Tensor, gen: torch.Generator) -> Conditioning:
            """Each image's own size ids (SDXL): its original size and crop, not the training size."""
            rows = [tuple(geometry[int(i)]) for i in idx]
            extra = size_conditioning(pipe.behaviour, rows, height=size, width=size)
            return cond.with_extra(**{k: v.to(device) for k, v in extra.items()}) if extra else cond

        lora_file = run / "lora.safetensors"
        file_meta = {
            "ss_network_module": "networks.lora",
            "ss_network_dim": str(cfg.rank),
            "ss_network_alpha": str(cfg.alpha),
            "ss_network_args": json.dumps(
                {"conv_dim": cfg.conv_rank, "conv_alpha": cfg.conv_alpha} if cfg.conv_rank else {}
            ),
            "latentworks_base": cfg.base,
            "latentworks_family": family,
        }

        def save(s: int) -> None:
            if not info.is_main:
                return
            save_training_state(
                ckpt,
                step=s,
                modules={"lora": lora.adapters},
                optimizers={"lora": opt},
                extra_meta={"config": run_config, "grad_scaler": grad_scaler_meta(scaler)},
            )
            sd = lora_state_dict(lora, names, SAVE_DTYPES[cfg.save_precision])
            save_file_atomic(sd, lora_file, {**file_meta, "ss_steps": str(s)})

        prompts = list(cfg.sample_prompts) or list(dict.fromkeys(cache.captions))[:4]

        def preview(s: int) -> None:
            _preview(pipe, lora, objective, prompts, cache, cfg, run, s, encode)

        loop = StepLoop(
            cfg=cfg,
            info=info,
            device=device,
            cache=cache,
            encode=encode,
            augment=None,
            condition=condition,
            objective=objective,
            model=wrap_ddp(lora, info),
            net=lora,
            trainable=trainable,
            opt=opt,
            scaler=scaler,
            save=save,
            log=log,
            preview=preview,
            title=f"train-lora ({family}, rank {cfg.rank}) loss",
        )
        try:
            step, losses = run_steps(loop, step)
        finally:
            lora.remove()  # the base network (possibly shared with the caller's pipeline) computes as before
        return LoraResult(step=step, losses=losses, run_dir=run, lora_file=lora_file)
    finally:
        cleanup(info)


@torch.no_grad()
def _preview(
    pipe: Any,
    lora: LoraNetwork,
    objective: DiffusionObjective,
    prompts: list[str],
    cache: Any,
    cfg: LoraTrainConfig,
    run: Path,
    step: int,
    encode: Callable[[list[str]], Conditioning],
) -> None:
    """A grid of the preview prompts sampled with the LoRA on (the base model's default guidance)."""
    from latentworks.pipelines.families import cfg_scale, model_sampling_for
    from latentworks.pipelines.sampling import NetworkModel
    from latentworks.training.diffusion import sample_latents
    from latentworks.training.grids import make_grid

    if not prompts:
        return
    was_training = lora.training
    lora.eval()
    # as generation does: no CFG for distilled-guidance models (FLUX.1-dev), the shift for the image's size
    guidance = cfg_scale(pipe.behaviour, float(pipe.model.defaults.get("guidance", 4.0)))
    sampling = model_sampling_for(pipe.model, latent_height=cache.size, latent_width=cache.size)
    model = NetworkModel(lora, objective.prediction, sampling)
    shape = (len(prompts), cache.channels, cache.size, cache.size)
    z = sample_latents(
        model,
        encode(prompts),
        encode([""] * len(prompts)),
        shape,
        steps=cfg.sample_steps,
        guidance=guidance,
        seed=cfg.seed,
    )
    img = pipe.decode_pixels(z).clamp(-1, 1)
    (run / "samples").mkdir(exist_ok=True)
    make_grid(img.cpu().float()).save(run / "samples" / f"step_{step:07d}.png")
    lora.train(was_training)
