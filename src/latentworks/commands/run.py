"""``latentworks run WORKFLOW``: run a ComfyUI-style workflow headless, through the server's executor and nodes.

WORKFLOW is an editor (UI-format) JSON file, an API-format JSON file, or a PNG that a workflow saved (its
``prompt`` text chunk is used, else its ``workflow`` chunk). Editor workflows are converted with
:func:`latentworks.graph.ui_workflow.ui_to_api`; ``--set NODE.INPUT=VALUE`` then changes inputs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from latentworks.cli import UserError


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "run",
        help="run a ComfyUI-style workflow (editor or API JSON, or a PNG it saved) headless",
        description="Run a workflow without the server: the same nodes and executor as 'latentworks serve'. "
        "WORKFLOW is the JSON the editor saves (Workflow > Save), the API-format JSON (Export (API)), or a "
        "PNG written by SaveImage (its embedded 'prompt', else 'workflow', is run). Images from SaveImage "
        "and PreviewImage are written to --output-dir.",
        epilog="examples:\n"
        "  latentworks run txt2img.json\n"
        "  latentworks run txt2img.json --set 3.seed=42 --set 3.steps=30\n"
        "  latentworks run txt2img.json --set Positive.text='a red apple' --set KSampler.cfg=6.5\n"
        "  latentworks run outputs/ComfyUI_00001_.png --output-dir again   # re-run a saved image\n"
        "  latentworks run flow.json --models-dir ~/models --input-dir ~/pictures\n"
        "--set NODE.INPUT=VALUE: NODE is a node id, or a title or class name used by one node only; VALUE is\n"
        'read as JSON when it parses (42, 6.5, true, ["4", 0]) and as text otherwise. Docs: docs/workflows.md.',
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("workflow", type=Path, metavar="WORKFLOW", help="editor or API workflow JSON, or a PNG")
    p.add_argument(
        "--output-dir",
        type=Path,
        default=Path("outputs"),
        help="where SaveImage/PreviewImage write their images (default: %(default)s)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        dest="overrides",
        metavar="NODE.INPUT=VALUE",
        help="change one input before running (repeatable; default: none, the workflow's own values); see the examples",
    )
    p.add_argument(
        "--models-dir",
        type=Path,
        default=Path("models"),
        help="model folders: MODELS_DIR/checkpoints/NAME/model.json (default: %(default)s)",
    )
    p.add_argument(
        "--input-dir",
        type=Path,
        default=Path("input"),
        help="images LoadImage can read (default: %(default)s)",
    )
    p.add_argument("--device", default="cpu", help="torch device for models (default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bar; print only the files written")
    return p


# -- loading ---------------------------------------------------------------------------------------------


def _parse_json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as e:
        raise UserError(f"{where} is not valid JSON ({e})") from None


def load_workflow(path: Path) -> tuple[Any, Any]:
    """(API prompt or editor workflow, editor workflow or None) read from a JSON file or a PNG."""
    if not path.is_file():
        raise UserError(f"no such workflow file: {path}")
    if path.suffix.lower() == ".png":
        from latentworks.pipelines.metadata import read_text_chunks

        try:
            chunks = read_text_chunks(path)
        except OSError as e:
            raise UserError(f"{path}: cannot read the image ({e})") from None
        workflow = (
            _parse_json(chunks["workflow"], f"{path}: the 'workflow' text chunk")
            if "workflow" in chunks
            else None
        )
        if "prompt" in chunks:
            return _parse_json(chunks["prompt"], f"{path}: the 'prompt' text chunk"), workflow
        if workflow is not None:
            return workflow, workflow
        raise UserError(
            f"{path} holds no 'prompt' or 'workflow' text chunk (only images that SaveImage wrote do)"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {path} ({e})") from None
    data = _parse_json(text, str(path))
    return data, data if isinstance(data, Mapping) and "nodes" in data else None


def to_api(data: Any, registry: Any, where: str) -> dict[str, dict[str, Any]]:
    """An API prompt from either format (editor workflows are converted)."""
    from latentworks.graph.ui_workflow import WorkflowConversionError, is_ui_workflow, ui_to_api

    if is_ui_workflow(data):
        try:
            return ui_to_api(data, registry)
        except WorkflowConversionError as e:
            raise UserError(f"{where}: {e}") from None
    if isinstance(data, Mapping) and isinstance(data.get("prompt"), Mapping):
        data = data["prompt"]  # a saved POST /prompt body
    if not isinstance(data, Mapping) or not data or not all(isinstance(v, Mapping) for v in data.values()):
        raise UserError(
            f"{where}: not a workflow: expected the editor's JSON (with 'nodes' and 'links') or the API format "
            '({"3": {"class_type": "KSampler", "inputs": {...}}, ...})'
        )
    for node_id, node in data.items():
        class_type = node.get("class_type")
        if isinstance(class_type, str) and class_type not in registry:
            raise UserError(
                f"{where}: node {node_id} has type {class_type!r}, which latentworks does not have; "
                "'latentworks info' lists the node types"
            )
    return {str(k): {**v, "inputs": dict(v.get("inputs") or {})} for k, v in data.items()}


# -- --set -----------------------------------------------------------------------------------------------


def _find_node(prompt: Mapping[str, Mapping[str, Any]], name: str) -> str:
    if name in prompt:
        return name
    for key in ("title", "class"):
        found = [
            node_id
            for node_id, node in prompt.items()
            if (
                (node.get("_meta") or {}).get("title") == name
                if key == "title"
                else node.get("class_type") == name
            )
        ]
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise UserError(
                f"--set: {len(found)} nodes have the {key} {name!r} (ids {', '.join(sorted(found))}); "
                "use the node id instead"
            )
    listing = ", ".join(f"{i} ({n.get('class_type')})" for i, n in list(prompt.items())[:20])
    raise UserError(f"--set: no node with id, title or class {name!r}; the nodes are: {listing}")


def apply_overrides(prompt: dict[str, dict[str, Any]], overrides: list[str], registry: Any) -> None:
    """Apply ``NODE.INPUT=VALUE`` strings (VALUE parsed as JSON when it parses, else kept as text)."""
    for item in overrides:
        target, sep, raw = item.partition("=")
        node_name, dot, input_name = target.rpartition(".")
        if not sep or not dot or not node_name or not input_name:
            raise UserError(
                f"--set {item!r}: write NODE.INPUT=VALUE, e.g. --set 3.seed=42 or KSampler.steps=30"
            )
        node_id = _find_node(prompt, node_name)
        node = prompt[node_id]
        spec = registry.get(node.get("class_type"))
        if spec is not None and spec.input(input_name) is None:
            names = ", ".join(i.name for i in spec.visible_inputs)
            raise UserError(
                f"--set {item!r}: node {node_id} ({spec.name}) has no input {input_name!r}; its inputs: {names}"
            )
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        node["inputs"][input_name] = value


# -- running ---------------------------------------------------------------------------------------------


def _validation_message(result: Any) -> str:
    """One line from a failed validation: the first node error, or the top-level one."""
    for node_id, entry in result.node_errors.items():
        for err in entry.get("errors", []):
            return f"node {node_id} ({entry.get('class_type')}): {err['message']}"
    err = result.error or {}
    details = f" ({err['details']})" if err.get("details") else ""
    return f"{err.get('message', 'the workflow is not valid')}{details}"


def run(args: argparse.Namespace) -> int:
    from latentworks.commands.quiet import quiet_libraries

    with quiet_libraries(True):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from latentworks.graph import Executor, validate_prompt
    from latentworks.nodes import default_registry
    from latentworks.nodes.guards import payload_nbytes

    registry = default_registry(args.models_dir, args.input_dir)
    data, workflow = load_workflow(args.workflow)
    prompt = to_api(data, registry, str(args.workflow))
    apply_overrides(prompt, args.overrides, registry)
    checked = validate_prompt(registry, prompt)
    if not checked.ok:
        raise UserError(f"{args.workflow}: {_validation_message(checked)}")
    try:
        args.output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"--output-dir {args.output_dir}: {e}") from None

    executor = Executor(registry, sizer=payload_nbytes)
    bar: Any = None
    names = {node_id: node["class_type"] for node_id, node in prompt.items()}

    def on_event(event: str, data: dict[str, Any]) -> None:
        nonlocal bar
        if args.quiet:
            return
        if event == "executing" and data.get("node") is not None:
            if bar is not None:
                bar.close()
                bar = None
            print(f"node {data['node']} {names.get(data['node'], '')}", file=sys.stderr)
        elif event == "progress":
            if bar is None:
                bar = tqdm(
                    total=int(data["max"]),
                    desc=f"  {names.get(str(data.get('node')), 'progress')}",
                    unit="step",
                )
            bar.n = int(data["value"])
            bar.refresh()

    extra = {"extra_pnginfo": {"workflow": workflow}} if workflow is not None else {}
    ctx = executor.new_context(
        f"run-{int(time.time())}",
        on_event=on_event,
        device=args.device,
        output_dir=args.output_dir,
        temp_dir=args.output_dir,
        input_dir=args.input_dir,
        extra_data=extra,
    )
    try:
        result = executor.execute(prompt, ctx)
    finally:
        if bar is not None:
            bar.close()
    if result.status != "success":
        err = result.error or {}
        where = (
            f"node {err.get('node_id')} ({err.get('node_type')})" if err.get("node_id") else "the workflow"
        )
        message = err.get("exception_message") or result.status
        print(f"latentworks run: error: {where}: {str(message).strip().splitlines()[0]}", file=sys.stderr)
        return 1
    written = 0
    for ui in result.outputs.values():
        for item in ui.get("images", []) if isinstance(ui, Mapping) else []:
            print(Path(args.output_dir) / item.get("subfolder", "") / item["filename"])
            written += 1
    if written == 0:
        print("the workflow ran; it has no image outputs (add SaveImage to write files)", file=sys.stderr)
    return 0
