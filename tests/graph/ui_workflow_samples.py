"""Hand-written editor (UI-format) workflows for the converter tests, built like ComfyUI's editor saves them."""

from __future__ import annotations

from typing import Any

# (name, type, is_widget) of each input the editor shows as a socket, per node type used here.
SOCKETS: dict[str, list[tuple[str, str, bool]]] = {
    "CheckpointLoaderSimple": [("ckpt_name", "COMBO", True)],
    "CLIPTextEncode": [("clip", "CLIP", False), ("text", "STRING", True)],
    "EmptyLatentImage": [("width", "INT", True), ("height", "INT", True), ("batch_size", "INT", True)],
    "KSampler": [
        ("model", "MODEL", False),
        ("positive", "CONDITIONING", False),
        ("negative", "CONDITIONING", False),
        ("latent_image", "LATENT", False),
        ("seed", "INT", True),
        ("steps", "INT", True),
    ],
    "KSamplerAdvanced": [("model", "MODEL", False), ("noise_seed", "INT", True)],
    "VAEDecode": [("samples", "LATENT", False), ("vae", "VAE", False)],
    "SaveImage": [("images", "IMAGE", False)],
    "PreviewImage": [("images", "IMAGE", False)],
    "LoraLoader": [("model", "MODEL", False), ("clip", "CLIP", False)],
    "Reroute": [("", "*", False)],
    "PrimitiveNode": [],
    "Note": [],
    "MarkdownNote": [],
}
OUTPUTS: dict[str, list[str]] = {
    "CheckpointLoaderSimple": ["MODEL", "CLIP", "VAE"],
    "CLIPTextEncode": ["CONDITIONING"],
    "EmptyLatentImage": ["LATENT"],
    "KSampler": ["LATENT"],
    "KSamplerAdvanced": ["LATENT"],
    "VAEDecode": ["IMAGE"],
    "LoraLoader": ["MODEL", "CLIP"],
    "Reroute": ["*"],
    "PrimitiveNode": ["INT"],
}


class UIGraph:
    """Builds ``{"nodes", "links", "groups", ...}`` with litegraph's link arrays."""

    def __init__(self) -> None:
        self.nodes: list[dict[str, Any]] = []
        self.links: list[list[Any]] = []
        self.groups: list[dict[str, Any]] = [{"title": "a group", "bounding": [0, 0, 100, 100]}]
        self.subgraphs: list[dict[str, Any]] = []

    def add(
        self,
        node_id: int,
        type_: str,
        widgets: list[Any] | None = None,
        *,
        mode: int = 0,
        title: str | None = None,
        sockets: list[tuple[str, str, bool]] | None = None,
        outputs: list[str] | None = None,
    ) -> dict[str, Any]:
        node: dict[str, Any] = {
            "id": node_id,
            "type": type_,
            "pos": [0, 0],
            "mode": mode,
            "inputs": [
                {"name": n, "type": t, "link": None, **({"widget": {"name": n}} if w else {})}
                for n, t, w in (sockets if sockets is not None else SOCKETS.get(type_, []))
            ],
            "outputs": [
                {"name": t, "type": t, "links": []}
                for t in (outputs if outputs is not None else OUTPUTS.get(type_, []))
            ],
            "widgets_values": list(widgets or []),
            "properties": {},
        }
        if title is not None:
            node["title"] = title
        self.nodes.append(node)
        return node

    def node(self, node_id: int) -> dict[str, Any]:
        return next(n for n in self.nodes if n["id"] == node_id)

    def link(self, src: int, slot: int, dst: int, input_name: str) -> int:
        target = self.node(dst)
        index = next(i for i, inp in enumerate(target["inputs"]) if inp["name"] == input_name)
        link_id = max((link[0] for link in self.links), default=0) + 1
        ltype = target["inputs"][index]["type"]
        self.links.append([link_id, src, slot, dst, index, ltype])
        target["inputs"][index]["link"] = link_id
        source = self.node(src)
        if slot < len(source["outputs"]):
            source["outputs"][slot]["links"].append(link_id)
        return link_id

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "last_node_id": max((n["id"] for n in self.nodes if isinstance(n["id"], int)), default=0),
            "last_link_id": len(self.links),
            "nodes": self.nodes,
            "links": self.links,
            "groups": self.groups,
            "config": {},
            "extra": {},
            "version": 0.4,
        }
        if self.subgraphs:
            out["definitions"] = {"subgraphs": self.subgraphs}
        return out


def txt2img(seed: int = 123, size: int = 32, steps: int = 2, prompt: str = "a red apple") -> UIGraph:
    """ComfyUI's default text-to-image graph, with the embedded 'default' checkpoint."""
    g = UIGraph()
    g.add(4, "CheckpointLoaderSimple", ["default"])
    g.add(6, "CLIPTextEncode", [prompt], title="Positive")
    g.add(7, "CLIPTextEncode", ["blurry"], title="Negative")
    g.add(5, "EmptyLatentImage", [size, size, 1])
    g.add(3, "KSampler", [seed, "randomize", steps, 5.0, "euler", "normal", 1.0])
    g.add(8, "VAEDecode")
    g.add(9, "SaveImage", ["ComfyUI"])
    g.add(10, "Note", ["this note is only for people"])
    g.add(11, "MarkdownNote", ["# also only for people"])
    g.link(4, 1, 6, "clip")
    g.link(4, 1, 7, "clip")
    g.link(4, 0, 3, "model")
    g.link(6, 0, 3, "positive")
    g.link(7, 0, 3, "negative")
    g.link(5, 0, 3, "latent_image")
    g.link(3, 0, 8, "samples")
    g.link(4, 2, 8, "vae")
    g.link(8, 0, 9, "images")
    return g
