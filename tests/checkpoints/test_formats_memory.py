"""Loading peak RAM: a mid-size random FLUX transformer (about 100M parameters: 205 MB in bf16, 105 MB in fp8
and 110 MB as GGUF Q8_0) is loaded in a fresh subprocess, the way UNETLoader loads it, and its peak resident
memory over the load (``VmHWM`` after resetting it through ``/proc/self/clear_refs``, minus the resident memory
before) must stay within 1.25x the file size: no second copy of the weights, and fp8 and GGUF weights stay in
their storage format. Loading the bf16 file with UNETLoader's ``weight_dtype="fp8_e4m3fn"`` must peak near the fp8
weights (each tensor cast as it is read), not the bf16 ones.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from latentworks.checkpoints.io import save_file_atomic
from latentworks.checkpoints.keymaps.flux_bfl import ours_to_flux_bfl
from latentworks.checkpoints.keymaps.sd3_diffusers import expected_shapes
from latentworks.models.flux import Flux, FluxConfig

gguf = pytest.importorskip("gguf")

CONFIG = FluxConfig(
    in_channels=16, width=1024, num_heads=8, double_depth=2, single_depth=2, context_dim=1024, pooled_dim=768,
    axes_dim=(16, 56, 56), guidance_embed=True,
)  # fmt: skip
LIMIT = 1.25

MEASURE = r"""
import gc, json, sys
import torch
from latentworks.families.load import read_checkpoint
from latentworks.pipelines.loading import model_from_parts
from latentworks.nn.quant import QuantizedTensor, stored_nbytes

def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))

gc.collect()
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset VmHWM to the current resident size
before = status("VmRSS")
parts = read_checkpoint(sys.argv[1], dtype=torch.bfloat16, weight_dtype=sys.argv[2])
net = model_from_parts(parts, dtype=torch.bfloat16, without_vae=True).denoiser_net
peak = status("VmHWM")
held = sum(stored_nbytes(p) for p in net.parameters())
quantized = sum(isinstance(p, QuantizedTensor) for p in net.parameters())
print(json.dumps({"before": before, "peak": peak, "held": held, "quantized": quantized}))
"""


def _bfl_shapes() -> dict[str, tuple[int, ...]]:
    ours = expected_shapes(Flux, CONFIG)
    meta = {k: torch.empty(s, device="meta") for k, s in ours.items()}
    return {k: tuple(v.shape) for k, v in ours_to_flux_bfl(meta, CONFIG).items()}


def _write(path: Path, fmt: str) -> None:
    g = torch.Generator().manual_seed(0)
    shapes = _bfl_shapes()
    if fmt == "Q8_0":  # random Q8_0 blocks: the loader reads bytes, their values do not matter here
        writer = gguf.GGUFWriter(str(path), arch="flux")
        rng = np.random.default_rng(0)
        for k, s in shapes.items():
            if len(s) == 2 and s[-1] % 32 == 0:
                blocks = rng.integers(0, 256, size=(s[0], s[1] // 32 * 34), dtype=np.uint8)
                writer.add_tensor(k, blocks, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
            else:
                writer.add_tensor(k, rng.standard_normal(s, dtype=np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        return
    tensors = {}
    for k, s in shapes.items():
        t = torch.randn(s, generator=g, dtype=torch.bfloat16)
        tensors[k] = t.to(torch.float8_e4m3fn) if fmt == "fp8" and len(s) == 2 else t
    save_file_atomic(tensors, path)


@pytest.mark.slow
@pytest.mark.parametrize(
    "fmt, suffix, weight_dtype",
    [
        ("bf16", ".safetensors", "default"),
        ("fp8", ".safetensors", "default"),
        ("Q8_0", ".gguf", "default"),
        ("bf16", ".safetensors", "fp8_e4m3fn"),  # UNETLoader's weight_dtype: cast as read, never all dense
    ],
)
def test_loading_peak_ram_stays_within_1_25x_the_file(
    tmp_path: Path, fmt: str, suffix: str, weight_dtype: str
) -> None:
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux /proc to read and reset the peak resident memory")
    path = tmp_path / f"flux_{fmt}{suffix}"
    _write(path, fmt)
    size = path.stat().st_size
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, "-c", MEASURE, str(path), weight_dtype],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    m = json.loads(run.stdout.strip().splitlines()[-1])
    growth = m["peak"] - m["before"]
    print(
        f"{fmt} ({weight_dtype}): file {size / 2**20:.0f} MiB, load peak +{growth / 2**20:.0f} MiB ({growth / size:.2f}x)"
    )
    assert m["held"] <= size  # the loaded weights are no larger than the file: fp8/GGUF stay quantized
    if fmt != "bf16" or weight_dtype != "default":
        assert m["quantized"] > 0
    if weight_dtype != "default":  # fp8 from bf16: the fp8 weights plus about one bf16 tensor at a time
        assert m["held"] <= 0.55 * size
        assert growth <= LIMIT * m["held"] + max(_numel(s) for s in _bfl_shapes().values()) * 2 * 2
    assert growth <= LIMIT * size, f"{fmt}: loading peaked at {growth / size:.2f}x the {size}-byte file"


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
