"""detect_checkpoint / detect_vae recover each preset's config exactly from names and shapes alone.

Files are simulated by their headers: ``{key: shape}`` of our models (built on the meta device, no memory)
converted to the single-file layouts, with the prefixes real files use and a few text-encoder keys.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from latentworks import families
from latentworks.checkpoints.detect import SD2_V_KEY, detect_vae
from latentworks.checkpoints.keymaps import flux_bfl, sd3_sai, sd_diffusers, sd_ldm
from latentworks.families.detect import detect_checkpoint
from latentworks.models import autoencoder, flux, mmdit, unet
from latentworks.pipelines.loading import sampling_from_meta

UNET = "model.diffusion_model."


def meta(model_cls: type, config: object) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        return model_cls(config).state_dict()


def header(sd: dict[str, torch.Tensor], prefix: str = "") -> dict[str, tuple[int, ...]]:
    return {f"{prefix}{k}": tuple(v.shape) for k, v in sd.items()}


def unet_file(config: unet.UNetConfig, prefix: str = UNET) -> dict[str, tuple[int, ...]]:
    return header(sd_ldm.ours_to_unet_ldm(meta(unet.UNet, config), config), prefix)


def vae_file(
    config: autoencoder.AutoencoderConfig, prefix: str = "first_stage_model."
) -> dict[str, tuple[int, ...]]:
    return header(sd_ldm.ours_to_vae_ldm(meta(autoencoder.Autoencoder, config), config), prefix)


TEXT: dict[str, dict[str, tuple[int, ...]]] = {
    "sd1": {"cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": (49408, 768)},
    "sd2": {"cond_stage_model.model.token_embedding.weight": (49408, 1024)},
    "sdxl": {
        "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight": (49408, 768),
        "conditioner.embedders.1.model.token_embedding.weight": (49408, 1280),
    },
    "sdxl-refiner": {"conditioner.embedders.0.model.token_embedding.weight": (49408, 1280)},
    "sd3": {
        "text_encoders.clip_l.transformer.text_model.final_layer_norm.weight": (768,),
        "text_encoders.clip_g.transformer.text_model.final_layer_norm.weight": (1280,),
        "text_encoders.t5xxl.transformer.shared.weight": (32128, 4096),
    },
}

UNET_CASES = [
    # (preset or config, family, variant, latent format, text encoders)
    (unet.PRESETS["sd15"], "sd1", "sd1", "sd15", {"clip_l": "cond_stage_model.transformer."}),
    (replace(unet.PRESETS["sd15"], in_channels=9), "sd1", "sd1-inpaint", "sd15", {"clip_l": "cond_stage_model.transformer."}),
    (unet.PRESETS["sd2"], "sd2", "sd2", "sd2", {"clip_h": "cond_stage_model.model."}),
    (replace(unet.PRESETS["sd2"], in_channels=9), "sd2", "sd2-inpaint", "sd2", {"clip_h": "cond_stage_model.model."}),
    (unet.PRESETS["sdxl"], "sdxl", "sdxl", "sdxl",
     {"clip_l": "conditioner.embedders.0.transformer.", "clip_g": "conditioner.embedders.1.model."}),
    (replace(unet.PRESETS["sdxl"], in_channels=9), "sdxl", "sdxl-inpaint", "sdxl",
     {"clip_l": "conditioner.embedders.0.transformer.", "clip_g": "conditioner.embedders.1.model."}),
    (unet.PRESETS["sdxl-refiner"], "sdxl-refiner", "sdxl-refiner", "sdxl", {"clip_g": "conditioner.embedders.0.model."}),
]  # fmt: skip


@pytest.mark.parametrize("case", UNET_CASES, ids=[c[2] for c in UNET_CASES])
def test_unet_single_files(case: tuple) -> None:
    config, family, variant, latent_format, encoders = case
    vae = autoencoder.PRESETS["sd"]
    shapes = unet_file(config) | vae_file(vae) | TEXT[family]
    found = detect_checkpoint(shapes, source="model.safetensors")
    assert found.denoiser_config == config
    assert (found.family.name, found.variant, found.architecture.name) == (family, variant, "unet")
    assert (
        found.denoiser_prefix == UNET and found.vae_prefix == "first_stage_model." and found.vae_config == vae
    )
    assert found.text_encoders == encoders
    assert (
        found.prediction == "eps" and found.family.latent_format == families.get(latent_format).latent_format
    )
    ms = sampling_from_meta(found.family.sampling)  # the spec is one the pipeline loader understands
    assert (
        found.family.sampling.kind == "discrete" and abs(ms.sigma_max - 14.6146) < 1e-3
    )  # SD's scaled-linear betas


def test_bare_unet_component() -> None:
    found = detect_checkpoint(unet_file(unet.PRESETS["sdxl"], prefix=""))
    assert found.denoiser_config == unet.PRESETS["sdxl"] and found.denoiser_prefix == ""
    assert found.vae_config is None and found.vae_prefix is None and found.text_encoders == {}


def test_sd2_eps_or_v() -> None:
    shapes = unet_file(unet.PRESETS["sd2"]) | vae_file(autoencoder.PRESETS["sd"])
    key = UNET + SD2_V_KEY
    assert key in shapes
    g = torch.Generator().manual_seed(0)
    bias = {"v": 0.2 * torch.randn(320, generator=g), "eps": 0.02 * torch.randn(320, generator=g)}
    for want, tensor in bias.items():
        read: list[str] = []

        def get_tensor(k: str, t: torch.Tensor = tensor, read: list[str] = read) -> torch.Tensor:
            read.append(k)
            return t

        found = detect_checkpoint(shapes, get_tensor=get_tensor)
        assert (found.prediction, read) == (want, [key])
        assert found.variant == ("sd2-v" if want == "v" else "sd2")
    assert detect_checkpoint(shapes).prediction == "eps"  # no tensor access: the documented default
    assert detect_checkpoint({**shapes, "v_pred": ()}).prediction == "v"
    overridden = detect_checkpoint(shapes, get_tensor=lambda k: bias["eps"], prediction="v")
    assert (overridden.prediction, overridden.variant) == ("v", "sd2-v")
    with pytest.raises(ValueError, match="prediction"):
        detect_checkpoint(shapes, prediction="x0")


@pytest.mark.parametrize("name", ["sd3-medium", "sd3.5-large", "sd3.5-medium"])
@pytest.mark.parametrize("full", [True, False], ids=["single-file", "component"])
def test_sd3_files(name: str, full: bool) -> None:
    config = mmdit.PRESETS[name]
    dit = sd3_sai.ours_to_mmdit_sai(meta(mmdit.MMDiT, config), config)
    shapes = header(dit, UNET) | vae_file(autoencoder.PRESETS["sd3"]) | TEXT["sd3"] if full else header(dit)
    found = detect_checkpoint(shapes)
    assert found.denoiser_config == config
    assert (found.family.name, found.variant, found.architecture.name, found.prediction) == (
        "sd3",
        name,
        "mmdit",
        "flow",
    )
    assert found.family.latent_format.scale_factor == 1.5305 and found.family.sampling.to_dict() == {
        "kind": "flow",
        "shift": 3.0,
        "multiplier": 1000,
    }
    assert sampling_from_meta(found.family.sampling).shift == 3.0
    if full:
        assert found.vae_config == autoencoder.PRESETS["sd3"] and found.vae_prefix == "first_stage_model."
        assert set(found.text_encoders) == {"clip_l", "clip_g", "t5xxl"}
    else:
        assert found.vae_config is None and found.text_encoders == {} and found.denoiser_prefix == ""


@pytest.mark.parametrize("name", ["flux-dev", "flux-schnell"])
def test_flux_files(name: str) -> None:
    config = flux.PRESETS[name]
    bfl = header(flux_bfl.ours_to_flux_bfl(meta(flux.Flux, config), config))
    found = detect_checkpoint(bfl, source="flux1.safetensors")
    assert found.denoiser_config == config
    assert (found.family.name, found.variant, found.architecture.name) == (name, name, "flux")
    assert found.family.latent_format.scale_factor == 0.3611 and found.prediction == "flow"
    assert found.denoiser_prefix == ""
    assert (found.family.sampling.dynamic_shift is not None) == (
        name == "flux-dev"
    )  # dev's resolution-dependent shift
    # An all-in-one file (ComfyUI style): transformer, VAE under vae., CLIP-L and T5.
    vae = autoencoder.PRESETS["flux"]
    full = header(flux_bfl.ours_to_flux_bfl(meta(flux.Flux, config), config), UNET) | vae_file(vae, "vae.")
    full |= {k: v for k, v in TEXT["sd3"].items() if "clip_g" not in k}
    found = detect_checkpoint(full)
    assert found.denoiser_config == config and found.vae_config == vae and found.vae_prefix == "vae."
    assert found.text_encoders == {
        "clip_l": "text_encoders.clip_l.transformer.",
        "t5xxl": "text_encoders.t5xxl.transformer.",
    }


def test_small_configs_from_shapes() -> None:
    """Non-preset widths and depths come from shapes too (heads follow each family's rule)."""
    cfg = unet.UNetConfig(channels=(64, 128), layers_per_block=1, transformer_depth=(1, 2),
                          mid_transformer_depth=3, num_heads=None, head_dim=64, context_dim=1024,
                          use_linear_projection=True, upcast_attention=True)  # fmt: skip
    assert detect_checkpoint(unet_file(cfg)).denoiser_config == cfg
    m = mmdit.MMDiTConfig(in_channels=4, sample_size=32, width=128, depth=3, num_heads=2, context_dim=48,
                          pooled_dim=40, pos_embed_max_size=16, qk_norm="rms_norm", dual_attention_layers=(1,))  # fmt: skip
    assert detect_checkpoint(header(sd3_sai.ours_to_mmdit_sai(meta(mmdit.MMDiT, m), m))).denoiser_config == m
    f = flux.FluxConfig(in_channels=4, width=128, num_heads=1, double_depth=2, single_depth=3, context_dim=24,
                        pooled_dim=16, guidance_embed=False)  # fmt: skip
    assert detect_checkpoint(header(flux_bfl.ours_to_flux_bfl(meta(flux.Flux, f), f))).denoiser_config == f


@pytest.mark.parametrize("name", ["sd", "sd3", "emoji-f4c4"])
def test_detect_vae_both_layouts(name: str) -> None:
    config = autoencoder.PRESETS[name]
    assert detect_vae(vae_file(config, "")) == (config, "ldm")
    assert detect_vae(vae_file(config, "vae.")) == (config, "ldm")
    diffusers = header(sd_diffusers.vae_to_diffusers(meta(autoencoder.Autoencoder, config), config))
    assert detect_vae(diffusers) == (config, "diffusers")


def test_unknown_files_are_clear_errors() -> None:
    clip_only = {"text_model.embeddings.token_embedding.weight": (49408, 768), "logit_scale": ()}
    with pytest.raises(
        ValueError, match=r"clip\.safetensors: no denoiser keys found.*'text_model\.embeddings\.'"
    ):
        detect_checkpoint(clip_only, source="clip.safetensors")
    with pytest.raises(ValueError, match="vae.pt: no autoencoder keys"):
        detect_vae(clip_only, source="vae.pt")
    odd = unet_file(replace(unet.PRESETS["sd15"], context_dim=512))
    with pytest.raises(
        ValueError, match=r"unet network whose config matches no known family.*context_dim=512"
    ):
        detect_checkpoint(odd)
    broken = dict(unet_file(unet.PRESETS["sd15"]))
    del broken[UNET + "out.2.weight"]
    with pytest.raises(ValueError, match="out.2.weight"):
        detect_checkpoint(broken, source="cut.safetensors")


def test_small_sdxl_refiner_style() -> None:
    """The refiner's 5 time ids (2560 = 1280 + 5 x 256) and bigG-only context are told apart from the base."""
    base = unet.UNetConfig(
        channels=(64, 128), transformer_depth=(0, 2), mid_transformer_depth=2, num_heads=None, head_dim=64,
        context_dim=2048, use_linear_projection=True, pooled_dim=1280, num_time_ids=6,
    )  # fmt: skip
    refiner = replace(base, context_dim=1280, num_time_ids=5)
    assert (
        detect_checkpoint(unet_file(base)).family.name,
        detect_checkpoint(unet_file(refiner)).family.name,
    ) == (
        "sdxl",
        "sdxl-refiner",
    )
    assert detect_checkpoint(unet_file(refiner)).denoiser_config == refiner
    bad = replace(base, time_id_dim=100)  # 1280 + 6 x 100: not SDXL's conditioning
    with pytest.raises(ValueError, match="label_emb.0.0.weight takes 1880 inputs"):
        detect_checkpoint(unet_file(bad))


def test_edit_and_tool_variants() -> None:
    """Extra input channels name the variant; the config keeps them (out_channels stays the latent's)."""
    ip2p = replace(unet.PRESETS["sd15"], in_channels=8)
    assert detect_checkpoint(unet_file(ip2p)).variant == "sd1-ip2p"
    for in_channels, variant in ((96, "flux-dev-fill"), (32, "flux-dev-control")):
        config = replace(flux.PRESETS["flux-dev"], in_channels=in_channels, out_channels=16)
        found = detect_checkpoint(header(flux_bfl.ours_to_flux_bfl(meta(flux.Flux, config), config)))
        assert (found.variant, found.denoiser_config) == (variant, config)
