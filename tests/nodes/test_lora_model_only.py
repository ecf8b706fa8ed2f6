"""LoraLoaderModelOnly: the same image as LoraLoader with strength_clip 0 (the LoRA on the denoiser alone), and
a different one than without the LoRA; strength 0 passes the MODEL through."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from test_lora_node import images, models_dir, run, workflow  # noqa: F401  (models_dir: the fixture)

from latentworks.graph.executor import Executor
from latentworks.nodes import default_registry


def test_model_only_lora_equals_lora_loader_without_clip_strength(models_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    executor = Executor(default_registry(models_dir))
    both = workflow(both=False)
    both["10"]["inputs"]["strength_clip"] = 0.0
    only = workflow(both=False)
    only["10"] = {
        "class_type": "LoraLoaderModelOnly",
        "inputs": {"model": ["4", 0], "lora_name": "style.safetensors", "strength_model": 0.9},
    }
    for k in ("6", "7"):
        only[k]["inputs"]["clip"] = ["4", 1]
    plain = workflow(lora=None, both=False)
    got = {}
    for name, wf in (("both", both), ("only", only), ("plain", plain)):
        res = run(executor, wf, tmp_path / name)
        assert res.status == "success", res.error
        got[name] = images(res, "9", tmp_path / name)[0].astype(int)
    assert np.abs(got["only"] - got["both"]).max() == 0
    assert np.abs(got["only"] - got["plain"]).max() > 8  # the LoRA changed the picture


def test_model_only_lora_at_strength_zero_passes_the_model_through(models_dir: Path) -> None:  # noqa: F811
    registry = default_registry(models_dir)
    spec = registry.get("LoraLoaderModelOnly")
    assert spec is not None
    model = object()
    ctx = Executor(registry).new_context("job")
    assert spec.execute(ctx, model=model, lora_name="style.safetensors", strength_model=0.0) == (model,)
