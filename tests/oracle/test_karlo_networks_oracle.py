"""Karlo's networks against diffusers on identical random weights (loaded through our key maps), and the key
maps' round trips: ``PriorTransformer`` (causal mask, padded prompt), ``UnCLIPTextProjModel``, the decoder's
``UNet2DConditionModel`` (added-KV attention with a token mask, class vector) and the super-resolution
``UNet2DModel`` with and without mid-block attention."""

from __future__ import annotations

import pytest
import torch

from latentworks.checkpoints.keymaps import karlo as km
from latentworks.models.pixel_unet import PixelUNet
from latentworks.models.prior import PriorTransformer, UnCLIPTextProj

diffusers = pytest.importorskip("diffusers")
from diffusers.pipelines.deprecated.unclip.text_proj import UnCLIPTextProjModel  # noqa: E402


def _perturbed(model: torch.nn.Module) -> torch.nn.Module:
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    err, scale = (a - b).abs().max().item(), b.abs().max().item()
    assert err <= 1e-4 * max(scale, 1.0), f"differ by {err} (scale {scale})"


def _round_trip(theirs: dict[str, torch.Tensor], back: dict[str, torch.Tensor]) -> None:
    assert set(back) == set(theirs)
    assert all(torch.equal(back[k], v) for k, v in theirs.items())


def test_prior_and_text_projection() -> None:
    torch.manual_seed(0)
    ref = _perturbed(
        diffusers.PriorTransformer(
            num_attention_heads=2, attention_head_dim=8, embedding_dim=24, num_layers=2
        )
    )
    cfg = km.prior_config_from_diffusers(dict(ref.config))
    ours = PriorTransformer(cfg)
    ours.load_state_dict(km.prior_from_diffusers(ref.state_dict(), cfg))
    _round_trip(ref.state_dict(), km.prior_to_diffusers(ours.state_dict(), cfg))
    g = torch.Generator().manual_seed(2)
    x, embed, tokens = (
        torch.randn(2, 24, generator=g),
        torch.randn(2, 24, generator=g),
        torch.randn(2, 77, 24, generator=g),
    )
    mask = torch.arange(77)[None] < torch.tensor([[5], [12]])  # two prompts of different lengths
    with torch.no_grad():
        theirs = ref(x, timestep=torch.tensor([10, 900]), proj_embedding=embed, encoder_hidden_states=tokens,
                     attention_mask=mask).predicted_image_embedding  # fmt: skip
        _close(ours(x, torch.tensor([10.0, 900.0]), embed, tokens, mask), theirs)
        _close(ours.denormalize(x), ref.post_process_latents(x))

    proj = _perturbed(UnCLIPTextProjModel(clip_embeddings_dim=24, time_embed_dim=64, cross_attention_dim=40))
    pcfg = km.text_proj_config_from_diffusers(dict(proj.config))
    mine = UnCLIPTextProj(pcfg)
    mine.load_state_dict(km.text_proj_from_diffusers(proj.state_dict(), pcfg))
    _round_trip(proj.state_dict(), km.text_proj_to_diffusers(mine.state_dict(), pcfg))
    with torch.no_grad():
        tokens_c, time_c = mine(x, embed, tokens)
        tokens_u, time_u = mine(mine.uncond_image(2), embed, tokens)
    # diffusers puts the learned unconditional image embedding first (its prompt batch must be doubled too)
    with torch.no_grad():
        tokens_t, time_t = proj(image_embeddings=x, prompt_embeds=embed.repeat(2, 1),
                                text_encoder_hidden_states=tokens.repeat(2, 1, 1), do_classifier_free_guidance=True)  # fmt: skip
    _close(torch.cat([tokens_u, tokens_c]), tokens_t)
    _close(torch.cat([time_u, time_c]), time_t)


def test_decoder_unet() -> None:
    torch.manual_seed(0)
    ref = _perturbed(
        diffusers.UNet2DConditionModel(
            sample_size=8, in_channels=3, out_channels=6, block_out_channels=(32, 64), layers_per_block=1,
            down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
            up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
            mid_block_type="UNetMidBlock2DSimpleCrossAttn", cross_attention_dim=40, attention_head_dim=16,
            resnet_time_scale_shift="scale_shift", class_embed_type="identity",
        )
    )  # fmt: skip
    cfg = km.pixel_unet_config_from_diffusers(dict(ref.config), source="decoder/config.json")
    ours = PixelUNet(cfg)
    ours.load_state_dict(km.pixel_unet_from_diffusers(ref.state_dict(), cfg, "decoder"))
    _round_trip(ref.state_dict(), km.pixel_unet_to_diffusers(ours.state_dict(), cfg))
    g = torch.Generator().manual_seed(3)
    x, context, klass = (
        torch.randn(2, 3, 8, 8, generator=g),
        torch.randn(2, 9, 40, generator=g),
        torch.randn(2, 128, generator=g),
    )
    mask = torch.arange(9)[None] < torch.tensor([[6], [9]])
    with torch.no_grad():
        theirs = ref(
            x, torch.tensor([50, 700]), encoder_hidden_states=context, class_labels=klass, attention_mask=mask
        ).sample
        _close(ours(x, torch.tensor([50.0, 700.0]), context, mask, klass), theirs)


@pytest.mark.parametrize(
    ("shift", "attention"), [("scale_shift", False), ("scale_shift", True), ("default", True)]
)
def test_super_res_unet(shift: str, attention: bool) -> None:
    torch.manual_seed(0)
    ref = _perturbed(
        diffusers.UNet2DModel(
            sample_size=16, in_channels=6, out_channels=3, block_out_channels=(32, 64), layers_per_block=1,
            down_block_types=("ResnetDownsampleBlock2D",) * 2, up_block_types=("ResnetUpsampleBlock2D",) * 2,
            resnet_time_scale_shift=shift, add_attention=attention, attention_head_dim=16,
        )
    )  # fmt: skip
    cfg = km.pixel_unet_config_from_diffusers(
        {"_class_name": "UNet2DModel", **ref.config}, source="super_res_first"
    )
    assert cfg.mid_attention == ("self" if attention else "none")
    ours = PixelUNet(cfg)
    ours.load_state_dict(km.pixel_unet_from_diffusers(ref.state_dict(), cfg, "super_res_first"))
    _round_trip(ref.state_dict(), km.pixel_unet_to_diffusers(ours.state_dict(), cfg))
    x = torch.randn(2, 6, 16, 16, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        _close(ours(x, torch.tensor([0.0, 999.0])), ref(x, torch.tensor([0, 999])).sample)


def test_config_readers_refuse_other_architectures() -> None:
    cfg = {"_class_name": "UNet2DConditionModel", "block_out_channels": [32, 64],
           "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"], "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"]}  # fmt: skip
    with pytest.raises(ValueError, match="CrossAttnDownBlock2D"):
        km.pixel_unet_config_from_diffusers(cfg, source="decoder/config.json")
    with pytest.raises(ValueError, match="norm_in_type"):
        km.prior_config_from_diffusers({"norm_in_type": "layer"})
