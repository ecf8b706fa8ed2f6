"""CLIPVisionLoader, CLIPVisionEncode, unCLIPCheckpointLoader and unCLIPConditioning in real workflows on a tiny
unCLIP model (single file and diffusers folder): the workflow equals the pipeline given the same class input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from latentworks.graph.executor import Executor
from latentworks.models.clip_vision import ClipVision
from latentworks.models.unclip import ImageEmbeddingAugmentor, noise_level_of
from latentworks.nodes import default_registry
from latentworks.nodes.clip_vision import UNCLIP_NOISE_SEED, unclip_conditioning
from latentworks.nodes.payloads import ConditioningPayload
from latentworks.pipelines import Pipeline
from latentworks.pipelines.unclip import load_unclip_image_parts
from support.unclip import EMBED, tiny_unclip_pipe, unclip_single_file

pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, object]:
    root = tmp_path_factory.mktemp("unclip-nodes")
    ck = root / "models" / "checkpoints"
    ck.mkdir(parents=True)
    folder, pipe = tiny_unclip_pipe(ck, "tiny-unclip")
    unclip_single_file(folder, pipe, ck / "tiny-unclip.safetensors")
    cv = root / "models" / "clip_vision"
    cv.mkdir()
    # ComfyUI's clip_vision files: transformers names without the vision_model. prefix
    sd = {k.removeprefix("vision_model."): v.contiguous() for k, v in pipe.image_encoder.state_dict().items()}  # type: ignore[attr-defined]
    save_file(sd, str(cv / "clip_vision_h.safetensors"))
    inp = root / "input"
    inp.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (24, 20, 3), dtype=np.uint8)).save(inp / "photo.png")
    return root, folder, pipe


def _workflow(ckpt: str, noise_augmentation: float) -> dict:
    return {
        "4": {"class_type": "unCLIPCheckpointLoader", "inputs": {"ckpt_name": ckpt}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red apple", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
        "10": {"class_type": "LoadImage", "inputs": {"image": "photo.png"}},
        "11": {"class_type": "CLIPVisionEncode", "inputs": {"clip_vision": ["4", 3], "image": ["10", 0], "crop": "center"}},
        "12": {"class_type": "unCLIPConditioning", "inputs": {"conditioning": ["6", 0], "clip_vision_output": ["11", 0],
                                                              "strength": 0.8, "noise_augmentation": noise_augmentation}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 16, "height": 16, "batch_size": 1}},
        "3": {"class_type": "KSampler", "inputs": {
            "model": ["4", 0], "seed": 5, "steps": 3, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal",
            "positive": ["12", 0], "negative": ["7", 0], "latent_image": ["5", 0], "denoise": 1.0}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "unclip"}},
    }  # fmt: skip


def test_unclip_workflow_equals_the_pipeline(setup: tuple[Path, Path, object], tmp_path: Path) -> None:
    ckpt = "tiny-unclip"  # the diffusers folder (the single file's text side needs the real 49408-token vocabulary)
    root, folder, pipe = setup
    executor = Executor(default_registry(root / "models", root / "input"))
    ctx = executor.new_context("job", output_dir=tmp_path, temp_dir=tmp_path, on_event=lambda e, d: None)
    res = executor.execute(_workflow(ckpt, 0.3), ctx)
    assert res.status == "success", res.error
    got = np.asarray(Image.open(tmp_path / res.outputs["9"]["images"][0]["filename"]).convert("RGB"))

    # the same by hand: our encoder on the image, the folder's statistics, the node's noise, strength 0.8
    image = (
        torch.from_numpy(np.asarray(Image.open(root / "input" / "photo.png").convert("RGB"))).float()[None]
        / 255
    )
    vision = ClipVision.from_state_dict(pipe.image_encoder.state_dict())  # type: ignore[attr-defined]
    augment = ImageEmbeddingAugmentor(pipe.image_normalizer.mean, pipe.image_normalizer.std)  # type: ignore[attr-defined]
    noise = torch.randn(1, EMBED, generator=torch.Generator().manual_seed(UNCLIP_NOISE_SEED))
    class_input = 0.8 * augment(vision.encode(image).image_embeds, noise_level_of(0.3), noise)
    ours = Pipeline.from_pretrained(folder)
    run = dict(steps=3, guidance=5.0, sampler="euler", scheduler="normal", seed=5, width=16, height=16)
    want = ours("a red apple", "", class_input=class_input, **run)
    assert np.abs(got.astype(int) - np.asarray(want.images[0]).astype(int)).max() <= 1
    plain = ours("a red apple", "", **run)  # the image changes the result
    assert np.abs(got.astype(int) - np.asarray(plain.images[0]).astype(int)).max() > 3


def test_single_file_image_parts_equal_the_folder(setup: tuple[Path, Path, object]) -> None:
    root, folder, _ = setup
    image = torch.rand(1, 20, 20, 3, generator=torch.Generator().manual_seed(3))
    (v1, a1), (v2, a2) = (
        load_unclip_image_parts(p) for p in (folder, root / "models/checkpoints/tiny-unclip.safetensors")
    )
    torch.testing.assert_close(
        v1.encode(image).image_embeds, v2.encode(image).image_embeds, atol=1e-5, rtol=1e-5
    )
    assert torch.equal(a1.mean, a2.mean) and torch.equal(a1.std, a2.std) and a1.mean.abs().sum() > 0
    with pytest.raises(ValueError, match="not an unCLIP checkpoint"):
        load_unclip_image_parts(root / "models/clip_vision/clip_vision_h.safetensors")


def test_clip_vision_loader_and_encode(setup: tuple[Path, Path, object]) -> None:
    root, _, pipe = setup
    registry = default_registry(root / "models", root / "input")
    loader, encode = registry.get("CLIPVisionLoader"), registry.get("CLIPVisionEncode")
    assert loader.inputs[0].choices() == ["clip_vision_h.safetensors"]  # type: ignore[operator,misc]
    (vision,) = loader.execute(None, clip_name="clip_vision_h.safetensors")
    image = torch.rand(1, 30, 20, 3, generator=torch.Generator().manual_seed(2))
    for crop in ("center", "none"):
        (out,) = encode.execute(None, clip_vision=vision, image=image, crop=crop)
        ref = ClipVision.from_state_dict(pipe.image_encoder.state_dict()).encode(image, crop=crop == "center")  # type: ignore[attr-defined]
        torch.testing.assert_close(out.image_embeds, ref.image_embeds)
        assert out.image_embeds.shape == (1, EMBED) and out.penultimate_hidden_states.shape == (1, 17, 128)
    # a bare CLIP vision file has no unCLIP statistics: unCLIPConditioning says which encoder to use
    from latentworks.diffusion.conditioning import Conditioning

    cond = ConditioningPayload(Conditioning(tokens=torch.zeros(1, 77, 1024)))
    with pytest.raises(ValueError, match="unCLIPCheckpointLoader"):
        unclip_conditioning(cond, out, 1.0, 0.0)
    assert unclip_conditioning(cond, out, 0.0, 0.0) is cond  # strength 0: unchanged, as ComfyUI


def test_unclip_conditioning_chains_add_up() -> None:
    from latentworks.diffusion.conditioning import Conditioning
    from latentworks.models.clip_vision import ClipVisionOutput

    aug = ImageEmbeddingAugmentor(torch.zeros(1, 8), torch.ones(1, 8))
    e1, e2 = torch.randn(1, 8), torch.randn(1, 8)
    o1 = ClipVisionOutput(e1, torch.zeros(1, 2, 4), torch.zeros(1, 2, 4), augmentor=aug)
    o2 = ClipVisionOutput(e2, torch.zeros(1, 2, 4), torch.zeros(1, 2, 4), augmentor=aug)
    cond = ConditioningPayload(Conditioning(tokens=torch.zeros(1, 3, 4)))
    both = unclip_conditioning(unclip_conditioning(cond, o1, 0.5, 0.0), o2, 2.0, 0.0).cond.extra[
        "class_input"
    ]
    noise = torch.randn(1, 8, generator=torch.Generator().manual_seed(UNCLIP_NOISE_SEED))
    want = 0.5 * aug(e1, 0, noise) + 2.0 * aug(e2, 0, noise)
    torch.testing.assert_close(both, want)
    # noise level 0 barely moves the embedding; the level's embedding is cos(0)=1, sin(0)=0
    torch.testing.assert_close(aug(e1, 0, noise)[:, :8], e1, atol=0.02, rtol=0)
    torch.testing.assert_close(aug(e1, 0, noise)[:, 8:], torch.tensor([[1.0] * 4 + [0.0] * 4]))


def test_unclip_loader_refuses_a_plain_model(setup: tuple[Path, Path, object]) -> None:
    root, _, _ = setup
    loader = default_registry(root / "models", root / "input").get("unCLIPCheckpointLoader")
    with pytest.raises(ValueError, match="not an SD 2.1 unCLIP one; load it with CheckpointLoaderSimple"):
        loader.execute(None, ckpt_name="default")
