"""Conditioning-list nodes through KSampler on the tiny model: an area prompt changes only its area, timestep
ranges equal a two-stage KSamplerAdvanced run, a zero-weight masked prompt changes nothing; DualCFGGuider,
RescaleCFG and ModelMergeSimple reduce to known runs; the tiled VAE nodes match the untiled ones on one tile."""

from __future__ import annotations

import copy
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from latentworks.diffusion.conditioning import Conditioning
from latentworks.diffusion.regions import percent_to_sigma
from latentworks.diffusion.schedules import get_sigmas
from latentworks.graph import ExecutionContext, OutputCache
from latentworks.nodes import default_registry
from latentworks.nodes.payloads import ConditioningPayload, Latent, ModelPayload, VAEPayload
from latentworks.pipelines.loading import load_model_folder

REG = default_registry()


def words(prompt: str) -> Conditioning:
    """A deterministic stand-in for the tiny model's text encoder: word -> fixed random 384-dim vector."""
    toks = torch.zeros(1, 4, 384)
    for j, w in enumerate(["<s>", *prompt.split()][:4]):
        toks[0, j] = torch.randn(384, generator=torch.Generator().manual_seed(sum(map(ord, w)) * 7919))
    return Conditioning(tokens=toks)


def make_parts(path: Path) -> tuple[ModelPayload, ConditioningPayload, ConditioningPayload, Latent]:
    model = ModelPayload(load_model_folder(path))
    h, w = model.folder.resolution
    pos, neg = ConditioningPayload(words("red apple")), ConditioningPayload(words(""))
    return model, pos, neg, Latent(pixel_size=(h, w), batch_size=2)


def ctx() -> ExecutionContext:
    return ExecutionContext(prompt_id="cond", cache=OutputCache())


def run(name: str, *args: object) -> tuple:
    return REG.get(name).execute(ctx(), *args)


@pytest.fixture(scope="module")
def parts(tiny_model: Path) -> tuple[ModelPayload, ConditioningPayload, ConditioningPayload, Latent]:
    return make_parts(tiny_model)


def ksampler(model, pos, neg, latent, *, steps=1, cfg=2.5, sampler="euler", seed=5) -> torch.Tensor:  # noqa: ANN001
    (out,) = run("KSampler", model, seed, steps, cfg, sampler, "normal", pos, neg, latent, 1.0)
    return out.samples


def test_area_prompt_changes_only_its_area(parts) -> None:
    """One Euler step to sigma 0 returns the blended x0: outside the area only the full prompt acts, so those
    cells equal the plain run bit for bit; inside they differ."""
    model, pos, neg, _ = parts
    h, w = model.folder.resolution
    latent = Latent(pixel_size=(h, w), batch_size=1)
    (area,) = run("ConditioningSetArea", ConditioningPayload(words("green leaf")), w // 2, h // 2, 0, 0, 1.0)
    (both,) = run("ConditioningCombine", pos, area)
    assert len(both.entries) == 2 and both.entries[1].area == (h // 2, w // 2, 0, 0)
    plain, mixed = ksampler(model, pos, neg, latent), ksampler(model, both, neg, latent)
    f = model.factor
    ah, aw = h // 2 // f, w // 2 // f
    outside = torch.ones(plain.shape[-2:], dtype=torch.bool)
    outside[:ah, :aw] = False
    assert torch.equal(mixed[..., outside], plain[..., outside])
    assert not torch.allclose(mixed[..., :ah, :aw], plain[..., :ah, :aw])


def test_timestep_ranges_equal_a_two_stage_run(parts) -> None:
    """Prompt A for the first half of sampling, B for the second = KSamplerAdvanced with A up to the step
    where sigma drops below sigma(50%), then B from there (Euler is deterministic)."""
    model, pos, neg, latent = parts
    (a,) = run("ConditioningSetTimestepRange", pos, 0.0, 0.5)
    (b,) = run("ConditioningSetTimestepRange", neg, 0.5, 1.0)
    (both,) = run("ConditioningCombine", a, b)
    steps = 4
    got = ksampler(model, both, neg, latent, steps=steps)
    sigmas = get_sigmas(model.folder.model_sampling, "normal", steps)
    mid = percent_to_sigma(model.folder.model_sampling, 0.5)
    k = sum(1 for s in sigmas[:-1].tolist() if s >= mid)
    assert 0 < k < steps
    (first,) = run(
        "KSamplerAdvanced",
        model,
        "enable",
        5,
        steps,
        2.5,
        "euler",
        "normal",
        pos,
        neg,
        latent,
        0,
        k,
        "enable",
    )
    (second,) = run(
        "KSamplerAdvanced", model, "disable", 5, steps, 2.5, "euler", "normal", neg, neg, first, k, 10000,
        "disable",
    )  # fmt: skip
    torch.testing.assert_close(got, second.samples, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got, ksampler(model, pos, neg, latent, steps=steps))


def test_zero_mask_prompt_changes_nothing_and_full_mask_blends(parts) -> None:
    model, pos, neg, latent = parts
    h, w = model.folder.resolution
    (masked,) = run("ConditioningSetMask", neg, torch.zeros(h, w), 1.0, "mask bounds")
    (both,) = run("ConditioningCombine", pos, masked)
    # Not bitwise: the combined batch may be summed in another order (a few ulp apart with one thread).
    alone = ksampler(model, pos, neg, latent)
    torch.testing.assert_close(ksampler(model, both, neg, latent), alone, rtol=1e-5, atol=1e-5)
    (full,) = run("ConditioningSetMask", neg, torch.ones(h, w), 1.0, "default")
    (mixed,) = run("ConditioningCombine", pos, full)
    assert not torch.allclose(ksampler(model, mixed, neg, latent), alone, rtol=1e-3, atol=1e-3)


def test_percentage_area_and_strength_nodes_set_every_entry(parts) -> None:
    _, pos, neg, _ = parts
    (both,) = run("ConditioningCombine", pos, neg)
    (pct,) = run("ConditioningSetAreaPercentage", both, 0.5, 0.25, 0.1, 0.2, 2.0)
    assert [e.area_fraction for e in pct.entries] == [(0.25, 0.5, 0.2, 0.1)] * 2
    (strong,) = run("ConditioningSetAreaStrength", pct, 3.0)
    assert [e.strength for e in strong.entries] == [3.0, 3.0]
    (zero,) = run("ConditioningZeroOut", strong)
    assert len(zero.entries) == 2 and all(not e.cond.tokens.any() for e in zero.entries)
    assert all(e.area_fraction == (0.25, 0.5, 0.2, 0.1) for e in zero.entries)


def test_dual_cfg_guider_reduces_to_cfg_guider(parts) -> None:
    """cond2 = negative: regular style gives neg + s2 (neg - neg) + s1 (pos - neg) = CFG with scale s1."""
    model, pos, neg, latent = parts
    (smp,) = run("KSamplerSelect", "euler")
    (sigmas,) = run("BasicScheduler", model, "normal", 3, 1.0)
    (noise,) = run("RandomNoise", 4)
    (cfg_guider,) = run("CFGGuider", model, pos, neg, 3.0)
    want, _ = run("SamplerCustomAdvanced", noise, cfg_guider, smp, sigmas, latent)
    (dual,) = run("DualCFGGuider", model, pos, neg, neg, 3.0, 5.0, "regular")
    got, _ = run("SamplerCustomAdvanced", noise, dual, smp, sigmas, latent)
    torch.testing.assert_close(got.samples, want.samples, rtol=1e-5, atol=1e-5)
    (nested,) = run("DualCFGGuider", model, pos, neg, neg, 3.0, 5.0, "nested")
    got2, _ = run("SamplerCustomAdvanced", noise, nested, smp, sigmas, latent)
    assert not torch.allclose(got2.samples, want.samples)  # nested: neg + 5 * 3 (pos - neg)


def test_rescale_cfg_node(parts) -> None:
    model, pos, neg, latent = parts
    (off,) = run("RescaleCFG", model, 0.0)
    (on,) = run("RescaleCFG", model, 0.7)
    base = ksampler(model, pos, neg, latent, steps=2)
    torch.testing.assert_close(ksampler(off, pos, neg, latent, steps=2), base, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(ksampler(on, pos, neg, latent, steps=2), base)
    assert "rescale_cfg" not in model.folder.meta  # the input model is unchanged


def test_model_merge_simple(parts) -> None:
    model, pos, neg, latent = parts
    net = model.folder.denoiser_net
    (same,) = run("ModelMergeSimple", model, model, 0.3)
    for (k, a), b in zip(net.state_dict().items(), same.folder.denoiser_net.state_dict().values()):
        torch.testing.assert_close(a, b, msg=k)  # 0.3 w + 0.7 w = w
    other = ModelPayload(replace(model.folder, denoiser_net=_scaled_copy(net, 3.0)))
    (half,) = run("ModelMergeSimple", model, other, 0.25)
    for k, v in half.folder.denoiser_net.state_dict().items():
        if v.is_floating_point():
            torch.testing.assert_close(v, net.state_dict()[k] * (0.25 + 0.75 * 3.0), msg=k)
    assert half.folder.denoiser_net is not net


def _scaled_copy(net: torch.nn.Module, s: float) -> torch.nn.Module:
    out = copy.deepcopy(net)
    with torch.no_grad():
        for t in out.state_dict().values():
            if t.is_floating_point():
                t.mul_(s)
    return out


def test_tiled_vae_nodes_match_plain_on_one_tile_and_stay_close_on_many(parts) -> None:
    folder = parts[0].folder
    vp = VAEPayload(folder.vae, folder.latent_format)
    z = torch.randn(1, folder.latent_format.channels, 16, 16, generator=torch.Generator().manual_seed(0))
    lat = Latent(samples=z)
    (plain,) = run("VAEDecode", lat, vp)
    (one_tile,) = run("VAEDecodeTiled", lat, vp, 512, 64, 64, 8)
    assert torch.equal(one_tile, plain)
    (tiled,) = run("VAEDecodeTiled", lat, vp, 64, 32, 64, 8)  # 8-cell tiles, overlap cut to 16 px = 2 cells
    assert tiled.shape == plain.shape and (tiled - plain).abs().mean() < 0.2
    (enc,) = run("VAEEncode", plain, vp)
    (enc_one,) = run("VAEEncodeTiled", plain, vp, 512, 64, 64, 8)
    assert torch.equal(enc_one.samples, enc.samples)
    (enc_tiled,) = run("VAEEncodeTiled", plain, vp, 64, 16, 64, 8)
    assert enc_tiled.samples.shape == enc.samples.shape and math.isfinite(
        float(enc_tiled.samples.abs().max())
    )


def test_area_composition_workflow_runs_through_the_executor(tiny_model: Path, tmp_path: Path) -> None:
    """ComfyUI's area-composition example in miniature (API format): a background prompt plus two prompts on
    the left and right halves, combined into KSampler's positive. It validates, runs, and an area prompt over
    the whole image gives the plain prompt's image."""
    import shutil

    import numpy as np
    from PIL import Image

    from latentworks.graph.executor import Executor
    from latentworks.graph.validate import validate_prompt

    models = tmp_path / "models"
    shutil.copytree(tiny_model, models / "checkpoints" / "tiny")
    reg = default_registry(models)

    def enc(text: str) -> dict:
        return {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": ["4", 1]}}

    def area(src: str, x: int, w: int = 64) -> dict:
        inputs = {"conditioning": [src, 0], "width": w, "height": 64, "x": x, "y": 0, "strength": 1.0}
        return {"class_type": "ConditioningSetArea", "inputs": inputs}

    wf = {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny"}},
        "6": enc("a field"),
        "7": enc(""),
        "20": enc("red apple"),
        "21": enc("green leaf"),
        "22": area("20", 0),
        "23": area("21", 64),
        "24": {"class_type": "ConditioningCombine", "inputs": {"conditioning_1": ["6", 0], "conditioning_2": ["22", 0]}},
        "25": {"class_type": "ConditioningCombine", "inputs": {"conditioning_1": ["24", 0], "conditioning_2": ["23", 0]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 128, "height": 64, "batch_size": 1}},
        "3": {
            "class_type": "KSampler",
            "inputs": {"model": ["4", 0], "seed": 3, "steps": 2, "cfg": 4.0, "sampler_name": "euler",
                       "scheduler": "normal", "positive": ["25", 0], "negative": ["7", 0], "latent_image": ["5", 0],
                       "denoise": 1.0},
        },
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "area"}},
    }  # fmt: skip
    assert validate_prompt(reg, wf).ok
    executor = Executor(reg)

    def image(prompt: dict, out: Path) -> np.ndarray:
        c = executor.new_context("job", output_dir=out, temp_dir=out, on_event=lambda e, d: None)
        res = executor.execute(prompt, c)
        assert res.status == "success", res.error
        return np.asarray(Image.open(out / res.outputs["9"]["images"][0]["filename"])).astype(int)

    composed = image(wf, tmp_path / "a")
    plain = image(
        {**wf, "3": {**wf["3"], "inputs": {**wf["3"]["inputs"], "positive": ["6", 0]}}}, tmp_path / "b"
    )
    assert composed.shape == plain.shape == (64, 128, 3) and (composed != plain).any()
    whole = {**wf, "22": area("6", 0, 128)}
    whole["3"] = {**wf["3"], "inputs": {**wf["3"]["inputs"], "positive": ["22", 0]}}
    assert np.abs(image(whole, tmp_path / "c") - plain).max() <= 1  # PNG rounding of float noise
