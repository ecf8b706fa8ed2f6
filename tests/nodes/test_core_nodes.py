"""ComfyUI core nodes (issue 23): each schema against a table written by hand from ComfyUI's source,
behaviour against analytic answers, and a small workflow through the real executor."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from latentworks.diffusion.conditioning import Conditioning
from latentworks.graph.budgets import BudgetExceeded, JobBudgets
from latentworks.graph.executor import ExecutionContext, Executor
from latentworks.nodes import default_registry
from latentworks.nodes.payloads import ConditioningPayload, Latent

MAXRES = 16384
SYS_MAX = 9223372036854775807  # sys.maxsize on 64-bit Python, ComfyUI's primitive bounds
IMG_METHODS = ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]
LAT_METHODS = ["nearest-exact", "bilinear", "area", "bicubic", "bislerp"]

# (category, [(section, name, object_info entry)], [(output type, output name)]) from ComfyUI's source:
# nodes.py, comfy_extras/nodes_primitive.py, nodes_string.py, nodes_logic.py, nodes_preview_any.py,
# nodes_images.py, nodes_post_processing.py, nodes_sd3.py. Tooltips are not compared.
R, OPT = "required", "optional"
COMFY: dict[str, tuple[str, list[tuple[str, str, list]], list[tuple[str, str]]]] = {
    "PrimitiveInt": (
        "utils/primitive",
        [(R, "value", ["INT", {"min": -SYS_MAX, "max": SYS_MAX, "control_after_generate": True}])],
        [("INT", "INT")],
    ),
    "PrimitiveFloat": (
        "utils/primitive",
        [(R, "value", ["FLOAT", {"min": -SYS_MAX, "max": SYS_MAX, "step": 0.1}])],
        [("FLOAT", "FLOAT")],
    ),
    "PrimitiveString": ("utils/primitive", [(R, "value", ["STRING"])], [("STRING", "STRING")]),
    "PrimitiveStringMultiline": (
        "utils/primitive",
        [(R, "value", ["STRING", {"multiline": True}])],
        [("STRING", "STRING")],
    ),
    "PrimitiveBoolean": ("utils/primitive", [(R, "value", ["BOOLEAN"])], [("BOOLEAN", "BOOLEAN")]),
    "StringConcatenate": (
        "utils/string",
        [
            (R, "string_a", ["STRING", {"multiline": True}]),
            (R, "string_b", ["STRING", {"multiline": True}]),
            (R, "delimiter", ["STRING", {"default": ""}]),
        ],
        [("STRING", "STRING")],
    ),
    "ComfySwitchNode": (
        "logic",
        [
            (R, "switch", ["BOOLEAN"]),
            (OPT, "on_false", ["*", {"lazy": True}]),
            (OPT, "on_true", ["*", {"lazy": True}]),
        ],
        [("*", "output")],
    ),
    "PreviewAny": ("utilities", [(R, "source", ["*"])], [("STRING", "STRING")]),
    "GetImageSize": (
        "image",
        [(R, "image", ["IMAGE"])],
        [("INT", "width"), ("INT", "height"), ("INT", "batch_size")],
    ),
    "ImageScale": (
        "image/upscaling",
        [
            (R, "image", ["IMAGE"]),
            (R, "upscale_method", [IMG_METHODS, {}]),
            (R, "width", ["INT", {"default": 512, "min": 0, "max": MAXRES, "step": 1}]),
            (R, "height", ["INT", {"default": 512, "min": 0, "max": MAXRES, "step": 1}]),
            (R, "crop", [["disabled", "center"], {}]),
        ],
        [("IMAGE", "IMAGE")],
    ),
    "ImageScaleBy": (
        "image/upscaling",
        [
            (R, "image", ["IMAGE"]),
            (R, "upscale_method", [IMG_METHODS, {}]),
            (R, "scale_by", ["FLOAT", {"default": 1.0, "min": 0.01, "max": 8.0, "step": 0.01}]),
        ],
        [("IMAGE", "IMAGE")],
    ),
    "ImageScaleToTotalPixels": (
        "image/upscaling",
        [
            (R, "image", ["IMAGE"]),
            (R, "upscale_method", [IMG_METHODS, {}]),
            (R, "megapixels", ["FLOAT", {"default": 1.0, "min": 0.01, "max": 16.0, "step": 0.01}]),
            (R, "resolution_steps", ["INT", {"default": 1, "min": 1, "max": 256, "advanced": True}]),
        ],
        [("IMAGE", "IMAGE")],
    ),
    "ImageInvert": ("image", [(R, "image", ["IMAGE"])], [("IMAGE", "IMAGE")]),
    "ImageBatch": ("image", [(R, "image1", ["IMAGE"]), (R, "image2", ["IMAGE"])], [("IMAGE", "IMAGE")]),
    "ImageCrop": (
        "image/transform",
        [
            (R, "image", ["IMAGE"]),
            (R, "width", ["INT", {"default": 512, "min": 1, "max": MAXRES, "step": 1}]),
            (R, "height", ["INT", {"default": 512, "min": 1, "max": MAXRES, "step": 1}]),
            (R, "x", ["INT", {"default": 0, "min": 0, "max": MAXRES, "step": 1}]),
            (R, "y", ["INT", {"default": 0, "min": 0, "max": MAXRES, "step": 1}]),
        ],
        [("IMAGE", "IMAGE")],
    ),
    "ImagePadForOutpaint": (
        "image",
        [
            (R, "image", ["IMAGE"]),
            *[
                (R, side, ["INT", {"default": 0, "min": 0, "max": MAXRES, "step": 8}])
                for side in ("left", "top", "right", "bottom")
            ],
            (R, "feathering", ["INT", {"default": 40, "min": 0, "max": MAXRES, "step": 1}]),
        ],
        [("IMAGE", "IMAGE"), ("MASK", "MASK")],
    ),
    "LoadImageMask": (
        "mask",
        [(R, "image", [[], {"image_upload": True}]), (R, "channel", [["alpha", "red", "green", "blue"], {}])],
        [("MASK", "MASK")],
    ),
    "EmptySD3LatentImage": (
        "latent/sd3",
        [
            (R, "width", ["INT", {"default": 1024, "min": 16, "max": MAXRES, "step": 16}]),
            (R, "height", ["INT", {"default": 1024, "min": 16, "max": MAXRES, "step": 16}]),
            (R, "batch_size", ["INT", {"default": 1, "min": 1, "max": 4096}]),
        ],
        [("LATENT", "LATENT")],
    ),
    "LatentUpscaleBy": (
        "latent",
        [
            (R, "samples", ["LATENT"]),
            (R, "upscale_method", [LAT_METHODS, {}]),
            (R, "scale_by", ["FLOAT", {"default": 1.5, "min": 0.01, "max": 8.0, "step": 0.01}]),
        ],
        [("LATENT", "LATENT")],
    ),
    "LatentUpscale": (
        "latent",
        [
            (R, "samples", ["LATENT"]),
            (R, "upscale_method", [LAT_METHODS, {}]),
            (R, "width", ["INT", {"default": 512, "min": 0, "max": MAXRES, "step": 8}]),
            (R, "height", ["INT", {"default": 512, "min": 0, "max": MAXRES, "step": 8}]),
            (R, "crop", [["disabled", "center"], {}]),
        ],
        [("LATENT", "LATENT")],
    ),
    "LatentFromBatch": (
        "latent/batch",
        [
            (R, "samples", ["LATENT"]),
            (R, "batch_index", ["INT", {"default": 0, "min": -16384, "max": 16384}]),
            (R, "length", ["INT", {"default": 1, "min": 1, "max": 64}]),
        ],
        [("LATENT", "LATENT")],
    ),
    "RepeatLatentBatch": (
        "latent/batch",
        [(R, "samples", ["LATENT"]), (R, "amount", ["INT", {"default": 1, "min": 1, "max": 64}])],
        [("LATENT", "LATENT")],
    ),
    "LatentComposite": (
        "latent",
        [
            (R, "samples_to", ["LATENT"]),
            (R, "samples_from", ["LATENT"]),
            *[
                (R, k, ["INT", {"default": 0, "min": 0, "max": MAXRES, "step": 8}])
                for k in ("x", "y", "feather")
            ],
        ],
        [("LATENT", "LATENT")],
    ),
    "LatentBlend": (
        "_for_testing",
        [
            (R, "samples1", ["LATENT"]),
            (R, "samples2", ["LATENT"]),
            (R, "blend_factor", ["FLOAT", {"default": 0.5, "min": 0, "max": 1, "step": 0.01}]),
        ],
        [("LATENT", "LATENT")],
    ),
    "ConditioningZeroOut": (
        "advanced/conditioning",
        [(R, "conditioning", ["CONDITIONING"])],
        [("CONDITIONING", "CONDITIONING")],
    ),
    "ConditioningConcat": (
        "conditioning",
        [(R, "conditioning_to", ["CONDITIONING"]), (R, "conditioning_from", ["CONDITIONING"])],
        [("CONDITIONING", "CONDITIONING")],
    ),
    "ConditioningAverage": (
        "conditioning",
        [
            (R, "conditioning_to", ["CONDITIONING"]),
            (R, "conditioning_from", ["CONDITIONING"]),
            (
                R,
                "conditioning_to_strength",
                ["FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01}],
            ),
        ],
        [("CONDITIONING", "CONDITIONING")],
    ),
}
OUTPUT_NODES = {"PreviewAny"}


def _strip_tooltips(entry: list) -> list:
    if len(entry) == 2 and isinstance(entry[1], dict):
        opts = {k: v for k, v in entry[1].items() if k != "tooltip"}
        return [entry[0], opts] if opts or isinstance(entry[0], list) else [entry[0]]
    return entry


@pytest.mark.parametrize("name", sorted(COMFY))
def test_schema_matches_comfyui(name: str, tmp_path: Path) -> None:
    info = default_registry(None, tmp_path).object_info()[name]
    category, inputs, outputs = COMFY[name]
    assert info["category"] == category
    for section in (R, OPT):
        want = [(n, e) for s, n, e in inputs if s == section]
        got = info["input"].get(section, {})
        assert list(got) == [n for n, _ in want], f"{name} {section} input names/order"
        assert info["input_order"].get(section, []) == [n for n, _ in want]
        for n, entry in want:
            assert _strip_tooltips(got[n]) == entry, f"{name}.{n}"
    assert info["output"] == [t for t, _ in outputs]
    assert info["output_name"] == [n for _, n in outputs]
    assert info["output_node"] == (name in OUTPUT_NODES)


def test_switch_seed_is_regenerated_after_each_run(tmp_path: Path) -> None:
    info = default_registry(None, tmp_path).object_info()
    assert info["PrimitiveInt"]["input"]["required"]["value"][1]["control_after_generate"] is True
    assert info["GetImageSize"]["input"]["hidden"] == {"unique_id": "UNIQUE_ID"}


# ---- behaviour -------------------------------------------------------------------------------------------


def ctx_for(budgets: JobBudgets | None = None, input_dir: Path | None = None) -> ExecutionContext:
    ex = Executor(default_registry(None, input_dir))
    ctx = ex.new_context("t", input_dir=input_dir, **({"budgets": budgets} if budgets else {}))
    ctx.node_id, ctx.class_type = "1", "test"
    return ctx


REG = default_registry()


def run(name: str, ctx: ExecutionContext | None = None, **inputs: Any) -> Any:
    out = REG[name].execute(ctx or ctx_for(), **inputs)
    return out


def test_image_invert_is_one_minus_x() -> None:
    x = torch.rand(2, 5, 7, 3)
    (y,) = run("ImageInvert", image=x)
    assert torch.equal(y, 1.0 - x)


def test_get_image_size() -> None:
    assert run("GetImageSize", image=torch.zeros(3, 20, 30, 3)) == (30, 20, 3)


def test_image_scale_nearest_replicates_and_zero_keeps_aspect() -> None:
    x = torch.arange(4.0).view(1, 2, 2, 1).expand(1, 2, 2, 3).contiguous() / 4
    (y,) = run("ImageScale", image=x, upscale_method="nearest-exact", width=4, height=4, crop="disabled")
    want = x.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)
    assert torch.equal(y, want)
    wide = torch.rand(1, 2, 4, 3)  # w = 4, h = 2
    (z,) = run("ImageScale", image=wide, upscale_method="bilinear", width=0, height=4, crop="disabled")
    assert z.shape == (1, 4, 8, 3)
    (same,) = run("ImageScale", image=wide, upscale_method="bilinear", width=0, height=0, crop="disabled")
    assert same is wide


def test_image_scale_center_crop_keeps_the_middle() -> None:
    wide = torch.rand(1, 2, 4, 3)  # 4 wide, 2 tall -> square: drop one column each side
    (y,) = run("ImageScale", image=wide, upscale_method="area", width=2, height=2, crop="center")
    assert torch.allclose(y, wide[:, :, 1:3, :])


def test_image_scale_by_area_averages_blocks() -> None:
    x = torch.rand(1, 4, 4, 3)
    (y,) = run("ImageScaleBy", image=x, upscale_method="area", scale_by=0.5)
    want = x.view(1, 2, 2, 2, 2, 3).mean(dim=(2, 4))
    assert torch.allclose(y, want, atol=1e-6)


def test_lanczos_goes_through_8_bit_like_comfyui() -> None:
    x = torch.full((1, 6, 6, 3), 0.5)
    (y,) = run("ImageScaleBy", image=x, upscale_method="lanczos", scale_by=2.0)
    assert y.shape == (1, 12, 12, 3)
    assert torch.allclose(y, torch.full_like(y, 127 / 255))  # 0.5 * 255 = 127.5 truncates to 127


def test_scale_to_total_pixels_rounding() -> None:
    x = torch.rand(1, 50, 100, 3)  # 100 wide, 50 tall; 0.01 MP = 10485.76 pixels; scale = sqrt(2.097152)
    (y,) = run(
        "ImageScaleToTotalPixels", image=x, upscale_method="bilinear", megapixels=0.01, resolution_steps=1
    )
    assert y.shape == (1, 72, 145, 3)  # 144.82 -> 145, 72.41 -> 72
    (z,) = run(
        "ImageScaleToTotalPixels", image=x, upscale_method="bilinear", megapixels=0.01, resolution_steps=16
    )
    assert z.shape == (1, 80, 144, 3)  # 9.05 * 16 -> 144, 4.53 * 16 -> 80


def test_scale_checks_the_budget_before_allocating() -> None:
    ctx = ctx_for(JobBudgets(max_image_pixels=100 * 100))
    with pytest.raises(BudgetExceeded, match="width, height"):
        run(
            "ImageScale",
            ctx,
            image=torch.rand(1, 8, 8, 3),
            upscale_method="area",
            width=200,
            height=200,
            crop="disabled",
        )


def test_image_batch_concatenates_and_resizes_the_second() -> None:
    a, b = torch.rand(2, 4, 4, 3), torch.rand(1, 4, 4, 3)
    (y,) = run("ImageBatch", image1=a, image2=b)
    assert torch.equal(y, torch.cat([a, b]))
    big = torch.full((1, 8, 8, 3), 0.25)
    (z,) = run("ImageBatch", image1=a, image2=big)
    assert z.shape == (3, 4, 4, 3) and torch.allclose(z[2], torch.full((4, 4, 3), 0.25))


def test_image_crop_clamps_the_origin() -> None:
    x = torch.rand(1, 10, 12, 3)
    (y,) = run("ImageCrop", image=x, width=4, height=3, x=2, y=5)
    assert torch.equal(y, x[:, 5:8, 2:6])
    (z,) = run("ImageCrop", image=x, width=4, height=4, x=50, y=50)
    assert torch.equal(z, x[:, 9:10, 11:12])


def test_pad_for_outpaint_feathers_with_comfyuis_formula() -> None:
    x = torch.rand(1, 10, 10, 3)
    img, mask = run("ImagePadForOutpaint", image=x, left=4, top=0, right=0, bottom=0, feathering=3)
    assert img.shape == (1, 10, 14, 3) and mask.shape == (10, 14)
    assert torch.equal(img[:, :, 4:], x) and torch.all(img[:, :, :4] == 0.5)
    assert torch.all(mask[:, :4] == 1)
    # distance to the padded (left) edge is the column j; weight ((3 - j) / 3) ** 2 for j < 3
    want_cols = torch.tensor([1.0, 4 / 9, 1 / 9, 0, 0, 0, 0, 0, 0, 0])
    assert torch.allclose(mask[:, 4:], want_cols.expand(10, 10))
    _, no_feather = run("ImagePadForOutpaint", image=x, left=4, top=0, right=0, bottom=0, feathering=5)
    assert torch.all(no_feather[:, 4:] == 0)  # 2 * feathering must be smaller than the image


def test_load_image_mask_channels(tmp_path: Path) -> None:
    a = np.zeros((4, 5, 4), dtype=np.uint8)
    a[..., 0], a[..., 3] = 255, 51
    Image.fromarray(a, "RGBA").save(tmp_path / "m.png")
    ctx = ctx_for(input_dir=tmp_path)
    reg = default_registry(None, tmp_path)
    (red,) = reg["LoadImageMask"].execute(ctx, image="m.png", channel="red")
    (alpha,) = reg["LoadImageMask"].execute(ctx, image="m.png", channel="alpha")
    (green,) = reg["LoadImageMask"].execute(ctx, image="m.png", channel="green")
    assert red.shape == (1, 4, 5) and torch.all(red == 1)
    assert torch.allclose(alpha, torch.full((1, 4, 5), 1 - 51 / 255))
    assert torch.all(green == 0)
    assert reg.object_info()["LoadImageMask"]["input"]["required"]["image"][0] == ["m.png"]


def test_empty_sd3_latent_is_zeros_of_16_channels_and_checks_the_budget() -> None:
    (lat,) = run("EmptySD3LatentImage", width=256, height=512, batch_size=2)
    assert lat.samples is None and lat.batch == 2 and lat.pixel_size == (512, 256)
    z = lat.materialise(16, 8)  # what the sampler builds for an SD3 / FLUX model (16 channels, factor 8)
    assert z.shape == (2, 16, 64, 32) and torch.count_nonzero(z) == 0
    with pytest.raises(BudgetExceeded):
        run(
            "EmptySD3LatentImage",
            ctx_for(JobBudgets(max_latent_elements=1000)),
            width=256,
            height=256,
            batch_size=1,
        )


def test_latent_upscale_by() -> None:
    z = torch.randn(1, 4, 3, 5)
    (y,) = run("LatentUpscaleBy", samples=Latent(samples=z), upscale_method="nearest-exact", scale_by=2.0)
    assert torch.equal(y.samples, z.repeat_interleave(2, 2).repeat_interleave(2, 3))
    (e,) = run("LatentUpscaleBy", samples=Latent(pixel_size=(64, 80)), upscale_method="bislerp", scale_by=1.5)
    assert e.pixel_size == (96, 120)  # 8 x 10 cells -> 12 x 15 cells


def test_bislerp_keeps_a_constant_latent() -> None:
    z = torch.randn(1, 4, 1, 1).expand(1, 4, 3, 3).contiguous()
    (y,) = run("LatentUpscaleBy", samples=Latent(samples=z), upscale_method="bislerp", scale_by=2.0)
    assert torch.allclose(y.samples, z[:, :, :1, :1].expand(1, 4, 6, 6), atol=1e-5)


def test_bislerp_follows_the_great_circle_between_neighbours() -> None:
    z = torch.zeros(1, 2, 1, 2)
    z[0, 0, 0, 0], z[0, 1, 0, 1] = 1.0, 1.0  # e1 then e2 (orthogonal unit vectors)
    (y,) = run("LatentUpscaleBy", samples=Latent(samples=z), upscale_method="bislerp", scale_by=2.0)
    # output centres fall at source positions 0 (clamped), 0.25, 0.75 and 1 (clamped)
    c, s = math.cos(math.pi / 8), math.sin(math.pi / 8)
    want = torch.tensor([[1.0, c, s, 0.0], [0.0, s, c, 1.0]])
    assert torch.allclose(y.samples[0, :, 0], want, atol=1e-6) and torch.allclose(
        y.samples[0, :, 1], want, atol=1e-6
    )


def test_latent_from_batch_and_repeat() -> None:
    z = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 2, 2, 2)
    (s,) = run("LatentFromBatch", samples=Latent(samples=z), batch_index=2, length=5)
    assert torch.equal(s.samples[:, 0, 0, 0], torch.tensor([2.0, 3.0]))
    (last,) = run("LatentFromBatch", samples=Latent(samples=z), batch_index=-1, length=1)  # from the end
    assert torch.equal(last.samples[:, 0, 0, 0], z[-1:, 0, 0, 0])
    (r,) = run("RepeatLatentBatch", samples=Latent(samples=z[:2]), amount=3)
    assert torch.equal(r.samples[:, 0, 0, 0], torch.tensor([0.0, 1.0, 0.0, 1.0, 0.0, 1.0]))
    (e,) = run("RepeatLatentBatch", samples=Latent(pixel_size=(64, 64), batch_size=2), amount=3)
    assert e.batch == 6 and e.samples is None


def test_latent_composite_paste_and_feather() -> None:
    to = Latent(samples=torch.zeros(1, 1, 8, 8))
    fr = Latent(samples=torch.ones(1, 1, 4, 4))
    (p,) = run("LatentComposite", samples_to=to, samples_from=fr, x=16, y=8, feather=0)
    want = torch.zeros(8, 8)
    want[1:5, 2:6] = 1
    assert torch.equal(p.samples[0, 0], want)
    (f,) = run("LatentComposite", samples_to=to, samples_from=fr, x=8, y=0, feather=16)
    # feather 2 cells: left and right edges (x != 0, block ends before 8), bottom edge only (y == 0)
    cols = torch.tensor([0.5, 1.0, 1.0, 0.5])
    rows = torch.tensor([1.0, 1.0, 1.0, 0.5])
    want = torch.zeros(8, 8)
    want[0:4, 1:5] = rows[:, None] * cols[None, :]
    assert torch.allclose(f.samples[0, 0], want)


def test_latent_blend_is_a_weighted_sum() -> None:
    a, b = torch.randn(1, 4, 3, 3), torch.randn(1, 4, 3, 3)
    (y,) = run("LatentBlend", samples1=Latent(samples=a), samples2=Latent(samples=b), blend_factor=0.3)
    assert torch.allclose(y.samples, 0.3 * a + 0.7 * b)


def cond(
    tokens: torch.Tensor, pooled: torch.Tensor | None = None, **extra: torch.Tensor
) -> ConditioningPayload:
    return ConditioningPayload(Conditioning(tokens=tokens, pooled=pooled, extra=extra))


def test_conditioning_zero_out_keeps_extras() -> None:
    g = torch.tensor([3.5])
    (c,) = run("ConditioningZeroOut", conditioning=cond(torch.randn(1, 3, 4), torch.randn(1, 2), guidance=g))
    assert torch.count_nonzero(c.cond.tokens) == 0 and torch.count_nonzero(c.cond.pooled) == 0
    assert torch.equal(c.cond.extra["guidance"], g)


def test_conditioning_concat_and_average() -> None:
    t1, t2 = torch.randn(1, 3, 4), torch.randn(1, 2, 4)
    p1, p2 = torch.randn(1, 2), torch.randn(1, 2)
    (c,) = run("ConditioningConcat", conditioning_to=cond(t1, p1), conditioning_from=cond(t2, p2))
    assert torch.equal(c.cond.tokens, torch.cat([t1, t2], 1)) and torch.equal(c.cond.pooled, p1)
    (a,) = run(
        "ConditioningAverage",
        conditioning_to=cond(t1, p1),
        conditioning_from=cond(t2, p2),
        conditioning_to_strength=0.25,
    )
    t2_padded = torch.cat([t2, torch.zeros(1, 1, 4)], 1)  # from is zero-padded to to's length
    assert torch.allclose(a.cond.tokens, 0.25 * t1 + 0.75 * t2_padded)
    assert torch.allclose(a.cond.pooled, 0.25 * p1 + 0.75 * p2)
    (b,) = run(
        "ConditioningAverage",
        conditioning_to=cond(t2),
        conditioning_from=cond(t1, p1),
        conditioning_to_strength=0.5,
    )
    assert torch.allclose(b.cond.tokens, 0.5 * t2 + 0.5 * t1[:, :2]) and torch.equal(b.cond.pooled, p1)


def test_primitives_and_preview_text() -> None:
    assert run("PrimitiveInt", value=-7) == (-7,)
    assert run("StringConcatenate", string_a="a", string_b="b", delimiter=", ") == ("a, b",)
    res = run("PreviewAny", source={"k": [1, 2]})
    assert res.outputs == (json.dumps({"k": [1, 2]}, indent=4),) and res.ui == {"text": [res.outputs[0]]}
    assert run("PreviewAny", source=1.5).ui == {"text": ["1.5"]}


# ---- a workflow through the real executor -----------------------------------------------------------------


def test_workflow_chains_core_nodes_and_the_switch_is_lazy(tmp_path: Path) -> None:
    Image.fromarray(np.full((20, 30, 3), 64, dtype=np.uint8)).save(tmp_path / "in.png")
    wf = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "in.png"}},
        "2": {
            "class_type": "ImagePadForOutpaint",
            "inputs": {"image": ["1", 0], "left": 8, "top": 0, "right": 0, "bottom": 8, "feathering": 4},
        },
        "3": {
            "class_type": "ImageScaleBy",
            "inputs": {"image": ["2", 0], "upscale_method": "nearest-exact", "scale_by": 2.0},
        },
        "4": {"class_type": "ImageInvert", "inputs": {"image": ["3", 0]}},
        "5": {"class_type": "GetImageSize", "inputs": {"image": ["4", 0]}},
        "6": {"class_type": "PrimitiveBoolean", "inputs": {"value": True}},
        "7": {"class_type": "PrimitiveString", "inputs": {"value": "unused"}},
        "8": {
            "class_type": "ComfySwitchNode",
            "inputs": {"switch": ["6", 0], "on_true": ["5", 0], "on_false": ["7", 0]},
        },
        "9": {"class_type": "PreviewAny", "inputs": {"source": ["8", 0]}},
        "10": {
            "class_type": "StringConcatenate",
            "inputs": {"string_a": "h=", "string_b": "x", "delimiter": ""},
        },
        "11": {"class_type": "PreviewAny", "inputs": {"source": ["10", 0]}},
    }
    ex = Executor(default_registry(None, tmp_path))
    res = ex.execute(wf, ex.new_context("job", input_dir=tmp_path, output_dir=tmp_path, temp_dir=tmp_path))
    assert res.status == "success", res.error
    assert res.outputs["9"] == {"text": ["76"]}  # (30 + 8) * 2
    assert res.outputs["11"] == {"text": ["h=x"]}
    assert "7" not in res.executed  # the branch the switch did not take never ran


def test_core_nodes_feed_a_real_sampler(tiny_model: Path, tmp_path: Path) -> None:
    """EmptySD3LatentImage works with a 4-channel model (zeros of its shape), ConditioningZeroOut makes a
    negative, and the batch, resize, image and preview nodes chain around KSampler and VAEDecode."""
    models = tmp_path / "models"
    shutil.copytree(tiny_model, models / "checkpoints" / "tiny")
    wf = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny"}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red apple", "clip": ["1", 1]}},
        "3": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["2", 0]}},
        "4": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 16, "height": 16, "batch_size": 1}},
        "5": {"class_type": "RepeatLatentBatch", "inputs": {"samples": ["4", 0], "amount": 2}},
        "6": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["1", 0],
                "seed": 3,
                "steps": 2,
                "cfg": 3.0,
                "sampler_name": "euler",
                "scheduler": "normal",
                "positive": ["2", 0],
                "negative": ["3", 0],
                "latent_image": ["5", 0],
                "denoise": 1.0,
            },
        },
        "7": {
            "class_type": "LatentFromBatch",
            "inputs": {"samples": ["6", 0], "batch_index": 1, "length": 1},
        },
        "8": {
            "class_type": "LatentUpscaleBy",
            "inputs": {"samples": ["7", 0], "upscale_method": "bislerp", "scale_by": 2.0},
        },
        "9": {"class_type": "VAEDecode", "inputs": {"samples": ["8", 0], "vae": ["1", 2]}},
        "10": {"class_type": "ImageInvert", "inputs": {"image": ["9", 0]}},
        "11": {"class_type": "GetImageSize", "inputs": {"image": ["10", 0]}},
        "12": {"class_type": "PreviewAny", "inputs": {"source": ["11", 0]}},
        "13": {"class_type": "PreviewAny", "inputs": {"source": ["11", 2]}},
    }
    ex = Executor(default_registry(models))
    res = ex.execute(wf, ex.new_context("job", output_dir=tmp_path, temp_dir=tmp_path))
    assert res.status == "success", res.error
    # 16 px -> 8 x 8 latent cells (the tiny VAE is f2) -> 16 x 16 cells -> 32 px; one image left
    assert res.outputs["12"] == {"text": ["32"]} and res.outputs["13"] == {"text": ["1"]}
