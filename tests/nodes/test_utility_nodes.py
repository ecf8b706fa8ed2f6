"""SaveImageAdvanced, ImageCompare and ResolutionSelector (nodes/utility.py): schemas as ComfyUI's editor saves
their widgets, arithmetic by hand, files written through the real executor; T5 tokenizers beside weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from latentworks.graph.executor import Executor
from latentworks.graph.ui_workflow import widget_values_by_name
from latentworks.nodes import default_registry
from latentworks.nodes.loaders import t5_tokenizer_beside
from latentworks.nodes.utility import resolution_for

REG = default_registry()


@pytest.mark.parametrize(
    ("ratio", "mp", "multiple", "expected"),
    [
        ("1:1 (Square)", 1.0, 8, (1024, 1024)),  # sqrt(2**20) = 1024
        ("16:9 (Widescreen)", 1.0, 8, (1368, 768)),  # scale = sqrt(2**20 / 144) = 85.33: 1365.3 -> 1368, 768
        ("2:3 (Portrait Photo)", 0.5, 16, (592, 880)),  # scale = 295.6: 591.3 -> 592, 886.9 -> 880
    ],
)
def test_resolution_selector_rounds_to_the_multiple(
    ratio: str, mp: float, multiple: int, expected: tuple
) -> None:
    assert resolution_for(ratio, mp, multiple) == expected
    with pytest.raises(ValueError, match="aspect_ratio '5:4' is not one of"):
        resolution_for("5:4", 1.0)


def test_widgets_map_as_the_editor_saves_them() -> None:
    # widgets_values from ComfyUI's templates (image_z_image.json and an API template)
    assert widget_values_by_name(REG["ResolutionSelector"], ["1:1 (Square)", 1, 16]) == {
        "aspect_ratio": "1:1 (Square)", "megapixels": 1, "multiple": 16,
    }  # fmt: skip
    assert widget_values_by_name(REG["SaveImageAdvanced"], ["GPT_Image_1", "png", "8-bit", "sRGB"]) == {
        "filename_prefix": "GPT_Image_1", "format": "png", "format.bit_depth": "8-bit",
        "format.input_color_space": "sRGB",
    }  # fmt: skip


def test_save_advanced_writes_pngs_and_passes_images_on_compare_stores_previews(tmp_path: Path) -> None:
    images = torch.rand(2, 8, 12, 3)
    graph = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "in.png"}},
        "2": {"class_type": "SaveImageAdvanced",
              "inputs": {"images": ["1", 0], "filename_prefix": "adv", "format": "png",
                         "format.bit_depth": "8-bit", "format.input_color_space": "sRGB"}},
        "3": {"class_type": "ImageCompare", "inputs": {"image_a": ["1", 0], "image_b": ["2", 0]}},
    }  # fmt: skip
    (tmp_path / "input").mkdir()
    Image.fromarray((images[0].numpy() * 255).round().astype(np.uint8)).save(tmp_path / "input" / "in.png")
    ex = Executor(default_registry(None, tmp_path / "input"))
    ctx = ex.new_context(
        "j", output_dir=tmp_path / "out", temp_dir=tmp_path / "tmp", input_dir=tmp_path / "input",
        on_event=lambda e, d: None,
    )  # fmt: skip
    res = ex.execute(graph, ctx)
    assert res.status == "success", res.error
    saved = res.outputs["2"]["images"]
    assert [s["filename"] for s in saved] == ["adv_00001_.png"]
    with Image.open(tmp_path / "out" / "adv_00001_.png") as im:
        assert np.array_equal(
            np.asarray(im.convert("RGB")), (images[0].numpy() * 255).round().astype(np.uint8)
        )
        assert "prompt" in im.text
    ui = res.outputs["3"]
    assert len(ui["a_images"]) == 1 and len(ui["b_images"]) == 1  # image_b came through SaveImageAdvanced
    assert all((tmp_path / "tmp" / i["filename"]).is_file() for i in ui["a_images"] + ui["b_images"])


def test_save_advanced_refuses_formats_it_cannot_write(tmp_path: Path) -> None:
    ctx = Executor(REG).new_context("j", output_dir=tmp_path, temp_dir=tmp_path)
    with pytest.raises(ValueError, match="latentworks writes 8-bit sRGB PNG"):
        REG["SaveImageAdvanced"].execute(
            ctx, images=torch.rand(1, 4, 4, 3), filename_prefix="x", format="exr"
        )
    assert not list(tmp_path.iterdir())


def test_t5_tokenizer_is_found_beside_the_weights(tmp_path: Path) -> None:
    weights = tmp_path / "t5xxl_fp16.safetensors"
    assert t5_tokenizer_beside(weights) is None
    (tmp_path / "t5_tokenizer.json").write_text("{}")
    assert t5_tokenizer_beside(weights) == tmp_path / "t5_tokenizer.json"
    (tmp_path / "t5xxl_fp16.tokenizer.json").write_text("{}")  # a file's own tokenizer wins
    assert t5_tokenizer_beside(weights) == tmp_path / "t5xxl_fp16.tokenizer.json"


def test_batch_images_resizes_to_the_first_and_keeps_order() -> None:
    ctx = Executor(REG).new_context("j")
    a, b, c = torch.rand(1, 4, 6, 3), torch.full((2, 4, 6, 3), 0.5), torch.zeros(1, 8, 12, 3)
    (out,) = REG["BatchImagesNode"].execute(
        ctx, **{"images.image0": a, "images.image1": b, "images.image3": c}
    )
    assert out.shape == (4, 4, 6, 3)
    assert (
        torch.equal(out[0], a[0]) and torch.equal(out[1:3], b) and torch.equal(out[3], torch.zeros(4, 6, 3))
    )


def test_manual_sigmas_parse_and_refuse() -> None:
    (s,) = REG["ManualSigmas"].execute(None, sigmas="1, 0.5 0.25,0")
    assert s.sigmas.tolist() == [1.0, 0.5, 0.25, 0.0] and s.sigmas.dtype == torch.float32
    for bad in ("1, x", "", "1, -0.5", "nan"):
        with pytest.raises(ValueError, match="ManualSigmas"):
            REG["ManualSigmas"].execute(None, sigmas=bad)


@pytest.mark.parametrize(
    ("expression", "values", "expected"),
    [
        ("a + b", {"a": 2, "b": 3.5}, (5.5, 5, True)),
        ("floor(a/32)*32", {"a": 1000}, (992.0, 992, True)),  # a template's rounding to a multiple of 32
        ("a if b > 2 else -a", {"a": 3, "b": 1}, (-3.0, -3, True)),
        ("max(values) - min(a, c)", {"a": 1, "b": 7, "c": 4}, (6.0, 6, True)),
        ("a == 0", {"a": 0}, (1.0, 1, True)),
        ("a % 2", {"a": 4}, (0.0, 0, False)),
    ],
)
def test_math_expression_by_hand(expression: str, values: dict, expected: tuple) -> None:
    inputs = {f"values.{k}": v for k, v in values.items()}
    assert REG["ComfyMathExpression"].execute(None, expression=expression, **inputs) == expected


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("__import__('os').system('true')", "is not allowed"),
        ("a.__class__", "is not allowed"),
        ("(9**4096)**4096", "too large"),
        ("2**100000", "larger than 4096"),
        ("a / 0", "failed"),
        ("q + 1", "unknown name 'q'"),
        ("a +", "not valid"),
        ("", "empty"),
    ],
)
def test_math_expression_refuses_what_is_not_arithmetic(expression: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        REG["ComfyMathExpression"].execute(None, expression=expression, **{"values.a": 1})
