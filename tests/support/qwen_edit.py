"""The set-up the Qwen-Image-Edit oracle tests share (``tests/oracle/test_qwenimage_edit_oracle.py``, one input
image, and ``test_qwenimage_edit_plus_oracle.py``, several): our pipeline on ComfyUI's three tiny split files
(:mod:`support.qwenimage`), diffusers' edit pipeline on the same weights, one run of it from our seeded noise,
and the comparison of the two.

diffusers is imported inside the functions: the tests skip without it (``pytest.importorskip``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from latentworks.diffusion.noise import seeded_noise
from latentworks.models.text.qwen import QWEN25_ADDED_TOKENS, VISION_MAX_PIXELS, VISION_MIN_PIXELS
from latentworks.pipelines import Pipeline
from support.qwen import reference_qwen_tokenizer
from support.qwenimage import TRANSFORMER, VAE, QwenImageFiles, use_tiny_widths, write_comfy_files


def random_images(*shapes: tuple[int, int]) -> list[Image.Image]:
    """RGB noise images of these (height, width), drawn one after another from one generator (seed 0)."""
    rng = np.random.default_rng(0)
    return [Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)) for h, w in shapes]


def our_edit_pipeline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **behaviour: Any
) -> tuple[QwenImageFiles, Any]:
    """(the float32 tiny files under ``tmp_path/models``, our ``Pipeline`` on them with its behaviour's fields
    replaced by ``behaviour``, e.g. ``edit_area``)."""
    use_tiny_widths(monkeypatch)
    files = write_comfy_files(tmp_path / "models", dtype=torch.float32)
    ours = Pipeline.from_pretrained(files.model, vae=files.vae, text_encoders=[files.text_encoder])
    ours.behaviour = dataclasses.replace(ours.behaviour, **behaviour)
    return files, ours


def diffusers_transformer(zero_cond_t: bool = False) -> Any:
    """diffusers' ``QwenImageTransformer2DModel`` shaped as :data:`support.qwenimage.TRANSFORMER` (random
    weights: load a state into it); ``zero_cond_t`` is Qwen-Image-Edit-2511's (newer diffusers only)."""
    import diffusers

    return diffusers.QwenImageTransformer2DModel(
        patch_size=2, in_channels=64, out_channels=16, num_layers=TRANSFORMER.depth,
        attention_head_dim=TRANSFORMER.head_dim, num_attention_heads=TRANSFORMER.num_heads,
        joint_attention_dim=TRANSFORMER.context_dim, axes_dims_rope=TRANSFORMER.axes_dim,
        **({"zero_cond_t": True} if zero_cond_t else {}),
    ).eval()  # fmt: skip


def diffusers_edit_pipeline(
    pipeline_class: Any, files: QwenImageFiles, tok_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> Any:
    """``pipeline_class`` (diffusers' ``QwenImageEditPipeline`` or ``QwenImageEditPlusPipeline``) on the states
    of ``files``, with the release's scheduler settings and Qwen2-VL processor (tokenizer written to
    ``tok_dir``)."""
    import diffusers
    from transformers import Qwen2VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    from transformers.processing_utils import ProcessorMixin

    # without torchvision the processor's class check fails on its (unused) video processor; images are
    # processed by the PIL image processor either way
    monkeypatch.setattr(ProcessorMixin, "check_argument_for_proper_class", lambda self, name, arg: None)
    transformer = diffusers_transformer()
    transformer.load_state_dict(files.transformer_state, strict=True)
    vae = diffusers.AutoencoderKLQwenImage(base_dim=VAE.base_dim, z_dim=16, num_res_blocks=VAE.num_res_blocks)
    vae.load_state_dict(files.vae_state, strict=True)
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(
        shift=1.0, use_dynamic_shifting=True, base_image_seq_len=256, max_image_seq_len=8192, base_shift=0.5,
        max_shift=0.9, time_shift_type="exponential", shift_terminal=0.02,
    )  # fmt: skip
    tokenizer = reference_qwen_tokenizer(tok_dir, added_tokens=QWEN25_ADDED_TOKENS)
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessorPil(min_pixels=VISION_MIN_PIXELS, max_pixels=VISION_MAX_PIXELS),
        tokenizer=tokenizer,
    )
    pipe = pipeline_class(
        scheduler=scheduler, vae=vae.eval(), text_encoder=files.text_encoder_model, tokenizer=tokenizer,
        processor=processor, transformer=transformer,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe


def diffusers_edit_run(
    pipe: Any,
    prompt: str,
    image: Image.Image | Sequence[Image.Image],
    *,
    negative: str,
    seed: int,
    steps: int,
    height: int,
    width: int,
) -> tuple[torch.Tensor, np.ndarray]:
    """diffusers' edit of ``image`` from our ``seeded_noise`` for ``seed`` at true CFG 4: (latents
    (1, 16, height / 8, width / 8), images (1, height, width, 3) in [0, 1])."""
    from diffusers.pipelines.qwenimage.pipeline_qwenimage import QwenImagePipeline as P

    noise = seeded_noise((16, height // 8, width // 8), [seed])
    packed = P._pack_latents(noise, 1, 16, height // 8, width // 8)
    kw = dict(image=image, negative_prompt=negative, true_cfg_scale=4.0, num_inference_steps=steps,
              height=height, width=width)  # fmt: skip
    with torch.no_grad():
        lat = pipe(prompt=prompt, latents=packed.clone(), output_type="latent", **kw).images
        img = pipe(prompt=prompt, latents=packed.clone(), output_type="np", **kw).images
    return P._unpack_latents(lat, height, width, 8)[:, :, 0], img


def assert_matches_diffusers(
    result: Any, latents: torch.Tensor, images: np.ndarray, *, rel_tol: float, label: str
) -> float:
    """Our pipeline's ``result`` against :func:`diffusers_edit_run`'s: latents within ``rel_tol`` of their scale
    (at least 1), images within one 8-bit level. Prints the latents' difference; returns their scale."""
    err = (result.latents.float() - latents.float()).abs().max().item()
    scale = latents.abs().max().item()
    print(f"{label} latents: max abs diff {err:.3g} (scale {scale:.3g})")
    assert err <= rel_tol * max(scale, 1.0), f"latents differ by {err} (scale {scale})"
    mine = np.stack([np.asarray(im, dtype=np.float32) / 255.0 for im in result.images])
    diff = np.abs(mine - images).max()
    assert diff <= 1.0 / 255 + 1e-6, f"images differ by {diff} (more than one 8-bit level)"
    return scale
