"""Executor: dependency order, ancestry-keyed caching, lazy inputs, cancellation, errors and events."""

from __future__ import annotations

import threading

from graph_toy_nodes import make_registry

from latentworks.graph import (
    Executor,
    InputSpec,
    NodeRegistry,
    NodeResult,
    NodeSpec,
    OutputSpec,
    png_metadata,
)


def run(executor, prompt, tmp_path, prompt_id="p1", cancel=None, extra_data=None):
    events = []
    kwargs = {"cancel": cancel} if cancel is not None else {}
    ctx = executor.new_context(
        prompt_id,
        on_event=lambda e, d: events.append((e, d)),
        output_dir=tmp_path,
        extra_data=extra_data or {},
        **kwargs,
    )
    return executor.execute(prompt, ctx), events


def two_branches(seed=1, prefix="p"):
    # 1 -> 3(Add) <- 2 ; 3 -> 5(Concat) <- 4(ToString of a seed constant) -> save
    return {
        "1": {"class_type": "Constant", "inputs": {"value": 10}},
        "2": {"class_type": "Constant", "inputs": {"value": 20}},
        "3": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": ["2", 0]}},
        "4": {"class_type": "Constant", "inputs": {"value": seed}},
        "5": {"class_type": "Add", "inputs": {"a": ["3", 0], "b": ["4", 0]}},
        "6": {"class_type": "ToString", "inputs": {"x": ["5", 0]}},
        "7": {"class_type": "SaveText", "inputs": {"text": ["6", 0], "filename_prefix": prefix}},
        "8": {"class_type": "Fail", "inputs": {"x": 1}},  # not needed by any output: never runs
    }


def test_order_values_and_only_needed_nodes(tmp_path):
    registry, runs = make_registry()
    result, events = run(Executor(registry), two_branches(seed=5), tmp_path)
    assert result.status == "success", result.error
    assert result.outputs["7"]["text"] == ["35"]
    assert (tmp_path / result.outputs["7"]["files"][0]["filename"]).read_text() == "35"
    pos = {n: i for i, n in enumerate(result.executed)}
    assert set(pos) == {"1", "2", "3", "4", "5", "6", "7"}
    for parent, child in [("1", "3"), ("2", "3"), ("3", "5"), ("4", "5"), ("5", "6"), ("6", "7")]:
        assert pos[parent] < pos[child]
    assert runs["Fail"] == 0
    names = [e for e, _ in events]
    assert (
        names[0] == "execution_start" and names[1] == "execution_cached" and names[-1] == "execution_success"
    )
    assert names.count("executing") == 7 and names.count("executed") == 1
    executed = next(d for e, d in events if e == "executed")
    assert executed == {"node": "7", "display_node": "7", "output": result.outputs["7"], "prompt_id": "p1"}


def test_changing_one_literal_reruns_only_dependents(tmp_path):
    registry, runs = make_registry()
    executor = Executor(registry)
    run(executor, two_branches(seed=1), tmp_path)
    before = runs.copy()
    result, events = run(executor, two_branches(seed=2), tmp_path, prompt_id="p2")
    assert result.status == "success"
    assert result.outputs["7"]["text"] == ["32"]
    delta = runs - before
    # Only the seed constant (4) and what depends on it (5, 6, 7) ran again; 1, 2, 3 came from the cache.
    assert delta == {"Constant": 1, "Add": 1, "ToString": 1, "SaveText": 1}
    assert sorted(result.executed) == ["4", "5", "6", "7"]
    assert result.cached == ["3"]  # the walk stops at the highest cached node
    cached_event = next(d for e, d in events if e == "execution_cached")
    assert cached_event["nodes"] == ["3"]
    # An identical re-run executes nothing and still reports the output node's ui.
    before = runs.copy()
    result, events = run(executor, two_branches(seed=2), tmp_path, prompt_id="p3")
    assert runs - before == {} and result.outputs["7"]["text"] == ["32"] and result.executed == []
    assert any(e == "executed" for e, _ in events)


def test_cache_is_lru_bounded(tmp_path):
    registry, runs = make_registry()
    executor = Executor(registry, cache_size=3)
    for seed in range(5):
        run(executor, two_branches(seed=seed), tmp_path)
    assert len(executor.cache) == 3


def test_lazy_inputs_only_evaluate_the_branch_needed(tmp_path):
    registry, runs = make_registry()
    prompt = {
        "1": {"class_type": "Constant", "inputs": {"value": 1}},
        "2": {"class_type": "Fail", "inputs": {"x": 2}},  # would fail if evaluated
        "3": {"class_type": "Choose", "inputs": {"flag": True, "on_true": ["1", 0], "on_false": ["2", 0]}},
        "4": {"class_type": "SaveText", "inputs": {"text": ["3", 0], "filename_prefix": "lazy"}},
    }
    result, _ = run(Executor(registry), prompt, tmp_path)
    assert result.status == "success" and result.outputs["4"]["text"] == ["1"]
    assert runs["Fail"] == 0 and runs["Constant"] == 1
    prompt["3"]["inputs"]["flag"] = False
    result, _ = run(Executor(registry), prompt, tmp_path)
    assert result.status == "error" and result.error["node_id"] == "2" and runs["Fail"] == 1


def test_node_error_is_structured(tmp_path):
    registry, _ = make_registry()
    prompt = {
        "1": {"class_type": "Fail", "inputs": {"x": 7}},
        "2": {"class_type": "SaveText", "inputs": {"text": ["1", 0], "filename_prefix": "x"}},
    }
    result, events = run(Executor(registry), prompt, tmp_path)
    assert result.status == "error"
    err = result.error
    assert err["node_id"] == "1" and err["node_type"] == "Fail"
    assert err["exception_type"].endswith("ValueError") and err["exception_message"] == "boom on 7"
    assert any("boom on 7" in line for line in err["traceback"])
    assert err["current_inputs"] == {"x": "7"}
    assert events[-1] == ("execution_error", err)


def test_bad_return_arity_is_an_error_not_a_crash(tmp_path):
    registry = NodeRegistry(
        [
            NodeSpec(name="Bad", execute=lambda ctx: (1, 2), outputs=(OutputSpec(type="INT"),)),
            NodeSpec(
                name="Out",
                execute=lambda ctx, x: NodeResult(ui={"x": [x]}),
                inputs=(InputSpec(name="x", type="INT"),),
                output_node=True,
            ),
        ]
    )
    result, _ = run(
        Executor(registry),
        {"1": {"class_type": "Bad", "inputs": {}}, "2": {"class_type": "Out", "inputs": {"x": ["1", 0]}}},
        tmp_path,
    )
    assert (
        result.status == "error" and "returned 2 values but declares 1" in result.error["exception_message"]
    )


def test_invalid_workflow_at_execution_is_an_error_event(tmp_path):
    registry, _ = make_registry()
    result, events = run(Executor(registry), {"1": "nonsense"}, tmp_path)
    assert result.status == "error" and result.error["exception_type"] == "ValidationError"
    assert events[-1][0] == "execution_error"


def test_cancel_inside_a_node(tmp_path):
    started = threading.Event()
    registry, runs = make_registry(slow_started=started)
    cancel = threading.Event()
    prompt = {
        "1": {"class_type": "Slow", "inputs": {"x": 1, "steps": 10_000, "delay": 0.001}},
        "2": {"class_type": "SaveText", "inputs": {"text": ["1", 0], "filename_prefix": "x"}},
    }
    executor = Executor(registry)
    box = {}
    thread = threading.Thread(target=lambda: box.update(r=run(executor, prompt, tmp_path, cancel=cancel)))
    thread.start()
    assert started.wait(5)
    cancel.set()
    thread.join(5)
    assert not thread.is_alive()
    result, events = box["r"]
    assert result.status == "interrupted" and result.error["node_id"] == "1"
    assert runs["SaveText"] == 0
    progress = [d for e, d in events if e == "progress"]
    assert 0 < len(progress) < 10_000 and progress[0] == {
        "value": 1,
        "max": 10_000,
        "prompt_id": "p1",
        "node": "1",
    }
    previews = [d for e, d in events if e == "preview"]
    assert previews and previews[0]["image_format"] == "PNG" and previews[0]["node"] == "1"
    assert events[-1][0] == "execution_interrupted"


def test_cancel_between_nodes(tmp_path):
    cancel = threading.Event()

    def first(ctx):
        cancel.set()  # cancelled after this node finishes; the next one must not start
        return (1,)

    ran = []
    registry = NodeRegistry(
        [
            NodeSpec(name="First", execute=first, outputs=(OutputSpec(type="INT"),)),
            NodeSpec(
                name="Second",
                execute=lambda ctx, x: ran.append(x) or NodeResult(ui={}),
                inputs=(InputSpec(name="x", type="INT"),),
                output_node=True,
            ),
        ]
    )
    prompt = {
        "1": {"class_type": "First", "inputs": {}},
        "2": {"class_type": "Second", "inputs": {"x": ["1", 0]}},
    }
    result, _ = run(Executor(registry), prompt, tmp_path, cancel=cancel)
    assert result.status == "interrupted" and ran == [] and result.executed == ["1"]


def test_hidden_inputs_and_png_metadata(tmp_path):
    seen = {}

    def out(ctx, x, prompt, extra_pnginfo, unique_id):
        seen.update(png_metadata(prompt, extra_pnginfo), uid=unique_id)
        return NodeResult(ui={})

    registry = NodeRegistry(
        [
            NodeSpec(
                name="Out",
                execute=out,
                inputs=(
                    InputSpec(name="x", type="INT"),
                    InputSpec(name="prompt", type="PROMPT", hidden=True),
                    InputSpec(name="extra_pnginfo", type="EXTRA_PNGINFO", hidden=True),
                    InputSpec(name="unique_id", type="UNIQUE_ID", hidden=True),
                ),
                output_node=True,
            )
        ]
    )
    prompt = {"5": {"class_type": "Out", "inputs": {"x": 3}}}
    result, _ = run(
        Executor(registry), prompt, tmp_path, extra_data={"extra_pnginfo": {"workflow": {"nodes": []}}}
    )
    assert result.status == "success"
    import json

    assert (
        json.loads(seen["prompt"]) == prompt
        and json.loads(seen["workflow"]) == {"nodes": []}
        and seen["uid"] == "5"
    )
