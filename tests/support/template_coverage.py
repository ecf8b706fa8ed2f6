"""Run ComfyUI's official workflow templates through ``latentworks run`` on tiny model files; tabulate coverage.

Sources (pinned in the ``test`` extra and constraints.txt):

- ``current``: ComfyUI's current template set, comfyui-workflow-templates 0.11.97, whose JSON ships in
  ``comfyui-workflow-templates-json`` (with the index in ``-core``); the media bundles are not needed.
- ``classic``: ``comfyui-workflow-templates`` 0.1.95, the last single-package release, which still holds the
  classic SD 1.5 / SDXL examples (default, img2img, area composition, hires fix, LoRA, inpainting...).

For every template (:func:`survey`): the node types present (editor-only types, notes, reroutes and subgraph
instances not counted), those latentworks lacks, whether it converts (:func:`ui_to_api`), whether its model
files belong to families latentworks supports (:func:`plan_models` recognises every loader file), and, when
both hold, whether ``latentworks run`` (the CLI entry, in-process) runs it end to end on tiny random files
(:mod:`support.workflow_fixtures`) with sizes and step counts shrunk by ``--set`` overrides.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from support.workflow_fixtures import (
    UnsupportedModel,
    input_images,
    plan_models,
    tiny_qwen_is_qwen3_4b,
    write_input_images,
    write_models,
)

EDITOR_ONLY_TYPES = frozenset({"Note", "MarkdownNote", "Reroute", "PrimitiveNode"})
# Inputs shrunk for CPU runs: latent/image sizes to SIZE pixels, batches to 1, sampling steps to STEPS.
SIZE, STEPS = 64, 2
SIZE_INPUTS = {"width", "height", "target_width", "target_height"}
SIZE_NODES = {
    "EmptyLatentImage", "EmptySD3LatentImage", "EmptyHunyuanLatentVideo", "ModelSamplingFlux", "ImageScale",
    "ResolutionSelector", "EmptyFlux2LatentImage", "LatentUpscale", "PrimitiveInt",
}  # fmt: skip
STEP_INPUTS = {"steps"}


@dataclass(frozen=True)
class Template:
    source: str  # "current" | "classic"
    template_id: str
    workflow: Mapping[str, Any]
    bundle: str = ""  # the current set's media bundle (media-image, media-video, media-api...)


@dataclass
class Row:
    source: str
    template_id: str
    node_types: list[str]
    missing: list[str]
    converted: bool = False
    supported: bool = False
    ran: bool = False
    error: str = ""
    seconds: float = 0.0
    families: list[str] = field(default_factory=list)
    bundle: str = ""


# -- the template packages --------------------------------------------------------------------------------


def _current() -> Iterator[Template]:
    try:
        import comfyui_workflow_templates_core as core
    except ImportError:
        return
    for entry in core.iter_templates():
        try:
            path = core.get_asset_path(entry.template_id, f"{entry.template_id}.json")
        except (FileNotFoundError, KeyError):
            continue
        with open(path, encoding="utf-8") as f:
            yield Template("current", entry.template_id, json.load(f), str(entry.bundle or ""))


def _classic() -> Iterator[Template]:
    try:
        import comfyui_workflow_templates as pkg
    except ImportError:
        return
    folder = Path(pkg.__file__).parent / "templates"
    if not folder.is_dir():
        return  # the split releases (0.2+) keep their JSON elsewhere; only 0.1.x is read here
    for path in sorted(folder.glob("*.json")):
        if path.stem.startswith("index"):
            continue
        with open(path, encoding="utf-8") as f:
            yield Template("classic", path.stem, json.load(f))


def templates(sources: tuple[str, ...] = ("current", "classic")) -> list[Template]:
    """Every UI-format template of the installed packages, per source (empty when none is installed)."""
    from latentworks.graph.ui_workflow import is_ui_workflow

    out: list[Template] = []
    for name, read in (("current", _current), ("classic", _classic)):
        if name in sources:
            out += [t for t in read() if is_ui_workflow(t.workflow)]
    return out


# -- one template -------------------------------------------------------------------------------------------


def node_types(workflow: Mapping[str, Any]) -> list[str]:
    """Node types used by active and inactive nodes, subgraph contents included, instances and editor-only
    types (notes, reroutes, PrimitiveNode) excluded."""
    subs = (workflow.get("definitions") or {}).get("subgraphs") or []
    sub_ids = {s.get("id") for s in subs if isinstance(s, Mapping)}
    types: set[str] = set()
    for graph in [workflow, *subs]:
        for node in graph.get("nodes") or []:
            t = node.get("type")
            if isinstance(t, str) and t not in sub_ids and t not in EDITOR_ONLY_TYPES:
                types.add(t)
    return sorted(types)


def shrink_overrides(prompt: Mapping[str, Mapping[str, Any]], registry: Any) -> list[str]:
    """``--set`` overrides that make a converted prompt cheap: SIZE-pixel latents, batch 1, STEPS steps, the
    least megapixels the node allows."""
    sets = []
    for node_id, node in prompt.items():
        cls = node.get("class_type")
        spec = registry.get(cls)
        least = spec.input("megapixels").min if spec is not None and spec.input("megapixels") else None
        for name, value in (node.get("inputs") or {}).items():
            if isinstance(value, list):
                continue  # a link: its source node is shrunk instead
            if name in SIZE_INPUTS and cls in SIZE_NODES and isinstance(value, int) and value > SIZE:
                sets.append(f"{node_id}.{name}={SIZE}")
            elif cls == "PrimitiveInt" and name == "value" and isinstance(value, int) and value >= 256:
                sets.append(f"{node_id}.{name}={SIZE}")  # most big integer constants are sizes
            elif name == "batch_size" and isinstance(value, int) and value > 1:
                sets.append(f"{node_id}.{name}=1")
            elif name in STEP_INPUTS and isinstance(value, int) and value > STEPS:
                sets.append(f"{node_id}.{name}={STEPS}")
            elif name == "megapixels" and isinstance(value, int | float) and value > max(0.01, least or 0):
                sets.append(f"{node_id}.{name}={max(0.01, least or 0)}")
    return sets


def run_template(
    template: Template, registry: Any, cache_dir: Path, work_dir: Path, *, run: bool = True
) -> Row:
    """Survey one template and, when it converts and its models are supported, run it through the CLI
    (``run=False``: survey only; the row's error then says it was not run)."""
    from latentworks.graph.ui_workflow import MissingNodeTypes, WorkflowConversionError, ui_to_api

    wf = template.workflow
    types = node_types(wf)
    row = Row(template.source, template.template_id, types, [t for t in types if t not in registry])
    row.bundle = template.bundle
    try:
        files = plan_models(wf, registry)
        row.families = sorted(
            {f.role.split(":", 1)[1] for f in files if f.role.startswith(("checkpoint", "diffusion"))}
        )
        row.supported = bool(files)
        if not files:
            row.error = "loads no local model (API nodes or utilities only)"
    except UnsupportedModel as e:
        row.error = f"unsupported model: {e}"
    try:
        prompt = ui_to_api(wf, registry)
        row.converted = True
    except MissingNodeTypes as e:
        row.error = row.error or "missing node types: " + ", ".join(sorted({m.class_type for m in e.missing}))
        return row
    except WorkflowConversionError as e:
        row.error = f"conversion: {e}"
        return row
    if not row.supported:
        return row
    if not run:
        row.error = "not run (survey only)"
        return row
    t0 = time.perf_counter()
    here = work_dir / f"{template.source}-{template.template_id}"
    shutil.rmtree(here, ignore_errors=True)
    models, inputs, outputs = here / "models", here / "input", here / "output"
    try:
        write_models(files, models, cache_dir)
        write_input_images(input_images(prompt, registry), inputs)
    except UnsupportedModel as e:
        row.supported, row.error = False, f"unsupported model: {e}"
        return row
    path = here / "workflow.json"
    path.write_text(json.dumps(wf), encoding="utf-8")
    rc, err = run_cli(path, models, inputs, outputs, shrink_overrides(prompt, registry))
    row.seconds = time.perf_counter() - t0
    row.ran = rc == 0
    row.error = "" if row.ran else (err.strip().splitlines() or [f"exit status {rc}"])[-1][:400]
    return row


@contextlib.contextmanager
def small_edit_sizes() -> Iterator[None]:
    """While active, the sizes editing nodes pick by themselves are shrunk as ``--set`` shrinks the others:
    Qwen-Image-Edit's input images to SIZE x SIZE area for the VAE and 56 x 56 for the vision tower (instead of
    1024 x 1024 and 384 x 384), FluxKontextImageScale's resolutions to an eighth (multiples of 16). At the
    release's sizes a 2509 template's three references make a 16k-token sequence, minutes per step on a CPU."""
    import dataclasses

    from latentworks import families
    from latentworks.nodes import edit_plus

    by_name = families._BY_NAME  # noqa: SLF001 - a test-only swap, restored below
    saved = dict(by_name)
    saved_kontext = edit_plus.KONTEXT_RESOLUTIONS
    for key, fam in saved.items():
        if fam.generation.edit_text is not None:
            gen = dataclasses.replace(fam.generation, edit_area=SIZE * SIZE, edit_plus_vision_area=56 * 56)
            by_name[key] = dataclasses.replace(fam, generation=gen)
    edit_plus.KONTEXT_RESOLUTIONS = tuple(
        (max(16, round(w / 128) * 16), max(16, round(h / 128) * 16)) for w, h in saved_kontext
    )
    try:
        yield
    finally:
        by_name.clear()
        by_name.update(saved)
        edit_plus.KONTEXT_RESOLUTIONS = saved_kontext


def run_cli(workflow: Path, models: Path, inputs: Path, outputs: Path, sets: list[str]) -> tuple[int, str]:
    """``latentworks run`` through its real entry point, in this process (so the tiny Qwen3 maps to Qwen3-4B);
    returns (exit status, stderr)."""
    from latentworks.cli import main

    argv = ["run", str(workflow), "--models-dir", str(models), "--input-dir", str(inputs)]
    argv += ["--output-dir", str(outputs), "--quiet"]
    for s in sets:
        argv += ["--set", s]
    err = io.StringIO()
    with (
        tiny_qwen_is_qwen3_4b(),
        small_edit_sizes(),
        contextlib.redirect_stderr(err),
        contextlib.redirect_stdout(io.StringIO()),
    ):
        try:
            rc = main(argv)
        except Exception as e:  # noqa: BLE001 - a crash is what the table must show, not stop at
            rc, _ = 99, err.write(f"crash: {type(e).__name__}: {e}\n")
    return rc, err.getvalue()


def survey(
    items: list[Template],
    registry: Any,
    *,
    cache_dir: Path | None = None,
    work_dir: Path | None = None,
    run_only: set[str] | None = None,
) -> list[Row]:
    """:func:`run_template` over ``items``; tiny model files are built once into ``cache_dir``. With
    ``run_only``, only templates named in it (``"source/template_id"``) run; the others are surveyed."""
    with contextlib.ExitStack() as stack:
        if cache_dir is None:
            cache_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="lw-tiny-")))
        if work_dir is None:
            work_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="lw-templates-")))
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        return [
            run_template(
                t,
                registry,
                cache_dir,
                work_dir,
                run=run_only is None or f"{t.source}/{t.template_id}" in run_only,
            )
            for t in items
        ]


# -- the table ------------------------------------------------------------------------------------------------


def totals(rows: list[Row]) -> dict[str, Any]:
    """Counts over ``rows``: templates, converted, supported, supported-and-ran (with its share), node types."""
    supported = [r for r in rows if r.supported and r.error != "not run (survey only)"]
    ran = [r for r in supported if r.ran]
    present: Counter[str] = Counter(t for r in rows for t in r.node_types)
    missing: Counter[str] = Counter(t for r in rows for t in r.missing)
    return {
        "templates": len(rows),
        "only known node types": sum(1 for r in rows if not r.missing),
        "converted": sum(1 for r in rows if r.converted),
        "supported families": len(supported),
        "supported and ran": len(ran),
        "ran share of supported": len(ran) / len(supported) if supported else 0.0,
        "node types used": len(present),
        "node types we have": len(present) - len(missing),
        "node uses covered": 1 - sum(missing.values()) / max(1, sum(present.values())),
        "missing ranked": missing.most_common(),
    }


def markdown(rows: list[Row], *, top_missing: int = 40) -> str:
    """The coverage table (one row per template) and totals per source, as Markdown."""
    lines = [
        "| source | template | node types | missing | converted | families | ran | error |",
        "|---" * 8 + "|",
    ]
    for r in sorted(rows, key=lambda r: (r.source, not r.supported, not r.ran, r.template_id)):
        lines.append(
            f"| {r.source} | {r.template_id} | {len(r.node_types)} | {len(r.missing)} | "
            f"{'yes' if r.converted else 'no'} | {', '.join(r.families) or '-'} | "
            f"{'yes' if r.ran else ('no' if r.supported and r.converted else '-')} | "
            f"{r.error.replace('|', '/')[:160]} |"
        )
    out = ["\n".join(lines), ""]
    groups = (
        sorted({r.source for r in rows}) + sorted({f"current/{r.bundle}" for r in rows if r.bundle}) + ["all"]
    )
    for source in groups:
        part = [r for r in rows if source in ("all", r.source, f"{r.source}/{r.bundle}")]
        t = totals(part)
        out.append(
            f"**{source}**: {t['templates']} templates; {t['only known node types']} use only node types "
            f"latentworks has; {t['converted']} convert; {t['supported families']} load only models of "
            f"supported families, of which {t['supported and ran']} ran end to end "
            f"({100 * t['ran share of supported']:.0f} %); node types: {t['node types we have']} of "
            f"{t['node types used']} ({100 * t['node uses covered']:.0f} % of node uses)."
        )
    ranked = totals(rows)["missing ranked"][:top_missing]
    out += ["", "Missing node types, by templates using them:", ""]
    out += ["| node type | templates |", "|---|---|"] + [f"| {n} | {c} |" for n, c in ranked]
    return "\n".join(out) + "\n"
