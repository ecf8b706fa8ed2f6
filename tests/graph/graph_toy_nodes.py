"""Torch-free toy node types for the graph engine and server tests.

``make_registry()`` returns a fresh registry plus a Counter of executions per class_type, so tests can
prove which nodes ran. Nothing here is global: each call builds new specs.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

from latentworks.graph import InputSpec, NodeRegistry, NodeResult, NodeSpec, OutputSpec, Preview

# A valid 1x1 PNG (used as preview payload and upload fixture).
PNG_1X1 = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360606060000000050001a5f645400000000049454e44ae426082"
)


def make_registry(
    checkpoints: list[str] | None = None, slow_started: threading.Event | None = None
) -> tuple[NodeRegistry, Counter]:
    runs: Counter = Counter()
    ckpts = checkpoints if checkpoints is not None else ["a.safetensors", "b.safetensors"]

    def counted(name, fn):
        def execute(ctx, **kw):
            runs[name] += 1
            return fn(ctx, **kw)

        return execute

    def constant(ctx, value):
        return (value,)

    def add(ctx, a, b):
        return (a + b,)

    def concat(ctx, a, b, sep=""):
        return (f"{a}{sep}{b}",)

    def to_string(ctx, x):
        return (str(x),)

    def choose(ctx, flag, on_true=None, on_false=None):
        return (on_true if flag else on_false,)

    def choose_lazy(flag, on_true=None, on_false=None):
        return ["on_true"] if flag else ["on_false"]

    def slow(ctx, x, steps, delay):
        if slow_started is not None:
            slow_started.set()
        for i in range(steps):
            time.sleep(delay)
            ctx.progress(i + 1, steps, preview=Preview("PNG", PNG_1X1))
        return (x,)

    def fail(ctx, x):
        raise ValueError(f"boom on {x}")

    def load_model(ctx, ckpt_name):
        return ({"model": ckpt_name},)

    def use_model(ctx, model, seed):
        return (f"{model['model']}:{seed}",)

    def save_text(ctx, text, filename_prefix, prompt=None):
        out = Path(ctx.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        name = f"{filename_prefix}_{ctx.prompt_id}_{ctx.node_id}.txt"
        (out / name).write_text(str(text))
        return NodeResult(
            ui={"text": [str(text)], "files": [{"filename": name, "subfolder": "", "type": "output"}]}
        )

    specs = [
        NodeSpec(
            name="Constant",
            execute=counted("Constant", constant),
            inputs=(InputSpec(name="value", type="INT", default=0, min=-1000, max=1000),),
            outputs=(OutputSpec(type="INT", name="value"),),
            category="toy",
        ),
        NodeSpec(
            name="Add",
            execute=counted("Add", add),
            inputs=(InputSpec(name="a", type="INT"), InputSpec(name="b", type="INT")),
            outputs=(OutputSpec(type="INT"),),
            category="toy",
        ),
        NodeSpec(
            name="Concat",
            execute=counted("Concat", concat),
            inputs=(
                InputSpec(name="a", type="STRING"),
                InputSpec(name="b", type="STRING"),
                InputSpec(name="sep", type="STRING", default="", optional=True),
            ),
            outputs=(OutputSpec(type="STRING"),),
        ),
        NodeSpec(
            name="ToString",
            execute=counted("ToString", to_string),
            inputs=(InputSpec(name="x", type="INT"),),
            outputs=(OutputSpec(type="STRING"),),
        ),
        NodeSpec(
            name="Choose",
            execute=counted("Choose", choose),
            inputs=(
                InputSpec(name="flag", type="BOOLEAN", default=True),
                InputSpec(name="on_true", type="*", lazy=True),
                InputSpec(name="on_false", type="*", lazy=True),
            ),
            outputs=(OutputSpec(type="*"),),
            check_lazy_status=choose_lazy,
        ),
        NodeSpec(
            name="Slow",
            execute=counted("Slow", slow),
            inputs=(
                InputSpec(name="x", type="INT"),
                InputSpec(name="steps", type="INT", default=5, min=1, max=10_000),
                InputSpec(name="delay", type="FLOAT", default=0.01, min=0.0, max=10.0, step=0.01),
            ),
            outputs=(OutputSpec(type="INT"),),
        ),
        NodeSpec(
            name="Fail",
            execute=counted("Fail", fail),
            inputs=(InputSpec(name="x", type="INT"),),
            outputs=(OutputSpec(type="INT"),),
        ),
        NodeSpec(
            name="LoadModel",
            execute=counted("LoadModel", load_model),
            inputs=(InputSpec(name="ckpt_name", type="COMBO", choices=lambda: list(ckpts)),),
            outputs=(OutputSpec(type="MODEL"),),
        ),
        NodeSpec(
            name="UseModel",
            execute=counted("UseModel", use_model),
            inputs=(
                InputSpec(name="model", type="MODEL"),
                InputSpec(name="seed", type="INT", default=0, extra={"control_after_generate": True}),
            ),
            outputs=(OutputSpec(type="STRING"),),
        ),
        NodeSpec(
            name="SaveText",
            execute=counted("SaveText", save_text),
            inputs=(
                InputSpec(name="text", type="*"),
                InputSpec(name="filename_prefix", type="STRING", default="out"),
                InputSpec(name="prompt", type="PROMPT", hidden=True),
            ),
            output_node=True,
            category="toy/output",
            description="Writes text to the output folder.",
        ),
    ]
    return NodeRegistry(specs), runs
