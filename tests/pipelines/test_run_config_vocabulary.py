"""Run folders written before the family registry say "family" for the network architecture."""

from __future__ import annotations

import json
from pathlib import Path

from latentworks.pipelines.export import upgrade_run_config
from latentworks.training.resume import DIFFUSION_RESUME, read_run_config


def test_old_run_configs_read_as_architecture(tmp_path: Path) -> None:
    old = {"kind": "diffusion", "family": "dit", "model": {}, "train": {"family": "dit", "seed": 0}}
    (tmp_path / "config.json").write_text(json.dumps(old))
    saved = read_run_config(tmp_path, DIFFUSION_RESUME)
    assert saved is not None
    assert saved["architecture"] == "dit" and saved["train"]["architecture"] == "dit"
    assert "family" not in saved and "family" not in saved["train"]
    new = {"kind": "diffusion", "architecture": "unet", "train": {"architecture": "unet"}}
    assert upgrade_run_config(json.loads(json.dumps(new))) == new  # today's files are left as they are
