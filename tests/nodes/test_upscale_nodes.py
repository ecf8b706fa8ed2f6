"""UpscaleModelLoader and ImageUpscaleWithModel: ComfyUI's schemas, and the node's output equals calling spandrel
directly on the same file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from latentworks.graph.executor import Executor
from latentworks.nodes import default_registry
from support.upscale import spandrel_or_skip, tiny_esrgan


def test_schemas_match_comfyui() -> None:
    reg = default_registry()
    loader, upscale = reg["UpscaleModelLoader"], reg["ImageUpscaleWithModel"]
    assert [(i.name, i.type) for i in loader.inputs] == [("model_name", "COMBO")]
    assert [o.type for o in loader.outputs] == ["UPSCALE_MODEL"] and loader.category == "loaders"
    assert [(i.name, i.type) for i in upscale.inputs] == [
        ("upscale_model", "UPSCALE_MODEL"),
        ("image", "IMAGE"),
    ]
    assert [o.type for o in upscale.outputs] == ["IMAGE"] and upscale.category == "image/upscaling"


def test_node_equals_spandrel_directly_and_lists_only_safetensors(tmp_path: Path) -> None:
    spandrel = spandrel_or_skip()
    folder = tmp_path / "models" / "upscale_models"
    folder.mkdir(parents=True)
    path, net = tiny_esrgan(folder / "tiny-x2.safetensors", scale=2)
    torch.save(net.state_dict(), folder / "old.pth")  # a pickle: never offered
    reg = default_registry(tmp_path / "models")
    assert reg["UpscaleModelLoader"].inputs[0].choices() == ["tiny-x2.safetensors"]
    ex = Executor(reg)
    ctx = ex.new_context("t")
    ctx.node_id, ctx.class_type = "1", "UpscaleModelLoader"
    (model,) = reg["UpscaleModelLoader"].execute(ctx, model_name="tiny-x2.safetensors")
    image = torch.rand(1, 20, 24, 3, generator=torch.Generator().manual_seed(0))
    (out,) = reg["ImageUpscaleWithModel"].execute(ctx, upscale_model=model, image=image)
    direct = spandrel.ModelLoader().load_from_file(str(path)).eval()
    expected = direct(image.movedim(-1, 1)).movedim(1, -1)
    assert out.shape == (1, 40, 48, 3)
    assert torch.allclose(out, expected, atol=1e-6)
    with pytest.raises(FileNotFoundError, match="not inside"):
        reg["UpscaleModelLoader"].execute(ctx, model_name="../x.safetensors")


def test_upscale_workflow_runs_through_the_executor(tmp_path: Path) -> None:
    spandrel_or_skip()
    models = tmp_path / "models"
    (models / "upscale_models").mkdir(parents=True)
    tiny_esrgan(models / "upscale_models" / "x4.safetensors", scale=4)
    Image.fromarray(np.full((6, 5, 3), 90, dtype=np.uint8)).save(tmp_path / "in.png")
    wf = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "in.png"}},
        "2": {"class_type": "UpscaleModelLoader", "inputs": {"model_name": "x4.safetensors"}},
        "3": {
            "class_type": "ImageUpscaleWithModel",
            "inputs": {"upscale_model": ["2", 0], "image": ["1", 0]},
        },
        "4": {"class_type": "GetImageSize", "inputs": {"image": ["3", 0]}},
        "5": {"class_type": "PreviewAny", "inputs": {"source": ["4", 0]}},
    }
    ex = Executor(default_registry(models, tmp_path))
    res = ex.execute(wf, ex.new_context("job", input_dir=tmp_path, output_dir=tmp_path, temp_dir=tmp_path))
    assert res.status == "success", res.error
    assert res.outputs["5"] == {"text": ["20"]}  # 5 px wide x 4


def test_without_spandrel_the_error_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import sys

    from latentworks.pipelines.upscale import load_upscale_model

    monkeypatch.setitem(sys.modules, "spandrel", None)  # "import spandrel" now raises ImportError
    f = tmp_path / "x.safetensors"
    f.write_bytes(b"")
    with pytest.raises(ImportError, match=r"pip install 'latentworks\[upscale\]'"):
        load_upscale_model(f)
