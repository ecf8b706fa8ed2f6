"""``latentworks generate --memory-budget``: same image under a budget smaller than the model, and clear errors
for a malformed or too small budget."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torch import nn

from latentworks.cli import main
from latentworks.pipelines.loading import load_model_folder
from latentworks.pipelines.memory import stream_blocks


def _weights(net: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*net.parameters(), *net.buffers()])


def test_generate_under_a_memory_budget_gives_the_same_image(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = load_model_folder(tiny_model)
    unet = folder.denoiser_net
    largest = max(_weights(b) for b in stream_blocks(unet))
    budget = _weights(unet) - sum(_weights(b) for b in stream_blocks(unet)) + 2 * largest
    assert budget < _weights(unet)
    args = ["generate", "a red apple", "--model", str(tiny_model), "--steps", "2", "--seed", "3", "--quiet"]
    assert main([*args, "-o", str(tmp_path / "plain.png")]) == 0
    assert main([*args, "--memory-budget", f"{budget}B", "-o", str(tmp_path / "budget.png")]) == 0
    plain, budgeted = (np.asarray(Image.open(tmp_path / f)) for f in ("plain.png", "budget.png"))
    assert np.array_equal(plain, budgeted)

    capsys.readouterr()
    code = main([*args, "--memory-budget", "2KiB", "-o", str(tmp_path / "x.png")])
    err = capsys.readouterr().err
    assert code != 0 and "--memory-budget: a memory budget of 2.0 KiB is too small" in err
    assert "give at least" in err and "Traceback" not in err and not (tmp_path / "x.png").exists()
    with pytest.raises(SystemExit) as bad:
        main([*args, "--memory-budget", "lots"])
    assert bad.value.code == 2 and "not a size" in capsys.readouterr().err
