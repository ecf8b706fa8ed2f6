"""benchmarks/gpu_check.py runs its whole GPU recipe on the CPU with --cpu --tiny: every section reports, the
streamed model equals the resident one, and the results land in --out."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_cpu_path_writes_every_section(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--cpu", "--tiny"]
    done = subprocess.run(
        [*cmd, "--families", "qwenimage", "--out", str(tmp_path)], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "results.json").read_text())
    res = report["families"]["qwenimage"]
    assert res["bf16_relative_difference"] < 0.05  # same weights on both sides (bf16 rounding)
    assert {"bf16", "stream", "fp8"} <= set(res)
    stream = res["stream"][0]
    assert stream["equal_to_resident"] and stream["blocks_streamed_per_step"] >= 1
    assert stream["manager_peak_MiB"] <= stream["budget_MiB"] < stream["weights_MiB"]
    assert res["fp8"]["ours_weights_MiB"] < res["fp8"]["diffusers_weights_MiB"] * 1.5
    assert "| qwenimage | fp8 (e4m3fn) step |" in (tmp_path / "results.md").read_text()
