"""The Stable Diffusion x4 upscaler against diffusers 0.42.1 on identical tiny random weights: the U-Net alone
(noise-level class embedding, text-only attention levels, 7-channel input) and ``StableDiffusionUpscalePipeline``
end to end (CLIP prompt states, low-res noising by ``low_res_scheduler``, DDIM v-prediction with
``set_alpha_to_one`` false, guidance, VAE decode), with the same start latent and augmentation noise."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from latentworks.checkpoints.io import build_on_meta
from latentworks.checkpoints.keymaps.diffusers_configs import (
    unet_config_from_diffusers,
    unet_config_to_diffusers,
)
from latentworks.checkpoints.keymaps.sd_diffusers import unet_from_diffusers, unet_to_diffusers
from latentworks.diffusion.conditioning import CONCAT_KEY, Conditioning
from latentworks.models.unet import CLASS_LABEL_KEY, UNet
from latentworks.pipelines.x4_upscale import X4Upscaler
from support.x4_fixtures import UNET_CONFIG, tiny_x4_unet, write_x4_folder

pytest.importorskip("diffusers")


def test_unet_matches_diffusers_with_class_labels_and_text_only_attention() -> None:
    theirs = tiny_x4_unet(seed=3)
    config = unet_config_from_diffusers(dict(theirs.config), source="test")
    assert config.num_classes == 1000 and config.only_cross_attention == (True, True, False)
    ours = build_on_meta(UNet, config, unet_from_diffusers(theirs.state_dict(), config)).eval()
    # the map is reversible and the config writes back to what diffusers built from
    back = unet_to_diffusers(ours.state_dict(), config)
    assert all(torch.equal(back[k], v) for k, v in theirs.state_dict().items())
    written = unet_config_to_diffusers(config)
    for key in ("num_class_embeds", "only_cross_attention", "in_channels", "down_block_types"):
        assert written[key] == UNET_CONFIG[key], key

    g = torch.Generator().manual_seed(0)
    latent, low = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 3, 16, 16, generator=g)
    text = torch.randn(2, 7, 32, generator=g)
    t = torch.tensor([981.0, 20.0])
    labels = torch.tensor([20, 350])
    with torch.no_grad():
        want = theirs(torch.cat([latent, low], 1), t, encoder_hidden_states=text, class_labels=labels).sample
        got = ours(latent, t, Conditioning(tokens=text, extra={CONCAT_KEY: low, CLASS_LABEL_KEY: labels}))
        # another label changes the output: the embedding is used, not ignored
        other = ours(
            latent, t, Conditioning(tokens=text, extra={CONCAT_KEY: low, CLASS_LABEL_KEY: labels + 5})
        )
    scale = want.abs().max()
    assert (got - want).abs().max() <= 1e-4 * scale
    assert (other - want).abs().max() > 1e-2 * scale


def test_unet_without_labels_is_a_clear_error() -> None:
    theirs = tiny_x4_unet(seed=3)
    config = unet_config_from_diffusers(dict(theirs.config), source="test")
    ours = build_on_meta(UNet, config, unet_from_diffusers(theirs.state_dict(), config)).eval()
    cond = Conditioning(tokens=torch.zeros(1, 7, 32), extra={CONCAT_KEY: torch.zeros(1, 3, 8, 8)})
    with pytest.raises(ValueError, match="class_labels"):
        ours(torch.zeros(1, 4, 8, 8), torch.tensor([10.0]), cond)


@pytest.mark.parametrize("noise_level", [0, 100])
def test_pipeline_matches_stable_diffusion_upscale_pipeline(tmp_path: Path, noise_level: int) -> None:
    from diffusers import StableDiffusionUpscalePipeline

    folder = write_x4_folder(tmp_path)
    theirs = StableDiffusionUpscalePipeline.from_pretrained(str(folder)).to("cpu")
    theirs.set_progress_bar_config(disable=True)
    ours = X4Upscaler.from_pretrained(folder)

    g = torch.Generator().manual_seed(5)
    image = Image.fromarray((torch.rand(16, 16, 3, generator=g) * 255).to(torch.uint8).numpy())
    start = torch.randn(1, 4, 16, 16, generator=g)
    seed = 11
    augment = torch.randn(
        1, 3, 16, 16, generator=torch.Generator().manual_seed(seed)
    )  # diffusers' first draw
    steps, guidance = 3, 9.0
    want = theirs(
        prompt="a red apple",
        image=image,
        num_inference_steps=steps,
        guidance_scale=guidance,
        noise_level=noise_level,
        generator=torch.Generator().manual_seed(seed),
        latents=start.clone(),
        output_type="pt",
    ).images  # (1, 3, 64, 64) in [0, 1]

    from latentworks.pipelines.x4_upscale import images_to_pixels

    cond, uncond = ours.conditionings(["a red apple"], [""])
    pixels = images_to_pixels(image, multiple=4)
    got = ours.run(
        pixels, cond, uncond, start, augment, steps=steps, guidance=guidance, noise_level=noise_level
    )
    got = (got / 2 + 0.5).clamp(0, 1)
    assert got.shape == want.shape == (1, 3, 64, 64)
    assert (got - want).abs().max() <= 1e-3 * max(float(want.abs().max()), 1.0)
    # a float image (stage II's output in the IF cascade) is used unquantised: ours takes [-1, 1], diffusers [0, 1]
    tensor = torch.rand(1, 3, 16, 16, generator=g) * 2 - 1
    want_t = theirs(
        prompt="a red apple", image=(tensor + 1) / 2, num_inference_steps=steps, guidance_scale=guidance,
        noise_level=noise_level, generator=torch.Generator().manual_seed(seed), latents=start.clone(),
        output_type="pt",
    ).images  # fmt: skip
    got_t = ours.run(
        tensor, cond, uncond, start, augment, steps=steps, guidance=guidance, noise_level=noise_level
    )
    assert ((got_t / 2 + 0.5).clamp(0, 1) - want_t).abs().max() <= 1e-3
    # the prompt matters: another prompt gives another image
    cond2, _ = ours.conditionings(["a photo of a cat"], [""])
    other = ours.run(
        pixels, cond2, uncond, start, augment, steps=steps, guidance=guidance, noise_level=noise_level
    )
    assert ((other / 2 + 0.5).clamp(0, 1) - want).abs().max() > 1e-2


# unet/config.json of stabilityai/stable-diffusion-x4-upscaler (diffusers' field names and values)
RELEASE_UNET = {
    "_class_name": "UNet2DConditionModel", "act_fn": "silu", "attention_head_dim": 8,
    "block_out_channels": [256, 512, 512, 1024], "center_input_sample": False, "class_embed_type": None,
    "cross_attention_dim": 1024,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "downsample_padding": 1, "dual_cross_attention": False, "flip_sin_to_cos": True, "freq_shift": 0,
    "in_channels": 7, "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32,
    "num_class_embeds": 1000, "only_cross_attention": [True, True, True, False], "out_channels": 4,
    "sample_size": 128,
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "use_linear_projection": True,
}  # fmt: skip


def test_release_config_maps_every_tensor_of_diffusers_model() -> None:
    """The released U-Net's config builds our network, and every tensor of diffusers' model (built on the meta
    device, so no memory) maps to one of ours with the same shape."""
    from diffusers import UNet2DConditionModel

    config = unet_config_from_diffusers(RELEASE_UNET, source="release")
    with torch.device("meta"):
        theirs = UNet2DConditionModel(**{k: v for k, v in RELEASE_UNET.items() if not k.startswith("_")})
        ours = UNet(config)
    mapped = unet_from_diffusers(theirs.state_dict(), config)  # refuses unmapped keys and wrong shapes
    assert {k: tuple(v.shape) for k, v in mapped.items()} == {
        k: tuple(v.shape) for k, v in ours.state_dict().items()
    }
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())
