"""Inpainting nodes: schemas against ComfyUI's (written by hand from its nodes.py, nodes_mask.py and
nodes_differential_diffusion.py), mask arithmetic against hand-worked answers, and inpainting through KSampler
with a regular model (latent noise mask) and a 9-channel inpainting model (mask + masked image as input)."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from latentworks import families
from latentworks.diffusion.conditioning import CONCAT_KEY
from latentworks.graph.executor import ExecutionContext, Executor
from latentworks.models.autoencoder import PRESETS as VAE_PRESETS
from latentworks.models.autoencoder import Autoencoder
from latentworks.models.unet import PRESETS as UNET_PRESETS
from latentworks.models.unet import UNet
from latentworks.nodes import default_registry
from latentworks.nodes.payloads import ConditioningPayload, Latent
from latentworks.nodes.sampling import model_concat
from latentworks.pipelines import Pipeline
from latentworks.pipelines.inpaint import inpaint_concat, masked_pixels
from latentworks.pipelines.loading import save_model_folder

REG = default_registry()
SIZE = 16

# name -> [(input, type, {options that must match})], [(output type, output name)]
COMFY: dict[str, tuple[list[tuple[str, str, dict[str, Any]]], list[tuple[str, str | None]]]] = {
    "InpaintModelConditioning": (
        [
            ("positive", "CONDITIONING", {}),
            ("negative", "CONDITIONING", {}),
            ("vae", "VAE", {}),
            ("pixels", "IMAGE", {}),
            ("mask", "MASK", {}),
            ("noise_mask", "BOOLEAN", {"default": True}),
        ],
        [("CONDITIONING", "positive"), ("CONDITIONING", "negative"), ("LATENT", "latent")],
    ),
    "DifferentialDiffusion": (
        [
            ("model", "MODEL", {}),
            ("strength", "FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "optional": True}),
        ],
        [("MODEL", None)],
    ),
    "GrowMask": (
        [
            ("mask", "MASK", {}),
            ("expand", "INT", {"default": 0, "min": -16384, "max": 16384, "step": 1}),
            ("tapered_corners", "BOOLEAN", {"default": True}),
        ],
        [("MASK", None)],
    ),
    "ThresholdMask": (
        [("mask", "MASK", {}), ("value", "FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.01})],
        [("MASK", None)],
    ),
    "VAEEncodeForInpaint": (
        [
            ("pixels", "IMAGE", {}),
            ("vae", "VAE", {}),
            ("mask", "MASK", {}),
            ("grow_mask_by", "INT", {"default": 6, "min": 0, "max": 64}),
        ],
        [("LATENT", None)],
    ),
    "SetLatentNoiseMask": ([("samples", "LATENT", {}), ("mask", "MASK", {})], [("LATENT", None)]),
    "ImagePadForOutpaint": (
        [
            ("image", "IMAGE", {}),
            ("left", "INT", {"default": 0}),
            ("top", "INT", {"default": 0}),
            ("right", "INT", {"default": 0}),
            ("bottom", "INT", {"default": 0}),
            ("feathering", "INT", {"default": 40}),
        ],
        [("IMAGE", None), ("MASK", None)],
    ),
}


@pytest.mark.parametrize("name", sorted(COMFY))
def test_schema_matches_comfyui(name: str) -> None:
    spec = REG[name]
    inputs, outputs = COMFY[name]
    assert [(i.name, i.type) for i in spec.inputs if not i.hidden] == [(n, t) for n, t, _ in inputs]
    for (n, _, opts), i in zip(inputs, spec.inputs, strict=False):
        for key, value in opts.items():
            assert getattr(i, key) == value, (name, n, key)
    assert [o.type for o in spec.outputs] == [t for t, _ in outputs]
    for (_, oname), o in zip(outputs, spec.outputs, strict=True):
        if oname is not None:
            assert o.name == oname


def ctx() -> ExecutionContext:
    ex = Executor(REG)
    c = ex.new_context("t")
    c.node_id, c.class_type = "1", "test"
    return c


def test_grow_mask_square_and_tapered() -> None:
    m = torch.zeros(1, 7, 7)
    m[0, 3, 3] = 1
    (square,) = REG["GrowMask"].execute(ctx(), mask=m, expand=1, tapered_corners=False)
    (plus,) = REG["GrowMask"].execute(ctx(), mask=m, expand=1, tapered_corners=True)
    (diamond,) = REG["GrowMask"].execute(ctx(), mask=m, expand=2, tapered_corners=True)
    assert square.sum() == 9 and square[0, 2:5, 2:5].min() == 1
    assert plus.sum() == 5 and plus[0, 2, 2] == 0 and plus[0, 2, 3] == 1
    assert diamond.sum() == 13  # |dy| + |dx| <= 2
    (back,) = REG["GrowMask"].execute(ctx(), mask=square, expand=-1, tapered_corners=False)
    assert torch.equal(back, m)


def test_threshold_mask() -> None:
    (out,) = REG["ThresholdMask"].execute(ctx(), mask=torch.tensor([[[0.2, 0.5, 0.7]]]), value=0.5)
    assert out.tolist() == [[[0.0, 0.0, 1.0]]]


def test_vae_encode_for_inpaint_grows_like_comfyui() -> None:
    class FakeVAE(torch.nn.Module):  # identity "VAE" with factor 1, to see the pixels and mask the node makes
        config = type("C", (), {"downsample_factor": 1})()

        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def encode(self, x: torch.Tensor):  # noqa: ANN202
            z = torch.cat([x, torch.zeros_like(x[:, :1])], dim=1)  # 4 "latent" channels: RGB and a zero
            return type("P", (), {"mode": lambda _self: z})()

    from latentworks.nodes.payloads import VAEPayload

    fmt = dataclasses.replace(families.get("sd15").latent_format, scale_factor=1.0, shift_factor=0.0)
    vae = VAEPayload(vae=FakeVAE(), latent_format=fmt)
    pixels = torch.full((1, 9, 9, 3), 1.0)
    mask = torch.zeros(1, 9, 9)
    mask[0, 4, 4] = 1
    (lat,) = REG["VAEEncodeForInpaint"].execute(ctx(), pixels=pixels, vae=vae, mask=mask, grow_mask_by=4)
    # ComfyUI: a 4x4 box with padding ceil(3/2) = 2 -> rows/cols 3..6 around pixel 4 (one more down/right)
    expected = torch.zeros(9, 9)
    expected[3:7, 3:7] = 1
    assert torch.equal(lat.noise_mask[0, 0], expected)
    grey = lat.samples[0, :3].permute(1, 2, 0) * 0.5 + 0.5  # back to [0, 1]
    assert torch.allclose(grey[4, 4], torch.full((3,), 0.5)) and torch.allclose(grey[0, 0], torch.ones(3))


@pytest.fixture(scope="module")
def inpaint_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random latentworks folder whose U-Net takes 9 input channels, like SD inpainting models."""
    torch.manual_seed(0)
    unet = UNet(dataclasses.replace(UNET_PRESETS["tiny"], context_dim=384, in_channels=9))
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return save_model_folder(
        tmp_path_factory.mktemp("models") / "checkpoints" / "tiny-inpaint",
        name="tiny-inpaint",
        architecture="unet",
        denoiser=unet,
        prediction="eps",
        sampling={"kind": "discrete", "betas": "scaled_linear"},
        vae=Autoencoder(VAE_PRESETS["tiny"]),
        latent_format=dataclasses.replace(families.get("sd15").latent_format, scale_factor=1.0),
        text_encoder={"kind": "minilm", "max_length": 16},
        resolution=(SIZE, SIZE),
        defaults={"steps": 3, "guidance": 3.0, "sampler": "euler", "scheduler": "normal"},
        card={"licence": "test only"},
    )


def _image_and_mask() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    pixels = torch.rand(1, SIZE, SIZE, 3, generator=g)
    mask = torch.zeros(1, SIZE, SIZE)
    mask[:, 4:12, 8:16] = 1  # aligned to the f2 VAE's latent cells
    return pixels, mask


def _sample(models: Path, name: str, positive: Any, negative: Any, latent: Any, model: Any = None) -> Any:
    c = Executor(default_registry(models)).new_context("t")
    c.node_id, c.class_type = "9", "KSampler"
    (out,) = REG["KSampler"].execute(
        c,
        model=model,
        seed=4,
        steps=3,
        cfg=3.0,
        sampler_name="euler",
        scheduler="normal",
        positive=positive,
        negative=negative,
        latent_image=latent,
        denoise=1.0,
    )
    return out


def _load(models: Path, name: str) -> tuple[Any, Any, Any]:
    reg = default_registry(models)
    c = Executor(reg).new_context("t")
    c.node_id, c.class_type = "1", "CheckpointLoaderSimple"
    return reg["CheckpointLoaderSimple"].execute(c, ckpt_name=name)


def test_inpaint_model_conditioning_feeds_a_9_channel_model(inpaint_model: Path) -> None:
    models = inpaint_model.parent.parent
    model, clip, vae = _load(models, "tiny-inpaint")
    (pos,) = REG["CLIPTextEncode"].execute(ctx(), text="a cat", clip=clip)
    (neg,) = REG["CLIPTextEncode"].execute(ctx(), text="", clip=clip)
    pixels, mask = _image_and_mask()
    pos2, neg2, latent = REG["InpaintModelConditioning"].execute(
        ctx(), positive=pos, negative=neg, vae=vae, pixels=pixels, mask=mask, noise_mask=True
    )
    # The model's extra input: the mask at latent size and the masked image's latent, as the pipeline makes it.
    pipe = Pipeline(model.folder, clip.encoder)
    x = pixels.permute(0, 3, 1, 2) * 2 - 1
    m = mask[:, None]
    expected = inpaint_concat(m[..., ::2, ::2], pipe.encode_pixels(masked_pixels(x, m)))
    got = model_concat(model.folder, pos2, neg2, latent, latent.samples)
    assert torch.allclose(got, expected, atol=1e-5)

    out = _sample(models, "tiny-inpaint", pos2, neg2, latent, model)
    known = latent.samples
    keep = (mask[:, None, ::2, ::2] == 0).expand_as(known)
    assert torch.allclose(out.samples[keep], known[keep], atol=1e-5)  # the noise mask keeps the rest
    assert (out.samples[~keep] - known[~keep]).abs().max() > 1e-2

    # the concat matters: another masked image changes the result in the masked area
    pos3 = dataclasses.replace(pos2, concat_latent=pos2.concat_latent + 1)
    neg3 = dataclasses.replace(neg2, concat_latent=neg2.concat_latent + 1)
    other = _sample(models, "tiny-inpaint", pos3, neg3, latent, model)
    assert (other.samples[~keep] - out.samples[~keep]).abs().max() > 1e-3


def test_inpainting_model_without_a_mask_says_what_to_do(inpaint_model: Path) -> None:
    models = inpaint_model.parent.parent
    model, clip, vae = _load(models, "tiny-inpaint")
    (pos,) = REG["CLIPTextEncode"].execute(ctx(), text="a cat", clip=clip)
    (latent,) = REG["EmptyLatentImage"].execute(ctx(), width=SIZE, height=SIZE, batch_size=1)
    with pytest.raises(ValueError, match="InpaintModelConditioning"):
        _sample(models, "tiny-inpaint", pos, pos, latent, model)


def test_set_latent_noise_mask_and_differential_diffusion_keep_the_unmasked_latent(
    tiny_model: Path, tmp_path: Path
) -> None:
    models = tmp_path / "models"
    shutil.copytree(tiny_model, models / "checkpoints" / tiny_model.name)
    model, clip, vae = _load(models, tiny_model.name)
    (pos,) = REG["CLIPTextEncode"].execute(ctx(), text="a cat", clip=clip)
    pixels, mask = _image_and_mask()
    (latent,) = REG["VAEEncode"].execute(ctx(), pixels=pixels, vae=vae)
    (masked,) = REG["SetLatentNoiseMask"].execute(ctx(), samples=latent, mask=mask * 0.5 + (mask > 0) * 0.5)
    keep = (mask[:, None, ::2, ::2] == 0).expand_as(latent.samples)
    (diff_model,) = REG["DifferentialDiffusion"].execute(ctx(), model=model)
    plain = _sample(models, tiny_model.name, pos, pos, masked, model)
    diff = _sample(models, tiny_model.name, pos, pos, masked, diff_model)
    for out in (plain, diff):
        assert torch.allclose(out.samples[keep], latent.samples[keep], atol=1e-5)
        assert (out.samples[~keep] - latent.samples[~keep]).abs().max() > 1e-2
    # a soft (grey) mask: differential diffusion changes less than plain blending does
    (half,) = REG["SetLatentNoiseMask"].execute(ctx(), samples=latent, mask=mask * 0.3)
    soft_plain = _sample(models, tiny_model.name, pos, pos, half, model)
    soft_diff = _sample(models, tiny_model.name, pos, pos, half, diff_model)
    assert not torch.allclose(soft_plain.samples, soft_diff.samples)
    assert ConditioningPayload(pos.cond).concat_latent is None
    assert CONCAT_KEY == "concat"


def test_model_concat_folds_the_soft_mask_for_flux_fill() -> None:
    """For a FLUX Fill model (16-channel latents, 16 + 16 + f*f input channels) the node path gives the masked
    latent then the pixel mask folded per latent cell, unrounded as ComfyUI's Flux concat does."""
    from types import SimpleNamespace

    from latentworks.pipelines.inpaint import fill_concat

    folder = SimpleNamespace(
        latent_format=SimpleNamespace(channels=16),
        denoiser_net=SimpleNamespace(config=SimpleNamespace(in_channels=36)),  # f = 2: 16 + 16 + 4
        vae=SimpleNamespace(config=SimpleNamespace(downsample_factor=2)),
    )
    masked = torch.randn(1, 16, 4, 4)
    mask = torch.rand(1, 1, 8, 8)  # soft
    pos = ConditioningPayload(cond=None, concat_latent=masked, concat_mask=mask)  # type: ignore[arg-type]
    latent = Latent(samples=torch.zeros(2, 16, 4, 4))
    got = model_concat(folder, pos, None, latent, latent.samples)  # type: ignore[arg-type]
    assert got.shape == (2, 20, 4, 4)
    assert torch.allclose(got, fill_concat(mask, masked).expand(2, -1, -1, -1))
