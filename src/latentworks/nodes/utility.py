"""Small utility nodes that ComfyUI's current templates use around the model nodes: SaveImageAdvanced,
ImageCompare, ResolutionSelector, BatchImagesNode, ManualSigmas and ComfyMathExpression, with ComfyUI's class
names, inputs, defaults and ranges.

- **SaveImageAdvanced** saves like SaveImage and passes its images on. ComfyUI's ``format`` input is a dynamic
  combo whose sub-inputs reach the API as ``format.bit_depth`` and ``format.input_color_space``; they are
  declared here under those names so editor widgets map by position. Only 8-bit sRGB PNG is written
  (EXR/AVIF and 16-bit are refused with a message saying so).
- **ImageCompare** shows two optional images side by side in the editor; here it stores both as previews
  (``ui: {"a_images": [...], "b_images": [...]}``, as ComfyUI answers).
- **ResolutionSelector** computes ``width, height`` for an aspect ratio and a megapixel target, each
  rounded to ``multiple`` pixels: ``scale = sqrt(megapixels * 2**20 / (w * h))``, ``width = round(w * scale /
  multiple) * multiple`` (and the same for height).
- **BatchImagesNode** joins 2 to 50 image batches (ComfyUI's growing inputs ``images.image0`` ...); each is
  resized to the first one's size as ImageBatch does.
- **ManualSigmas** reads a SIGMAS schedule from text: numbers separated by commas or spaces.
- **ComfyMathExpression** evaluates an arithmetic expression over inputs ``values.a`` ... ``values.z`` with a
  small whitelisting evaluator (numbers, the named inputs, ``+ - * / // % **``, comparisons, ``and/or/not``,
  ``x if c else y`` and the functions in :data:`MATH_FUNCTIONS`); nothing else of Python is reachable.
"""

from __future__ import annotations

import ast
import math
import operator
import re
import string
from collections.abc import Callable
from typing import Any

import torch

from latentworks.graph.types import NodeResult, NodeSpec, OutputSpec, input_spec
from latentworks.nodes.image import _save
from latentworks.nodes.image_ops import _image_batch
from latentworks.nodes.payloads import SigmasPayload

ASPECT_RATIOS: dict[str, tuple[int, int]] = {
    "1:1 (Square)": (1, 1),
    "3:2 (Photo)": (3, 2),
    "4:3 (Standard)": (4, 3),
    "16:9 (Widescreen)": (16, 9),
    "21:9 (Ultrawide)": (21, 9),
    "2:3 (Portrait Photo)": (2, 3),
    "3:4 (Portrait Standard)": (3, 4),
    "9:16 (Portrait Widescreen)": (9, 16),
}
SAVE_FORMATS = ("png", "exr", "avif")


def resolution_for(aspect_ratio: str, megapixels: float, multiple: int = 8) -> tuple[int, int]:
    """(width, height) with the ratio ``aspect_ratio`` and about ``megapixels`` * 2**20 pixels."""
    if aspect_ratio not in ASPECT_RATIOS:
        raise ValueError(f"aspect_ratio {aspect_ratio!r} is not one of {', '.join(ASPECT_RATIOS)}")
    w, h = ASPECT_RATIOS[aspect_ratio]
    scale = math.sqrt(megapixels * 1024 * 1024 / (w * h))
    return max(multiple, round(w * scale / multiple) * multiple), max(
        multiple, round(h * scale / multiple) * multiple
    )


def _resolution(ctx: Any, aspect_ratio: str, megapixels: float, multiple: int = 8) -> tuple[int, int]:
    return resolution_for(aspect_ratio, megapixels, multiple)


def _save_advanced(ctx: Any, images: torch.Tensor, filename_prefix: str, **options: Any) -> NodeResult:
    fmt = options.get("format", "png")
    depth = options.get("format.bit_depth", "8-bit")
    space = options.get("format.input_color_space", "sRGB")
    if fmt != "png" or depth != "8-bit" or space != "sRGB":
        raise ValueError(
            f"SaveImageAdvanced: format {fmt!r}, bit depth {depth!r}, colour space {space!r} is not supported "
            "yet; latentworks writes 8-bit sRGB PNG (set format to 'png' and bit_depth to '8-bit')"
        )
    saved = _save(ctx, images, filename_prefix, "output", options.get("prompt"), options.get("extra_pnginfo"))
    return NodeResult(outputs=(images,), ui=saved.ui)


def _compare(
    ctx: Any, image_a: torch.Tensor | None = None, image_b: torch.Tensor | None = None
) -> NodeResult:
    ui: dict[str, list[Any]] = {"a_images": [], "b_images": []}
    for key, images, prefix in (("a_images", image_a, "compare.a"), ("b_images", image_b, "compare.b")):
        if images is not None and len(images) > 0:
            ui[key] = list((_save(ctx, images, prefix, "temp").ui or {}).get("images", []))
    return NodeResult(outputs=(), ui=ui)


# -- BatchImagesNode, ManualSigmas -------------------------------------------------------------------------

BATCH_INPUTS = 50  # ComfyUI's growing input list: images.image0 .. images.image49


def _batch_images(ctx: Any, **images: torch.Tensor | None) -> tuple[Any, ...]:
    given = [t for i in range(BATCH_INPUTS) if (t := images.get(f"images.image{i}")) is not None]
    if not given:
        raise ValueError("BatchImagesNode: connect at least one image (images.image0)")
    out = given[0]
    for more in given[1:]:
        (out,) = _image_batch(ctx, out, more)
    return (out,)


def parse_sigmas(text: str) -> torch.Tensor:
    """The numbers of ``text`` (separated by commas and/or whitespace) as a float32 SIGMAS tensor."""
    tokens = [t for t in re.split(r"[,\s]+", text.strip()) if t]
    try:
        values = [float(t) for t in tokens]
    except ValueError:
        raise ValueError(
            f"ManualSigmas: {text!r} is not a list of numbers; write e.g. '1, 0.75, 0.5, 0.25, 0'"
        ) from None
    if not values or any(not math.isfinite(v) or v < 0 for v in values):
        raise ValueError(f"ManualSigmas: {text!r} must list finite noise levels >= 0, e.g. '1, 0.5, 0'")
    return torch.tensor(values, dtype=torch.float32)


def _manual_sigmas(ctx: Any, sigmas: str) -> tuple[Any, ...]:
    return (SigmasPayload(parse_sigmas(sigmas)),)


# -- ComfyMathExpression -------------------------------------------------------------------------------------

MAX_EXPONENT = 4096
MAX_EXPRESSION = 2000  # characters


def _pow(base: float, exp: float) -> float:
    if abs(exp) > MAX_EXPONENT:
        raise ValueError(f"exponent {exp} is larger than {MAX_EXPONENT}")
    if base and exp > 0 and exp * math.log2(abs(base) + 1) > 64 * MAX_EXPONENT:  # no huge integers
        raise ValueError(f"{base} ** {exp} is too large")
    return float(base) ** exp if isinstance(base, float) or isinstance(exp, float) or exp < 0 else base**exp


MATH_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "sum": lambda *xs: sum(xs[0]) if len(xs) == 1 and isinstance(xs[0], list) else sum(xs),
    "min": min, "max": max, "abs": abs, "round": round, "pow": _pow, "sqrt": math.sqrt, "ceil": math.ceil,
    "floor": math.floor, "log": math.log, "log2": math.log2, "log10": math.log10, "sin": math.sin,
    "cos": math.cos, "tan": math.tan, "int": int, "float": float,
}  # fmt: skip
_BINARY: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: _pow,
}  # fmt: skip
_COMPARE: dict[type, Callable[[Any, Any], bool]] = {
    ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt,
    ast.GtE: operator.ge,
}  # fmt: skip


def evaluate_expression(expression: str, names: dict[str, Any]) -> Any:
    """Evaluate ``expression`` (Python syntax, arithmetic only) with ``names``; ValueError says what is wrong."""
    if not expression.strip():
        raise ValueError("the expression is empty; write e.g. 'a + b'")
    if len(expression) > MAX_EXPRESSION:
        raise ValueError(f"the expression is longer than {MAX_EXPRESSION} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as e:
        raise ValueError(f"the expression {expression!r} is not valid ({e.msg})") from None

    def ev(node: ast.AST) -> Any:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float | bool):
            return node.value
        if isinstance(node, ast.Name):
            if node.id not in names:
                raise ValueError(
                    f"unknown name {node.id!r}; the inputs are {', '.join(sorted(names)) or 'none'}"
                )
            return names[node.id]
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            return _BINARY[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.UnaryOp):
            value = ev(node.operand)
            if isinstance(node.op, ast.USub):
                return -value
            if isinstance(node.op, ast.UAdd):
                return +value
            if isinstance(node.op, ast.Not):
                return not value
        if isinstance(node, ast.BoolOp):
            values = [ev(v) for v in node.values]
            return all(values) if isinstance(node.op, ast.And) else any(values)
        if isinstance(node, ast.Compare) and all(type(op) in _COMPARE for op in node.ops):
            left, ok = ev(node.left), True
            for op, right_node in zip(node.ops, node.comparators, strict=True):
                right = ev(right_node)
                ok, left = ok and _COMPARE[type(op)](left, right), right
            return ok
        if isinstance(node, ast.IfExp):
            return ev(node.body) if ev(node.test) else ev(node.orelse)
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in MATH_FUNCTIONS
            and not node.keywords
        ):
            return MATH_FUNCTIONS[node.func.id](*[ev(a) for a in node.args])
        raise ValueError(
            f"{ast.unparse(node)!r} is not allowed in an expression (numbers, inputs a..z, + - * / // % **, "
            f"comparisons, and/or/not, x if c else y, and {', '.join(MATH_FUNCTIONS)})"
        )

    try:
        return ev(tree)
    except (ArithmeticError, TypeError) as e:
        raise ValueError(f"the expression {expression!r} failed: {e}") from None


def _math_expression(ctx: Any, expression: str, **values: Any) -> tuple[Any, ...]:
    names = {k.removeprefix("values."): v for k, v in values.items() if v is not None}
    names["values"] = list(names.values())
    try:
        result = evaluate_expression(expression, names)
    except ValueError as e:
        raise ValueError(f"ComfyMathExpression: {e}") from None
    if not isinstance(result, int | float) or (isinstance(result, float) and not math.isfinite(result)):
        raise ValueError(f"ComfyMathExpression: {expression!r} gave {result!r}, not a finite number")
    return (float(result), int(result), bool(result))


def utility_nodes() -> list[NodeSpec]:
    I = input_spec  # noqa: E741, N806

    hidden = (I("prompt", "PROMPT", hidden=True), I("extra_pnginfo", "EXTRA_PNGINFO", hidden=True))
    return [
        NodeSpec(
            name="SaveImageAdvanced",
            display_name="Save Image (Advanced)",
            category="image",
            execute=_save_advanced,
            output_node=True,
            description="Saves the input images to the output folder (8-bit sRGB PNG) and passes them on.",
            inputs=(
                I("images", "IMAGE"),
                I("filename_prefix", "STRING", default="ComfyUI"),
                I("format", "COMBO", choices=SAVE_FORMATS, default="png"),
                I("format.bit_depth", "COMBO", choices=("8-bit", "16-bit"), default="8-bit", optional=True),
                I("format.input_color_space", "COMBO", choices=("sRGB",), default="sRGB", optional=True),
                *hidden,
            ),
            outputs=(OutputSpec(type="IMAGE", name="images"),),
        ),
        NodeSpec(
            name="ImageCompare",
            display_name="Image Compare",
            category="image",
            execute=_compare,
            output_node=True,
            description="Compares two images side by side (both are stored as previews).",
            inputs=(I("image_a", "IMAGE", optional=True), I("image_b", "IMAGE", optional=True)),
        ),
        NodeSpec(
            name="ResolutionSelector",
            display_name="Resolution Selector",
            category="utils",
            execute=_resolution,
            description="Width and height for an aspect ratio and a megapixel target, rounded to a multiple.",
            inputs=(
                I("aspect_ratio", "COMBO", choices=tuple(ASPECT_RATIOS), default="1:1 (Square)"),
                I("megapixels", "FLOAT", default=1.0, min=0.1, max=16.0, step=0.1),
                I("multiple", "INT", default=8, min=8, max=128, step=4),
            ),
            outputs=(OutputSpec(type="INT", name="width"), OutputSpec(type="INT", name="height")),
        ),
        NodeSpec(
            name="BatchImagesNode",
            display_name="Batch Images",
            category="image",
            execute=_batch_images,
            description="Join image batches into one; each is resized to the first one's size.",
            inputs=tuple(I(f"images.image{i}", "IMAGE", optional=i > 0) for i in range(BATCH_INPUTS)),
            outputs=(OutputSpec(type="IMAGE"),),
        ),
        NodeSpec(
            name="ManualSigmas",
            display_name="Manual Sigmas",
            category="sampling/custom_sampling/schedulers",
            execute=_manual_sigmas,
            description="A noise schedule typed as numbers, e.g. '1, 0.75, 0.5, 0.25, 0'.",
            inputs=(I("sigmas", "STRING", default="1, 0.5"),),
            outputs=(OutputSpec(type="SIGMAS"),),
        ),
        NodeSpec(
            name="ComfyMathExpression",
            display_name="Math Expression",
            category="logic",
            execute=_math_expression,
            description="Evaluate an arithmetic expression over the inputs a, b, c ... (e.g. 'floor(a/32)*32').",
            inputs=(
                I("expression", "STRING", default="a + b", multiline=True),
                *(I(f"values.{n}", "FLOAT,INT,BOOLEAN", optional=True) for n in string.ascii_lowercase),
            ),
            outputs=(
                OutputSpec(type="FLOAT", name="FLOAT"),
                OutputSpec(type="INT", name="INT"),
                OutputSpec(type="BOOLEAN", name="BOOL"),
            ),
        ),
    ]
