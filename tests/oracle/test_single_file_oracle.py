"""Single-file layouts against diffusers' own single-file loaders, on identical random weights (fp32, CPU).

For each family: our model with random weights -> our key map -> a single safetensors file in the original
layout (with the prefixes real files use) -> (a) diffusers ``<Model>.from_single_file(path, config=<local
folder with config.json>)`` and (b) our own path back: ``detect_checkpoint`` on the file's header, then our
key map into a fresh model. Both must reproduce our outputs (1e-4 relative) and (b) the exact weights.
Nothing touches a hub: the config is a local folder and ``local_files_only=True``.

Configs are small except one full-size SD 1.5 U-Net and a full-width (3072) FLUX with one block of each
kind (diffusers' FLUX single-file converter hard-codes the 3072 width). Small configs keep the family rules
detection relies on (64-wide heads for SD2/SDXL/SD3, 1280 + 256k SDXL conditioning, 32 GroupNorm groups),
so (b) runs through detection for every case.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from latentworks.checkpoints.detect import detect_vae
from latentworks.checkpoints.keymaps import flux_bfl, sd3_sai, sd_ldm
from latentworks.diffusion.conditioning import Conditioning
from latentworks.families.detect import detect_checkpoint
from latentworks.models.autoencoder import Autoencoder, AutoencoderConfig
from latentworks.models.flux import Flux, FluxConfig
from latentworks.models.mmdit import MMDiT, MMDiTConfig
from latentworks.models.unet import PRESETS as UNET_PRESETS
from latentworks.models.unet import UNet, UNetConfig

diffusers = pytest.importorskip("diffusers")

TOL = 1e-4
M = TypeVar("M", bound=torch.nn.Module)
DENOISER = "model.diffusion_model."


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return ((ours - ref).norm() / ref.norm()).item()


def random_model(model_cls: type[M], config: Any, seed: int = 0) -> M:
    """``model_cls(config)`` with informative random weights, in one pass (no default init first).

    Weights ~ N(0, 1/fan_in); norm weights 1 + N(0, 0.3) (so a norm mix-up shows); biases N(0, 0.02). Layers
    the model zero-initialises (adaLN modulation, output projections) get random weights too.
    """
    with torch.device("meta"):
        model = model_cls(config)
    model.to_empty(device="cpu")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 and "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=g))
            elif p.ndim == 1:
                p.copy_(0.02 * torch.randn(p.shape, generator=g))
            else:
                fan_in = p[0].numel() if p.ndim > 1 else p.shape[-1]
                p.normal_(0.0, fan_in**-0.5, generator=g)
        stored = model.state_dict()
        for name, buf in model.named_buffers():
            if name not in stored:
                raise AssertionError(
                    f"internal: {model_cls.__name__} has a non-persistent buffer {name}; set it here"
                )
            buf.normal_(0.0, 0.5, generator=g)  # e.g. MM-DiT's stored position table
    return model.eval()


def write(
    tmp_path: Path, tensors: dict[str, torch.Tensor], config: dict[str, Any], cls: str
) -> tuple[Path, Path]:
    """The single file and a local diffusers config folder for it."""
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    folder = tmp_path / "config"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"_class_name": cls, **config}))
    return path, folder


def header(path: Path) -> dict[str, tuple[int, ...]]:
    with safe_open(str(path), "pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118


def read(path: Path, prefix: str) -> dict[str, torch.Tensor]:
    with safe_open(str(path), "pt") as f:
        return {k[len(prefix) :]: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)}  # noqa: SIM118


def reload_and_compare(
    model_cls: type[torch.nn.Module],
    config: Any,
    state: dict[str, torch.Tensor],
    to_ours: Callable[..., dict[str, torch.Tensor]],
    file_state: dict[str, torch.Tensor],
) -> None:
    """Our way back from the file gives exactly the weights we wrote."""
    with torch.device("meta"):
        fresh = model_cls(config)
    fresh.load_state_dict(to_ours(file_state, config), strict=True, assign=True)  # no second copy
    loaded = fresh.state_dict()
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    del fresh, loaded


# --------------------------------------------------------------------------------------------------
# U-Net (LDM layout)
# --------------------------------------------------------------------------------------------------

SD15_DIFFUSERS = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    block_out_channels=[320, 640, 1280, 1280],
    layers_per_block=2,
    cross_attention_dim=768,
    attention_head_dim=8,
)
# SD2-style (64-wide heads, OpenCLIP-H context, linear projections), small, inpainting input.
SMALL_SD2 = UNetConfig(
    in_channels=9, channels=(64, 128), layers_per_block=1, transformer_depth=(1, 2), mid_transformer_depth=2,
    num_heads=None, head_dim=64, context_dim=1024, use_linear_projection=True, upcast_attention=True,
)  # fmt: skip
SMALL_SD2_DIFFUSERS = dict(
    sample_size=8, in_channels=9, out_channels=4, block_out_channels=[64, 128], layers_per_block=1,
    down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    transformer_layers_per_block=[1, 2], attention_head_dim=[1, 2], cross_attention_dim=1024,
    use_linear_projection=True, upcast_attention=True,
)  # fmt: skip
# SDXL-style (text_time conditioning with the real 1280 pooled + 6 x 256 ids, 2048 context), small.
SMALL_SDXL = UNetConfig(
    channels=(64, 128), layers_per_block=2, transformer_depth=(0, 2), mid_transformer_depth=2,
    num_heads=None, head_dim=64, context_dim=2048, use_linear_projection=True, pooled_dim=1280, num_time_ids=6,
)  # fmt: skip
SMALL_SDXL_DIFFUSERS = dict(
    sample_size=8, in_channels=4, out_channels=4, block_out_channels=[64, 128], layers_per_block=2,
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"], up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"],
    transformer_layers_per_block=[1, 2], attention_head_dim=[1, 2], cross_attention_dim=2048,
    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=1280 + 6 * 256,
)  # fmt: skip

UNET_CASES = {
    "sd15-full": (UNET_PRESETS["sd15"], SD15_DIFFUSERS, 8, "sd1"),
    "sd2-inpaint-small": (SMALL_SD2, SMALL_SD2_DIFFUSERS, 8, "sd2-inpaint"),
    "sdxl-small": (SMALL_SDXL, SMALL_SDXL_DIFFUSERS, 8, "sdxl"),
}


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n.endswith("-full") else n for n in UNET_CASES]
)
def test_unet_single_file_matches_diffusers(name: str, tmp_path: Path) -> None:
    config, diffusers_config, size, variant = UNET_CASES[name]
    ours = random_model(UNet, config)
    g = torch.Generator().manual_seed(1)
    b, tokens = 2, 77
    x = torch.randn(b, config.in_channels, size, size, generator=g)
    t = torch.tensor([999.0, 17.0])
    ctx = torch.randn(b, tokens, config.context_dim, generator=g)
    extra, pooled, added = {}, None, None
    if config.has_added_conditioning:
        pooled = torch.randn(b, config.pooled_dim, generator=g)
        time_ids = torch.tensor([[1024.0, 768.0, 0.0, 16.0, 1024.0, 1024.0]] * b)
        extra, added = {"time_ids": time_ids}, {"text_embeds": pooled, "time_ids": time_ids}
    with torch.no_grad():
        got = ours(x, t, Conditioning(tokens=ctx, pooled=pooled, extra=extra))
    state = ours.state_dict()
    del ours
    ldm = {DENOISER + k: v for k, v in sd_ldm.ours_to_unet_ldm(state, config).items()}
    if name == "sd15-full":
        # 3.4 GB of weights: hand diffusers the in-memory file contents instead of writing them to disk.
        path, folder = write(tmp_path, {"x": torch.zeros(1)}, diffusers_config, "UNet2DConditionModel")
        source: Any = ldm
        shapes = {k: tuple(v.shape) for k, v in ldm.items()}
    else:
        path, folder = write(tmp_path, ldm, diffusers_config, "UNet2DConditionModel")
        source, shapes = str(path), header(path)
    found = detect_checkpoint(shapes, source=name)
    assert (found.denoiser_config, found.variant, found.denoiser_prefix) == (config, variant, DENOISER)

    ref = diffusers.UNet2DConditionModel.from_single_file(
        source, config=str(folder), local_files_only=True
    ).eval()
    with torch.no_grad():
        expected = ref(x, t, encoder_hidden_states=ctx, added_cond_kwargs=added).sample
    del ref, source
    gc.collect()
    err = rel_err(got, expected)
    print(f"{name}: relative error vs diffusers from_single_file {err:.2e}")
    assert expected.std() > 0.01 and err < TOL
    if name != "sd15-full":
        reload_and_compare(UNet, found.denoiser_config, state, sd_ldm.unet_ldm_to_ours, read(path, DENOISER))
    del state, ldm
    gc.collect()


# --------------------------------------------------------------------------------------------------
# VAE (LDM layout, 1x1-conv attention)
# --------------------------------------------------------------------------------------------------

VAE_CASES = {
    "sd-style": AutoencoderConfig(channels=(32, 64), layers_per_block=1, latent_channels=4),
    "sd3-style": AutoencoderConfig(
        channels=(32, 64, 64),
        layers_per_block=2,
        latent_channels=16,
        use_quant_conv=False,
        use_post_quant_conv=False,
    ),
}


@pytest.mark.parametrize("name", list(VAE_CASES))
def test_vae_single_file_matches_diffusers(name: str, tmp_path: Path) -> None:
    config = VAE_CASES[name]
    ours = random_model(Autoencoder, config)
    n = len(config.channels)
    diffusers_config = dict(
        in_channels=3, out_channels=3, latent_channels=config.latent_channels, layers_per_block=config.layers_per_block,
        block_out_channels=list(config.channels), down_block_types=["DownEncoderBlock2D"] * n,
        up_block_types=["UpDecoderBlock2D"] * n, norm_num_groups=32,
        use_quant_conv=config.use_quant_conv, use_post_quant_conv=config.use_post_quant_conv,
    )  # fmt: skip
    state = ours.state_dict()
    ldm = {"first_stage_model." + k: v for k, v in sd_ldm.ours_to_vae_ldm(state, config).items()}
    path, folder = write(tmp_path, ldm, diffusers_config, "AutoencoderKL")
    assert detect_vae(header(path)) == (config, "ldm")

    ref = diffusers.AutoencoderKL.from_single_file(
        str(path), config=str(folder), local_files_only=True
    ).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(1, 3, 16, 16, generator=g) * 2 - 1
    with torch.no_grad():
        post, ref_post = ours.encode(x), ref.encode(x).latent_dist
        z = torch.randn(post.mean.shape, generator=g)
        errors = {
            "mean": rel_err(post.mean, ref_post.mean),
            "logvar": rel_err(post.logvar, ref_post.logvar),
            "decode": rel_err(ours.decode(z), ref.decode(z).sample),
        }
    print(f"{name}: relative errors vs diffusers from_single_file {errors}")
    assert max(errors.values()) < TOL, errors
    reload_and_compare(Autoencoder, config, state, sd_ldm.vae_ldm_to_ours, read(path, "first_stage_model."))


# --------------------------------------------------------------------------------------------------
# SD3 / SD3.5 MM-DiT (SAI layout)
# --------------------------------------------------------------------------------------------------

MMDIT_CASES = {
    "sd3-style": MMDiTConfig(
        in_channels=16, sample_size=32, width=128, depth=2, num_heads=2, context_dim=96, pooled_dim=64,
        pos_embed_max_size=16,
    ),
    "sd3.5-medium-style": MMDiTConfig(
        in_channels=16, sample_size=32, width=128, depth=3, num_heads=2, context_dim=96, pooled_dim=64,
        pos_embed_max_size=16, qk_norm="rms_norm", dual_attention_layers=(0, 1),
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", list(MMDIT_CASES))
def test_mmdit_single_file_matches_diffusers(name: str, tmp_path: Path) -> None:
    config = MMDIT_CASES[name]
    ours = random_model(MMDiT, config)
    diffusers_config = {
        "sample_size": config.sample_size, "patch_size": config.patch_size, "in_channels": config.in_channels,
        "out_channels": config.output_channels, "num_layers": config.depth, "attention_head_dim": config.head_dim,
        "num_attention_heads": config.num_heads, "joint_attention_dim": config.context_dim,
        "caption_projection_dim": config.width, "pooled_projection_dim": config.pooled_dim,
        "pos_embed_max_size": config.pos_embed_max_size, "qk_norm": config.qk_norm,
        "dual_attention_layers": list(config.dual_attention_layers),
    }  # fmt: skip
    state = ours.state_dict()
    sai = {DENOISER + k: v for k, v in sd3_sai.ours_to_mmdit_sai(state, config).items()}
    path, folder = write(tmp_path, sai, diffusers_config, "SD3Transformer2DModel")
    found = detect_checkpoint(header(path))
    assert (found.denoiser_config, found.family.name, found.prediction) == (config, "sd3", "flow")

    ref = diffusers.SD3Transformer2DModel.from_single_file(
        str(path), config=str(folder), local_files_only=True
    )
    ref.eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 16, 16, 16, generator=g)
    t = torch.tensor([1000.0, 37.5])
    tokens = torch.randn(2, 20, config.context_dim, generator=g)
    pooled = torch.randn(2, config.pooled_dim, generator=g)
    with torch.no_grad():
        expected = ref(
            hidden_states=x, encoder_hidden_states=tokens, pooled_projections=pooled, timestep=t
        ).sample
        got = ours(x, t, Conditioning(tokens=tokens, pooled=pooled))
    err = rel_err(got, expected)
    print(f"{name}: relative error vs diffusers from_single_file {err:.2e}")
    assert expected.std() > 0.01 and err < TOL
    reload_and_compare(MMDiT, found.denoiser_config, state, sd3_sai.mmdit_sai_to_ours, read(path, DENOISER))


# --------------------------------------------------------------------------------------------------
# FLUX (BFL layout)
# --------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_flux_single_file_matches_diffusers(tmp_path: Path) -> None:
    """Full FLUX.1-dev width (3072, 24 x 128 heads, RoPE (16, 56, 56)); one double and one single block."""
    config = FluxConfig(double_depth=1, single_depth=1, context_dim=256, pooled_dim=64, guidance_embed=True)
    ours = random_model(Flux, config)
    g = torch.Generator().manual_seed(1)
    b, h, w, n_txt = 2, 8, 12, 8
    x = torch.randn(b, 16, h, w, generator=g)
    t = torch.tensor([1000.0, 250.0])  # t / 1000 exact in float32: both sides see the same timestep
    tokens = torch.randn(b, n_txt, config.context_dim, generator=g)
    pooled = torch.randn(b, config.pooled_dim, generator=g)
    guidance = torch.tensor([3.5, 1.0])
    with torch.no_grad():
        got = ours(x, t, Conditioning(tokens=tokens, pooled=pooled, extra={"guidance": guidance}))
    state = ours.state_dict()
    del ours
    bfl = flux_bfl.ours_to_flux_bfl(state, config)  # a bare BFL component file, like flux1-dev.safetensors
    diffusers_config = dict(
        patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=128,
        num_attention_heads=24, joint_attention_dim=config.context_dim, pooled_projection_dim=config.pooled_dim,
        guidance_embeds=True, axes_dims_rope=list(config.axes_dim),
    )  # fmt: skip
    path, folder = write(tmp_path, bfl, diffusers_config, "FluxTransformer2DModel")
    del bfl
    found = detect_checkpoint(header(path))
    assert (found.denoiser_config, found.variant, found.denoiser_prefix) == (config, "flux-dev", "")
    reload_and_compare(Flux, found.denoiser_config, state, flux_bfl.flux_bfl_to_ours, read(path, ""))
    del state
    gc.collect()

    from diffusers.pipelines.flux.pipeline_flux import FluxPipeline

    ref = diffusers.FluxTransformer2DModel.from_single_file(
        str(path), config=str(folder), local_files_only=True
    )
    ref.eval()
    img_ids = FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, x.device, x.dtype)
    with torch.no_grad():
        packed = ref(
            hidden_states=FluxPipeline._pack_latents(x, b, 16, h, w),
            encoder_hidden_states=tokens,
            pooled_projections=pooled,
            timestep=t / 1000,
            img_ids=img_ids,
            txt_ids=torch.zeros(n_txt, 3),
            guidance=guidance,
        ).sample
    expected = FluxPipeline._unpack_latents(packed, h * 8, w * 8, 8)
    del ref
    gc.collect()
    err = rel_err(got, expected)
    print(f"flux-dev: relative error vs diffusers from_single_file {err:.2e}")
    assert expected.std() > 0.01 and err < TOL
