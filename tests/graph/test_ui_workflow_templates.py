"""ComfyUI's official workflow templates through the converter: the current set (comfyui-workflow-templates
0.11.97's JSON, from ``comfyui-workflow-templates-core`` + ``-json``) and the classic one (0.1.95), both pinned in
the ``test`` extra; without them the test is skipped. It reports how many templates use only
node types latentworks has, and checks that (a) no template crashes the converter, (b) every node of a type we
have carries exactly as many widget values as our schema implies (ComfyUI's editor wrote them, so a mismatch is
a schema that differs from ComfyUI's, like a missing control_after_generate), and (c) templates that convert
fail validation only on model files that are not installed here.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from latentworks.graph import validate_prompt
from latentworks.graph.ui_workflow import (
    CONTROL_VALUES,
    MissingNodeTypes,
    WorkflowConversionError,
    is_ui_workflow,
    ui_to_api,
    widget_values_by_name,
)

MODEL_FILE_INPUTS = {
    "ckpt_name", "vae_name", "lora_name", "image", "unet_name", "clip_name", "clip_name1", "clip_name2",
    "clip_name3", "control_net_name",
}  # fmt: skip


def _templates() -> list[tuple[str, Any]]:
    from support.template_coverage import templates

    found = [(f"{t.source}/{t.template_id}", t.workflow) for t in templates()]
    if not found:
        pytest.skip("comfyui-workflow-templates(-core/-json) are not installed (pip install -e '.[test]')")
    return found


def _fits(inp: Any, value: Any) -> bool:
    """Whether a widget value has the kind ``inp`` takes (combo values in a fixed choice list)."""
    if inp.type in ("INT", "FLOAT"):
        return isinstance(value, int | float) and not isinstance(value, bool)
    if inp.type == "BOOLEAN":
        return isinstance(value, bool)
    if inp.type == "STRING":
        return isinstance(value, str)
    if inp.type == "COMBO" and isinstance(inp.choices, list | tuple) and inp.choices:
        # a choice we lack (a sampler such as dpmpp_3m_sde_gpu) is a missing feature, counted apart; a
        # value of another kind (a number where a sampler name belongs) is a shifted widget
        return isinstance(value, type(inp.choices[0]))
    return True


def _all_nodes(workflow: dict) -> Iterator[dict]:
    yield from workflow.get("nodes", [])
    for sub in (workflow.get("definitions") or {}).get("subgraphs") or []:
        yield from sub.get("nodes", [])


KNOWN_FAULTS: tuple[str, ...] = ()


def test_official_templates_convert() -> None:
    from latentworks.nodes import default_registry

    registry = default_registry()
    counts: Counter[str] = Counter()
    wrong_widgets: list[str] = []
    unknown_choices: Counter[str] = Counter()
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
            counts["nodes of our types"] += 1
            # Read by position, every value must fit its input's kind: a schema whose widgets differ from
            # ComfyUI's (order, a missing control_after_generate) shifts values onto the wrong inputs. Fewer
            # values are fine (inputs added since the template was saved take their defaults), and so are
            # trailing extras (display-only widgets such as PreviewAny's).
            for name, value in widget_values_by_name(spec, values).items():
                inp = spec.input(name)
                if inp.type == "COMBO" and isinstance(inp.choices, list | tuple) and value not in inp.choices:
                    unknown_choices[f"{spec.name}.{name}={value}"] += 1
                if not _fits(inp, value):
                    wrong_widgets.append(f"{template_id} node {node.get('id')} {spec.name}.{name}: {value!r}")
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
        elif errors and all(e["type"] == "value_not_in_list" for e in errors):
            counts["convert; model files or choices we lack (see above)"] += 1
        else:
            invalid.append(f"{template_id}: {result.response()}")
    print("official templates:", dict(counts))
    print(
        "choices we lack:", [c for c in unknown_choices.most_common() if "." not in c[0].split("=")[1]][:20]
    )
    assert not wrong_widgets, wrong_widgets[:10]
    # Known converter fault, kept visible: this template's subgraph instance lists only one of its seven
    # promoted widgets among its inputs, and the converter counts widget values by the instance's inputs, so
    # LoraLoaderModelOnly.strength_model receives the prompt string. When it is fixed, this assertion fails:
    # remove the template from KNOWN_FAULTS.
    known = [i for i in invalid if i.split(":", 1)[0] in KNOWN_FAULTS]
    assert sorted(i.split(":", 1)[0] for i in known) == sorted(KNOWN_FAULTS), known
    invalid = [i for i in invalid if i.split(":", 1)[0] not in KNOWN_FAULTS]
    assert not invalid, invalid[:10]
    assert counts["workflows"] > 0
