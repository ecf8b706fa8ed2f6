"""Validation of API-format workflows: each error kind, in ComfyUI's shape, and never raising."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from graph_toy_nodes import make_registry
from hypothesis import given, settings
from hypothesis import strategies as st

from latentworks.graph import InputSpec, NodeRegistry, NodeSpec, OutputSpec, node_info, validate_prompt


@pytest.fixture
def registry():
    return make_registry()[0]


def chain(value=1, prefix="out"):
    return {
        "1": {"class_type": "Constant", "inputs": {"value": value}},
        "2": {"class_type": "ToString", "inputs": {"x": ["1", 0]}},
        "3": {"class_type": "SaveText", "inputs": {"text": ["2", 0], "filename_prefix": prefix}},
    }


def error_types(result, node_id):
    return [e["type"] for e in result.node_errors[node_id]["errors"]]


def test_valid_chain_is_normalised(registry):
    result = validate_prompt(registry, chain())
    assert result.ok and result.error is None and result.node_errors == {}
    assert result.outputs == ["3"]
    assert result.prompt["2"]["inputs"]["x"] == ("1", 0)
    assert list(result.prompt) == ["1", "2", "3"]  # topological order


def test_missing_required_input(registry):
    p = chain()
    del p["2"]["inputs"]["x"]
    r = validate_prompt(registry, p)
    assert not r.ok
    assert r.error["type"] == "prompt_outputs_failed_validation"
    assert error_types(r, "2") == ["required_input_missing"]
    err = r.node_errors["2"]["errors"][0]
    assert err["details"] == "x" and err["extra_info"]["input_name"] == "x"
    assert r.node_errors["2"]["dependent_outputs"] == ["3"]
    assert r.node_errors["2"]["class_type"] == "ToString"


def test_wrong_link_type(registry):
    p = {
        "1": {"class_type": "Constant", "inputs": {"value": 1}},
        "2": {"class_type": "UseModel", "inputs": {"model": ["1", 0], "seed": 3}},
        "3": {"class_type": "SaveText", "inputs": {"text": ["2", 0], "filename_prefix": "x"}},
    }
    r = validate_prompt(registry, p)
    assert error_types(r, "2") == ["return_type_mismatch"]
    assert r.node_errors["2"]["errors"][0]["extra_info"]["received_type"] == "INT"


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        (1001, "value_bigger_than_max"),
        (-1001, "value_smaller_than_min"),
        ("abc", "invalid_input_type"),
        (True, "invalid_input_type"),
        (10**400, "value_bigger_than_max"),
        ([1, 2, 3], "invalid_input_type"),
    ],
)
def test_literal_checks(registry, value, kind):
    r = validate_prompt(registry, chain(value=value))
    assert error_types(r, "1") == [kind]
    json.dumps(r.response())  # always serialisable


def test_literal_coercion(registry):
    r = validate_prompt(registry, chain(value="12"))
    assert r.ok and r.prompt["1"]["inputs"]["value"] == 12
    r = validate_prompt(registry, chain(value=7.0))
    assert (
        r.ok and r.prompt["1"]["inputs"]["value"] == 7 and isinstance(r.prompt["1"]["inputs"]["value"], int)
    )
    assert error_types(validate_prompt(registry, chain(value=7.5)), "1") == ["invalid_input_type"]


def test_unknown_choice_and_callable_choices():
    files = ["a.safetensors"]
    registry = make_registry(checkpoints=files)[0]
    p = {
        "1": {"class_type": "LoadModel", "inputs": {"ckpt_name": "b.safetensors"}},
        "2": {"class_type": "UseModel", "inputs": {"model": ["1", 0], "seed": 1}},
        "3": {"class_type": "SaveText", "inputs": {"text": ["2", 0], "filename_prefix": "x"}},
    }
    assert error_types(validate_prompt(registry, p), "1") == ["value_not_in_list"]
    files.append("b.safetensors")  # the callable is evaluated at validation time
    assert validate_prompt(registry, p).ok
    assert node_info(registry["LoadModel"])["input"]["required"]["ckpt_name"][0] == files


def test_unknown_node_type_and_links(registry):
    p = chain()
    p["9"] = {"class_type": "NoSuchNode", "inputs": {}}
    r = validate_prompt(registry, p)
    assert error_types(r, "9") == ["missing_node_type"]
    p = chain()
    p["2"]["inputs"]["x"] = ["42", 0]
    r = validate_prompt(registry, p)
    assert (
        error_types(r, "2") == ["bad_linked_input"]
        and "does not exist" in r.node_errors["2"]["errors"][0]["message"]
    )
    p = chain()
    p["2"]["inputs"]["x"] = ["1", 5]
    assert error_types(validate_prompt(registry, p), "2") == ["bad_linked_input"]


def test_link_ids_may_be_ints(registry):
    p = chain()
    p["2"]["inputs"]["x"] = [1, 0]
    assert validate_prompt(registry, p).ok


def test_cycle(registry):
    p = {
        "1": {"class_type": "Add", "inputs": {"a": ["2", 0], "b": 1}},
        "2": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": 1}},
        "3": {"class_type": "ToString", "inputs": {"x": ["2", 0]}},
        "4": {"class_type": "SaveText", "inputs": {"text": ["3", 0], "filename_prefix": "x"}},
    }
    r = validate_prompt(registry, p)
    assert not r.ok
    assert {"1", "2"} <= set(r.node_errors)
    assert all("dependency_cycle" in error_types(r, n) for n in ("1", "2"))


def test_no_output_node(registry):
    r = validate_prompt(registry, {"1": {"class_type": "Constant", "inputs": {"value": 1}}})
    assert r.error["type"] == "prompt_no_outputs" and r.node_errors == {}


def test_only_needed_nodes_are_checked(registry):
    p = chain()
    p["8"] = {"class_type": "Add", "inputs": {}}  # broken but feeds no output
    assert validate_prompt(registry, p).ok


@pytest.mark.parametrize(
    "garbage",
    [
        None,
        1,
        "x",
        [],
        [1, 2],
        {"1": None},
        {"1": []},
        {"1": {"class_type": 5}},
        {"1": {"class_type": "SaveText"}},
        {"1": {"class_type": "SaveText", "inputs": []}},
        {"1": {"class_type": "SaveText", "inputs": {"text": [[1], 0]}}},
    ],
)
def test_garbage_is_reported_not_raised(registry, garbage):
    r = validate_prompt(registry, garbage)
    assert not r.ok and r.error["type"] and isinstance(r.error["message"], str)
    json.dumps(r.response())


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=4), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["1", "2", "3", "x"]),
        st.fixed_dictionaries(
            {
                "class_type": st.sampled_from(["Constant", "Add", "ToString", "SaveText", "Choose", "Nope"])
                | json_values,
                "inputs": st.dictionaries(
                    st.sampled_from(["value", "a", "b", "x", "text", "flag", "on_true", "filename_prefix"]),
                    json_values
                    | st.tuples(st.sampled_from(["1", "2", "3", "9"]), st.integers(-2, 3)).map(list),
                ),
            }
        )
        | json_values,
        max_size=4,
    )
    | json_values
)
def test_random_workflows_never_raise(prompt):
    registry = make_registry()[0]
    r = validate_prompt(registry, prompt)
    json.dumps(r.response())
    assert r.ok == (r.error is None)


def test_object_info_shape(registry):
    info = registry.object_info()
    save = info["SaveText"]
    assert save["output_node"] is True and save["output"] == [] and save["category"] == "toy/output"
    assert save["input"]["hidden"] == {"prompt": "PROMPT"}
    assert save["input_order"] == {"required": ["text", "filename_prefix"], "hidden": ["prompt"]}
    assert info["Slow"]["input"]["required"]["delay"] == [
        "FLOAT",
        {"default": 0.01, "min": 0.0, "max": 10.0, "step": 0.01},
    ]
    assert info["Choose"]["input"]["required"]["on_true"] == ["*", {"lazy": True}]
    assert info["UseModel"]["input"]["required"]["seed"][1]["control_after_generate"] is True
    assert info["Concat"]["input"]["optional"] == {"sep": ["STRING", {"default": ""}]}
    assert info["Add"]["output"] == ["INT"] and info["Add"]["output_name"] == ["INT"]
    assert info["Add"]["output_is_list"] == [False]
    json.dumps(info)


def test_spec_errors_are_explicit():
    with pytest.raises(ValueError, match="needs choices"):
        InputSpec(name="x", type="COMBO")
    with pytest.raises(ValueError, match="lazy"):
        NodeSpec(name="N", execute=lambda ctx: (), inputs=(InputSpec(name="x", type="INT", lazy=True),))
    registry = NodeRegistry()
    spec = NodeSpec(name="N", execute=lambda ctx: (1,), outputs=(OutputSpec(type="INT"),))
    registry.register(spec)
    with pytest.raises(ValueError, match="already registered"):
        registry.register(spec)
    with pytest.raises(KeyError, match="unknown node type"):
        registry["Missing"]


def test_graph_package_never_imports_torch():
    code = "import sys, latentworks.graph, latentworks.graph.executor; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
