"""ComfyUI's official workflow templates through the converter, when the PyPI package
``comfyui-workflow-templates`` (with its ``comfyui-workflow-templates-json`` bundle) is importable.

Nothing is installed for this test; without the package it is skipped. It reports how many templates use only
node types latentworks has, and checks that (a) no template crashes the converter, (b) every node of a type we
have carries exactly as many widget values as our schema implies (ComfyUI's editor wrote them, so a mismatch is
a schema that differs from ComfyUI's, like a missing control_after_generate), and (c) templates that convert
fail validation only on model files that are not installed here.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from latentworks.graph import validate_prompt
from latentworks.graph.ui_workflow import (
    CONTROL_VALUES,
    MissingNodeTypes,
    WorkflowConversionError,
    _widget_inputs,
    is_ui_workflow,
    ui_to_api,
)

MODEL_FILE_INPUTS = {"ckpt_name", "vae_name", "lora_name", "image", "control_net_name"}


def _templates() -> list[tuple[str, Any]]:
    templates = pytest.importorskip(
        "comfyui_workflow_templates",
        reason="the PyPI package comfyui-workflow-templates is not installed (optional; not a CI dependency)",
    )
    out = []
    for entry in templates.iter_templates():
        try:
            path = templates.get_asset_path(entry.template_id, f"{entry.template_id}.json")
        except (FileNotFoundError, KeyError):
            continue
        with open(path, encoding="utf-8") as f:
            out.append((entry.template_id, json.load(f)))
    if not out:
        pytest.skip("comfyui-workflow-templates is installed but its JSON bundle is not")
    return out


def _all_nodes(workflow: dict) -> Iterator[dict]:
    yield from workflow.get("nodes", [])
    for sub in (workflow.get("definitions") or {}).get("subgraphs") or []:
        yield from sub.get("nodes", [])


def test_official_templates_convert() -> None:
    from latentworks.nodes import default_registry

    registry = default_registry()
    counts: Counter[str] = Counter()
    wrong_widgets: list[str] = []
    invalid: list[str] = []
    for template_id, workflow in _templates():
        if not is_ui_workflow(workflow):
            counts["not a workflow (index files)"] += 1
            continue
        counts["workflows"] += 1
        for node in _all_nodes(workflow):
            spec = registry.get(node.get("type"))
            values = node.get("widgets_values")
            if spec is None or not isinstance(values, list):
                continue
            widgets = _widget_inputs(spec)
            expected = sum(1 + bool(i.extra.get("control_after_generate")) for i in widgets)
            uploads = sum(1 for i in widgets if i.extra.get("image_upload"))
            counts["nodes of our types"] += 1
            if len(values) not in (expected, expected + uploads):
                wrong_widgets.append(f"{template_id} node {node.get('id')} {spec.name}: {values}")
            controls = [v for v in values if isinstance(v, str) and v in CONTROL_VALUES]
            counts["seed control values"] += len(controls)
        try:
            api = ui_to_api(workflow, registry)
        except MissingNodeTypes:
            counts["use node types we lack"] += 1
            continue
        except WorkflowConversionError as e:
            counts["conversion errors"] += 1
            invalid.append(f"{template_id}: {e}")
            continue
        counts["convert"] += 1
        result = validate_prompt(registry, api)
        errors = [e for n in result.node_errors.values() for e in n["errors"]]
        if result.ok:
            counts["convert and validate"] += 1
        elif errors and all(
            e["type"] == "value_not_in_list" and e["extra_info"].get("input_name") in MODEL_FILE_INPUTS
            for e in errors
        ):
            counts["convert; only model files missing"] += 1
        else:
            invalid.append(f"{template_id}: {result.response()}")
    print("official templates:", dict(counts))
    assert not wrong_widgets, wrong_widgets[:10]
    assert not invalid, invalid[:10]
    assert counts["workflows"] > 0
