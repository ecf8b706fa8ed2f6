"""ComfyUI's custom-sampling nodes reach KSampler's latents bit for bit, the schedule nodes give the schedules
computed here by hand, and a workflow built from them runs through the executor."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from latentworks.diffusion.conditioning import Conditioning
from latentworks.graph import ExecutionContext, OutputCache
from latentworks.graph.executor import Executor
from latentworks.graph.validate import validate_prompt
from latentworks.nodes import default_registry
from latentworks.nodes.custom_sampling import custom_sampling_nodes
from latentworks.nodes.payloads import ConditioningPayload, Latent, ModelPayload, SigmasPayload
from latentworks.nodes.sampling import sampling_nodes
from latentworks.pipelines.loading import load_model_folder

NODES = {n.name: n for n in [*sampling_nodes(), *custom_sampling_nodes()]}


class WordHashEncoder:
    """A deterministic 384-dim stand-in for the tiny models' text encoder: word -> fixed random vector."""

    def encode(self, prompts: list[str]) -> Conditioning:
        toks = torch.zeros(len(prompts), 4, 384)
        for i, p in enumerate(prompts):
            for j, w in enumerate(["<s>", *p.split()][:4]):
                seed = int.from_bytes(hashlib.sha1(w.encode()).digest()[:4], "little")
                toks[i, j] = torch.randn(384, generator=torch.Generator().manual_seed(seed))
        return Conditioning(tokens=toks)


def ctx() -> ExecutionContext:
    return ExecutionContext(prompt_id="custom", cache=OutputCache())


def run(name: str, *args: object) -> tuple:
    return NODES[name].execute(ctx(), *args)


def make_parts(path: Path) -> tuple[ModelPayload, ConditioningPayload, ConditioningPayload, Latent]:
    enc = WordHashEncoder()
    model = ModelPayload(load_model_folder(path))
    h, w = model.folder.resolution
    pos, neg = ConditioningPayload(enc.encode(["red apple"])), ConditioningPayload(enc.encode([""]))
    return model, pos, neg, Latent(pixel_size=(h, w), batch_size=2)


@pytest.fixture(scope="module")
def parts(tiny_model: Path) -> tuple[ModelPayload, ConditioningPayload, ConditioningPayload, Latent]:
    return make_parts(tiny_model)


@pytest.mark.parametrize(
    "which,sampler,scheduler",
    [
        ("tiny_model", "euler_ancestral", "normal"),
        ("tiny_model", "dpmpp_2m", "karras"),
        ("tiny_flow_model", "dpmpp_2m_sde", "simple"),
    ],
)
def test_sampler_custom_advanced_equals_ksampler_bit_for_bit(
    request, which: str, sampler: str, scheduler: str
) -> None:
    model, pos, neg, latent = make_parts(request.getfixturevalue(which))
    seed, steps, cfg = 7, 3, 2.5
    (want,) = run("KSampler", model, seed, steps, cfg, sampler, scheduler, pos, neg, latent, 1.0)

    (noise,) = run("RandomNoise", seed)
    (guider,) = run("CFGGuider", model, pos, neg, cfg)
    (smp,) = run("KSamplerSelect", sampler)
    (sigmas,) = run("BasicScheduler", model, scheduler, steps, 1.0)
    out, denoised = run("SamplerCustomAdvanced", noise, guider, smp, sigmas, latent)
    assert out.samples.shape == want.samples.shape and out.samples.shape[0] == 2
    assert torch.equal(out.samples, want.samples)
    # SamplerCustom (the one-node form) is the same computation.
    same, _ = run("SamplerCustom", model, True, seed, cfg, pos, neg, smp, sigmas, latent)
    assert torch.equal(same.samples, want.samples)
    # The comparison has teeth: another seed or another cfg changes the latents.
    (other,) = run("RandomNoise", seed + 1)
    assert not torch.equal(
        run("SamplerCustomAdvanced", other, guider, smp, sigmas, latent)[0].samples, out.samples
    )
    (weaker,) = run("CFGGuider", model, pos, neg, 1.5)
    assert not torch.equal(
        run("SamplerCustomAdvanced", noise, weaker, smp, sigmas, latent)[0].samples, out.samples
    )
    # denoised_output is the model's last x0 prediction: finite, same shape, not the noisy input.
    assert denoised.samples.shape == out.samples.shape and torch.isfinite(denoised.samples).all()


def test_basic_guider_is_ksampler_at_cfg_1_and_disable_noise_is_add_noise_disable(parts) -> None:
    model, pos, neg, latent = parts
    (smp,) = run("KSamplerSelect", "euler_ancestral")
    (sigmas,) = run("BasicScheduler", model, "normal", 3, 1.0)
    (guider,) = run("BasicGuider", model, pos)
    (noise,) = run("RandomNoise", 11)
    (want,) = run("KSampler", model, 11, 3, 1.0, "euler_ancestral", "normal", pos, neg, latent, 1.0)
    got, _ = run("SamplerCustomAdvanced", noise, guider, smp, sigmas, latent)
    assert torch.equal(got.samples, want.samples)

    # DisableNoise: start from the given latent as it is; the SDE noise uses seed 0 (as ComfyUI's).
    start = Latent(samples=want.samples * 0.5 + 0.1)
    (cfg_guider,) = run("CFGGuider", model, pos, neg, 2.0)
    (off,) = run("DisableNoise")
    got, _ = run("SamplerCustomAdvanced", off, cfg_guider, smp, sigmas, start)
    (ref,) = run(
        "KSamplerAdvanced", model, "disable", 0, 3, 2.0, "euler_ancestral", "normal", pos, neg, start, 0, 10000,
        "disable",
    )  # fmt: skip
    assert torch.equal(got.samples, ref.samples)
    (on,) = run("RandomNoise", 0)
    assert not torch.equal(
        run("SamplerCustomAdvanced", on, cfg_guider, smp, sigmas, start)[0].samples, got.samples
    )


def test_denoise_and_split_sigmas_match_ksampler(parts) -> None:
    model, pos, neg, latent = parts
    start = Latent(samples=torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0)))
    if model.folder.latent_format.channels != 4:
        pytest.skip("the tiny model's latents are not 4-channel")
    (want,) = run("KSampler", model, 3, 4, 2.0, "euler", "normal", pos, neg, start, 0.5)
    (sigmas,) = run("BasicScheduler", model, "normal", 4, 0.5)
    assert len(sigmas.sigmas) == 5
    got, _ = run(
        "SamplerCustomAdvanced", run("RandomNoise", 3)[0], run("CFGGuider", model, pos, neg, 2.0)[0],
        run("KSamplerSelect", "euler")[0], sigmas, start,
    )  # fmt: skip
    assert torch.equal(got.samples, want.samples)
    assert run("BasicScheduler", model, "normal", 4, 0.0)[0].sigmas.numel() == 0


def test_sigma_nodes_by_hand() -> None:
    s = SigmasPayload(torch.tensor([4.0, 3.0, 2.0, 1.0, 0.0]))
    high, low = run("SplitSigmas", s, 1)
    assert high.sigmas.tolist() == [4.0, 3.0] and low.sigmas.tolist() == [3.0, 2.0, 1.0, 0.0]
    high, low = run("SplitSigmasDenoise", s, 0.25)  # 4 steps * 0.25 = 1 low step
    assert high.sigmas.tolist() == [4.0, 3.0, 2.0, 1.0] and low.sigmas.tolist() == [1.0, 0.0]
    high, low = run("SplitSigmasDenoise", s, 0.5)
    assert high.sigmas.tolist() == [4.0, 3.0, 2.0] and low.sigmas.tolist() == [2.0, 1.0, 0.0]
    high, low = run("SplitSigmasDenoise", s, 0.0)
    assert high.sigmas.tolist() == [4.0, 3.0, 2.0, 1.0, 0.0] and low.sigmas.tolist() == [0.0]
    (flipped,) = run("FlipSigmas", s)
    assert flipped.sigmas.tolist() == pytest.approx([0.0001, 1.0, 2.0, 3.0, 4.0])
    assert s.sigmas.tolist() == [4.0, 3.0, 2.0, 1.0, 0.0]  # the input is not changed

    # Karras et al. 2022, eq. 5, and log-linear spacing, by hand.
    n, lo, hi, rho = 4, 0.1, 10.0, 7.0
    (k,) = run("KarrasScheduler", n, hi, lo, rho)
    ramp = [i / (n - 1) for i in range(n)]
    want = [(hi ** (1 / rho) + r * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho for r in ramp] + [0.0]
    assert k.sigmas.tolist() == pytest.approx(want, rel=1e-6)
    (e,) = run("ExponentialScheduler", n, hi, lo)
    want = [float(np.exp(np.log(hi) + r * (np.log(lo) - np.log(hi)))) for r in ramp] + [0.0]
    assert e.sigmas.tolist() == pytest.approx(want, rel=1e-6)
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        run("KarrasScheduler", n, lo, hi, rho)


def test_sd_turbo_and_beta_schedulers_read_the_training_table(parts) -> None:
    model = parts[0]
    ms = model.folder.model_sampling
    table = ms.sigmas  # (1000,) ascending, training step i -> sigma_i
    (t,) = run("SDTurboScheduler", model, 2, 1.0)
    assert t.sigmas.tolist() == pytest.approx([float(table[999]), float(table[899]), 0.0], rel=1e-6)
    (t,) = run("SDTurboScheduler", model, 1, 0.5)  # starts 5 entries in: step 499
    assert t.sigmas.tolist() == pytest.approx([float(table[499]), 0.0], rel=1e-6)
    (b,) = run("BetaSamplingScheduler", model, 5, 1.0, 1.0)  # Beta(1, 1) quantiles are uniform
    want = [float(table[round(q * 999)]) for q in (1.0, 0.8, 0.6, 0.4, 0.2)] + [0.0]  # no .5 ties
    assert b.sigmas.tolist() == pytest.approx(want, rel=1e-6)


def test_unknown_sampler_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown sampler 'nope'"):
        run("KSamplerSelect", "nope")


def custom_workflow(seed: int) -> dict:
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny"}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red apple", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 16, "height": 16, "batch_size": 1}},
        "10": {"class_type": "RandomNoise", "inputs": {"noise_seed": seed}},
        "11": {
            "class_type": "CFGGuider",
            "inputs": {"model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "cfg": 3.0},
        },
        "12": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "13": {
            "class_type": "BasicScheduler",
            "inputs": {"model": ["4", 0], "scheduler": "normal", "steps": 3, "denoise": 1.0},
        },
        "14": {"class_type": "SplitSigmas", "inputs": {"sigmas": ["13", 0], "step": 1}},
        "3": {
            "class_type": "SamplerCustomAdvanced",
            "inputs": {
                "noise": ["10", 0],
                "guider": ["11", 0],
                "sampler": ["12", 0],
                "sigmas": ["13", 0],
                "latent_image": ["5", 0],
            },
        },  # fmt: skip
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "custom"}},
    }


def test_custom_workflow_runs_and_equals_the_ksampler_workflow(tiny_model: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    shutil.copytree(tiny_model, models / "checkpoints" / "tiny")
    reg = default_registry(models)
    wf = custom_workflow(5)
    assert validate_prompt(reg, wf).ok
    executor = Executor(reg)

    def images(prompt: dict, out: Path) -> list[np.ndarray]:
        c = executor.new_context("job", output_dir=out, temp_dir=out, on_event=lambda e, d: None)
        res = executor.execute(prompt, c)
        assert res.status == "success", res.error
        return [np.asarray(Image.open(out / f["filename"])) for f in res.outputs["9"]["images"]]

    got = images(wf, tmp_path / "a")
    ks = {k: v for k, v in wf.items() if k not in {"10", "11", "12", "13", "14"}}
    ks["3"] = {
        "class_type": "KSampler",
        "inputs": {"model": ["4", 0], "seed": 5, "steps": 3, "cfg": 3.0, "sampler_name": "euler",
                   "scheduler": "normal", "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0],
                   "denoise": 1.0},
    }  # fmt: skip
    want = images(ks, tmp_path / "b")
    assert len(got) == 1 and np.array_equal(got[0], want[0])
    # A SIGMAS output where a LATENT is expected is a validation error, not a crash.
    bad = dict(wf)
    bad["8"] = {"class_type": "VAEDecode", "inputs": {"samples": ["14", 0], "vae": ["4", 2]}}
    assert not validate_prompt(reg, bad).ok
    # An unsupported ModelSamplingDiscrete sampling is refused at validation, with a message that says why.
    lcm = dict(wf)
    lcm["15"] = {
        "class_type": "ModelSamplingDiscrete",
        "inputs": {"model": ["4", 0], "sampling": "lcm", "zsnr": False},
    }
    lcm["11"] = {**wf["11"], "inputs": {**wf["11"]["inputs"], "model": ["15", 0]}}
    verdict = validate_prompt(reg, lcm)
    assert not verdict.ok and "'lcm' is not supported" in str(verdict)
