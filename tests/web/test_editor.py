"""The browser editor, driven in Debian's Chromium through npm playwright-core (tests/web/editor_e2e.mjs).

Against a fake ComfyUI-compatible server (tests/web/fake_comfy.py) it checks the default graph, widgets,
typed sockets, undo, node_errors, queueing in ComfyUI's API format, progress/previews over the WebSocket,
result images, save/load and restoring a graph from a dropped PNG. A second test runs the editor against the
real server (latentworks.server.create_app). Set-up: `bash scripts/bootstrap.sh --test` (or
scripts/bootstrap_web.sh) installs chromium and playwright-core and builds the editor.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from fake_comfy import OBJECT_INFO, FakeComfyServer

REPO = Path(__file__).resolve().parents[2]
STATIC = REPO / "src" / "latentworks" / "server" / "static"
SCRIPT = Path(__file__).with_name("editor_e2e.mjs")
CHROMIUM = Path("/usr/bin/chromium")
DEFAULT_CLASSES = [
    "CLIPTextEncode",
    "CLIPTextEncode",
    "CheckpointLoaderSimple",
    "EmptyLatentImage",
    "KSampler",
    "SaveImage",
    "VAEDecode",
]
POSITIVE = "a red apple, google style"


def _run_browser(url: str, out_dir: Path, mode: str, *extra: str, timeout: float = 240) -> dict:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: install Node.js 20+ and run `bash scripts/bootstrap_web.sh`")
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: run `bash scripts/bootstrap_web.sh` (apt-get install chromium)")
    if not (REPO / "web" / "node_modules" / "playwright-core").is_dir():
        pytest.fail("npm playwright-core is not installed in web/: run `bash scripts/bootstrap_web.sh`")
    if not (STATIC / "index.html").is_file():
        pytest.fail(
            f"the editor is not built ({STATIC}/index.html missing): run `bash scripts/bootstrap_web.sh`"
        )
    proc = subprocess.run(
        [node, str(SCRIPT), url, str(out_dir), mode, *extra], capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, f"browser script failed:\n{proc.stderr[-4000:]}\n{proc.stdout[-2000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_built_editor_is_small_and_names_no_external_host():
    index = (STATIC / "index.html").read_text()
    refs = re.findall(r'(?:src|href)="([^"]+)"', index)
    assert "./assets/editor.js" in refs and "./assets/editor.css" in refs, refs
    total = 0
    for path in STATIC.rglob("*"):
        if path.is_file():
            total += path.stat().st_size
            text = path.read_text(errors="replace")
            # XML namespace names (w3.org) are identifiers, never fetched; any other absolute URL is a leak.
            urls = [u for u in re.findall(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text) if "w3.org" not in u]
            assert not urls, f"{path.relative_to(STATIC)} names external hosts: {sorted(set(urls))[:5]}"
            assert "@import" not in text, f"{path.name} imports a stylesheet"
    assert total < 2 * 1024 * 1024, f"built editor is {total} bytes; keep it under 2 MB"


def _source_of(prompt: dict, node_id: str, input_name: str) -> tuple[str, int]:
    value = prompt[node_id]["inputs"][input_name]
    assert isinstance(value, list) and len(value) == 2, f"{node_id}.{input_name} is not a link: {value!r}"
    return prompt[value[0]]["class_type"], value[1]


def _check_api_prompt(prompt: dict) -> None:
    """A valid API-format workflow: known classes, every required input given, links that type-check."""
    for node_id, node in prompt.items():
        info = OBJECT_INFO[node["class_type"]]
        for name, spec in info["input"]["required"].items():
            assert name in node["inputs"], f"node {node_id} ({node['class_type']}) lacks input {name}"
            value = node["inputs"][name]
            if isinstance(spec[0], str) and spec[0] not in ("INT", "FLOAT", "STRING", "BOOLEAN"):
                src_id, slot = value
                src_outputs = OBJECT_INFO[prompt[src_id]["class_type"]]["output"]
                assert src_outputs[slot] == spec[0], (
                    f"{node_id}.{name} wants {spec[0]}, gets {src_outputs[slot]}"
                )
            elif isinstance(spec[0], list):
                assert value in spec[0], f"{node_id}.{name}={value!r} not among {spec[0]}"
            elif spec[0] in ("INT", "FLOAT"):
                opts = spec[1] if len(spec) > 1 else {}
                assert isinstance(value, int | float) and opts.get("min", value) <= value <= opts.get(
                    "max", value
                )


def test_editor_against_fake_server(tmp_path):
    server = FakeComfyServer(STATIC)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        report = _run_browser(server.url, tmp_path, "fake")
    finally:
        server.shutdown()
        server.server_close()

    # Opens on the default graph, drawn from /object_info, with the node menu listing every class.
    assert sorted(report["nodeClasses"]) == DEFAULT_CLASSES
    assert report["edgeCount"] == 9 and report["missing"] == []
    assert sorted(report["menuItems"]) == sorted(OBJECT_INFO)
    w = report["defaultWidgets"]
    assert w["1"] == {"ckpt_name": "default"}
    assert (w["2"]["text"], w["3"]["text"]) == (POSITIVE, "")
    # The latent size is the server's default model's (GET /latentworks/defaults), not the node's default 64.
    assert w["4"] == {"width": 40, "height": 48, "batch_size": 1}
    assert {k: w["5"][k] for k in ("steps", "cfg", "sampler_name", "scheduler", "denoise")} == {
        "steps": 20,
        "cfg": 5,
        "sampler_name": "euler",
        "scheduler": "normal",
        "denoise": 1,
    }
    assert w["7"] == {"filename_prefix": "latentworks"}

    # Undo and redo of a widget change, an added node, a new connection and a deletion.
    assert (report["stepsAfterEdit"], report["stepsAfterUndo"], report["stepsAfterRedo"]) == (12, 20, 12)
    assert (report["nodesAfterAdd"], report["nodesAfterAddUndo"]) == (8, 7)
    assert report["afterDelete"] == [6, 8] and report["afterDeleteUndo"] == [7, 9]
    # Typed sockets: VAE cannot feed a CONDITIONING input; CONDITIONING can (replacing the old link).
    assert report["positiveAfterBadDrag"]["source"] == "2" and report["edgesAfterBadDrag"] == 9
    assert report["positiveAfterGoodDrag"]["source"] == "3" and report["edgesAfterGoodDrag"] == 9
    assert report["positiveAfterConnectUndo"]["source"] == "2"

    # The refused prompt: node_errors shown on the offending node only.
    assert len(server.prompts) == 2, (
        f"expected a refused and an accepted POST /prompt, got {len(server.prompts)}"
    )
    assert "forbidden" in server.prompts[0]["prompt"]["2"]["inputs"]["text"]
    assert report["erroredNodes"] == ["2"] and "forbidden" in report["nodeErrorText"]
    assert "failed validation" in report["errorBanner"]
    assert report["errorsAfterFix"] == []

    # The accepted prompt is valid API format with the default graph's classes, links and widget values.
    body = server.prompts[1]
    assert body["client_id"] in server.ws_client_ids, "client_id must match the WebSocket's clientId"
    prompt = body["prompt"]
    _check_api_prompt(prompt)
    assert sorted(n["class_type"] for n in prompt.values()) == DEFAULT_CLASSES
    ids = {n["class_type"]: i for i, n in prompt.items()}
    ks = ids["KSampler"]
    assert _source_of(prompt, ks, "model") == ("CheckpointLoaderSimple", 0)
    assert _source_of(prompt, ks, "latent_image") == ("EmptyLatentImage", 0)
    texts = {
        name: prompt[prompt[ks]["inputs"][name][0]]["inputs"]["text"] for name in ("positive", "negative")
    }
    assert texts == {"positive": POSITIVE, "negative": ""}
    for name in ("positive", "negative"):
        assert _source_of(prompt, prompt[ks]["inputs"][name][0], "clip") == ("CheckpointLoaderSimple", 1)
    assert _source_of(prompt, ids["VAEDecode"], "samples") == ("KSampler", 0)
    assert _source_of(prompt, ids["VAEDecode"], "vae") == ("CheckpointLoaderSimple", 2)
    assert _source_of(prompt, ids["SaveImage"], "images") == ("VAEDecode", 0)
    assert prompt[ks]["inputs"]["steps"] == 12  # the edited value, not the default
    assert prompt[ids["SaveImage"]]["inputs"]["filename_prefix"] == "latentworks"
    links = sum(isinstance(v, list) for n in prompt.values() for v in n["inputs"].values())
    assert links == 9
    assert body["extra_data"]["extra_pnginfo"]["workflow"]["format"] == "latentworks-workflow"

    # Progress and a binary preview arrived over the WebSocket; the result image shows and downloads.
    seen = Counter(report["events"])
    assert seen["progress"] == 3 and seen["preview"] == 1 and seen["executed"] == 1, seen
    (src, width), *_ = report["resultImages"]
    filename = re.search(r"filename=([^&]+)", src).group(1)
    assert filename in server.files and width == 64
    assert report["downloadLinks"][0][1] == filename
    assert report["nodeImages"] == 1  # also shown on the SaveImage node

    # Save, then restore from the result PNG (compressed iTXt "workflow" chunk) and from the saved JSON.
    assert report["saved"] == {"format": "latentworks-workflow", "nodes": 7, "links": 9}
    assert report["afterPngDrop"] == {"steps": 12, "nodes": 7, "edges": 9}  # steps had been changed to 33
    assert report["afterJsonLoad"] == {"nodes": 7, "links": 9, "steps": 12}

    assert report["foreignRequests"] == []
    unexpected = [e for e in report["consoleErrors"] if "status of 400" not in e]  # the refused prompt
    assert unexpected == []
    screenshot = tmp_path / "editor.png"
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _official_template(name: str) -> Path:
    """A template file of the pinned comfyui-workflow-templates package (the `test` extra)."""
    from importlib.resources import files

    pkg = pytest.importorskip("comfyui_workflow_templates", reason="pip install -e '.[test]'")
    path = Path(str(files(pkg.__name__) / "templates" / name))
    assert path.is_file(), f"{path} is missing from comfyui_workflow_templates"
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _toy_registry():
    """The default graph's node types with ComfyUI's names and sockets, computing nothing: SaveImage writes a
    64x64 PNG. Lets the real server run the editor's default graph without a checkpoint."""
    from PIL import Image

    from latentworks.graph.registry import NodeRegistry
    from latentworks.graph.types import InputSpec, NodeResult, NodeSpec, OutputSpec

    def save(ctx, images, filename_prefix):
        name = f"{filename_prefix}_{ctx.prompt_id[:8]}.png"
        Image.new("RGB", images, (30, 160, 60)).save(Path(ctx.output_dir) / name)
        return NodeResult(outputs=(), ui={"images": [{"filename": name, "subfolder": "", "type": "output"}]})

    def inp(name, type_, **kw):
        return InputSpec(name=name, type=type_, **kw)

    def spec(name, execute, inputs, outputs, **kw):
        outs = tuple(OutputSpec(type=t) for t in outputs)
        return NodeSpec(name=name, execute=execute, inputs=tuple(inputs), outputs=outs, **kw)

    size = dict(default=64, min=16, max=4096, step=8)
    return NodeRegistry(
        [
            spec(
                "CheckpointLoaderSimple",
                lambda ctx, ckpt_name: ("model", "clip", "vae"),
                [inp("ckpt_name", "COMBO", choices=["default"])],
                ["MODEL", "CLIP", "VAE"],
                category="loaders",
            ),
            spec(
                "CLIPTextEncode",
                lambda ctx, text, clip: (text,),
                [inp("text", "STRING", default="", multiline=True), inp("clip", "CLIP")],
                ["CONDITIONING"],
                category="conditioning",
            ),
            spec(
                "EmptyLatentImage",
                lambda ctx, width, height, batch_size: ((width, height),),
                [
                    inp("width", "INT", **size),
                    inp("height", "INT", **size),
                    inp("batch_size", "INT", default=1, min=1, max=64),
                ],
                ["LATENT"],
                category="latent",
            ),
            spec(
                "KSampler",
                lambda ctx, latent_image, **_: (latent_image,),
                [
                    inp("model", "MODEL"),
                    inp(
                        "seed", "INT", default=0, min=0, max=2**64 - 1, extra={"control_after_generate": True}
                    ),
                    inp("steps", "INT", default=20, min=1, max=10000),
                    inp("cfg", "FLOAT", default=8.0, min=0.0, max=100.0, step=0.1),
                    inp("sampler_name", "COMBO", choices=["euler"]),
                    inp("scheduler", "COMBO", choices=["normal"]),
                    inp("positive", "CONDITIONING"),
                    inp("negative", "CONDITIONING"),
                    inp("latent_image", "LATENT"),
                    inp("denoise", "FLOAT", default=1.0, min=0.0, max=1.0, step=0.01),
                ],
                ["LATENT"],
                category="sampling",
            ),
            spec(
                "VAEDecode",
                lambda ctx, samples, vae: (samples,),
                [inp("samples", "LATENT"), inp("vae", "VAE")],
                ["IMAGE"],
                category="latent",
            ),
            spec(
                "SaveImage",
                save,
                [inp("images", "IMAGE"), inp("filename_prefix", "STRING", default="ComfyUI")],
                [],
                category="image",
                output_node=True,
            ),
        ]
    )


def test_editor_against_real_server(tmp_path):
    server_pkg = pytest.importorskip("latentworks.server", reason="latentworks.server is not importable")
    create_app = getattr(server_pkg, "create_app", None)
    if create_app is None:
        pytest.skip("latentworks.server.create_app does not exist yet")
    uvicorn = pytest.importorskip("uvicorn")
    registry = _toy_registry()
    # ComfyUI's official text-to-image template (UI format), loaded as it is; a copy with a Note and a
    # PrimitiveNode driving KSampler's seed; and a copy the server must refuse (a node type it lacks).
    template = _official_template("default.json")
    workflow = json.loads(template.read_text())
    variant, primitive_seed = _with_note_and_primitive_seed(workflow)
    (tmp_path / "variant.json").write_text(json.dumps(variant))
    bad_workflow = json.loads(template.read_text())
    bad_workflow["nodes"][0]["type"] = "NoSuchEncoder"
    (tmp_path / "bad.json").write_text(json.dumps(bad_workflow))
    loads = [str(template), str(tmp_path / "variant.json"), str(tmp_path / "bad.json")]
    app = create_app(registry, data_dir=tmp_path / "data", models_dir=tmp_path / "models", static_dir=STATIC)
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "the real server did not start within 30 s"
    try:
        report = _run_browser(f"http://127.0.0.1:{port}/", tmp_path, "real", *loads)
    finally:
        server.should_exit = True
        thread.join(timeout=10)

    offered = set(registry.object_info())
    assert sorted(report["nodeClasses"]) == DEFAULT_CLASSES
    assert report["missing"] == [] and sorted(report["menuItems"]) == sorted(offered)
    # The default graph ran on the real server's queue and executor; the editor shows SaveImage's PNG.
    assert report["banner"] is None, report["banner"]
    saved = sorted(p.name for p in (tmp_path / "data" / "output").glob("*.png"))
    shown = [(re.search(r"filename=([^&]+)", src).group(1), width) for src, width in report["resultImages"]]
    # The default graph asked for the embedded default model's native size (32), which the toy SaveImage draws.
    assert shown == [(saved[0], 32)] and len(saved) == 1, (shown, saved)
    assert {"executing", "executed"} <= set(report["events"]), report["events"]
    assert report["foreignRequests"] == []

    # The official template, as the server converted it: widget values after the seed's control value
    # (sampler_name is "euler", not the next number), every link, and the template's node positions.
    official, with_primitive, refused = report["loads"]
    assert official["banner"] is None, official["banner"]
    nodes = {n["id"]: n for n in official["nodes"]}
    ui_nodes = {str(n["id"]): n for n in workflow["nodes"]}
    assert set(nodes) == set(ui_nodes) and (official["drawnNodes"], official["drawnEdges"]) == (7, 9)
    ks = nodes["3"]["widgets"]
    seed, _control, steps, cfg, sampler, scheduler, denoise = ui_nodes["3"]["widgets_values"]
    assert sampler == "euler" and isinstance(seed, int) and seed > 2**32  # what the template holds
    assert (ks["seed"], ks["steps"], ks["cfg"], ks["sampler_name"], ks["scheduler"], ks["denoise"]) == (
        seed,
        steps,
        cfg,
        sampler,
        scheduler,
        denoise,
    )
    assert nodes["5"]["widgets"] == dict(
        zip(["width", "height", "batch_size"], ui_nodes["5"]["widgets_values"])
    )
    assert nodes["6"]["widgets"]["text"] == ui_nodes["6"]["widgets_values"][0]
    for node_id, node in nodes.items():
        assert [node["position"]["x"], node["position"]["y"]] == ui_nodes[node_id]["pos"][:2], node_id
    # Links: [link_id, from, from_slot, to, to_slot, type]; to_slot indexes the target node's inputs.
    expected = set()
    for _, src, src_slot, dst, dst_slot, _type in workflow["links"]:
        expected.add((str(src), src_slot, str(dst), ui_nodes[str(dst)]["inputs"][dst_slot]["name"]))
    got = {(x["source"], x["sourceSlot"], x["target"], x["targetInput"]) for x in official["links"]}
    assert got == expected and len(got) == 9

    # The Note is dropped and the PrimitiveNode's value becomes the seed (both are editor-only nodes).
    assert with_primitive["banner"] is None, with_primitive["banner"]
    assert sorted(n["id"] for n in with_primitive["nodes"]) == sorted(ui_nodes)
    ks2 = next(n for n in with_primitive["nodes"] if n["id"] == "3")["widgets"]
    assert ks2["seed"] == primitive_seed != seed and ks2["sampler_name"] == "euler" and ks2["steps"] == steps
    assert len(with_primitive["links"]) == 9

    # The refused copy: the server's missing_node_type error is shown; the graph on screen is kept.
    assert "NoSuchEncoder" in refused["banner"] and "not found" in refused["banner"], refused["banner"]
    assert refused["nodes"] == with_primitive["nodes"] and refused["links"] == with_primitive["links"]


def _with_note_and_primitive_seed(workflow: dict) -> tuple[dict, int]:
    """A copy of a UI workflow whose KSampler (id 3) seed comes from a PrimitiveNode, plus a Note, as ComfyUI's
    editor saves them (the seed converted to an input linked to the primitive's output)."""
    w = json.loads(json.dumps(workflow))
    value = 4242
    link_id = max(link[0] for link in w["links"]) + 1
    ks = next(n for n in w["nodes"] if n["id"] == 3)
    ks["inputs"].append({"name": "seed", "type": "INT", "link": link_id, "widget": {"name": "seed"}})
    w["nodes"].append(
        {"id": 50, "type": "PrimitiveNode", "pos": [500, 800], "mode": 0, "inputs": [],
         "outputs": [{"name": "INT", "type": "INT", "links": [link_id], "widget": {"name": "seed"}}],
         "widgets_values": [value, "fixed"]}
    )  # fmt: skip
    w["nodes"].append(
        {"id": 51, "type": "Note", "pos": [0, 0], "mode": 0, "inputs": [], "outputs": [],
         "widgets_values": ["only for people"]}
    )  # fmt: skip
    w["links"].append([link_id, 50, 0, 3, len(ks["inputs"]) - 1, "INT"])
    return w, value
