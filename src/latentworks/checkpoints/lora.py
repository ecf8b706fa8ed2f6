"""LoRA: read kohya/A1111 and diffusers/PEFT files, resolve them onto our modules, apply and remove them.

A LoRA adds a low-rank update to a layer's weight, ``W' = W + strength * (alpha / rank) * up @ down``
(``up`` = PEFT ``lora_B``, ``down`` = ``lora_A``). Three steps, each a plain function:

1. :func:`load_lora` / :func:`parse_lora` read a file into a :class:`LoraFile`: per module name as written in
   the file, its ``down``/``up`` tensors and ``alpha``. Formats:

   - kohya / A1111: ``lora_unet_<module_with_underscores>.lora_down.weight`` / ``.lora_up.weight`` / ``.alpha``,
     text encoders ``lora_te_`` (SD1/2), ``lora_te1_`` / ``lora_te2_`` (SDXL; FLUX: CLIP-L / T5 ``lora_te3_``).
     LoCon conv layers (``k x k`` down, ``1 x 1`` up) are supported.
   - diffusers / PEFT: ``unet.<module>.lora_A.weight`` / ``lora_B.weight`` (or ``.lora.down/.lora.up``),
     ``text_encoder.``, ``text_encoder_2.``, ``transformer.<module>`` (FLUX, SD3), optional ``<module>.alpha``;
     also diffusers' older ``<attn>.processor.to_q_lora.down.weight`` layout.

2. :func:`resolve_lora` turns file names into :class:`LoraPatch` es on *our* modules through the key maps that
   the checkpoint converters use (the data in ``checkpoints/keymaps``). A diffusers FLUX ``attn.to_q`` is a row
   slice of our fused ``qkv``; a single block's ``to_q/to_k/to_v/proj_mlp`` are row slices of ``linear1``.
   Keys that match nothing are returned (and logged), never dropped silently; a file where nothing matched
   raises :class:`LoraError` naming the file.

3. :func:`apply_loras` applies several resolved LoRAs with their own strengths to a live module, without
   copying the model, and returns a :class:`LoraHandle` whose ``remove()`` (or ``with`` exit) undoes it:

   - ``mode="patch"`` (default): adds the update to the weights in place, keeping a copy of only the patched
     tensors; ``remove()`` copies them back, bit-exact. Sampling then costs nothing extra (the update is
     folded into the weight once per apply). The sum is formed in float32 and cast once to the weight dtype.
   - ``mode="hook"``: forward hooks add ``strength * scale * up(down(x))`` to the output (slice); no weight is
     touched and no memory is held besides the LoRA itself, at the price of extra work every forward.

   Why patching is the default (measured on this 2-core CPU, a 107M-param SD1.5-width U-Net, a rank-16 LoRA on
   all 80 attention/feed-forward linears, 32x32 latents): patched forward / plain forward = 0.95 (no cost),
   hooked forward / plain = 1.47; patch + restore together cost 0.8 of one forward, i.e. about 2% of a 20-step
   CFG run. Hooks remain for weights that must not be written (shared, quantized or read-only storage); a
   ``"patch"`` request on a model with fp8/GGUF weights (``nn.quant.QuantizedTensor``) uses hooks.
"""

from __future__ import annotations

import functools
import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from latentworks.checkpoints.io import load_state_dict
from latentworks.checkpoints.keymaps.sd3_diffusers import swap_halves
from latentworks.nn.quant import QuantizedTensor

log = logging.getLogger(__name__)

Target = Literal["unet", "text", "text2", "text3"]

# tensor-name suffix -> role; the module name is what precedes it.
_SUFFIXES: tuple[tuple[str, str], ...] = (
    (".lora_down.weight", "down"),
    (".lora_up.weight", "up"),
    (".lora_A.weight", "down"),
    (".lora_B.weight", "up"),
    (".lora.down.weight", "down"),
    (".lora.up.weight", "up"),
    (".alpha", "alpha"),
)
# ``<attn>.processor.to_q_lora.down.weight`` -> module ``<attn>.to_q`` (``to_out_lora`` -> ``to_out.0``).
# diffusers' kohya converter names the alpha ``...to_q_lora.down.weight.alpha``.
_ATTN_PROCESSOR = re.compile(
    r"^(.*)\.processor\.(to_q|to_k|to_v|to_out)_lora\.(?:(down|up)\.weight|(?:down\.weight\.)?(alpha))$"
)
# file-name prefix -> (target, name style). Longest first; the rest of the name is the module.
_PREFIXES: tuple[tuple[str, Target, Literal["underscore", "dotted"]], ...] = (
    ("lora_unet_", "unet", "underscore"),
    ("lora_transformer_", "unet", "underscore"),
    ("lora_te1_", "text", "underscore"),
    ("lora_te2_", "text2", "underscore"),
    ("lora_te3_", "text3", "underscore"),
    ("lora_te_", "text", "underscore"),
    ("text_encoder_2.", "text2", "dotted"),
    ("text_encoder_3.", "text3", "dotted"),
    ("text_encoder.", "text", "dotted"),
    ("unet.", "unet", "dotted"),
    ("transformer.", "unet", "dotted"),
    ("diffusion_model.", "unet", "dotted"),
    ("model.diffusion_model.", "unet", "dotted"),
)


class LoraError(ValueError):
    """A LoRA file that cannot be used with this model (nothing matched, wrong shapes, unknown format)."""


@dataclass(frozen=True)
class LoraWeights:
    """One module's low-rank pair as stored in the file: ``down`` (r, in[, kh, kw]), ``up`` (out, r[, 1, 1])."""

    down: Tensor
    up: Tensor
    alpha: float | None = None  # None: alpha = rank (scale 1), the PEFT default when the file has none

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def scale(self) -> float:
        return 1.0 if self.alpha is None else self.alpha / self.rank


@dataclass(frozen=True)
class LoraFile:
    """A parsed LoRA file: ``modules`` keyed by the module name as written (prefix included, no suffix)."""

    name: str
    modules: dict[str, LoraWeights]
    unsupported: tuple[str, ...] = ()  # tensor keys of formats we do not read (LoHa, LoKr, DoRA, ...)
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class LoraPatch:
    """A low-rank update of rows ``rows`` (all when None) of our module ``module``'s weight."""

    module: str
    down: Tensor  # (r, in) or (r, in, kh, kw)
    up: Tensor  # (n_rows, r) or (n_rows, r, 1, 1)
    scale: float  # alpha / rank
    rows: tuple[int, int] | None
    source: str  # the file's module name, for messages


@dataclass(frozen=True)
class ResolvedLora:
    """The patches of one LoRA file for one target model, and the file's keys for it that matched nothing."""

    name: str
    target: Target
    patches: tuple[LoraPatch, ...]
    unmatched: tuple[str, ...]


# A LoRA resolved against a model's denoiser, with its strength: what a loaded model carries in ``loras``.
AppliedLora = tuple[ResolvedLora, float]


# ----------------------------------------------------------------------------------------------- parsing


def parse_lora(
    state_dict: Mapping[str, Tensor], *, name: str = "<LoRA>", metadata: Mapping[str, str] | None = None
) -> LoraFile:
    """Group a LoRA state dict by module. Keys of formats we cannot apply are listed in ``unsupported``."""
    parts: dict[str, dict[str, Tensor]] = {}
    unsupported: list[str] = []
    for key, tensor in state_dict.items():
        base = key[len("base_model.model.") :] if key.startswith("base_model.model.") else key
        old = _ATTN_PROCESSOR.match(base)  # diffusers' pre-PEFT attention-processor LoRA layout
        if old:
            module, proj, pair_role, alpha = old.groups()
            role = pair_role or alpha
            parts.setdefault(f"{module}.{proj}{'.0' if proj == 'to_out' else ''}", {})[role] = tensor
            continue
        for suffix, role in _SUFFIXES:
            if base.endswith(suffix):
                parts.setdefault(base[: -len(suffix)], {})[role] = tensor
                break
        else:
            unsupported.append(key)
    modules: dict[str, LoraWeights] = {}
    for module, p in parts.items():
        if "down" not in p or "up" not in p:  # e.g. the alpha of a LoHa module, or a truncated pair
            unsupported.append(f"{module} (has only {'/'.join(sorted(p))})")
            continue
        down, up = p["down"], p["up"]
        if up.shape[1] != down.shape[0]:
            raise LoraError(
                f"{name}: module {module!r} has up {tuple(up.shape)} and down {tuple(down.shape)} whose ranks "
                "differ; the file is corrupt or not a LoRA"
            )
        alpha = float(p["alpha"].float().item()) if "alpha" in p else None
        modules[module] = LoraWeights(down=down, up=up, alpha=alpha)
    if not modules:
        kinds = sorted({k.rsplit(".", 2)[-2] if k.count(".") >= 2 else k for k in unsupported})[:6]
        raise LoraError(
            f"{name}: no LoRA weights found (looked for .lora_down/.lora_up, .lora_A/.lora_B and .lora.down/"
            f".lora.up tensors; saw {kinds}). LoHa/LoKr/DoRA files are not supported."
        )
    return LoraFile(name=name, modules=modules, unsupported=tuple(unsupported), metadata=dict(metadata or {}))


def load_lora(path: str | os.PathLike[str]) -> LoraFile:
    """Read a LoRA ``.safetensors`` file (see the module docstring for the formats)."""
    from latentworks.checkpoints.io import read_metadata

    path = Path(path)
    sd = load_state_dict(path)
    meta = read_metadata(path) if path.suffix.lower() == ".safetensors" else {}
    return parse_lora(sd, name=str(path), metadata=meta)


def split_target(module: str) -> tuple[Target, str, Literal["underscore", "dotted"]]:
    """``'lora_te1_text_model_...'`` -> ``('text', 'text_model_...', 'underscore')``; no prefix -> U-Net, dotted."""
    for prefix, target, style in _PREFIXES:
        if module.startswith(prefix):
            return target, module[len(prefix) :], style
    return "unet", module, "dotted"


# -------------------------------------------------------------------------------------------- resolution

# A name table: file module name (dotted) -> (our module, output rows or None, swap halves of the rows).
NameTable = dict[str, tuple[str, tuple[int, int] | None, bool]]


def _rules_table(rules: Iterable[Any]) -> NameTable:
    """Module-level table from a KeyRule list (sd3/flux maps): ``cat`` rules become row slices."""
    table: NameTable = {}
    for rule in rules:
        if not rule.ours.endswith(".weight"):
            continue
        ours = rule.ours[: -len(".weight")]
        if rule.op == "cat":
            start = 0
            for theirs, size in zip(rule.theirs, rule.split, strict=True):
                table[theirs[: -len(".weight")]] = (ours, (start, start + size), False)
                start += size
        else:
            table[rule.theirs[0][: -len(".weight")]] = (ours, None, rule.op == "swap")
    return table


def _module_map_table(module_map: Mapping[str, str]) -> NameTable:
    return {theirs: (ours, None, False) for ours, theirs in module_map.items()}


def _family_tables(model: nn.Module) -> list[NameTable]:
    """Name tables for ``model``, highest priority first: the diffusers layout (PEFT files, kohya SD1; the only
    layout for Qwen-Image), the original single-file layout (kohya SDXL: LDM; kohya FLUX: BFL; SD3: SAI), then
    our own names."""
    from latentworks.models.flux import Flux
    from latentworks.models.mmdit import MMDiT
    from latentworks.models.qwenimage import QwenImage
    from latentworks.models.unet import UNet
    from latentworks.models.zimage import ZImage

    tables: list[NameTable] = []
    if isinstance(model, UNet):
        from latentworks.checkpoints.keymaps.sd_diffusers import unet_module_map
        from latentworks.checkpoints.keymaps.sd_ldm import unet_ldm_module_map

        tables.append(_module_map_table(unet_module_map(model.config)))
        tables.append(_module_map_table(unet_ldm_module_map(model.config)))
    elif isinstance(model, Flux):
        from latentworks.checkpoints.keymaps.flux_bfl import flux_bfl_module_map
        from latentworks.checkpoints.keymaps.flux_diffusers import flux_diffusers_rules

        tables.append(_rules_table(flux_diffusers_rules(model.config)))
        tables.append(_module_map_table(flux_bfl_module_map(model.config)))
    elif isinstance(model, MMDiT):
        from latentworks.checkpoints.keymaps.sd3_diffusers import sd3_diffusers_rules
        from latentworks.checkpoints.keymaps.sd3_sai import mmdit_sai_module_map

        tables.append(_rules_table(sd3_diffusers_rules(model.config)))
        tables.append(_module_map_table(mmdit_sai_module_map(model.config)))
    elif isinstance(model, QwenImage):  # diffusers names, which ComfyUI's Qwen-Image LoRAs use too
        from latentworks.checkpoints.keymaps.qwenimage_diffusers import qwenimage_diffusers_rules

        tables.append(_rules_table(qwenimage_diffusers_rules(model.config)))
    elif isinstance(model, ZImage):  # the released single file's names (ComfyUI's, and train-lora's)
        from latentworks.checkpoints.keymaps.zimage_comfy import zimage_comfy_rules

        tables.append(_rules_table(zimage_comfy_rules(model.config)))
    # Our own names (and any other model's own names, e.g. a transformers text encoder) come last.
    tables.append({n: (n, None, False) for n, m in model.named_modules() if _weight_of(m) is not None})
    return tables


def _weight_of(module: nn.Module) -> Tensor | None:
    if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return module.weight
    return None


def _lookup(
    tables: Sequence[NameTable], underscored: Sequence[NameTable], name: str, style: str
) -> tuple[str, tuple[int, int] | None, bool] | None:
    # transformers 5 dropped CLIPTextModel's ``text_model.`` level that LoRA files (made against older
    # versions) still name: try the name without it too.
    wrapper = "text_model." if style == "dotted" else "text_model_"
    names = [name, name[len(wrapper) :]] if name.startswith(wrapper) else [name]
    for candidate in names:
        for table in tables if style == "dotted" else underscored:
            hit = table.get(candidate)
            if hit is not None:
                return hit
    return None


def _underscored(table: NameTable) -> NameTable:
    """``{name.replace('.', '_'): entry}``; names that collide after the replacement are left out."""
    out: NameTable = {}
    clash: set[str] = set()
    for name, entry in table.items():
        u = name.replace(".", "_")
        if u in out and out[u] != entry:
            clash.add(u)
        out[u] = entry
    return {u: e for u, e in out.items() if u not in clash}


def _check_shapes(
    lora: str, source: str, module: str, weight: Tensor, w: LoraWeights, rows: tuple[int, int] | None
) -> None:
    n_rows = weight.shape[0] if rows is None else rows[1] - rows[0]
    up_ok = w.up.shape[0] == n_rows and all(s == 1 for s in w.up.shape[2:])
    # Linear and 1x1 conv are interchangeable (kohya stores SD1 proj_in/out as 1x1 convs); a k x k conv
    # needs a k x k down (LoCon).
    squeezed = [s for s in w.down.shape[1:] if s != 1] == [s for s in weight.shape[1:] if s != 1]
    down_ok = tuple(w.down.shape[1:]) == tuple(weight.shape[1:]) or (
        squeezed and all(s == 1 for s in (*w.down.shape[2:], *weight.shape[2:]))
    )
    if not (up_ok and down_ok):
        what = f"rows {rows[0]}:{rows[1]} of " if rows else ""
        raise LoraError(
            f"{lora}: {source!r} has down {tuple(w.down.shape)} and up {tuple(w.up.shape)}, which do not fit "
            f"{what}our {module!r} weight {tuple(weight.shape)}; the LoRA was made for a different model "
            "(family or size)"
        )


def resolve_lora(
    lora: LoraFile, model: nn.Module, *, target: Target = "unet", strict: bool = True
) -> ResolvedLora:
    """Patches of ``lora`` for ``model`` as ``target`` ('unet' = the denoiser, 'text'/'text2'/'text3' = the first/
    second/third text encoder, a transformers CLIP/T5 model with its HF module names).

    Returns the patches and the file's module names for this target that matched nothing (also logged).
    Raises :class:`LoraError` when the file has keys for this target and none matched (unless
    ``strict=False``), or when shapes do not fit. A file with no keys for this target resolves to no
    patches (a text-only LoRA on the U-Net).
    """
    tables = _family_tables(model)
    underscored = [_underscored(t) for t in tables]
    weights = {n: _weight_of(m) for n, m in model.named_modules()}
    patches: list[LoraPatch] = []
    unmatched: list[str] = []
    for source, w in lora.modules.items():
        tgt, name, style = split_target(source)
        if tgt != target:
            continue
        hit = _lookup(tables, underscored, name, style)
        if hit is None:
            unmatched.append(source)
            continue
        module, rows, swap = hit
        weight = weights.get(module)
        if weight is None:
            unmatched.append(source)
            continue
        _check_shapes(lora.name, source, module, weight, w, rows)
        up = swap_halves(w.up) if swap else w.up
        patches.append(LoraPatch(module, w.down, up, w.scale, rows, source))
    if unmatched:
        log.warning(
            "%s: %d %s LoRA modules matched nothing in %s: %s",
            lora.name, len(unmatched), target, type(model).__name__, ", ".join(unmatched[:8]),
        )  # fmt: skip
        if not patches and strict:
            raise LoraError(
                f"{lora.name}: none of its {len(unmatched)} {target} LoRA modules match {type(model).__name__} "
                f"(e.g. {unmatched[0]!r}); is the LoRA for this model family?"
            )
    return ResolvedLora(lora.name, target, tuple(patches), tuple(unmatched))


def resolve_loras(
    lora: LoraFile, denoiser: nn.Module | None, text_encoders: Sequence[nn.Module | None] = ()
) -> dict[Target, ResolvedLora]:
    """Resolve ``lora`` for the denoiser and up to three text encoders at once; raise if nothing matched.

    Keys for a text encoder that is not given (None or missing) count as unmatched.
    """
    out: dict[Target, ResolvedLora] = {}
    targets: list[tuple[Target, nn.Module | None]] = [("unet", denoiser)]
    targets += list(zip(("text", "text2", "text3"), text_encoders, strict=False))  # type: ignore[arg-type]
    unclaimed = set(lora.modules)
    for target, model in targets:
        if model is None:
            continue
        res = resolve_lora(lora, model, target=target, strict=False)
        out[target] = res
        unclaimed -= {p.source for p in res.patches}
    if not any(r.patches for r in out.values()):
        raise LoraError(
            f"{lora.name}: none of its {len(lora.modules)} LoRA modules match the model "
            f"(e.g. {next(iter(lora.modules))!r}); is the LoRA for this model family?"
        )
    if unclaimed:
        log.warning(
            "%s: %d LoRA modules matched nothing: %s", lora.name, len(unclaimed), sorted(unclaimed)[:8]
        )
    return out


# ---------------------------------------------------------------------------------------- apply / remove


def _delta(p: LoraPatch, weight: Tensor) -> Tensor:
    """``scale * up @ down`` in float32, shaped like the patched rows of ``weight``."""
    up = p.up.to(weight.device, torch.float32).flatten(1)  # (n_rows, r)
    down = p.down.to(weight.device, torch.float32).flatten(1)  # (r, in * kh * kw)
    n_rows = weight.shape[0] if p.rows is None else p.rows[1] - p.rows[0]
    return (p.scale * (up @ down)).reshape(n_rows, *weight.shape[1:])


class LoraHandle:
    """Undo for :func:`apply_loras`: ``remove()`` (idempotent) or use it as a context manager."""

    def __init__(self, undo: Callable[[], None], modules: Sequence[str], mode: str) -> None:
        self._undo: Callable[[], None] | None = undo
        self.modules = tuple(modules)  # our module names that were patched
        self.mode = mode

    @property
    def active(self) -> bool:
        return self._undo is not None

    def remove(self) -> None:
        if self._undo is not None:
            undo, self._undo = self._undo, None
            undo()

    def __enter__(self) -> LoraHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def apply_loras(
    model: nn.Module,
    loras: Sequence[tuple[ResolvedLora, float]],
    *,
    mode: Literal["patch", "hook"] = "patch",
) -> LoraHandle:
    """Apply ``[(resolved, strength), ...]`` to ``model`` in place; see the module docstring for the modes.

    Several LoRAs on one layer add up. The model is not copied; ``handle.remove()`` restores it exactly.
    Pass all LoRAs of one model in one call; if handles do overlap, remove them in reverse order (nested
    ``with`` blocks do), since a patch handle restores the weights as they were when it was applied.
    """
    modules = dict(model.named_modules())
    by_module: dict[str, list[tuple[LoraPatch, float]]] = {}
    for resolved, strength in loras:
        if strength == 0:
            continue
        for p in resolved.patches:
            if p.module not in modules or _weight_of(modules[p.module]) is None:
                raise LoraError(
                    f"{resolved.name}: module {p.module!r} is not a layer of this {type(model).__name__}; "
                    "resolve the LoRA against the model it is applied to"
                )
            by_module.setdefault(p.module, []).append((p, float(strength)))
    if mode == "patch" and any(isinstance(_weight_of(modules[n]), QuantizedTensor) for n in by_module):
        mode = "hook"  # fp8/GGUF weights stay in their storage format: add the update to the layer outputs
    if mode == "patch":
        return _apply_patch(modules, by_module)
    if mode == "hook":
        return _apply_hooks(modules, by_module)
    raise ValueError(f"apply_loras: mode must be 'patch' or 'hook', got {mode!r}")


def _apply_patch(
    modules: Mapping[str, nn.Module], by_module: Mapping[str, list[tuple[LoraPatch, float]]]
) -> LoraHandle:
    backups: list[tuple[Tensor, Tensor]] = []
    try:
        with torch.no_grad():
            for name, patches in by_module.items():
                weight = _weight_of(modules[name])
                assert weight is not None
                total = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
                for p, strength in patches:
                    rows = slice(None) if p.rows is None else slice(*p.rows)
                    total[rows] += strength * _delta(p, weight)
                backups.append((weight, weight.detach().clone()))
                weight.copy_((weight.float() + total).to(weight.dtype))
    except BaseException:
        _restore(backups)
        raise
    return LoraHandle(lambda: _restore(backups), list(by_module), "patch")


def _restore(backups: Sequence[tuple[Tensor, Tensor]]) -> None:
    with torch.no_grad():
        for weight, saved in backups:
            weight.copy_(saved)


def _lora_hook(module: nn.Module, patches: list[tuple[LoraPatch, float]]) -> Callable[..., Tensor]:
    weight = _weight_of(module)
    assert weight is not None
    conv = weight.ndim > 2
    dev = weight.device
    # Move the pairs once; compute in the activation dtype.
    pairs = [(p.down.to(dev), p.up.to(dev), strength * p.scale, p.rows) for p, strength in patches]

    def hook(mod: nn.Module, args: tuple[Tensor, ...], out: Tensor) -> Tensor:
        x = args[0]
        if any(rows is not None for *_, rows in pairs):
            out = out.clone()  # row slices are added in place; never write into the module's own output
        for down, up, s, rows in pairs:
            down, up = down.to(x.dtype), up.to(x.dtype)
            if conv:
                down = down.reshape(down.shape[0], *weight.shape[1:])  # (r, in, kh, kw)
                up = up.reshape(up.shape[0], up.shape[1], 1, 1)
                assert isinstance(mod, nn.Conv2d), "LoRA hooks support Linear and Conv2d layers"
                h = F.conv2d(x, down, stride=mod.stride, padding=mod.padding, dilation=mod.dilation)  # type: ignore[arg-type]
                d = F.conv2d(h, up) * s  # (B, n_rows, H, W)
                dim = 1
            else:
                d = F.linear(F.linear(x, down.flatten(1)), up.flatten(1)) * s  # (..., n_rows)
                dim = out.ndim - 1
            if rows is None:
                out = out + d
            else:
                out.narrow(dim, rows[0], rows[1] - rows[0]).add_(d)
        return out

    return hook


def _apply_hooks(
    modules: Mapping[str, nn.Module], by_module: Mapping[str, list[tuple[LoraPatch, float]]]
) -> LoraHandle:
    handles = [
        modules[name].register_forward_hook(_lora_hook(modules[name], patches))
        for name, patches in by_module.items()
    ]

    def undo() -> None:
        for h in handles:
            h.remove()

    return LoraHandle(undo, list(by_module), "hook")


# ------------------------------------------------------------------------------------------ text encoders

TEXT_TARGETS: tuple[Target, ...] = ("text", "text2", "text3")


def text_encoder_modules(encoder: Any) -> list[nn.Module | None]:
    """The modules LoRA text keys address, in target order (``lora_te1_``/``text_encoder.``,
    ``lora_te2_``/``text_encoder_2.``, ``lora_te3_``/``text_encoder_3.``); None where the encoder has none.

    An encoder may say so itself with ``lora_modules()``; otherwise a prompt encoder with CLIP branches
    (``.clips[i].model``) and a T5 branch (``.t5.model``), a plain module, or a lazily loaded encoder with
    ``_load()`` / ``_model`` (MiniLM) is understood.
    """
    if hasattr(encoder, "lora_modules"):
        return list(encoder.lora_modules())
    clips = getattr(encoder, "clips", None)
    if clips is not None:
        mods: list[nn.Module | None] = [c.model for c in clips][:2]
        mods += [None] * (2 - len(mods))
        t5 = getattr(encoder, "t5", None)
        return [*mods, None if t5 is None else t5.model]
    if isinstance(encoder, nn.Module):
        return [encoder]
    if callable(getattr(encoder, "_load", None)):
        encoder._load()
        return [encoder._model]
    return []


class LoraTextEncoder:
    """A text encoder that applies LoRAs to ``base``'s modules around each ``encode`` call and removes them
    afterwards, so ``base`` (possibly shared with other users) is unchanged between calls.

    ``loras`` are ``(LoraFile, strength)`` pairs. Other attributes are ``base``'s.
    """

    base: Any
    loras: tuple[tuple[LoraFile, float], ...]

    def __init__(self, base: Any, loras: Sequence[tuple[LoraFile, float]]) -> None:
        if isinstance(base, LoraTextEncoder):  # stacking LoraLoaders: one wrapper, all LoRAs
            loras = [*base.loras, *loras]
            base = base.base
        self.base = base
        self.loras = tuple(loras)

    @property
    def dim(self) -> int:
        return int(self.base.dim)

    @property
    def max_length(self) -> int:
        return int(self.base.max_length)

    def __getattr__(self, name: str) -> Any:
        if name in ("base", "loras", "_resolved"):  # not set yet (during copy/unpickling)
            raise AttributeError(name)
        return getattr(self.base, name)

    @functools.cached_property
    def _resolved(self) -> list[tuple[nn.Module, list[tuple[ResolvedLora, float]]]]:
        """The LoRAs resolved onto each of ``base``'s text modules (once: the modules do not change)."""
        out = []
        for target, module in zip(TEXT_TARGETS, text_encoder_modules(self.base), strict=False):
            if module is None:
                continue
            resolved = [(resolve_lora(f, module, target=target, strict=False), s) for f, s in self.loras]
            if any(r.patches for r, _ in resolved):
                out.append((module, resolved))
        return out

    def encode(self, prompts: list[str]) -> Any:
        return self._with_loras(lambda: self.base.encode(prompts))

    def encode_components(self, texts: Any, **options: Any) -> Any:
        """``base.encode_components`` (one text per component, CLIPTextEncodeSDXL/SD3/Flux) with the LoRAs on."""
        return self._with_loras(lambda: self.base.encode_components(texts, **options))

    def _with_loras(self, run: Callable[[], Any]) -> Any:
        handles: list[LoraHandle] = []
        try:
            for module, resolved in self._resolved:
                handles.append(apply_loras(module, resolved))
            return run()
        finally:
            for h in reversed(handles):
                h.remove()


def add_lora(
    folder: Any, text_encoder: Any, path: str | os.PathLike[str], strength: float, strength_text: float
) -> tuple[Any, Any, dict[str, list[str]]]:
    """Add the LoRA file at ``path`` to a model folder (a frozen dataclass with ``denoiser_net`` and a
    ``loras`` tuple of :data:`AppliedLora`) and its text encoder, without touching either.

    Returns ``(new_folder, new_text_encoder, unmatched)``: the folder is a copy sharing the networks with
    the LoRA (resolved against the denoiser) appended to ``loras`` (applied only while sampling), the encoder a
    :class:`LoraTextEncoder` (applied only while encoding); a strength of 0 leaves that part as it was.
    ``unmatched`` lists, per target, the LoRA keys that match no module. The file is checked against the
    model now, so a LoRA for another model fails here, naming the file, and not at sampling time.
    Used by :meth:`Pipeline.load_lora` and the ``LoraLoader`` node.
    """
    import dataclasses

    lora = load_lora(path)
    base = text_encoder.base if isinstance(text_encoder, LoraTextEncoder) else text_encoder
    resolved = resolve_loras(lora, folder.denoiser_net, text_encoder_modules(base))
    if strength != 0:
        folder = dataclasses.replace(folder, loras=(*folder.loras, (resolved["unet"], float(strength))))
    if strength_text != 0:
        text_encoder = LoraTextEncoder(text_encoder, [(lora, float(strength_text))])
    return folder, text_encoder, {target: list(r.unmatched) for target, r in resolved.items()}
