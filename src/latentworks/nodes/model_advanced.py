"""Model nodes with ComfyUI's schemas: RescaleCFG (``comfy_extras/nodes_model_advanced.py``) and
ModelMergeSimple (``comfy_extras/nodes_model_merging.py``).

Both return a new MODEL and leave the input model unchanged, so other branches of a workflow sample as before.
RescaleCFG records its multiplier in the model's metadata (``meta["rescale_cfg"]``); the sampler nodes pass it
to the guidance (:func:`latentworks.diffusion.guidance.rescale_cfg_v`). ModelMergeSimple builds a merged copy
of the denoising network: ``ratio * model1 + (1 - ratio) * model2`` for every weight, with each model's LoRAs
applied first (model1's LoRAs are baked into the copy, so the result carries none).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import torch

from latentworks.graph.types import NodeSpec, OutputSpec, input_spec
from latentworks.nodes.payloads import ModelPayload
from latentworks.pipelines.sampling import model_loras


def _rescale_cfg(ctx: Any, model: ModelPayload, multiplier: float) -> tuple[Any, ...]:
    folder = model.folder
    meta = {**folder.meta, "rescale_cfg": float(multiplier)}
    return (ModelPayload(replace(folder, meta=meta)),)


def merge_networks(net1: torch.nn.Module, sd2: Mapping[str, torch.Tensor], ratio: float) -> torch.nn.Module:
    """A copy of ``net1`` whose floating-point weights are ``ratio * net1 + (1 - ratio) * sd2``.

    ``sd2`` is the state dict of a network of the same architecture: every tensor of ``net1`` needs one of the
    same name and shape there (a clear error names the first that differs)."""
    merged = copy.deepcopy(net1)
    with torch.no_grad():
        for name, t in merged.state_dict().items():
            other = sd2.get(name)
            if other is None or other.shape != t.shape:
                got = "missing" if other is None else f"shape {tuple(other.shape)}"
                raise ValueError(
                    f"ModelMergeSimple: model2 does not match model1 at {name!r} (model1 {tuple(t.shape)}, "
                    f"model2 {got}); merge two models of the same architecture"
                )
            if t.is_floating_point() and ratio != 1.0:
                t.copy_(t * ratio + other.to(device=t.device, dtype=t.dtype) * (1.0 - ratio))
    return merged


def _merge_simple(ctx: Any, model1: ModelPayload, model2: ModelPayload, ratio: float) -> tuple[Any, ...]:
    f1, f2 = model1.folder, model2.folder
    with model_loras(f2):
        net2_state = {k: v.clone() for k, v in f2.denoiser_net.state_dict().items()}
    with model_loras(f1):
        merged = merge_networks(f1.denoiser_net, net2_state, float(ratio))
    meta = {**f1.meta, "merged_with": {"node": "ModelMergeSimple", "ratio": float(ratio)}}
    return (ModelPayload(replace(f1, denoiser_net=merged, loras=(), meta=meta)),)


def model_advanced_nodes() -> list[NodeSpec]:
    I = input_spec  # noqa: E741, N806

    return [
        NodeSpec(
            name="RescaleCFG",
            category="advanced/model",
            description="Rescale classifier-free guidance (Lin et al. 2023) to curb over-saturation.",
            execute=_rescale_cfg,
            inputs=(I("model", "MODEL"), I("multiplier", "FLOAT", default=0.7, min=0.0, max=1.0, step=0.01)),
            outputs=(OutputSpec(type="MODEL"),),
        ),
        NodeSpec(
            name="ModelMergeSimple",
            category="advanced/model_merging",
            description="Blend two models of one architecture: ratio * model1 + (1 - ratio) * model2.",
            execute=_merge_simple,
            inputs=(
                I("model1", "MODEL"),
                I("model2", "MODEL"),
                I("ratio", "FLOAT", default=1.0, min=0.0, max=1.0, step=0.01),
            ),
            outputs=(OutputSpec(type="MODEL"),),
        ),
    ]
