"""spandrel for tests, and tiny random upscale models in real layouts built with spandrel's own classes.

spandrel 0.4 imports torchvision at import time for two architectures (LaMa, RestoreFormer) that these tests
never use. Where torchvision cannot be imported (CPU-only torch: PyPI's torchvision wheels are CUDA builds),
:func:`import_spandrel_for_tests` lets spandrel import against a placeholder that exists only during the
import; every architecture used here (ESRGAN, SwinIR, ...) is plain torch.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

_PLACEHOLDERS = ("torchvision", "torchvision.transforms", "torchvision.transforms.functional")


def _import_with_placeholder() -> None:
    try:
        import torchvision  # noqa: F401
    except Exception:  # noqa: BLE001 - missing, or a CUDA build whose operators do not load
        for name in _PLACEHOLDERS:
            sys.modules.pop(name, None)
        tv, tr, fn = (types.ModuleType(n) for n in _PLACEHOLDERS)
        fn.InterpolationMode = type("InterpolationMode", (), {})  # type: ignore[attr-defined]
        fn.rotate = fn.normalize = None  # type: ignore[attr-defined]
        tv.transforms, tr.functional = tr, fn  # type: ignore[attr-defined]
        sys.modules.update(dict(zip(_PLACEHOLDERS, (tv, tr, fn), strict=True)))
        try:
            import spandrel  # noqa: F401
        except ImportError:
            pass
        finally:
            for name in _PLACEHOLDERS:
                sys.modules.pop(name, None)


def spandrel_or_skip() -> Any:
    """The spandrel module for a test, or a skip when it is not installed."""
    if "spandrel" not in sys.modules:
        try:
            import spandrel  # noqa: F401
        except ImportError:
            _import_with_placeholder()
    if "spandrel" not in sys.modules:
        pytest.skip("spandrel is not installed (pip install 'latentworks[upscale]')")
    return sys.modules["spandrel"]


def tiny_esrgan(path: Path, scale: int = 2, seed: int = 0) -> tuple[Path, torch.nn.Module]:
    """A random ESRGAN (RRDBNet, 8 filters, 1 block) saved in its original key layout as .safetensors."""
    from spandrel.architectures.ESRGAN import ESRGAN

    torch.manual_seed(seed)
    net = ESRGAN(num_filters=8, num_blocks=1, scale=scale).eval()
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return path, net


def tiny_upscaler(arch: str, path: Path, scale: int = 2, seed: int = 0) -> tuple[Path, torch.nn.Module]:
    """A random tiny ``ESRGAN``, ``Compact`` (Real-ESRGAN's SRVGGNetCompact) or ``SwinIR`` saved as .safetensors."""
    torch.manual_seed(seed)
    if arch == "ESRGAN":
        return tiny_esrgan(path, scale, seed)
    if arch == "Compact":
        from spandrel.architectures.Compact import Compact

        net = Compact(num_feat=8, num_conv=2, upscale=scale)
    elif arch == "SwinIR":
        from spandrel.architectures.SwinIR import SwinIR

        net = SwinIR(
            img_size=16, embed_dim=12, depths=[1], num_heads=[2], window_size=4, mlp_ratio=2,
            upscale=scale, upsampler="pixelshuffledirect",
        )  # fmt: skip
    else:
        raise ValueError(f"unknown test architecture {arch!r}")
    net.eval()
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return path, net
