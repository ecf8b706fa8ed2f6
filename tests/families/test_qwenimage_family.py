"""Qwen-Image as a family: registering its one ModelFamily makes a ComfyUI single file (diffusers' tensor names,
bare or under ``model.diffusion_model.``) detect as Qwen-Image with the released config; diffusers' own
config.json maps to the same config."""

from __future__ import annotations

import inspect
from dataclasses import replace

import pytest
import torch

from latentworks import families
from latentworks.checkpoints.detect_qwenimage import (
    qwenimage_config_from_diffusers,
    qwenimage_config_from_shapes,
    qwenimage_config_to_diffusers,
)
from latentworks.checkpoints.keymaps.qwenimage_diffusers import qwenimage_to_diffusers
from latentworks.families.architectures import architecture, architecture_of
from latentworks.families.detect import detect_checkpoint
from latentworks.families.qwenimage import QWEN_IMAGE
from latentworks.models.qwenimage import PRESETS, QwenImage, QwenImageConfig

diffusers = pytest.importorskip("diffusers")


def single_file_header(config: QwenImageConfig, prefix: str) -> dict[str, tuple[int, ...]]:
    """The header ({key: shape}) of a ComfyUI-style single file of ``config`` (built on the meta device)."""
    with torch.device("meta"):
        sd = QwenImage(config).state_dict()
    return {f"{prefix}{k}": tuple(v.shape) for k, v in qwenimage_to_diffusers(sd, config).items()}


def test_qwen_image_is_registered() -> None:
    assert families.get("qwen_image") is QWEN_IMAGE and QWEN_IMAGE in families.REGISTRY


@pytest.mark.parametrize("prefix", ["", "model.diffusion_model."])
def test_released_single_file_is_detected_as_qwen_image(prefix: str) -> None:
    header = single_file_header(PRESETS["qwen-image"], prefix)
    assert len(header) == 1933  # the released transformer's tensor count: 13 + 60 blocks x 32
    assert header[f"{prefix}transformer_blocks.59.attn.add_q_proj.weight"] == (3072, 3072)
    found = detect_checkpoint(header, source="qwen_image_bf16.safetensors")
    assert found.family is QWEN_IMAGE and found.variant == "qwen-image" and found.prediction == "flow"
    assert found.denoiser_config == PRESETS["qwen-image"]
    assert found.denoiser_prefix == prefix
    assert found.family.comfy is not None and found.family.comfy.clip_type == "qwen_image"


def test_a_reduced_depth_file_keeps_its_shapes() -> None:
    config = replace(PRESETS["qwen-image"], depth=3)
    found = detect_checkpoint(single_file_header(config, "model.diffusion_model."))
    assert found.denoiser_config == config


def test_shapes_without_the_released_head_size_are_refused_with_a_reason() -> None:
    with pytest.raises(ValueError, match="RoPE split is not stored"):
        qwenimage_config_from_shapes(single_file_header(PRESETS["tiny"], ""), "tiny.safetensors")
    header = single_file_header(replace(PRESETS["qwen-image"], depth=1), "")
    del header["proj_out.weight"]
    with pytest.raises(ValueError, match="proj_out.weight"):
        qwenimage_config_from_shapes(header, "cut.safetensors")


def test_diffusers_config_maps_to_the_released_preset_and_back() -> None:
    # diffusers' constructor defaults are the released config (Qwen/Qwen-Image transformer/config.json)
    params = inspect.signature(diffusers.QwenImageTransformer2DModel.__init__).parameters
    cfg = {name: p.default for name, p in params.items() if name != "self"}
    assert qwenimage_config_from_diffusers(cfg) == PRESETS["qwen-image"]
    ours = qwenimage_config_to_diffusers(PRESETS["qwen-image"])
    assert {k: v for k, v in ours.items() if not k.startswith("_")}.items() <= {
        k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()
    }.items()
    assert qwenimage_config_from_diffusers(ours) == PRESETS["qwen-image"]
    with pytest.raises(ValueError, match="zero_cond_t"):  # Qwen-Image-Edit-2511's per-token timestep
        qwenimage_config_from_diffusers({**cfg, "zero_cond_t": True})


def test_architecture_entry_is_found_by_name_and_config() -> None:
    arch = architecture("qwenimage")
    assert arch is QWEN_IMAGE.architecture and architecture_of(PRESETS["tiny"]) is arch
    assert arch.diffusers_class == "QwenImageTransformer2DModel"


def test_family_sampling_is_the_releases_dynamic_shift() -> None:
    spec = QWEN_IMAGE.sampling
    assert QWEN_IMAGE.prediction == "flow"
    assert spec.dynamic_shift is not None  # type: ignore[attr-defined]
    shift = spec.dynamic_shift.to_dict()  # type: ignore[attr-defined]
    assert (shift["base_seq_len"], shift["max_seq_len"]) == (256, 8192)
    assert (shift["base_shift"], shift["max_shift"]) == (0.5, 0.9)
