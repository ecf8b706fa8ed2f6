"""/object_info for the node types latentworks shares with ComfyUI reads like ComfyUI's: input names, order,
types, defaults, ranges and outputs, compared with comfy_schemas.json (transcribed from ComfyUI's public
sources, see its "_about"); and every seed input has ``control_after_generate`` (UI-format workflows store a
widget value for it, so a missing one shifts every widget after the seed)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from latentworks.graph.registry import node_info
from latentworks.nodes import default_registry

SCHEMAS: dict[str, Any] = json.loads((Path(__file__).parent / "comfy_schemas.json").read_text())
SCHEMAS.pop("_about")

KNOWN_DIFFERENCES: dict[tuple[str, str], str] = {
    ("SaveImage", "filename_prefix.default"): "our saved files are named latentworks_*, ComfyUI's ComfyUI_*",
    ("SaveImage", "output"): "ComfyUI's newest SaveImage passes its images through; older ComfyUI and the "
    "templates have no output there, and latentworks keeps SaveImage a pure output node",
    ("EmptyLatentImage", "width.default"): "the bundled default model makes 64 px images, and the editor's "
    "starting graph takes its size from this default (ComfyUI: 1024)",
    ("EmptyLatentImage", "height.default"): "as width",
}
"""Deliberate differences, each with its reason: (node, what) -> why."""

SEED_NAMES = ("seed", "noise_seed")


@pytest.fixture(scope="module")
def info() -> dict[str, dict[str, Any]]:
    registry = default_registry()
    return {name: node_info(registry.get(name)) for name in registry.names()}


def _type(entry: list[Any]) -> str:
    return "COMBO" if isinstance(entry[0], list) or entry[0] == "COMBO" else str(entry[0])


def _same_number(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return bool(a == b)


def schema_differences(name: str, ours: dict[str, Any], theirs: dict[str, Any]) -> list[str]:
    """Every way our object_info entry differs from ComfyUI's (names, order, types, defaults, min/max,
    control_after_generate, outputs), as readable lines."""
    problems: list[str] = []

    def note(what: str, text: str) -> None:
        if (name, what) not in KNOWN_DIFFERENCES:
            problems.append(f"{name}.{what}: {text}")

    for section in ("required", "optional"):
        want = theirs.get(section, [])
        have = ours["input"].get(section, {})
        want_names = [n for n, _, _ in want]
        if list(have) != want_names:
            note(f"{section}", f"inputs {list(have)} != ComfyUI's {want_names}")
            continue
        for input_name, type_, opts in want:
            entry = have[input_name]
            got_opts = entry[1] if len(entry) > 1 and isinstance(entry[1], dict) else {}
            if _type(entry) != type_:
                note(f"{input_name}.type", f"{_type(entry)} != {type_}")
            if type_ == "COMBO" and "default" in opts:
                default = got_opts.get(
                    "default", entry[0][0] if isinstance(entry[0], list) and entry[0] else None
                )
                if default != opts["default"]:
                    note(f"{input_name}.default", f"{default!r} != {opts['default']!r}")
            if type_ == "COMBO" and "options" in opts:  # a fixed list of choices, where the data gives one
                choices = entry[0] if isinstance(entry[0], list) else got_opts.get("options")
                if list(choices or []) != opts["options"]:
                    note(f"{input_name}.options", f"{choices!r} != {opts['options']!r}")
            for key in ("default", "min", "max") if type_ != "COMBO" else ():
                if key in opts and not _same_number(got_opts.get(key), opts[key]):
                    note(f"{input_name}.{key}", f"{got_opts.get(key)!r} != {opts[key]!r}")
            if opts.get("control_after_generate") and not got_opts.get("control_after_generate"):
                note(f"{input_name}.control_after_generate", "missing")
    if ours["output"] != theirs["output"]:
        note("output", f"{ours['output']} != {theirs['output']}")
    return problems


def test_shared_nodes_match_comfyui_schemas(info) -> None:
    shared = sorted(set(info) & set(SCHEMAS))
    assert len(shared) >= 60, f"only {len(shared)} shared node types found; is the registry complete?"
    problems = [p for name in shared for p in schema_differences(name, info[name], SCHEMAS[name])]
    assert not problems, "object_info differs from ComfyUI's:\n" + "\n".join(problems)


def test_every_seed_input_has_control_after_generate(info) -> None:
    seeds = [
        (name, inp, entry)
        for name, node in info.items()
        for section in ("required", "optional")
        for inp, entry in node["input"].get(section, {}).items()
        if inp in SEED_NAMES and _type(entry) == "INT"
    ]
    assert len(seeds) >= 4  # KSampler, KSamplerAdvanced, SamplerCustom, RandomNoise at least
    missing = [f"{name}.{inp}" for name, inp, entry in seeds if not entry[1].get("control_after_generate")]
    assert not missing, f"seed inputs without control_after_generate: {missing}"


def test_the_comparison_catches_differences(info) -> None:
    """The checker has teeth: a renamed, reordered or re-defaulted input is reported."""
    theirs = SCHEMAS["KSampler"]
    assert schema_differences("KSampler", info["KSampler"], theirs) == []
    swapped = json.loads(json.dumps(theirs))
    swapped["required"][2], swapped["required"][3] = swapped["required"][3], swapped["required"][2]
    assert schema_differences("KSampler", info["KSampler"], swapped)
    other_default = json.loads(json.dumps(theirs))
    other_default["required"][2][2]["default"] = 21
    assert any("steps.default" in p for p in schema_differences("KSampler", info["KSampler"], other_default))
    no_cag = json.loads(json.dumps(info["KSampler"]))
    no_cag["input"]["required"]["seed"][1].pop("control_after_generate")
    assert any("control_after_generate" in p for p in schema_differences("KSampler", no_cag, theirs))
