"""Editor (UI-format) workflows -> API prompts, against the real node schemas of the default registry.

Expected values are written by hand from what the editor shows (ComfyUI's behaviour), never computed by the
converter; each converted prompt is also checked by the independent validator.
"""

from __future__ import annotations

import pytest
from ui_workflow_samples import UIGraph, txt2img

from latentworks.graph import validate_prompt
from latentworks.graph.ui_workflow import (
    MissingNodeTypes,
    WorkflowConversionError,
    is_ui_workflow,
    ui_to_api,
)

SUBGRAPH_ID = "1f0c6e63-9a55-4f4e-9d0c-2f6a3c1e7b10"


@pytest.fixture(scope="module")
def registry():
    from latentworks.nodes import default_registry

    return default_registry()


def convert(registry, g: UIGraph) -> dict:
    api = ui_to_api(g.to_json(), registry)
    result = validate_prompt(registry, api)
    assert result.ok, result.response()
    return api


def test_txt2img_converts_with_seed_control_skipped_and_notes_dropped(registry) -> None:
    api = convert(registry, txt2img(seed=123, steps=2))
    assert set(api) == {"3", "4", "5", "6", "7", "8", "9"}  # Note 10 and MarkdownNote 11 are gone
    assert api["3"] == {
        "class_type": "KSampler",
        "inputs": {
            "model": ["4", 0],
            "seed": 123,
            "steps": 2,  # the "randomize" control value after the seed is skipped
            "cfg": 5.0,
            "sampler_name": "euler",
            "scheduler": "normal",
            "positive": ["6", 0],
            "negative": ["7", 0],
            "latent_image": ["5", 0],
            "denoise": 1.0,
        },
        "_meta": {"title": "KSampler"},
    }
    assert api["6"]["inputs"] == {"text": "a red apple", "clip": ["4", 1]}
    assert api["6"]["_meta"]["title"] == "Positive"
    assert api["5"]["inputs"] == {"width": 32, "height": 32, "batch_size": 1}
    assert api["9"]["inputs"] == {"images": ["8", 0], "filename_prefix": "ComfyUI"}
    assert is_ui_workflow(txt2img().to_json()) and not is_ui_workflow(api)


def test_ksampler_advanced_noise_seed_control_value_is_skipped(registry) -> None:
    g = txt2img()
    g.nodes = [n for n in g.nodes if n["id"] != 3]
    g.links = [link for link in g.links if 3 not in (link[1], link[3])]
    g.add(3, "KSamplerAdvanced", ["enable", 7, "fixed", 3, 6.5, "heun", "karras", 0, 3, "disable"], sockets=[
        ("model", "MODEL", False), ("positive", "CONDITIONING", False), ("negative", "CONDITIONING", False),
        ("latent_image", "LATENT", False), ("noise_seed", "INT", True)])  # fmt: skip
    for src, slot, name in [(4, 0, "model"), (6, 0, "positive"), (7, 0, "negative"), (5, 0, "latent_image")]:
        g.link(src, slot, 3, name)
    g.link(3, 0, 8, "samples")
    api = convert(registry, g)
    inputs = api["3"]["inputs"]
    assert (inputs["add_noise"], inputs["noise_seed"], inputs["steps"], inputs["cfg"]) == (
        "enable",
        7,
        3,
        6.5,
    )
    assert (inputs["sampler_name"], inputs["scheduler"]) == ("heun", "karras")
    assert (inputs["start_at_step"], inputs["end_at_step"], inputs["return_with_leftover_noise"]) == (
        0,
        3,
        "disable",
    )


def test_primitive_node_value_replaces_the_seed_widget(registry) -> None:
    g = txt2img(seed=5)
    g.add(20, "PrimitiveNode", [424242, "increment"], title="shared seed")
    g.link(20, 0, 3, "seed")  # the seed widget input now takes the link
    api = convert(registry, g)
    assert api["3"]["inputs"]["seed"] == 424242 and api["3"]["inputs"]["steps"] == 2
    assert "20" not in api


def test_reroute_chain_is_followed_to_the_real_source(registry) -> None:
    g = txt2img()
    g.node(3)["inputs"][0]["link"] = None
    g.links = [link for link in g.links if not (link[3] == 3 and link[4] == 0)]
    g.add(30, "Reroute")
    g.add(31, "Reroute")
    g.link(4, 0, 30, "")
    g.link(30, 0, 31, "")
    g.link(31, 0, 3, "model")
    api = convert(registry, g)
    assert api["3"]["inputs"]["model"] == ["4", 0]
    assert "30" not in api and "31" not in api


def test_bypassed_node_passes_inputs_through_by_type(registry) -> None:
    g = UIGraph()
    g.add(4, "CheckpointLoaderSimple", ["default"])
    g.add(40, "LoraLoader", ["missing.safetensors", 1.0, 1.0], mode=4)  # bypassed
    g.add(6, "CLIPTextEncode", ["x"])
    g.add(7, "CLIPTextEncode", [""])
    g.add(5, "EmptyLatentImage", [32, 32, 1])
    g.add(3, "KSampler", [1, "fixed", 2, 5.0, "euler", "normal", 1.0])
    g.add(8, "VAEDecode")
    g.add(9, "SaveImage", ["x"])
    g.link(4, 0, 40, "model")
    g.link(4, 1, 40, "clip")
    g.link(40, 0, 3, "model")  # MODEL out of the bypassed LoRA -> its MODEL input
    g.link(40, 1, 6, "clip")  # CLIP out -> its CLIP input
    g.link(40, 1, 7, "clip")
    for src, slot, name in [(6, 0, "positive"), (7, 0, "negative"), (5, 0, "latent_image")]:
        g.link(src, slot, 3, name)
    g.link(3, 0, 8, "samples")
    g.link(4, 2, 8, "vae")
    g.link(8, 0, 9, "images")
    api = convert(registry, g)
    assert "40" not in api
    assert api["3"]["inputs"]["model"] == ["4", 0]
    assert api["6"]["inputs"]["clip"] == ["4", 1] and api["7"]["inputs"]["clip"] == ["4", 1]


def test_muted_node_is_dropped_with_what_depends_only_on_it(registry) -> None:
    g = txt2img()
    g.add(12, "PreviewImage")
    g.add(13, "VAEDecode", mode=2)  # muted
    g.link(3, 0, 13, "samples")
    g.link(4, 2, 13, "vae")
    g.link(13, 0, 12, "images")
    api = convert(registry, g)
    assert "13" not in api and "12" not in api  # the preview needs the muted decode
    assert {"3", "8", "9"} <= set(api)  # the other branch still runs


def _subgraph_workflow(with_definition: bool = True) -> UIGraph:
    g = txt2img()
    g.node(3)["inputs"][1]["link"] = None  # positive now comes from the subgraph
    g.links = [link for link in g.links if not (link[3] == 3 and link[4] == 1)]
    g.nodes = [n for n in g.nodes if n["id"] != 6]
    g.add(12, SUBGRAPH_ID, [], sockets=[("clip", "CLIP", False)], outputs=["CONDITIONING"], title="Prompt")
    g.link(4, 1, 12, "clip")
    g.link(12, 0, 3, "positive")
    if with_definition:
        g.subgraphs.append(
            {
                "id": SUBGRAPH_ID,
                "name": "Prompt",
                "inputNode": {"id": -10},
                "outputNode": {"id": -20},
                "inputs": [{"id": "i0", "name": "clip", "type": "CLIP", "linkIds": [1]}],
                "outputs": [{"id": "o0", "name": "CONDITIONING", "type": "CONDITIONING", "linkIds": [2]}],
                "widgets": [],
                "nodes": [
                    {
                        "id": 5,
                        "type": "CLIPTextEncode",
                        "mode": 0,
                        "inputs": [{"name": "clip", "type": "CLIP", "link": 1}],
                        "outputs": [{"name": "CONDITIONING", "type": "CONDITIONING", "links": [2]}],
                        "widgets_values": ["inside the subgraph"],
                    },
                    {"id": 6, "type": "Note", "mode": 0, "widgets_values": ["hi"]},
                ],
                "links": [
                    {"id": 1, "origin_id": -10, "origin_slot": 0, "target_id": 5, "target_slot": 0, "type": "CLIP"},
                    {"id": 2, "origin_id": 5, "origin_slot": 0, "target_id": -20, "target_slot": 0,
                     "type": "CONDITIONING"},
                ],
            }
        )  # fmt: skip
    return g


def test_subgraph_is_expanded_inline_with_prefixed_ids(registry) -> None:
    api = convert(registry, _subgraph_workflow())
    assert api["12:5"]["class_type"] == "CLIPTextEncode"
    assert api["12:5"]["inputs"] == {"text": "inside the subgraph", "clip": ["4", 1]}
    assert api["3"]["inputs"]["positive"] == ["12:5", 0]
    assert "12" not in api and "12:6" not in api


def test_missing_subgraph_definition_is_a_clear_error(registry) -> None:
    with pytest.raises(WorkflowConversionError) as e:
        ui_to_api(_subgraph_workflow(with_definition=False).to_json(), registry)
    msg = str(e.value)
    assert "node 12" in msg and SUBGRAPH_ID in msg and "definitions.subgraphs" in msg
    assert not isinstance(e.value, MissingNodeTypes)


def test_unknown_node_types_are_all_collected(registry) -> None:
    g = txt2img()
    g.add(50, "FancyUpscaler", [2], title="Upscale it")
    g.add(51, "OtherCustomNode")
    g.add(52, "AlsoUnknownButMuted", mode=2)  # muted: never sent, so not reported
    with pytest.raises(MissingNodeTypes) as e:
        ui_to_api(g.to_json(), registry)
    assert [(m.node_id, m.class_type, m.title) for m in e.value.missing] == [
        ("50", "FancyUpscaler", "Upscale it"),
        ("51", "OtherCustomNode", "OtherCustomNode"),
    ]
    assert e.value.error() == {
        "type": "missing_node_type",
        "message": "Node 'Upscale it' not found. The custom node may not be installed.",
        "details": "Node ID '#50'",
        "extra_info": {"node_id": "50", "class_type": "FancyUpscaler", "node_title": "Upscale it"},
    }


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda w: w.update(links="nope"), "'links' must be a list"),
        (lambda w: w["nodes"][0].pop("type"), "node 4 has no 'type'"),
        (lambda w: w["links"].append([99, 4, "x", 3, 0, "MODEL"]), "non-integer"),
        (lambda w: w["nodes"].append(dict(w["nodes"][0])), "same id"),
        (lambda w: w["nodes"][4].update(inputs=[5]), "node 3 ('KSampler'"),
    ],
)
def test_malformed_workflows_name_the_problem(registry, mutate, expected) -> None:
    workflow = txt2img().to_json()
    mutate(workflow)
    with pytest.raises(WorkflowConversionError) as e:
        ui_to_api(workflow, registry)
    assert expected in str(e.value)


def test_a_widget_value_of_the_wrong_kind_is_left_to_the_validator(registry) -> None:
    g = txt2img()
    g.node(3)["widgets_values"] = [1, "fixed", 2, 5.0, 8, "normal", 1.0]  # sampler_name given as 8
    result = validate_prompt(registry, ui_to_api(g.to_json(), registry))
    assert not result.ok
    assert result.node_errors["3"]["errors"][0]["extra_info"]["input_name"] == "sampler_name"


def test_converter_is_torch_free() -> None:
    import subprocess
    import sys

    code = "import sys, latentworks.graph.ui_workflow; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_nested_subgraphs_cannot_blow_up_or_contain_themselves(registry) -> None:
    ids = [f"00000000-0000-4000-8000-{i:012d}" for i in range(6)]
    subgraphs = [
        {"id": ids[level], "name": f"level {level}", "links": [],
         "nodes": [{"id": k, "type": ids[level + 1], "mode": 0} for k in range(10)] if level < 5
         else [{"id": 1, "type": "EmptyLatentImage", "mode": 0, "widgets_values": [32, 32, 1]}]}
        for level in range(6)
    ]  # fmt: skip  # 10**5 nodes once expanded
    workflow = {
        "nodes": [{"id": 1, "type": ids[0], "mode": 0}],
        "links": [],
        "definitions": {"subgraphs": subgraphs},
    }
    with pytest.raises(WorkflowConversionError, match="more than 5000 nodes"):
        ui_to_api(workflow, registry)
    loop = {"id": ids[0], "name": "loop", "links": [], "nodes": [{"id": 1, "type": ids[0], "mode": 0}]}
    workflow = {
        "nodes": [{"id": 7, "type": ids[0], "mode": 0}],
        "links": [],
        "definitions": {"subgraphs": [loop]},
    }
    with pytest.raises(WorkflowConversionError, match="node 7:1 .* contain themselves"):
        ui_to_api(workflow, registry)


def test_subgraph_promoted_widget_and_bypassed_instance(registry) -> None:
    g = _subgraph_workflow()
    sub = g.subgraphs[0]
    sub["inputs"].append({"id": "i1", "name": "text", "type": "STRING", "linkIds": [3]})
    inner = sub["nodes"][0]
    inner["inputs"].append({"name": "text", "type": "STRING", "link": 3, "widget": {"name": "text"}})
    sub["links"].append({"id": 3, "origin_id": -10, "origin_slot": 1, "target_id": 5, "target_slot": 1,
                         "type": "STRING"})  # fmt: skip
    instance = g.node(12)
    instance["inputs"].append({"name": "text", "type": "STRING", "link": None, "widget": {"name": "text"}})
    instance["widgets_values"] = ["set on the subgraph node"]
    api = convert(registry, g)
    assert api["12:5"]["inputs"]["text"] == "set on the subgraph node"

    # Bypassed, the instance passes its CONDITIONING input through; it has none here, so KSampler's positive
    # is left out and the validator says so.
    instance["mode"] = 4
    api = ui_to_api(g.to_json(), registry)
    assert "12:5" not in api and "positive" not in api["3"]["inputs"]


def test_subgraph_input_the_instance_does_not_list_keeps_the_inner_widget(registry) -> None:
    """As image_z_image_turbo.json: the subgraph declares a 'text' input (promoted widget) but the instance
    lists only 'clip'; the inner node keeps its own widget value."""
    g = _subgraph_workflow()
    sub = g.subgraphs[0]
    sub["inputs"].insert(0, {"id": "i1", "name": "text", "type": "STRING", "linkIds": [3]})  # slot 0 now
    for link in sub["links"]:
        if link["origin_id"] == -10:
            link["origin_slot"] = 1  # clip moved to slot 1 of the subgraph's inputs
    inner = sub["nodes"][0]
    inner["inputs"].append({"name": "text", "type": "STRING", "link": 3, "widget": {"name": "text"}})
    sub["links"].append({"id": 3, "origin_id": -10, "origin_slot": 0, "target_id": 5, "target_slot": 1,
                         "type": "STRING"})  # fmt: skip
    api = convert(registry, g)  # the instance's only input, 'clip', is matched by name, not position
    assert api["12:5"]["inputs"] == {"clip": ["4", 1], "text": "inside the subgraph"}


def test_old_boolean_seed_control_and_missing_widget_values_take_defaults(registry) -> None:
    g = txt2img()
    g.node(3)["widgets_values"] = [5, True, 3, 6.0, "euler", "normal", 1.0]  # 0.1.x editors: a bool control
    g.node(9)["widgets_values"] = []  # saved before the node had widgets: the editor shows the default
    api = convert(registry, g)
    assert api["3"]["inputs"]["seed"] == 5 and api["3"]["inputs"]["steps"] == 3
    assert api["3"]["inputs"]["sampler_name"] == "euler" and api["3"]["inputs"]["denoise"] == 1.0
    assert api["9"]["inputs"]["filename_prefix"] == registry["SaveImage"].input("filename_prefix").default


def test_instance_widget_values_follow_the_definitions_promoted_inputs(registry) -> None:
    """As image-qwen_image_edit_2511_lora_inflation.json: the definition promotes two widgets ('text', then
    'strength'); the instance lists only 'strength' among its inputs but saves both values, in the
    definition's order. 'strength' must get the second value, not the first."""
    g = _subgraph_workflow()
    sub = g.subgraphs[0]
    sub["inputs"] += [
        {"id": "i1", "name": "text", "type": "STRING", "linkIds": [3]},
        {"id": "i2", "name": "strength", "type": "FLOAT", "linkIds": [4]},
    ]
    text_encode = sub["nodes"][0]
    text_encode["inputs"].append({"name": "text", "type": "STRING", "link": 3, "widget": {"name": "text"}})
    text_encode["outputs"][0]["links"] = [5]
    sub["nodes"].append(
        {
            "id": 7,
            "type": "ConditioningSetAreaStrength",
            "mode": 0,
            "inputs": [
                {"name": "conditioning", "type": "CONDITIONING", "link": 5},
                {"name": "strength", "type": "FLOAT", "link": 4, "widget": {"name": "strength"}},
            ],
            "outputs": [{"name": "CONDITIONING", "type": "CONDITIONING", "links": [2]}],
            "widgets_values": [1.0],
        }
    )
    sub["links"] = [
        {"id": 1, "origin_id": -10, "origin_slot": 0, "target_id": 5, "target_slot": 0, "type": "CLIP"},
        {"id": 3, "origin_id": -10, "origin_slot": 1, "target_id": 5, "target_slot": 1, "type": "STRING"},
        {"id": 4, "origin_id": -10, "origin_slot": 2, "target_id": 7, "target_slot": 1, "type": "FLOAT"},
        {"id": 5, "origin_id": 5, "origin_slot": 0, "target_id": 7, "target_slot": 0, "type": "CONDITIONING"},
        {"id": 2, "origin_id": 7, "origin_slot": 0, "target_id": -20, "target_slot": 0, "type": "CONDITIONING"},
    ]  # fmt: skip
    instance = g.node(12)
    instance["inputs"].append(
        {"name": "strength", "type": "FLOAT", "link": None, "widget": {"name": "strength"}}
    )
    instance["widgets_values"] = ["a promoted prompt", 0.25]
    api = convert(registry, g)
    assert api["12:5"]["inputs"]["text"] == "a promoted prompt"
    assert api["12:7"]["inputs"]["strength"] == 0.25
    assert api["12:7"]["inputs"]["conditioning"] == ["12:5", 0]
