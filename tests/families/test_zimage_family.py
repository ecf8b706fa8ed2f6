"""The Z-Image family: detection of its released single-file layout, and its sampling contract."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from latentworks import families
from latentworks.checkpoints.keymaps.zimage_comfy import ours_to_zimage_comfy
from latentworks.checkpoints.keymaps.zimage_diffusers import (
    zimage_config_from_diffusers,
    zimage_config_to_diffusers,
    zimage_from_diffusers,
)
from latentworks.diffusion.conditioning import Conditioning
from latentworks.diffusion.denoisers import make_denoiser
from latentworks.families import detect as detect_module
from latentworks.families.architectures import architecture, architecture_of
from latentworks.families.detect import detect_checkpoint
from latentworks.families.zimage import Z_IMAGE
from latentworks.models.zimage import PRESETS, ZImage, ZImageConfig


def single_file(config: ZImageConfig, prefix: str = "model.diffusion_model.") -> dict[str, tuple[int, ...]]:
    """The header ({key: shape}) of a released-layout Z-Image file of ``config`` (built on meta)."""
    with torch.device("meta"):
        sd = ZImage(config).state_dict()
    return {f"{prefix}{k}": tuple(v.shape) for k, v in ours_to_zimage_comfy(sd, config).items()}


@pytest.fixture
def registered() -> None:
    assert Z_IMAGE in families.REGISTRY and Z_IMAGE in detect_module.REGISTRY


def test_zimage_is_registered_with_its_qwen_recipe() -> None:
    assert families.get("z-image-turbo") is Z_IMAGE
    assert Z_IMAGE.text is not None and Z_IMAGE.text.required == ("qwen3_4b",)


@pytest.mark.parametrize("prefix", ["model.diffusion_model.", ""])
def test_released_layout_is_detected_as_zimage_turbo(registered: None, prefix: str) -> None:
    header = single_file(PRESETS["z-image-turbo"], prefix)
    header[f"{prefix}norm_final.weight"] = (3840,)  # an unused tensor some exports carry
    found = detect_checkpoint(header, source="z_image_turbo_bf16.safetensors")
    assert found.family is Z_IMAGE and found.variant == "z-image" and found.prediction == "flow"
    assert found.denoiser_config == PRESETS["z-image-turbo"]
    assert found.denoiser_prefix == prefix
    assert found.architecture is architecture("zimage") is architecture_of(found.denoiser_config)


def test_other_depths_and_widths_are_read_from_shapes(registered: None) -> None:
    config = ZImageConfig(width=1920, num_heads=15, depth=3, refiner_depth=1, ffn_dim=5120,
                          axes_dim=(32, 48, 48), context_dim=1024)  # fmt: skip
    assert detect_checkpoint(single_file(config)).denoiser_config == config


def test_lumina2_layout_is_not_taken_for_zimage(registered: None) -> None:
    """Lumina 2's NextDiT shares most names but gates its blocks through adaLN_modulation.1 (SiLU first)."""
    header = {
        (k.replace("adaLN_modulation.0", "adaLN_modulation.1") if ".adaLN_modulation.0." in k else k): s
        for k, s in single_file(PRESETS["tiny"]).items()
    }
    with pytest.raises(ValueError, match="no denoiser keys found"):
        detect_checkpoint(header)


def test_a_file_missing_a_shape_key_is_named(registered: None) -> None:
    header = single_file(PRESETS["tiny"])
    del header["model.diffusion_model.layers.0.attention.q_norm.weight"]
    with pytest.raises(ValueError, match="lacks 'layers.0.attention.q_norm.weight'"):
        detect_checkpoint(header, source="broken.safetensors")


def test_family_names_and_behaviour() -> None:
    assert Z_IMAGE.latent_format is families.get("flux-dev").latent_format
    assert Z_IMAGE.comfy is not None and Z_IMAGE.comfy.clip_type == "lumina2"
    assert Z_IMAGE.comfy.model_sampling_node == "ModelSamplingAuraFlow"
    assert Z_IMAGE.generation.defaults["steps"] == 8 and Z_IMAGE.generation.defaults["guidance"] == 1.0
    sampling = Z_IMAGE.sampling.model_sampling()
    assert sampling.shift == 3.0 and float(sampling.timestep(torch.tensor(0.3))) == pytest.approx(0.3)
    assert Z_IMAGE.architecture is not None and Z_IMAGE.architecture.config_from_diffusers is not None
    cfg = zimage_config_to_diffusers(PRESETS["z-image-turbo"])
    assert Z_IMAGE.architecture.config_from_diffusers(cfg, index={}, source="x") == PRESETS["z-image-turbo"]


def test_family_denoiser_gives_diffusers_x0() -> None:
    """The family's model sampling (t = sigma) wrapped around our network gives the clean image diffusers'
    pipeline implies, x0 = x - sigma * v with v its negated output at t = 1 - sigma."""
    diffusers = pytest.importorskip("diffusers")
    config = replace(PRESETS["tiny"], time_hidden_dim=1024)  # diffusers fixes the timestep MLP's width
    kwargs = zimage_config_from_diffusers_kwargs(config)
    torch.manual_seed(0)
    ref = diffusers.ZImageTransformer2DModel(**kwargs).eval()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if "pad_token" in name or "adaLN" in name:
                p.normal_(0.0, 0.5)
    model = ZImage(config).eval()
    model.load_state_dict(zimage_from_diffusers(ref.state_dict(), config), strict=True)
    denoiser = make_denoiser(model, Z_IMAGE.prediction, Z_IMAGE.sampling.model_sampling())
    g = torch.Generator().manual_seed(1)
    x, tokens = torch.randn(1, 4, 8, 6, generator=g), torch.randn(1, 7, config.context_dim, generator=g)
    sigma = torch.tensor([0.625])
    with torch.no_grad():
        x0 = denoiser(x, sigma, Conditioning(tokens=tokens))
        out = ref(list(x.unsqueeze(2).unbind(0)), 1 - sigma, [tokens[0]], return_dict=False)[0][0][:, 0]
    torch.testing.assert_close(x0[0], x[0] - sigma * -out, atol=1e-5, rtol=1e-5)
    assert (x0 - x).abs().max() > 0.1


def zimage_config_from_diffusers_kwargs(config: ZImageConfig) -> dict[str, object]:
    cfg = zimage_config_to_diffusers(config)
    assert zimage_config_from_diffusers(cfg) == config
    return {k: v for k, v in cfg.items() if not k.startswith("_")}


def test_a_released_layout_file_reads_and_writes_back(registered: None, tmp_path) -> None:  # noqa: ANN001
    """A bare transformer file, as ComfyUI's diffusion_models/z_image_turbo_bf16.safetensors, read through the
    ordinary loader and written back as a single file with the same tensors."""
    from safetensors.torch import load_file, save_file

    from latentworks.families.load import read_checkpoint, write_single_file

    config = PRESETS["tiny"]
    torch.manual_seed(0)
    ours = {k: torch.randn_like(v) for k, v in ZImage(config).state_dict().items()}
    file = tmp_path / "z_image_tiny.safetensors"
    save_file({**ours_to_zimage_comfy(ours, config), "norm_final.weight": torch.ones(config.width)}, file)
    parts = read_checkpoint(file)
    assert parts.family is Z_IMAGE and parts.denoiser_config == config and parts.prediction == "flow"
    assert parts.denoiser_state.keys() == ours.keys()
    assert all(torch.equal(parts.denoiser_state[k], ours[k]) for k in ours)
    written = load_file(write_single_file(parts, tmp_path / "back.safetensors"))
    expected = ours_to_zimage_comfy(ours, config)
    assert written.keys() == {f"model.diffusion_model.{k}" for k in expected}
    assert all(torch.equal(written[f"model.diffusion_model.{k}"], v) for k, v in expected.items())
