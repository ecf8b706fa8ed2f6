"""LoraLoader: a workflow with a LoRA gives a different image than without; the branch that uses the upstream
MODEL/CLIP directly is unchanged (the LoRA is applied only around sampling and encoding); sampling with the
LoRA equals sampling a by-hand patched copy; a LoRA that fits nothing is an error naming the file."""

from __future__ import annotations

import copy
import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from latentworks.checkpoints.io import save_file_atomic
from latentworks.graph.executor import Executor
from latentworks.graph.validate import validate_prompt
from latentworks.nodes import default_registry

RANK, ALPHA = 4, 2.0
# (module in the file, our module or the MiniLM module) for a kohya LoRA of the tiny test U-Net + MiniLM.
UNET = [
    ("down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k", "down.1.transformers.0.blocks.0.cross_attn.k"),
    ("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q", "down.1.transformers.0.blocks.0.self_attn.q"),
    ("mid_block.attentions.0.transformer_blocks.0.ff.net.2", "mid.transformer.blocks.0.ff.out"),
]  # fmt: skip
TEXT = ["encoder.layer.0.attention.self.query", "encoder.layer.1.output.dense"]


def workflow(seed: int = 5, lora: str | None = "style.safetensors", both: bool = True) -> dict:
    """Checkpoint -> [LoraLoader] -> encode -> KSampler -> decode -> save ("9"); with ``both`` also a second
    branch ("19") that samples with the upstream MODEL and CLIP directly."""
    src = ["10", 0] if lora else ["4", 0]
    clip = ["10", 1] if lora else ["4", 1]
    wf: dict = {"4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny"}}}
    if lora:
        wf["10"] = {
            "class_type": "LoraLoader",
            "inputs": {"model": ["4", 0], "clip": ["4", 1], "lora_name": lora, "strength_model": 0.9,
                       "strength_clip": 0.6},
        }  # fmt: skip
    wf["5"] = {"class_type": "EmptyLatentImage", "inputs": {"width": 16, "height": 16, "batch_size": 1}}

    def branch(k: str, model: list, clip: list) -> None:
        wf[f"{k}6"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "a red apple", "clip": clip}}
        wf[f"{k}7"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": clip}}
        wf[f"{k}3"] = {
            "class_type": "KSampler",
            "inputs": {"model": model, "seed": seed, "steps": 3, "cfg": 3.0, "sampler_name": "euler",
                       "scheduler": "normal", "positive": [f"{k}6", 0], "negative": [f"{k}7", 0],
                       "latent_image": ["5", 0], "denoise": 1.0},
        }  # fmt: skip
        wf[f"{k}8"] = {"class_type": "VAEDecode", "inputs": {"samples": [f"{k}3", 0], "vae": ["4", 2]}}
        wf[f"{k}9"] = {
            "class_type": "SaveImage",
            "inputs": {"images": [f"{k}8", 0], "filename_prefix": k or "x"},
        }

    branch("", src, clip)
    if both:
        branch("1", ["4", 0], ["4", 1])
    return wf


def kohya(prefix: str, name: str, g: torch.Generator, out: int, inp: int) -> dict[str, torch.Tensor]:
    m = prefix + name.replace(".", "_")
    return {
        f"{m}.lora_down.weight": torch.randn(RANK, inp, generator=g) * 0.5,
        f"{m}.lora_up.weight": torch.randn(out, RANK, generator=g) * 0.5,
        f"{m}.alpha": torch.tensor(ALPHA),
    }


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Path:
    from latentworks.models.text.minilm import MiniLMTextEncoder
    from latentworks.pipelines.loading import load_model_folder

    root = tmp_path_factory.mktemp("models")
    shutil.copytree(tiny_model, root / "checkpoints" / "tiny")
    net = dict(load_model_folder(tiny_model).denoiser_net.named_modules())
    enc = MiniLMTextEncoder()
    enc._load()
    te = dict(enc._model.named_modules())
    g = torch.Generator().manual_seed(0)
    sd: dict[str, torch.Tensor] = {}
    for theirs, ours in UNET:
        sd |= kohya("lora_unet_", theirs, g, *net[ours].weight.shape)
    for name in TEXT:
        sd |= kohya("lora_te_", name, g, *te[name].weight.shape)
    (root / "loras" / "sub").mkdir(parents=True)
    save_file_atomic(sd, root / "loras" / "style.safetensors")
    save_file_atomic(kohya("lora_unet_", "nothing.here", g, 4, 4), root / "loras" / "sub" / "bad.safetensors")
    return root


def images(res, node: str, out: Path) -> list[np.ndarray]:  # noqa: ANN001
    return [np.asarray(Image.open(out / f["filename"]).convert("RGB")) for f in res.outputs[node]["images"]]


def run(executor: Executor, prompt: dict, out: Path):  # noqa: ANN201
    return executor.execute(prompt, executor.new_context("job", output_dir=out, temp_dir=out))


def test_lora_loader_lists_files_and_validates(models_dir: Path) -> None:
    reg = default_registry(models_dir)
    info = reg.object_info()["LoraLoader"]
    assert info["input"]["required"]["lora_name"][0] == ["style.safetensors", "sub/bad.safetensors"]
    assert info["output"] == ["MODEL", "CLIP"]
    assert validate_prompt(reg, workflow()).ok
    assert not validate_prompt(reg, workflow(lora="missing.safetensors")).ok


def test_lora_changes_the_image_and_leaves_the_upstream_branch_alone(
    models_dir: Path, tmp_path: Path
) -> None:
    executor = Executor(default_registry(models_dir))
    plain = run(Executor(default_registry(models_dir)), workflow(lora=None, both=False), tmp_path / "a")
    assert plain.status == "success", plain.error
    res = run(executor, workflow(), tmp_path / "b")
    assert res.status == "success", res.error
    (without,) = images(plain, "9", tmp_path / "a")
    (with_lora,) = images(res, "9", tmp_path / "b")
    (upstream,) = images(res, "19", tmp_path / "b")
    assert np.abs(with_lora.astype(int) - without.astype(int)).mean() > 2.0  # the LoRA shows
    assert np.array_equal(upstream, without)  # the other branch sees the model without it
    # After the run the cached upstream model is unpatched: a new seed on the same executor matches a fresh one.
    again = run(executor, workflow(seed=9, lora=None, both=False), tmp_path / "c")
    fresh = run(
        Executor(default_registry(models_dir)), workflow(seed=9, lora=None, both=False), tmp_path / "d"
    )
    assert again.status == fresh.status == "success"
    assert "4" in again.cached
    assert np.array_equal(images(again, "9", tmp_path / "c")[0], images(fresh, "9", tmp_path / "d")[0])


def test_lora_that_fits_nothing_is_an_error_naming_the_file(models_dir: Path, tmp_path: Path) -> None:
    res = run(Executor(default_registry(models_dir)), workflow(lora="sub/bad.safetensors"), tmp_path)
    assert res.status != "success"
    assert "bad.safetensors" in str(res.error)


def test_sampling_and_encoding_with_the_lora_equal_a_by_hand_patched_copy(models_dir: Path) -> None:
    from latentworks.checkpoints.lora import LoraTextEncoder, load_lora, resolve_lora
    from latentworks.models.text.minilm import MiniLMTextEncoder
    from latentworks.pipelines.loading import load_model_folder
    from latentworks.pipelines.sampling import denoise_latents

    lora = load_lora(models_dir / "loras" / "style.safetensors")
    sd = {k: v for k, v in lora.modules.items()}

    def patched(module: torch.nn.Module, prefix: str, names: list[tuple[str, str]], strength: float):  # noqa: ANN202
        ref = copy.deepcopy(module)
        mods = dict(ref.named_modules())
        with torch.no_grad():
            for theirs, ours in names:
                w = sd[prefix + theirs.replace(".", "_")]
                mods[ours].weight += strength * ALPHA / RANK * (w.up @ w.down)
        return ref

    folder = load_model_folder(models_dir / "checkpoints" / "tiny")
    before = {k: v.clone() for k, v in folder.denoiser_net.state_dict().items()}
    resolved = resolve_lora(lora, folder.denoiser_net, target="unet")
    with_lora = dataclasses.replace(folder, loras=((resolved, 0.9),))
    by_hand = dataclasses.replace(folder, denoiser_net=patched(folder.denoiser_net, "lora_unet_", UNET, 0.9))
    g = torch.Generator().manual_seed(3)
    from latentworks.diffusion.conditioning import Conditioning

    cond = Conditioning(tokens=torch.randn(1, 4, 384, generator=g))
    uncond = Conditioning(tokens=torch.randn(1, 4, 384, generator=g))
    x0 = torch.zeros(1, 4, 8, 8)
    sigmas = torch.tensor([10.0, 3.0, 1.0, 0.0])
    got = denoise_latents(with_lora, x0, sigmas, [1], cond, uncond, 3.0, "euler")
    want = denoise_latents(by_hand, x0, sigmas, [1], cond, uncond, 3.0, "euler")
    base = denoise_latents(folder, x0, sigmas, [1], cond, uncond, 3.0, "euler")
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert (got - base).abs().max() > 1e-2
    assert all(torch.equal(v, before[k]) for k, v in folder.denoiser_net.state_dict().items())

    enc = MiniLMTextEncoder()
    enc._load()
    hand = MiniLMTextEncoder()
    hand._load()
    hand._model = patched(enc._model, "lora_te_", [(n, n) for n in TEXT], 0.6)
    wrapped = LoraTextEncoder(enc, [(lora, 0.6)])
    plain = enc.encode(["a red apple"]).tokens
    torch.testing.assert_close(
        wrapped.encode(["a red apple"]).tokens, hand.encode(["a red apple"]).tokens, rtol=1e-5, atol=1e-5
    )
    assert (wrapped.encode(["a red apple"]).tokens - plain).abs().max() > 1e-2
    assert torch.equal(enc.encode(["a red apple"]).tokens, plain)


def test_strength_zero_is_the_plain_model_and_chained_loaders_add_up(
    models_dir: Path, tmp_path: Path
) -> None:
    """Both strengths 0 give exactly the image without a LoRA; two chained LoraLoaders at half strength
    each give the image of one at full strength (LoRA deltas add), up to float rounding."""
    reg = default_registry(models_dir)

    def image(wf: dict, name: str) -> np.ndarray:
        res = run(Executor(reg), wf, tmp_path / name)
        assert res.status == "success", res.error
        return images(res, "9", tmp_path / name)[0].astype(int)

    plain = image(workflow(lora=None, both=False), "plain")
    off = workflow(both=False)
    off["10"]["inputs"] |= {"strength_model": 0.0, "strength_clip": 0.0}
    assert np.array_equal(image(off, "off"), plain)

    full = workflow(both=False)
    full["10"]["inputs"] |= {"strength_model": 1.0, "strength_clip": 1.0}
    chained = workflow(both=False)
    chained["10"]["inputs"] |= {"strength_model": 0.5, "strength_clip": 0.5}
    chained["11"] = {
        "class_type": "LoraLoader",
        "inputs": {"model": ["10", 0], "clip": ["10", 1], "lora_name": "style.safetensors",
                   "strength_model": 0.5, "strength_clip": 0.5},
    }  # fmt: skip
    for node in ("6", "7"):
        chained[node]["inputs"]["clip"] = ["11", 1]
    chained["3"]["inputs"]["model"] = ["11", 0]
    one, two = image(full, "full"), image(chained, "chained")
    assert np.abs(one - plain).mean() > 2.0
    assert np.abs(one - two).max() <= 1
