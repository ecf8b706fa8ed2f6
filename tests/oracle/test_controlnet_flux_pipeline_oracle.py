"""FLUX ControlNet end to end against diffusers' ``FluxControlNetPipeline``: a tiny random FLUX.1-dev-layout
pipeline (saved by diffusers as a folder, loaded by latentworks) plus a random Union ``FluxControlNetModel`` (saved
as a bare diffusers-layout file, detected from shapes) generate the same latents and images from the same start
noise: Euler on the dynamically shifted schedule, distilled guidance 3.5, control strength 0.8, Union mode 2.

diffusers encodes the control image by *sampling* the VAE posterior (with the pipeline's generator) where
latentworks and ComfyUI take its mode; the VAE's log-variance bias is set to -30 here (std 3e-7) so both read
the same latents.
"""

from __future__ import annotations

import gc
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from test_pipeline_e2e_oracle import SEED, SIZE, STEPS, _clip, _compare, _perturb, _tiny_vae

from latentworks.diffusion.noise import seeded_noise
from latentworks.pipelines import Pipeline
from latentworks.pipelines.control import Control
from support.tokenizers import t5_tokenizer_for_diffusers, write_clip_tokenizer, write_t5_tokenizer

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

PROMPT = "a red apple on the table"
MODE = 2


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_flux_controlnet_pipeline_matches_diffusers(tmp_path: Path) -> None:
    vocab = write_clip_tokenizer(tmp_path / "clip_tok")
    t5_file = write_t5_tokenizer(tmp_path / "t5_tok")
    torch.manual_seed(1)
    dims = dict(
        in_channels=64, attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
        pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(4, 6, 6),
    )  # fmt: skip
    transformer = _perturb(
        diffusers.FluxTransformer2DModel(patch_size=1, num_layers=2, num_single_layers=3, **dims), 0.02
    )
    controlnet = _perturb(
        diffusers.FluxControlNetModel(num_layers=1, num_single_layers=2, num_mode=10, **dims), 0.05
    )
    t5 = _perturb(
        transformers.T5EncoderModel(
            transformers.T5Config(
                vocab_size=32, d_model=32, d_kv=8, num_heads=4, d_ff=64, num_layers=1,
                feed_forward_proj="gated-gelu", relative_attention_num_buckets=8,
            )
        ),
        0.02,
    )  # fmt: skip
    vae = _perturb(
        _tiny_vae(
            16, use_quant_conv=False, use_post_quant_conv=False, scaling_factor=0.3611, shift_factor=0.1159
        ),
        0.02,
    )
    with torch.no_grad():
        vae.encoder.conv_out.bias[
            16:
        ] = -30.0  # posterior (mean, logvar): std ~0, diffusers' sample = the mode
    parts = dict(
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(
            shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
            max_image_seq_len=4096,
        ),
        vae=vae,
        text_encoder=_clip(vocab, 768),
        tokenizer=transformers.CLIPTokenizer.from_pretrained(str(tmp_path / "clip_tok")),
        text_encoder_2=t5,
        tokenizer_2=t5_tokenizer_for_diffusers(t5_file),
        transformer=transformer,
    )  # fmt: skip
    diffusers.FluxPipeline(**parts).save_pretrained(str(tmp_path / "flux"))
    cn_file = tmp_path / "flux_union.safetensors"
    save_file({k: v.contiguous() for k, v in controlnet.state_dict().items()}, str(cn_file))
    pipe = diffusers.FluxControlNetPipeline(**parts, controlnet=controlnet)
    pipe.set_progress_bar_config(disable=True)

    rng = np.random.default_rng(0)
    control = Image.fromarray((rng.random((SIZE, SIZE, 3)) > 0.6).astype(np.uint8) * 255)
    ours = Pipeline.from_pretrained(tmp_path / "flux")
    run = dict(
        steps=STEPS, guidance=3.5, sampler="euler", scheduler="simple", seed=SEED, width=SIZE, height=SIZE
    )
    result = ours(PROMPT, control=[Control(control, cn_file, 0.8, mode=MODE)], **run)
    other_mode = ours(PROMPT, control=[Control(control, cn_file, 0.8, mode=MODE + 1)], **run)
    plain = ours(PROMPT, **run)

    h = SIZE // 2
    packed = pipe._pack_latents(seeded_noise((16, h, h), [SEED]), 1, 16, h, h)
    kw = dict(
        control_image=control, control_mode=MODE, controlnet_conditioning_scale=0.8, num_inference_steps=STEPS,
        guidance_scale=3.5, height=SIZE, width=SIZE, max_sequence_length=512,
    )  # fmt: skip
    with torch.no_grad():
        lat = pipe(PROMPT, latents=packed.clone(), output_type="latent", **kw).images
        img = pipe(PROMPT, latents=packed.clone(), output_type="np", **kw).images
    lat = pipe._unpack_latents(lat, SIZE, SIZE, pipe.vae_scale_factor)
    _compare(result, lat, img)
    assert (plain.latents - lat).abs().max() > 1e-2  # the ControlNet does move the latents
    # the mode is one token among 512 T5 tokens, so its effect is small, but far above our error
    err = (result.latents - lat).abs().max()
    assert (other_mode.latents - lat).abs().max() > 20 * err
    del ours, pipe
    gc.collect()
