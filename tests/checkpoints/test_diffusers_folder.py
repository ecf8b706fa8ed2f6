"""diffusers folders -> our models -> diffusers folders, against diffusers itself (test-only oracle).

Tiny random diffusers components are saved with ``save_pretrained`` into a folder laid out as diffusers
pipelines are (``model_index.json`` + component folders); :func:`read_diffusers_folder` must give configs,
weights and schedules on which our models produce diffusers' outputs (1e-5, float32), and
:func:`write_diffusers_folder` must write folders that diffusers' ``from_pretrained`` loads to the same
outputs. Config mappings are also checked against the published full-size configs (inline below).
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from latentworks import families
from latentworks.checkpoints.io import CheckpointError, LazyStateDict, ShardedStateDict
from latentworks.checkpoints.keymaps.diffusers_configs import (
    flux_config_from_diffusers,
    flux_config_to_diffusers,
    mmdit_config_from_diffusers,
    mmdit_config_to_diffusers,
    scheduler_from_diffusers,
    scheduler_to_diffusers,
    unet_config_from_diffusers,
    unet_config_to_diffusers,
    vae_config_from_diffusers,
)
from latentworks.diffusion.conditioning import Conditioning
from latentworks.diffusion.denoisers import flux_shift_mu, make_betas, rescale_zero_terminal_snr
from latentworks.families.diffusers import read_diffusers_folder, text_encoder_key, write_diffusers_folder
from latentworks.models.autoencoder import PRESETS as VAE_PRESETS
from latentworks.models.flux import PRESETS as FLUX_PRESETS
from latentworks.models.mmdit import PRESETS as MMDIT_PRESETS
from latentworks.models.unet import PRESETS as UNET_PRESETS

os.environ.setdefault("HF_HUB_OFFLINE", "1")
diffusers = pytest.importorskip("diffusers")

TOL = 1e-5

# --------------------------------------------------------------------------------------------------
# Published configs of the released models (config.json values, written inline: no hub access)
# --------------------------------------------------------------------------------------------------

SD15_UNET = {
    "_class_name": "UNet2DConditionModel", "_diffusers_version": "0.6.0", "act_fn": "silu",
    "attention_head_dim": 8, "block_out_channels": [320, 640, 1280, 1280], "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2,
    "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4, "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}  # fmt: skip
SD21_UNET = {
    **SD15_UNET, "attention_head_dim": [5, 10, 20, 20], "cross_attention_dim": 1024, "dual_cross_attention": False,
    "num_class_embeds": None, "only_cross_attention": False, "resnet_time_scale_shift": "default",
    "sample_size": 96, "upcast_attention": True, "use_linear_projection": True,
}  # fmt: skip
SDXL_UNET = {
    "_class_name": "UNet2DConditionModel", "_diffusers_version": "0.19.0.dev0", "act_fn": "silu",
    "addition_embed_type": "text_time", "addition_embed_type_num_heads": 64, "addition_time_embed_dim": 256,
    "attention_head_dim": [5, 10, 20], "block_out_channels": [320, 640, 1280], "center_input_sample": False,
    "class_embed_type": None, "class_embeddings_concat": False, "conv_in_kernel": 3, "conv_out_kernel": 3,
    "cross_attention_dim": 2048, "cross_attention_norm": None,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "downsample_padding": 1, "dual_cross_attention": False, "encoder_hid_dim": None, "encoder_hid_dim_type": None,
    "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2,
    "mid_block_only_cross_attention": None, "mid_block_scale_factor": 1, "mid_block_type": "UNetMidBlock2DCrossAttn",
    "norm_eps": 1e-05, "norm_num_groups": 32, "num_attention_heads": None, "num_class_embeds": None,
    "only_cross_attention": False, "out_channels": 4, "projection_class_embeddings_input_dim": 2816,
    "resnet_out_scale_factor": 1.0, "resnet_skip_time_act": False, "resnet_time_scale_shift": "default",
    "sample_size": 128, "time_cond_proj_dim": None, "time_embedding_act_fn": None, "time_embedding_dim": None,
    "time_embedding_type": "positional", "timestep_post_act": None, "transformer_layers_per_block": [1, 2, 10],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], "upcast_attention": None,
    "use_linear_projection": True,
}  # fmt: skip
SDXL_REFINER_UNET = {
    **SDXL_UNET, "attention_head_dim": [6, 12, 24, 24], "block_out_channels": [384, 768, 1536, 1536],
    "cross_attention_dim": 1280,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "projection_class_embeddings_input_dim": 2560, "transformer_layers_per_block": 4,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
}  # fmt: skip
SD3_MEDIUM_TRANSFORMER = {
    "_class_name": "SD3Transformer2DModel", "attention_head_dim": 64, "caption_projection_dim": 1536,
    "in_channels": 16, "joint_attention_dim": 4096, "num_attention_heads": 24, "num_layers": 24,
    "out_channels": 16, "patch_size": 2, "pooled_projection_dim": 2048, "pos_embed_max_size": 192,
    "sample_size": 128,
}  # fmt: skip
SD35_LARGE_TRANSFORMER = {
    **SD3_MEDIUM_TRANSFORMER, "caption_projection_dim": 2432, "num_attention_heads": 38, "num_layers": 38,
    "qk_norm": "rms_norm", "dual_attention_layers": [],
}  # fmt: skip
SD35_MEDIUM_TRANSFORMER = {
    **SD3_MEDIUM_TRANSFORMER, "pos_embed_max_size": 384, "qk_norm": "rms_norm",
    "dual_attention_layers": list(range(13)),
}  # fmt: skip
FLUX_DEV_TRANSFORMER = {
    "_class_name": "FluxTransformer2DModel", "attention_head_dim": 128, "guidance_embeds": True,
    "in_channels": 64, "joint_attention_dim": 4096, "num_attention_heads": 24, "num_layers": 19,
    "num_single_layers": 38, "patch_size": 1, "pooled_projection_dim": 768, "axes_dims_rope": [16, 56, 56],
}  # fmt: skip
SD_VAE = {
    "_class_name": "AutoencoderKL", "act_fn": "silu", "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4, "in_channels": 3, "latent_channels": 4, "layers_per_block": 2,
    "norm_num_groups": 32, "out_channels": 3, "sample_size": 512, "scaling_factor": 0.18215,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}  # fmt: skip
SD3_VAE = {**SD_VAE, "latent_channels": 16, "scaling_factor": 1.5305, "shift_factor": 0.0609,
           "use_quant_conv": False, "use_post_quant_conv": False, "force_upcast": True}  # fmt: skip
FLUX_VAE = {**SD3_VAE, "scaling_factor": 0.3611, "shift_factor": 0.1159}


@pytest.mark.parametrize(
    ("published", "preset", "num_time_ids"),
    [
        (SD15_UNET, "sd15", 6),
        (SD21_UNET, "sd2", 6),
        (SDXL_UNET, "sdxl", 6),
        (SDXL_REFINER_UNET, "sdxl-refiner", 5),
    ],
)
def test_unet_config_recovers_presets_and_writes_published_fields(
    published: dict, preset: str, num_time_ids: int
) -> None:
    ours = unet_config_from_diffusers(published, num_time_ids=num_time_ids)
    assert ours == UNET_PRESETS[preset]
    written = unet_config_to_diffusers(ours, sample_size=published["sample_size"])
    for key, value in written.items():  # every field we write has the published value (or its default)
        if key in published and published[key] is not None:
            assert json.loads(json.dumps(published[key])) == value, key
    # and reading what we write gives the same config back
    assert unet_config_from_diffusers(written, num_time_ids=num_time_ids) == ours


@pytest.mark.parametrize(
    ("published", "preset"),
    [(SD3_MEDIUM_TRANSFORMER, "sd3-medium"), (SD35_LARGE_TRANSFORMER, "sd3.5-large"),
     (SD35_MEDIUM_TRANSFORMER, "sd3.5-medium")],
)  # fmt: skip
def test_mmdit_config_recovers_presets(published: dict, preset: str) -> None:
    ours = mmdit_config_from_diffusers(published)
    assert ours == MMDIT_PRESETS[preset]
    written = mmdit_config_to_diffusers(ours)
    assert {k: v for k, v in written.items() if k in published} == {
        k: v for k, v in published.items() if k in written
    }


def test_flux_config_recovers_presets() -> None:
    assert flux_config_from_diffusers(FLUX_DEV_TRANSFORMER) == FLUX_PRESETS["flux-dev"]
    schnell = {**FLUX_DEV_TRANSFORMER, "guidance_embeds": False}
    assert flux_config_from_diffusers(schnell) == FLUX_PRESETS["flux-schnell"]
    written = flux_config_to_diffusers(FLUX_PRESETS["flux-dev"])
    assert {k: written[k] for k in FLUX_DEV_TRANSFORMER} == FLUX_DEV_TRANSFORMER


@pytest.mark.parametrize(("published", "preset"), [(SD_VAE, "sd"), (SD3_VAE, "sd3"), (FLUX_VAE, "flux")])
def test_vae_config_recovers_presets_and_latent_scale(published: dict, preset: str) -> None:
    config, scale, shift = vae_config_from_diffusers(published)
    assert config == VAE_PRESETS[preset]
    name = {"sd": "sd15", "sd3": "sd3", "flux": "flux"}[preset]
    assert (scale, shift) == (
        families.get(name).latent_format.scale_factor,
        families.get(name).latent_format.shift_factor,
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [("class_embed_type", "timestep"), ("resnet_time_scale_shift", "scale_shift"), ("time_cond_proj_dim", 256),
     ("flip_sin_to_cos", False), ("mid_block_type", "UNetMidBlock2DSimpleCrossAttn")],
)  # fmt: skip
def test_unsupported_unet_fields_are_refused_by_name(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        unet_config_from_diffusers({**SD15_UNET, field: value})


def test_text_encoder_key_from_config_then_slot() -> None:
    assert (
        text_encoder_key(
            {"model_type": "clip_text_model", "hidden_size": 768}, family=families.get("sdxl"), slot="x"
        )
        == "clip_l"
    )
    assert (
        text_encoder_key({"model_type": "clip_text_model", "hidden_size": 1024}, family=None, slot="x")
        == "clip_h"
    )
    assert (
        text_encoder_key({"model_type": "clip_text_model", "hidden_size": 1280}, family=None, slot="x")
        == "clip_g"
    )
    assert text_encoder_key({"model_type": "t5", "d_model": 4096}, family=None, slot="x") == "t5xxl"
    assert (
        text_encoder_key(
            {"model_type": "clip_text_model", "hidden_size": 32},
            family=families.get("sd3"),
            slot="text_encoder_2",
        )
        == "clip_g"
    )
    with pytest.raises(ValueError, match="cannot tell"):
        text_encoder_key({"model_type": "bert", "hidden_size": 32}, family=None, slot="text_encoder")


# --------------------------------------------------------------------------------------------------
# Scheduler configs -> sampling specs, checked against the schedulers' own numbers
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "kwargs", "prediction"),
    [
        ("PNDMScheduler", dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"), "eps"),
        ("EulerDiscreteScheduler", dict(beta_schedule="scaled_linear", prediction_type="v_prediction"), "v"),
        ("DDIMScheduler", dict(beta_schedule="squaredcos_cap_v2"), "eps"),
        ("DDPMScheduler", dict(beta_schedule="linear", beta_start=1e-4, beta_end=0.02), "eps"),
        ("EulerDiscreteScheduler", dict(beta_schedule="scaled_linear", rescale_betas_zero_snr=True,
                                        prediction_type="v_prediction"), "v"),
    ],
)  # fmt: skip
def test_discrete_scheduler_spec_gives_the_schedulers_betas(cls: str, kwargs: dict, prediction: str) -> None:
    scheduler = getattr(diffusers, cls)(**kwargs)
    pred, spec = scheduler_from_diffusers(dict(scheduler.config))
    assert pred == prediction
    betas = make_betas(spec["betas"], spec["num_timesteps"], spec["linear_start"], spec["linear_end"])
    if spec["zero_terminal_snr"]:
        betas = rescale_zero_terminal_snr(betas)
        # diffusers rescales in float32 (0.1% error on the smallest betas); compare the noise levels instead
        expected = torch.cumprod(1 - scheduler.betas.double(), 0)
        torch.testing.assert_close(torch.cumprod(1 - betas, 0), expected, rtol=0, atol=2e-6)
    else:
        torch.testing.assert_close(betas.float(), scheduler.betas.float(), rtol=1e-5, atol=1e-7)


def test_flow_scheduler_specs_match_sd3_and_flux_schedules() -> None:
    sd3 = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    pred, spec = scheduler_from_diffusers(dict(sd3.config))
    assert pred == "flow" and spec == {"kind": "flow", "shift": 3.0, "multiplier": 1000.0}
    flux = diffusers.FlowMatchEulerDiscreteScheduler(
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    _, spec = scheduler_from_diffusers(dict(flux.config))
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    for seq_len in (256, 1024, 4096):
        expected = calculate_shift(seq_len, 256, 4096, 0.5, 1.15)
        assert abs(flux_shift_mu(seq_len, **spec["dynamic_shift"]) - expected) < 1e-12
    flux_dev = {"_class_name": "FlowMatchEulerDiscreteScheduler", "base_image_seq_len": 256, "base_shift": 0.5,
                "max_image_seq_len": 4096, "max_shift": 1.15, "num_train_timesteps": 1000, "shift": 3.0,
                "use_dynamic_shifting": True}  # FLUX.1-dev's published scheduler_config.json  # fmt: skip
    _, spec = scheduler_from_diffusers(flux_dev)
    released = diffusers.FlowMatchEulerDiscreteScheduler.from_config(flux_dev)
    released.set_timesteps(4, mu=flux_shift_mu(1024, **spec["dynamic_shift"]))
    ours = diffusers.FlowMatchEulerDiscreteScheduler.from_config(scheduler_to_diffusers("flow", spec))
    ours.set_timesteps(4, mu=flux_shift_mu(1024, **spec["dynamic_shift"]))
    torch.testing.assert_close(ours.sigmas, released.sigmas)  # shift 3.0 is unused under dynamic shifting
    with pytest.raises(ValueError, match="prediction_type"):
        scheduler_from_diffusers(dict(diffusers.DDIMScheduler(prediction_type="sample").config))


# --------------------------------------------------------------------------------------------------
# Tiny folders written by diffusers' own save_pretrained
# --------------------------------------------------------------------------------------------------


def _perturb(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random weights everywhere (zero-initialised output layers would hide mapping mistakes)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


def _index(path: Path, pipeline: str, **components: list) -> None:
    (path / "model_index.json").write_text(json.dumps({"_class_name": pipeline, **components}))


TINY_UNET = dict(
    sample_size=8, block_out_channels=[32, 64], down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"], layers_per_block=1, attention_head_dim=4,
    cross_attention_dim=24, norm_num_groups=8,
)  # fmt: skip
TINY_SDXL_UNET = dict(
    sample_size=8, block_out_channels=[32, 64], down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"],
    up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"], layers_per_block=1, attention_head_dim=[2, 4],
    transformer_layers_per_block=[1, 2], cross_attention_dim=24, norm_num_groups=8, use_linear_projection=True,
    addition_embed_type="text_time", addition_time_embed_dim=8,
)  # fmt: skip


def _tiny_vae(latent: int) -> torch.nn.Module:
    quant = latent == 4
    return diffusers.AutoencoderKL(
        block_out_channels=[16, 32], down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2, latent_channels=latent, norm_num_groups=8, layers_per_block=1,
        scaling_factor=0.5 if quant else 1.25, shift_factor=None if quant else 0.1,
        use_quant_conv=quant, use_post_quant_conv=quant,
    )  # fmt: skip


@pytest.fixture(scope="module")
def sd15_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    path = tmp_path_factory.mktemp("sd15")
    torch.manual_seed(0)
    unet = _perturb(diffusers.UNet2DConditionModel(**TINY_UNET), 1)
    vae = _perturb(_tiny_vae(4), 2)
    unet.save_pretrained(path / "unet")
    vae.save_pretrained(path / "vae")
    diffusers.PNDMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"
    ).save_pretrained(path / "scheduler")
    _index(path, "StableDiffusionPipeline", unet=["diffusers", "UNet2DConditionModel"],
           vae=["diffusers", "AutoencoderKL"], scheduler=["diffusers", "PNDMScheduler"],
           text_encoder=[None, None], tokenizer=[None, None], safety_checker=[None, None])  # fmt: skip
    return path, {"unet": unet, "vae": vae}


def _unet_outputs(
    net: torch.nn.Module, ours: bool, config_pooled: int = 0, time_ids: int = 6
) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 8, 8, generator=g)
    t = torch.tensor([999.0, 17.5])
    ctx = torch.randn(2, 5, 24, generator=g)
    pooled = torch.randn(2, config_pooled, generator=g) if config_pooled else None
    ids = torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0][:time_ids]] * 2) if config_pooled else None
    with torch.no_grad():
        if ours:
            extra = {"time_ids": ids} if ids is not None else {}
            return net(x, t, Conditioning(tokens=ctx, pooled=pooled, extra=extra))
        added = {"text_embeds": pooled, "time_ids": ids} if pooled is not None else None
        return net(x, t, encoder_hidden_states=ctx, added_cond_kwargs=added).sample


def _vae_outputs(vae: torch.nn.Module, ours: bool, latent: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(4)
    img = torch.rand(1, 3, 16, 16, generator=g) * 2 - 1
    z = torch.randn(1, latent, 8, 8, generator=g)
    with torch.no_grad():
        post = vae.encode(img) if ours else vae.encode(img).latent_dist
        return post.mean, post.logvar, vae.decode(z) if ours else vae.decode(z).sample


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def test_sd15_folder_matches_diffusers(sd15_folder: tuple[Path, dict]) -> None:
    path, ref = sd15_folder
    folder = read_diffusers_folder(path)
    assert (folder.family.name, folder.architecture.name, folder.prediction) == ("sd1", "unet", "eps")
    assert folder.sampling == {"kind": "discrete", "betas": "scaled_linear", "linear_start": 0.00085,
                               "linear_end": 0.012, "num_timesteps": 1000, "zero_terminal_snr": False}  # fmt: skip
    assert folder.latent_format is not None and folder.latent_format.scale_factor == 0.5
    assert folder.latent_format.rgb_factors == families.get("sd15").latent_format.rgb_factors
    assert folder.text_encoders == {} and folder.tokenizers == {}
    assert rel(_unet_outputs(folder.build_denoiser(), True), _unet_outputs(ref["unet"], False)) < TOL
    for a, b in zip(
        _vae_outputs(folder.build_vae(), True, 4), _vae_outputs(ref["vae"], False, 4), strict=True
    ):
        assert rel(a, b) < TOL


def test_dtype_is_applied_while_reading(sd15_folder: tuple[Path, dict]) -> None:
    folder = read_diffusers_folder(sd15_folder[0], dtype=torch.float16)
    assert folder.denoiser_state is not None and folder.vae_state is not None
    assert {t.dtype for t in folder.denoiser_state.values()} == {torch.float16}
    assert {t.dtype for t in folder.vae_state.values()} == {torch.float16}


def test_write_then_diffusers_from_pretrained_gives_the_same_outputs(
    sd15_folder: tuple[Path, dict], tmp_path: Path
) -> None:
    path, ref = sd15_folder
    folder = read_diffusers_folder(path)
    out = write_diffusers_folder(
        tmp_path / "out", family="sd1", denoiser_config=folder.denoiser_config,
        denoiser_state=folder.denoiser_state, vae_config=folder.vae_config, vae_state=folder.vae_state,
        latent_format=folder.latent_format, prediction="eps", sampling=folder.sampling,
    )  # fmt: skip
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline" and index["text_encoder"] == [None, None]
    unet = diffusers.UNet2DConditionModel.from_pretrained(out, subfolder="unet").eval()
    vae = diffusers.AutoencoderKL.from_pretrained(out, subfolder="vae").eval()
    assert vae.config.scaling_factor == 0.5
    assert rel(_unet_outputs(unet, False), _unet_outputs(ref["unet"], False)) < TOL
    for a, b in zip(_vae_outputs(vae, False, 4), _vae_outputs(ref["vae"], False, 4), strict=True):
        assert rel(a, b) < TOL
    scheduler = diffusers.EulerDiscreteScheduler.from_pretrained(out, subfolder="scheduler")
    ref_scheduler = diffusers.PNDMScheduler.from_pretrained(path, subfolder="scheduler")
    torch.testing.assert_close(scheduler.betas, ref_scheduler.betas)
    # and our own reader gets back exactly what was written
    again = read_diffusers_folder(out)
    assert again.denoiser_config == folder.denoiser_config and again.sampling == folder.sampling
    assert again.denoiser_state is not None and folder.denoiser_state is not None
    assert all(torch.equal(again.denoiser_state[k], v) for k, v in folder.denoiser_state.items())


def test_sharded_weights_read_and_write(sd15_folder: tuple[Path, dict], tmp_path: Path) -> None:
    path, ref = sd15_folder
    ref["unet"].save_pretrained(tmp_path / "unet", max_shard_size="1MB")
    assert (tmp_path / "unet" / "diffusion_pytorch_model.safetensors.index.json").is_file()
    assert len(list((tmp_path / "unet").glob("*.safetensors"))) > 2
    folder = read_diffusers_folder(tmp_path)  # no model_index.json: the folders present are read
    assert folder.family.name == "sd1" and folder.vae_state is None
    assert rel(_unet_outputs(folder.build_denoiser(), True), _unet_outputs(ref["unet"], False)) < TOL
    kwargs = dict(
        family="sd1", denoiser_config=folder.denoiser_config,
        denoiser_state=folder.denoiser_state, vae_config=None, vae_state=None,
        latent_format=families.get("sd15").latent_format, prediction="eps", sampling=read_diffusers_folder(path).sampling,
    )  # fmt: skip
    write_diffusers_folder(tmp_path / "out", **kwargs)  # single file, then shards over it
    out = write_diffusers_folder(tmp_path / "out", **kwargs, max_shard_bytes=1_000_000)
    assert len(list((out / "unet").glob("diffusion_pytorch_model-*-of-*.safetensors"))) > 2
    assert not (out / "unet" / "diffusion_pytorch_model.safetensors").exists()
    unet = diffusers.UNet2DConditionModel.from_pretrained(out, subfolder="unet").eval()
    assert rel(_unet_outputs(unet, False), _unet_outputs(ref["unet"], False)) < TOL


def test_pickled_weights_refused_unless_allowed(sd15_folder: tuple[Path, dict], tmp_path: Path) -> None:
    _, ref = sd15_folder
    ref["unet"].save_pretrained(tmp_path / "unet", safe_serialization=False)
    assert (tmp_path / "unet" / "diffusion_pytorch_model.bin").is_file()
    with pytest.raises(CheckpointError, match="allow_pickle"):
        read_diffusers_folder(tmp_path)
    folder = read_diffusers_folder(tmp_path, allow_pickle=True)
    assert rel(_unet_outputs(folder.build_denoiser(), True), _unet_outputs(ref["unet"], False)) < TOL


def test_missing_component_and_files_are_named(sd15_folder: tuple[Path, dict], tmp_path: Path) -> None:
    path, _ = sd15_folder
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text((path / "unet" / "config.json").read_text())
    _index(tmp_path, "StableDiffusionPipeline", unet=["diffusers", "UNet2DConditionModel"],
           vae=["diffusers", "AutoencoderKL"])  # fmt: skip
    with pytest.raises(FileNotFoundError, match=r"diffusion_pytorch_model\.safetensors"):
        read_diffusers_folder(tmp_path)
    for f in (path / "unet").iterdir():
        (tmp_path / "unet" / f.name).write_bytes(f.read_bytes())
    with pytest.raises(FileNotFoundError, match=r"'vae'.*vae.*config\.json"):
        read_diffusers_folder(tmp_path)
    _index(tmp_path, "StableDiffusionPipeline", unet=["diffusers", "UNet2DConditionModel"], vae=[None, None])
    folder = read_diffusers_folder(tmp_path)  # only the U-Net: loads it, the rest is absent
    assert folder.denoiser_state is not None and folder.vae_state is None and folder.sampling is None
    with pytest.raises(FileNotFoundError, match="not a diffusers folder"):
        read_diffusers_folder(tmp_path / "unet")


def test_truncated_weights_name_the_file(sd15_folder: tuple[Path, dict], tmp_path: Path) -> None:
    path, _ = sd15_folder
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "config.json").write_text((path / "vae" / "config.json").read_text())
    data = (path / "vae" / "diffusion_pytorch_model.safetensors").read_bytes()
    (tmp_path / "vae" / "diffusion_pytorch_model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        read_diffusers_folder(tmp_path)


def test_writer_refuses_a_denoiser_of_another_family_and_writes_nothing(tmp_path: Path) -> None:
    kwargs = dict(
        denoiser_config=UNET_PRESETS["tiny"], denoiser_state={}, vae_config=None, vae_state=None,
        latent_format=families.get("sd3").latent_format, prediction="flow", sampling={},
    )  # fmt: skip
    with pytest.raises(TypeError, match="family 'sd3' needs a MMDiTConfig denoiser_config, got UNetConfig"):
        write_diffusers_folder(tmp_path / "out", family="sd3", **kwargs)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("refiner", "family"), [(False, "sdxl"), (True, "sdxl-refiner")])
def test_sdxl_folder_with_text_time_conditioning(tmp_path: Path, refiner: bool, family: str) -> None:
    time_ids, pooled = (5, 12) if refiner else (6, 12)
    torch.manual_seed(0)
    unet = _perturb(
        diffusers.UNet2DConditionModel(
            **TINY_SDXL_UNET, projection_class_embeddings_input_dim=pooled + 8 * time_ids
        ),
        5,
    )
    unet.save_pretrained(tmp_path / "unet")
    diffusers.EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"
    ).save_pretrained(tmp_path / "scheduler")
    pipeline = "StableDiffusionXLImg2ImgPipeline" if refiner else "StableDiffusionXLPipeline"
    (tmp_path / "model_index.json").write_text(json.dumps({
        "_class_name": pipeline, "requires_aesthetics_score": refiner,
        "unet": ["diffusers", "UNet2DConditionModel"], "scheduler": ["diffusers", "EulerDiscreteScheduler"],
    }))  # fmt: skip
    folder = read_diffusers_folder(tmp_path)
    assert folder.family.name == family and folder.latent_format == families.get("sdxl").latent_format
    assert folder.denoiser_config.pooled_dim == pooled and folder.denoiser_config.num_time_ids == time_ids
    ours = _unet_outputs(folder.build_denoiser(), True, pooled, time_ids)
    assert rel(ours, _unet_outputs(unet, False, pooled, time_ids)) < TOL
    out = write_diffusers_folder(
        tmp_path / "out", family=family, denoiser_config=folder.denoiser_config,
        denoiser_state=folder.denoiser_state, vae_config=None, vae_state=None,
        latent_format=folder.latent_format, prediction=folder.prediction, sampling=folder.sampling,
    )  # fmt: skip
    back = diffusers.UNet2DConditionModel.from_pretrained(out, subfolder="unet").eval()
    assert rel(_unet_outputs(back, False, pooled, time_ids), ours) < TOL
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == pipeline and index.get("requires_aesthetics_score", False) is refiner
    assert read_diffusers_folder(out).denoiser_config == folder.denoiser_config


def _tiny_clip(tmp: Path, slot: str, width: int, projection: bool) -> dict:
    transformers = pytest.importorskip("transformers")
    config = transformers.CLIPTextConfig(
        hidden_size=width, intermediate_size=2 * width, num_hidden_layers=1, num_attention_heads=2,
        vocab_size=64, max_position_embeddings=16, projection_dim=width,
    )  # fmt: skip
    cls = transformers.CLIPTextModelWithProjection if projection else transformers.CLIPTextModel
    torch.manual_seed(7)
    model = cls(config)
    model.save_pretrained(tmp / slot)
    return model.state_dict()


def test_sd3_folder_with_text_encoders_matches_diffusers(tmp_path: Path) -> None:
    torch.manual_seed(0)
    ref = _perturb(
        diffusers.SD3Transformer2DModel(
            sample_size=8, patch_size=2, in_channels=16, num_layers=2, attention_head_dim=16, num_attention_heads=2,
            joint_attention_dim=24, caption_projection_dim=32, pooled_projection_dim=16, out_channels=16,
            pos_embed_max_size=8, qk_norm="rms_norm",
        ),
        8,
    )  # fmt: skip
    vae = _perturb(_tiny_vae(16), 9)
    ref.save_pretrained(tmp_path / "transformer")
    vae.save_pretrained(tmp_path / "vae")
    diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0).save_pretrained(tmp_path / "scheduler")
    clip_l = _tiny_clip(tmp_path, "text_encoder", 32, True)
    (tmp_path / "tokenizer").mkdir()
    (tmp_path / "tokenizer" / "vocab.json").write_text("{}")
    (tmp_path / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusion3Pipeline", "transformer": ["diffusers", "SD3Transformer2DModel"],
        "vae": ["diffusers", "AutoencoderKL"], "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModelWithProjection"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "text_encoder_2": [None, None], "text_encoder_3": [None, None],
    }))  # fmt: skip
    folder = read_diffusers_folder(tmp_path)
    assert (folder.family.name, folder.architecture.name, folder.prediction) == ("sd3", "mmdit", "flow")
    assert folder.sampling == {"kind": "flow", "shift": 3.0, "multiplier": 1000.0}
    lf = folder.latent_format
    assert lf is not None and (lf.channels, lf.scale_factor, lf.shift_factor) == (16, 1.25, 0.1)
    state, config = folder.text_encoders["clip_l"]
    assert set(folder.text_encoders) == {"clip_l"} and config["hidden_size"] == 32
    assert state.keys() == clip_l.keys() and all(torch.equal(state[k], v) for k, v in clip_l.items())
    assert folder.tokenizers == {"clip_l": tmp_path / "tokenizer"}

    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(2, 16, 8, 8, generator=g), torch.tensor([1000.0, 250.0])
    tokens, pooled = torch.randn(2, 5, 24, generator=g), torch.randn(2, 16, generator=g)
    with torch.no_grad():
        expected = ref(
            hidden_states=x, encoder_hidden_states=tokens, pooled_projections=pooled, timestep=t
        ).sample
        got = folder.build_denoiser()(x, t, Conditioning(tokens=tokens, pooled=pooled))
    assert rel(got, expected) < TOL
    for a, b in zip(_vae_outputs(folder.build_vae(), True, 16), _vae_outputs(vae, False, 16), strict=True):
        assert rel(a, b) < TOL

    out = write_diffusers_folder(
        tmp_path / "out", family="sd3", denoiser_config=folder.denoiser_config,
        denoiser_state=folder.denoiser_state, vae_config=folder.vae_config, vae_state=folder.vae_state,
        latent_format=lf, prediction="flow", sampling=folder.sampling, text_encoders=folder.text_encoders,
        tokenizers=folder.tokenizers,
    )  # fmt: skip
    back = diffusers.SD3Transformer2DModel.from_pretrained(out, subfolder="transformer").eval()
    back_vae = diffusers.AutoencoderKL.from_pretrained(out, subfolder="vae")
    assert (back_vae.config.scaling_factor, back_vae.config.shift_factor) == (1.25, 0.1)
    with torch.no_grad():
        again = back(
            hidden_states=x, encoder_hidden_states=tokens, pooled_projections=pooled, timestep=t
        ).sample
    assert rel(again, expected) < TOL
    transformers = pytest.importorskip("transformers")
    te = transformers.CLIPTextModelWithProjection.from_pretrained(out / "text_encoder")
    assert all(torch.equal(te.state_dict()[k], v) for k, v in clip_l.items())
    assert (out / "tokenizer" / "vocab.json").is_file()
    index = json.loads((out / "model_index.json").read_text())
    assert index["text_encoder"] == ["transformers", "CLIPTextModelWithProjection"]
    assert index["text_encoder_3"] == [None, None]


def test_flux_folder_matches_diffusers(tmp_path: Path) -> None:
    from diffusers.pipelines.flux.pipeline_flux import FluxPipeline

    torch.manual_seed(0)
    ref = _perturb(
        diffusers.FluxTransformer2DModel(
            patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=32,
            num_attention_heads=2, joint_attention_dim=24, pooled_projection_dim=16, guidance_embeds=True,
            axes_dims_rope=[8, 12, 12],
        ),
        10,
    )  # fmt: skip
    ref.save_pretrained(tmp_path / "transformer")
    diffusers.FlowMatchEulerDiscreteScheduler(
        shift=1.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15
    ).save_pretrained(tmp_path / "scheduler")
    (tmp_path / "model_index.json").write_text(json.dumps({
        "_class_name": "FluxPipeline", "transformer": ["diffusers", "FluxTransformer2DModel"],
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"], "vae": [None, None],
    }))  # fmt: skip
    folder = read_diffusers_folder(tmp_path)
    assert folder.family.name == "flux-dev" and folder.denoiser_config == FLUX_PRESETS["tiny"]
    assert folder.sampling is not None and folder.sampling["dynamic_shift"]["max_shift"] == 1.15

    g = torch.Generator().manual_seed(1)
    b, h, w, n_txt = 2, 4, 6, 5
    x, t = torch.randn(b, 4, h, w, generator=g), torch.tensor([1000.0, 250.0])
    tokens, pooled, guidance = (
        torch.randn(b, n_txt, 24, generator=g),
        torch.randn(b, 16, generator=g),
        torch.tensor([3.5, 1.0]),
    )

    def run(model: torch.nn.Module) -> torch.Tensor:
        img_ids = FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, x.device, x.dtype)
        with torch.no_grad():
            packed = model(
                hidden_states=FluxPipeline._pack_latents(x, b, 4, h, w), encoder_hidden_states=tokens,
                pooled_projections=pooled, timestep=t / 1000, img_ids=img_ids, txt_ids=torch.zeros(n_txt, 3),
                guidance=guidance,
            ).sample  # fmt: skip
        return FluxPipeline._unpack_latents(packed, h * 8, w * 8, 8)

    expected = run(ref)
    with torch.no_grad():
        got = folder.build_denoiser()(
            x, t, Conditioning(tokens=tokens, pooled=pooled, extra={"guidance": guidance})
        )
    assert rel(got, expected) < TOL
    out = write_diffusers_folder(
        tmp_path / "out", family="flux", denoiser_config=folder.denoiser_config,
        denoiser_state=folder.denoiser_state, vae_config=None, vae_state=None,
        latent_format=families.get("flux").latent_format, prediction="flow", sampling=folder.sampling,
    )  # fmt: skip
    back = diffusers.FluxTransformer2DModel.from_pretrained(out, subfolder="transformer").eval()
    assert rel(run(back), expected) < TOL
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler.from_pretrained(out, subfolder="scheduler")
    assert scheduler.config.use_dynamic_shifting and scheduler.config.max_shift == 1.15


def _tiny_clip_tokenizer(tmp: Path) -> object:
    """A byte-level CLIP tokenizer with no merges (every character a token): 514 tokens, no download."""
    transformers = pytest.importorskip("transformers")
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars = [chr(b) for b in printable] + [chr(256 + i) for i in range(256 - len(printable))]
    words = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    (tmp / "vocab.json").write_text(json.dumps({w: i for i, w in enumerate(words)}))
    (tmp / "merges.txt").write_text("#version: 0.2\n")
    return transformers.CLIPTokenizer(str(tmp / "vocab.json"), str(tmp / "merges.txt"), model_max_length=16)


def test_whole_sd15_pipeline_round_trips_through_diffusers_from_pretrained(tmp_path: Path) -> None:
    """diffusers' own save_pretrained folder -> ours -> our writer -> StableDiffusionPipeline.from_pretrained:
    the same image, step for step."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    text_config = transformers.CLIPTextConfig(
        hidden_size=24, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2, vocab_size=514,
        max_position_embeddings=16, bos_token_id=512, eos_token_id=513, pad_token_id=513,
    )  # fmt: skip
    pipe = diffusers.StableDiffusionPipeline(
        vae=_perturb(_tiny_vae(4), 2), text_encoder=transformers.CLIPTextModel(text_config).eval(),
        tokenizer=_tiny_clip_tokenizer(tmp_path), unet=_perturb(diffusers.UNet2DConditionModel(**TINY_UNET), 1),
        scheduler=diffusers.EulerDiscreteScheduler(  # SDXL's released settings, which the writer uses
            beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", timestep_spacing="leading",
            steps_offset=1,
        ),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    pipe.save_pretrained(tmp_path / "src")
    folder = read_diffusers_folder(tmp_path / "src")
    assert set(folder.text_encoders) == {"clip_l"} and set(folder.tokenizers) == {"clip_l"}
    out = write_diffusers_folder(
        tmp_path / "out", family="sd1", denoiser_config=folder.denoiser_config,
        denoiser_state=folder.denoiser_state, vae_config=folder.vae_config, vae_state=folder.vae_state,
        latent_format=folder.latent_format, prediction=folder.prediction, sampling=folder.sampling,
        text_encoders=folder.text_encoders, tokenizers=folder.tokenizers,
    )  # fmt: skip
    loaded = diffusers.StableDiffusionPipeline.from_pretrained(out)
    assert isinstance(loaded.scheduler, diffusers.EulerDiscreteScheduler)

    def image(p: object) -> torch.Tensor:
        g = torch.Generator().manual_seed(5)
        return p(  # type: ignore[operator]
            "a red apple", height=16, width=16, num_inference_steps=3, guidance_scale=3.0, generator=g,
            output_type="pt",
        ).images  # fmt: skip

    expected, got = image(pipe), image(loaded)
    assert expected.std() > 0.01
    assert rel(got, expected) < TOL


def test_weights_are_read_lazily_once_each_and_variants_by_name(
    sd15_folder: tuple[Path, dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from latentworks.checkpoints import diffusers_folder as module

    path, ref = sd15_folder
    weights = module.read_weights(path / "unet", dtype=torch.float16)
    assert isinstance(weights, ShardedStateDict) and "conv_in.weight" in weights
    assert weights["conv_in.weight"].dtype == torch.float16
    reads: list[str] = []
    original = LazyStateDict.__getitem__

    def counting(self: LazyStateDict, key: str) -> torch.Tensor:
        reads.append(key)
        return original(self, key)

    monkeypatch.setattr(LazyStateDict, "__getitem__", counting)
    folder = read_diffusers_folder(path)
    n_unet, n_vae = len(ref["unet"].state_dict()), len(ref["vae"].state_dict())
    assert len(reads) == len(set(reads)) == n_unet + n_vae  # every tensor read exactly once, none twice
    assert folder.denoiser_state is not None and len(folder.denoiser_state) == n_unet

    ref["unet"].save_pretrained(tmp_path / "unet", variant="fp16")
    with pytest.raises(FileNotFoundError, match="variant='fp16'"):
        read_diffusers_folder(tmp_path)
    assert read_diffusers_folder(tmp_path, variant="fp16").denoiser_config == folder.denoiser_config


def test_inpainting_unet_config_has_nine_input_channels() -> None:
    config = unet_config_from_diffusers({**SD15_UNET, "in_channels": 9})
    assert config == replace(UNET_PRESETS["sd15"], in_channels=9)
    assert unet_config_to_diffusers(config)["in_channels"] == 9


@pytest.mark.parametrize(
    ("published", "num_time_ids"),
    [
        (SD15_UNET, 6), (SD21_UNET, 6), (SDXL_UNET, 6), (SDXL_REFINER_UNET, 5), (SD3_MEDIUM_TRANSFORMER, 0),
        (SD35_LARGE_TRANSFORMER, 0), (SD35_MEDIUM_TRANSFORMER, 0), (FLUX_DEV_TRANSFORMER, 0),
        ({**FLUX_DEV_TRANSFORMER, "guidance_embeds": False}, 0), (SD_VAE, 0), (SD3_VAE, 0),
    ],
)  # fmt: skip
def test_full_size_configs_give_diffusers_exact_tensor_layout(published: dict, num_time_ids: int) -> None:
    """At the released sizes, on the meta device (no memory): diffusers' model built from the published
    config and ours built from the mapped config have the same tensors, key for key and shape for shape."""
    from latentworks.checkpoints.keymaps.flux_diffusers import flux_to_diffusers
    from latentworks.checkpoints.keymaps.sd3_diffusers import sd3_to_diffusers
    from latentworks.checkpoints.keymaps.sd_diffusers import unet_to_diffusers, vae_to_diffusers
    from latentworks.models.autoencoder import Autoencoder
    from latentworks.models.flux import Flux
    from latentworks.models.mmdit import MMDiT
    from latentworks.models.unet import UNet

    name = published["_class_name"]
    kwargs = {k: v for k, v in published.items() if not k.startswith("_")}
    if name == "UNet2DConditionModel":
        config, cls, to_theirs = (
            unet_config_from_diffusers(published, num_time_ids=num_time_ids),
            UNet,
            unet_to_diffusers,
        )
    elif name == "SD3Transformer2DModel":
        config, cls, to_theirs = mmdit_config_from_diffusers(published), MMDiT, sd3_to_diffusers
    elif name == "FluxTransformer2DModel":
        config, cls, to_theirs = flux_config_from_diffusers(published), Flux, flux_to_diffusers
    else:
        config, cls, to_theirs = vae_config_from_diffusers(published)[0], Autoencoder, vae_to_diffusers
    with torch.device("meta"):
        theirs = getattr(diffusers, name)(**kwargs)
        ours = cls(config)
    expected = {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    if name == "SD3Transformer2DModel":  # a buffer in diffusers, saved with the weights in the released files
        expected["pos_embed.pos_embed"] = tuple(theirs.pos_embed.pos_embed.shape)
    converted = to_theirs(ours.state_dict(), config)
    assert {k: tuple(v.shape) for k, v in converted.items()} == expected


@pytest.mark.parametrize(
    ("family", "prediction", "expected"),
    [
        ("sd2", "v", "sd2-v"),
        ("sd2", "eps", "sd2"),
        ("sd1", "eps", "sd1"),
        ("sdxl-refiner", "eps", "sdxl-refiner"),
    ],
)
def test_prediction_picks_the_family_with_that_objective(family: str, prediction: str, expected: str) -> None:
    moved = families.with_prediction(families.get(family), prediction)
    assert moved.name == expected and moved.generation.resolution == (
        (768, 768) if expected == "sd2-v" else families.get(family).generation.resolution
    )


def test_text_encoder_class_defaults_when_config_has_no_architectures(
    sd15_folder: tuple[Path, dict], tmp_path: Path
) -> None:
    folder = read_diffusers_folder(sd15_folder[0])
    config = {"model_type": "clip_text_model", "hidden_size": 24, "architectures": None}  # as to_dict() gives
    out = write_diffusers_folder(
        tmp_path, family="sd1", denoiser_config=folder.denoiser_config,
        denoiser_state=folder.denoiser_state, vae_config=None, vae_state=None, latent_format=folder.latent_format,
        prediction="eps", sampling=folder.sampling, text_encoders={"clip_l": ({"w": torch.ones(2)}, config)},
    )  # fmt: skip
    assert json.loads((out / "model_index.json").read_text())["text_encoder"] == [
        "transformers",
        "CLIPTextModel",
    ]
    assert json.loads((out / "text_encoder" / "config.json").read_text())["architectures"] == [
        "CLIPTextModel"
    ]
