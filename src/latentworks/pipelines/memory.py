"""Memory policy for running pipelines: which weights sit on the compute device when, within a byte budget,
and a VAE decode that survives low precision and large images.

* :class:`MemoryManager` is the injected device/memory manager that the pipeline and the server share (one
  per pipeline or server, never global). ``with manager.use(net): ...`` runs the block with ``net`` on the
  compute device.

  - Without a budget it moves whole modules with ``.to`` (``mode="model"``: back to the offload device
    after the block; ``"none"``: they stay).
  - With ``budget`` (bytes of weights on the compute device) it takes over the module's tensors. Each
    network is cut into *units*: every transformer/U-Net block (a child of an ``nn.ModuleList`` that holds
    no ``ModuleList`` itself: UNet, DiT, MMDiT, FLUX, Z-Image and Qwen-Image blocks alike) and the rest
    (embeddings, norms, final layers). A network that fits is loaded whole; other models are evicted least
    recently used first, by bytes, to make room. A network that does not fit is *partially loaded*
    (ComfyUI's name): the rest and as many blocks as fit stay resident, and every other block is copied to
    the compute device by a forward pre-hook just before it runs and dropped by a forward hook after, so
    at most one streamed block is on the device at a time. Room for that block is kept free, so the
    weights on the device stay within the budget (activations are not counted).

  The offload tier is a *separate host copy*: the tensors the loader produced (often mmap'd from the
  safetensors file) stay with the manager untouched, and the module's own tensors are either compute-device
  copies or ``meta`` placeholders. The same code path runs on CPU: there a resident unit's tensors are the
  host tensors themselves (no copy), a streamed block is a real copy made before its forward and freed
  after (what a host-to-device transfer does on a GPU), and an offloaded unit is ``meta``, so the weights
  "on the device" can be counted independently by looking at the module's parameters. A managed module
  whose blocks are offloaded can only run inside ``use``; :meth:`MemoryManager.release` gives it back its
  host tensors.

* ``decode_latents`` decodes in tiles when asked or when the image is large (memory grows with the tile,
  not the image), and re-runs a float16/bfloat16 decode in float32 when it produced NaN or inf. The
  SDXL VAE is the known case: its activations exceed float16's 65504 and overflow to inf, which
  GroupNorm turns into NaN (diffusers ships ``force_upcast`` for the same reason).
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from latentworks.graph.budgets import parse_bytes
from latentworks.models.autoencoder import Autoencoder
from latentworks.models.qwenimage_vae import QwenImageVAE
from latentworks.nn.quant import stored_nbytes

OffloadMode = Literal["none", "model"]
OFFLOAD_MODES: tuple[str, ...] = ("none", "model")
LOW_PRECISION = (torch.float16, torch.bfloat16)


class MemoryBudgetError(ValueError):
    """The budget cannot hold even the parts of a network that are never streamed plus its largest block."""


def _nbytes(t: Tensor) -> int:
    return stored_nbytes(t)  # a quantized (fp8/GGUF) weight counts its stored bytes


def stream_blocks(net: nn.Module) -> list[nn.Module]:
    """The blocks of ``net`` that can be streamed, in forward order: every child of an ``nn.ModuleList``
    that holds no ``nn.ModuleList`` itself (a transformer block, a U-Net ResBlock or attention block).
    Children of a list that are themselves lists of lists (U-Net levels) are split further."""
    out: list[nn.Module] = []
    for m in net.modules():
        if isinstance(m, nn.ModuleList):
            for child in m.children():
                if not isinstance(child, nn.ModuleList) and not any(
                    isinstance(x, nn.ModuleList) for x in child.modules()
                ):
                    out.append(child)
    return out


@dataclass(eq=False)
class _Unit:
    """A group of tensors moved together: one block, or the rest of a network (``block is None``).

    ``slots[i]`` lists where host tensor ``host[i]`` is bound in the module tree: (owner, name, is_param).
    """

    block: nn.Module | None
    host: list[Tensor] = field(default_factory=list)
    slots: list[list[tuple[nn.Module, str, bool]]] = field(default_factory=list)
    nbytes: int = 0
    loaded: bool = False
    transient: bool = False  # loaded by the pre-hook for one forward; dropped by the forward hook


@dataclass(eq=False)
class _Record:
    module: nn.Module
    units: list[_Unit]
    hooks: list[RemovableHandle]
    in_use: int = 0
    release_when_idle: bool = False  # release() came while a ``use`` block ran

    @property
    def nbytes(self) -> int:
        return sum(u.nbytes for u in self.units)

    @property
    def loaded_bytes(self) -> int:
        return sum(u.nbytes for u in self.units if u.loaded)


@dataclass
class MemoryManager:
    """Keeps networks on ``device`` within ``budget`` bytes of weights; see the module docstring.

    Args:
        device: the compute device ("cuda", "cuda:1", "cpu", ...).
        mode: ``"none"``: networks stay on ``device`` after ``use`` (until the budget needs their room).
            ``"model"``: each goes back to the offload tier when its ``use`` block ends, unless listed in
            ``resident``.
        offload_device: where idle weights wait (CPU RAM).
        resident: networks that stay on ``device`` after ``use`` in every mode.
        budget: bytes of weights allowed on ``device`` (None: no limit, whole modules move with ``.to``).
        pin_memory: keep the host copies in page-locked memory (CUDA only), so block copies run
            asynchronously at full PCIe/NVLink speed; costs one extra host copy while a network is taken over.
    Attributes:
        moves: ``(class name, device)`` per whole-module move, oldest first; for logs and tests.
        block_loads: blocks streamed onto the device (one per streamed block forward).
        peak_bytes: most weight bytes on ``device`` at once under a budget, by the manager's accounting.
    """

    device: torch.device | str = "cpu"
    mode: OffloadMode = "model"
    offload_device: torch.device | str = "cpu"
    resident: tuple[nn.Module, ...] = ()
    budget: int | None = None
    pin_memory: bool = False
    moves: list[tuple[str, str]] = field(default_factory=list)
    block_loads: int = 0
    peak_bytes: int = 0

    def __post_init__(self) -> None:
        if self.mode not in OFFLOAD_MODES:
            raise ValueError(f"MemoryManager mode must be one of {OFFLOAD_MODES}, got {self.mode!r}")
        if self.budget is not None:
            self.budget = parse_bytes(self.budget)
            if self.budget <= 0:
                raise ValueError(f"memory budget must be a positive number of bytes, got {self.budget}")
        self.device = torch.device(self.device)
        self.offload_device = torch.device(self.offload_device)
        self._records: OrderedDict[int, _Record] = OrderedDict()  # least recently used first

    # -- public ----------------------------------------------------------------------------------

    @contextmanager
    def use(self, module: nn.Module) -> Iterator[nn.Module]:
        """Run the block with ``module`` on the compute device; yields the module."""
        if self.budget is None:
            self._move(module, self.device)  # type: ignore[arg-type]
            try:
                yield module
            finally:
                if self.mode == "model" and not self._is_resident(module):
                    self._move(module, self.offload_device)  # type: ignore[arg-type]
            return
        record = self._adopt(module)
        record.in_use += 1
        self._records.move_to_end(id(module))
        try:
            self._plan(record)
            yield module
        finally:
            record.in_use -= 1
            for unit in record.units:
                if unit.transient:  # a block whose forward raised keeps no device copy
                    self._unload(unit)
            if record.in_use == 0 and record.release_when_idle:
                self.release(module)
            elif record.in_use == 0 and self.mode == "model" and not self._is_resident(module):
                self._unload_all(record)

    def offload(self, *modules: nn.Module) -> None:
        """Move idle ``modules`` to the offload tier now (in ``"model"`` mode, or for every mode under a
        budget, where it also takes them over); resident modules stay."""
        for m in modules:
            if self._is_resident(m):
                continue
            if self.budget is not None:
                self._unload_all(self._adopt(m))
            elif self.mode == "model":
                self._move(m, self.offload_device)  # type: ignore[arg-type]

    def release(self, *modules: nn.Module) -> None:
        """Forget ``modules``: their hooks go and their tensors become the host copies again (a normal
        module on the offload device). For the server when its output cache drops a network; a module
        inside a ``use`` block is released when the block ends."""
        for m in modules:
            record = self._records.get(id(m))
            if record is None or record.module is not m:
                continue
            if record.in_use:  # running now: released when its ``use`` block ends
                record.release_when_idle = True
                continue
            del self._records[id(m)]
            for h in record.hooks:
                h.remove()
            for unit in record.units:
                for host, slots in zip(unit.host, unit.slots, strict=True):
                    self._bind(slots, host)
                unit.loaded = unit.transient = False

    def streaming(self, module: nn.Module) -> bool:
        """True if ``module`` is managed under the budget and some of its blocks are not resident."""
        record = self._records.get(id(module))
        return record is not None and any(u.block is not None and not u.loaded for u in record.units)

    def managed(self) -> list[nn.Module]:
        """The networks taken over under the budget, least recently used first."""
        return [r.module for r in self._records.values()]

    @property
    def resident_bytes(self) -> int:
        """Weight bytes on the compute device now, by the manager's own accounting (budget mode)."""
        return sum(r.loaded_bytes for r in self._records.values())

    def module_bytes(self, module: nn.Module) -> tuple[int, int]:
        """(bytes on the compute device, total bytes) of a managed ``module``; (0, 0) if not managed."""
        record = self._records.get(id(module))
        return (record.loaded_bytes, record.nbytes) if record is not None else (0, 0)

    # -- budget mode -----------------------------------------------------------------------------

    def _is_resident(self, module: nn.Module) -> bool:
        return any(module is r for r in self.resident)

    def _adopt(self, module: nn.Module) -> _Record:
        record = self._records.get(id(module))
        if record is not None and record.module is module:
            return record
        offload = torch.device(self.offload_device)
        blocks = stream_blocks(module)
        units = [_Unit(block=None)] + [_Unit(block=b) for b in blocks]
        owner_unit: dict[int, _Unit] = {}
        for unit in units[1:]:
            assert unit.block is not None
            for m in unit.block.modules():
                owner_unit[id(m)] = unit
        where: dict[int, tuple[_Unit, int]] = {}  # id(tensor) -> (unit, index): shared tensors bind once
        for owner in module.modules():
            unit = owner_unit.get(id(owner), units[0])
            for is_param, table in ((True, owner._parameters), (False, owner._buffers)):
                for name, t in table.items():
                    if t is None:
                        continue
                    key = id(t)
                    if key in where:
                        u, i = where[key]
                        if u is not unit:  # shared between blocks: keep it with the rest, always resident
                            raise ValueError(
                                f"{type(module).__name__}: tensor {name!r} is shared between two blocks; "
                                "the memory budget cannot stream this network"
                            )
                        u.slots[i].append((owner, name, is_param))
                        continue
                    host = t.detach()
                    if host.device != offload:
                        host = host.to(offload)
                    if self.pin_memory and torch.device(self.device).type == "cuda":
                        host = host.pin_memory()
                    where[key] = (unit, len(unit.host))
                    unit.host.append(host)
                    unit.slots.append([(owner, name, is_param)])
                    unit.nbytes += _nbytes(host)
        for unit in units:
            self._unload(unit, force=True)
        hooks: list[RemovableHandle] = []
        for unit in units[1:]:
            assert unit.block is not None
            hooks.append(unit.block.register_forward_pre_hook(self._pre_hook(unit)))
            hooks.append(unit.block.register_forward_hook(self._post_hook(unit)))
        record = _Record(
            module=module, units=[u for u in units if u.host or u.block is not None], hooks=hooks
        )
        self._records[id(module)] = record
        return record

    def _pre_hook(self, unit: _Unit) -> Any:
        def hook(mod: nn.Module, args: Any) -> None:
            if not unit.loaded:
                self._load(unit)
                unit.transient = True
                self.block_loads += 1

        return hook

    def _post_hook(self, unit: _Unit) -> Any:
        def hook(mod: nn.Module, args: Any, out: Any) -> None:
            if unit.transient:
                self._unload(unit)

        return hook

    def _plan(self, record: _Record) -> None:
        """Load ``record`` whole if it fits (evicting least recently used idle networks first), else its
        rest plus the blocks that fit beside room for one streamed block."""
        assert self.budget is not None
        budget = self.budget
        others = [r for r in self._records.values() if r is not record]
        pinned = sum(r.loaded_bytes for r in others if r.in_use or self._is_resident(r.module))
        idle = [r for r in others if not (r.in_use or self._is_resident(r.module))]
        room = budget - pinned
        if record.nbytes <= room:
            self._evict(idle, budget - record.nbytes - pinned)
            for unit in record.units:
                if not unit.loaded:
                    self._load(unit)
                unit.transient = False
            return
        self._evict(idle, 0)  # it does not fit whole: everything idle goes
        rest = [u for u in record.units if u.block is None]
        blocks = [u for u in record.units if u.block is not None]
        rest_bytes = sum(u.nbytes for u in rest)
        largest = max((u.nbytes for u in blocks), default=0)
        if rest_bytes + largest > room:
            raise MemoryBudgetError(
                f"a memory budget of {_human(budget)} is too small for {type(record.module).__name__}: "
                f"its non-block weights ({_human(rest_bytes)}) and largest block ({_human(largest)}) must fit "
                f"at once{f' beside {_human(pinned)} held by networks in use' if pinned else ''}; "
                f"give at least {_human(rest_bytes + largest + pinned)} (--memory-budget)"
            )
        keep = rest_bytes
        for unit in rest:
            if not unit.loaded:
                self._load(unit)
        for unit in blocks:  # resident prefix in forward order; room for one streamed block stays free
            if keep + unit.nbytes + largest <= room:
                keep += unit.nbytes
                if not unit.loaded:
                    self._load(unit)
                unit.transient = False
            elif unit.loaded:
                self._unload(unit)

    def _evict(self, idle: list[_Record], target: int) -> None:
        """Offload idle networks, least recently used first, until their loaded bytes are <= ``target``."""
        held = sum(r.loaded_bytes for r in idle)
        for r in idle:  # OrderedDict order: least recently used first
            if held <= target:
                break
            held -= r.loaded_bytes
            self._unload_all(r)

    def _unload_all(self, record: _Record) -> None:
        for unit in record.units:
            self._unload(unit)

    def _load(self, unit: _Unit) -> None:
        device = torch.device(self.device)
        copy = unit.block is not None and device == torch.device(self.offload_device)
        pinned = self.pin_memory and device.type == "cuda"  # async copies from page-locked host memory
        for host, slots in zip(unit.host, unit.slots, strict=True):
            # On a separate device .to copies; on the host itself a resident unit uses the host tensor and a
            # streamed block gets a real copy (so CPU streaming does the work a host-to-device copy does).
            self._bind(slots, host.to(device, copy=copy, non_blocking=pinned))
        unit.loaded = True
        self.peak_bytes = max(self.peak_bytes, self.resident_bytes)

    def _unload(self, unit: _Unit, *, force: bool = False) -> None:
        if not (unit.loaded or force):
            return
        for host, slots in zip(unit.host, unit.slots, strict=True):
            self._bind(slots, torch.empty(host.shape, dtype=host.dtype, device="meta"))
        unit.loaded = unit.transient = False

    @staticmethod
    def _bind(slots: list[tuple[nn.Module, str, bool]], t: Tensor) -> None:
        for owner, name, is_param in slots:
            if is_param:
                old = owner._parameters[name]
                owner._parameters[name] = nn.Parameter(
                    t, requires_grad=bool(old is not None and old.requires_grad)
                )
            else:
                owner._buffers[name] = t

    # -- whole-module moves (no budget) ------------------------------------------------------------

    def _move(self, module: nn.Module, device: torch.device) -> None:
        where = _device_of(module)
        if where is None or _same_device(where, device):
            return
        module.to(device)
        self.moves.append((type(module).__name__, str(device)))


Offloader = MemoryManager
"""The manager's earlier name (whole-module offload only), kept for callers that use it."""


def _human(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def tensors_on(modules: Iterable[nn.Module], device: torch.device | str) -> int:
    """Bytes of the distinct parameters and buffers of ``modules`` that live on ``device`` (``meta``
    placeholders never count): an accounting independent of :class:`MemoryManager`'s."""
    device = torch.device(device)
    seen: set[int] = set()
    total = 0
    for module in modules:
        for t in [*module.parameters(), *module.buffers()]:
            if t.device.type == device.type and id(t) not in seen:
                seen.add(id(t))
                total += _nbytes(t)
    return total


def _same_device(a: torch.device, b: torch.device) -> bool:
    """``cuda`` (the current device) and ``cuda:0`` count as one when either leaves the index open."""
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


def _device_of(module: nn.Module) -> torch.device | None:
    for p in module.parameters():
        return p.device
    for b in module.buffers():
        return b.device
    return None


def _dtype_of(module: nn.Module) -> torch.dtype:
    for t in module.parameters():
        if t.is_floating_point():
            return t.dtype
    return torch.float32


def decode_latents(
    vae: Autoencoder | QwenImageVAE,
    z: Tensor,
    *,
    tile: int | None = None,
    overlap: int = 16,
    upcast_on_nonfinite: bool = True,
) -> Tensor:
    """Decode raw latents ``z`` (B, C, h, w) with ``vae``; returns float32 images (B, 3, h*f, w*f).

    ``z`` is cast to the VAE's device and dtype (the latent format's scale/shift is the caller's job).

    Args:
        tile: decode in ``tile`` x ``tile`` latent tiles (``Autoencoder.tiled_decode``); None: one piece.
        overlap: latent pixels shared by neighbouring tiles and blended with linear ramps.
        upcast_on_nonfinite: if a float16/bfloat16 VAE produced NaN or inf, warn (once per call site)
            and decode again with the VAE temporarily in float32; the VAE is restored afterwards.
    Raises:
        FloatingPointError: the decode is not finite even in float32 (broken weights or latents).
    """
    dtype = _dtype_of(vae)
    device = _device_of(vae) or z.device

    def run() -> Tensor:
        zz = z.to(device=device, dtype=_dtype_of(vae))
        with torch.no_grad():
            if tile is None:
                return vae.decode(zz)
            return vae.tiled_decode(zz, tile=tile, overlap=min(overlap, tile - 1))

    image = run()
    if not bool(torch.isfinite(image).all()):
        if not (upcast_on_nonfinite and dtype in LOW_PRECISION):
            raise FloatingPointError(
                f"VAE decode produced NaN/inf in {dtype}; the latents or VAE weights are broken "
                "(check the latent format's scale/shift and the checkpoint)"
            )
        warnings.warn(
            f"the VAE decode overflowed in {dtype} (NaN/inf); decoding again in float32. Load the VAE "
            "in float32 (or a fp16-fixed VAE such as madebyollin/sdxl-vae-fp16-fix) to skip the rerun.",
            RuntimeWarning,
            stacklevel=2,
        )
        vae.to(torch.float32)
        try:
            image = run()
        finally:
            vae.to(dtype)
        if not bool(torch.isfinite(image).all()):
            raise FloatingPointError(
                "VAE decode produced NaN/inf even in float32; the latents or VAE weights are broken "
                "(check the latent format's scale/shift and the checkpoint)"
            )
    return image.float()
