"""Peak memory while loading a whole single-file checkpoint (U-Net, VAE, CLIP) into a pipeline in float16:
at most 1.25x the weights' size in float16, measured in a fresh process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from latentworks.checkpoints.io import LazyStateDict
from latentworks.families.load import write_single_file
from support.checkpoints import tiny_sd1_parts

_SCRIPT = r"""
import resource, sys
import torch
# Code is imported before the baseline (a long-running process has it loaded; transformers' CLIP modules
# alone are ~100 MB of RSS): the measurement is about weights.
import latentworks.checkpoints.keymaps.sd_ldm, latentworks.families.load  # noqa: F401, E401
import latentworks.models.text.families, latentworks.pipelines.memory  # noqa: F401, E401
import transformers.models.clip.modeling_clip  # noqa: F401
from latentworks.models.text.prompts import InstantClipTokenizer
from latentworks.pipelines import Pipeline

InstantClipTokenizer()  # the bundled vocabulary is a fixed cost, not weights
with open("/proc/self/status") as f:
    base = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the high-water mark to the current RSS
pipe = Pipeline.from_pretrained(sys.argv[1], dtype=torch.float16 if sys.argv[2] == "fp16" else torch.float32)
with open("/proc/self/status") as f:
    peak = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
assert pipe.model.denoiser_net.conv_in.weight.dtype == (torch.float16 if sys.argv[2] == "fp16" else torch.float32)
print(peak - base)
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc peak-RSS reset")
def test_single_file_pipeline_load_peaks_at_most_1_25x_the_weights(tmp_path: Path) -> None:
    file = write_single_file(
        tiny_sd1_parts(tmp_path / "m.safetensors", channels=(320, 640)), tmp_path / "m.safetensors"
    )
    fp16_bytes = LazyStateDict(file).nbytes(dtype=__import__("torch").float16)
    script = tmp_path / "peak.py"
    script.write_text(_SCRIPT)

    def peak(mode: str) -> int:
        out = subprocess.run([sys.executable, str(script), str(file), mode], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr[-2000:]
        return int(out.stdout.strip().splitlines()[-1])

    fp16, fp32 = peak("fp16"), peak("fp32")
    print(
        f"weights fp16 {fp16_bytes / 2**20:.0f} MiB; peak over baseline fp16 {fp16 / 2**20:.0f} MiB, fp32 {fp32 / 2**20:.0f} MiB"
    )
    assert fp16 <= 1.25 * fp16_bytes
    assert fp32 <= 1.25 * 2 * fp16_bytes
