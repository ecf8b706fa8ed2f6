"""Model-sampling patch nodes: the patched model's noise levels are the analytic shifted schedule (computed
here by hand), the original model is unchanged, and the patch reaches the sampler."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch

from latentworks.diffusion.conditioning import Conditioning
from latentworks.graph import ExecutionContext, OutputCache
from latentworks.nodes.custom_sampling import custom_sampling_nodes
from latentworks.nodes.model_patches import model_patch_nodes
from latentworks.nodes.payloads import ConditioningPayload, Latent, ModelPayload
from latentworks.nodes.sampling import sampling_nodes
from latentworks.pipelines.loading import load_model_folder

NODES = {n.name: n for n in [*sampling_nodes(), *custom_sampling_nodes(), *model_patch_nodes()]}


def run(name: str, *args: object) -> tuple:
    return NODES[name].execute(ExecutionContext(prompt_id="patch", cache=OutputCache()), *args)


def shifted(u: float, shift: float) -> float:
    """SD3's static shift (Esser et al. 2024, eq. 23), written out here as the reference."""
    return shift * u / (1 + (shift - 1) * u)


@pytest.fixture(scope="module")
def flow_model(tiny_flow_model: Path) -> ModelPayload:
    return ModelPayload(load_model_folder(tiny_flow_model))


@pytest.fixture(scope="module")
def vp_model(tiny_model: Path) -> ModelPayload:
    return ModelPayload(load_model_folder(tiny_model))


@pytest.mark.parametrize("node,shift", [("ModelSamplingSD3", 3.0), ("ModelSamplingAuraFlow", 1.73)])
def test_flow_shift_patches_give_the_analytic_schedule(
    flow_model: ModelPayload, node: str, shift: float
) -> None:
    before_ms = flow_model.folder.model_sampling
    before_meta = copy.deepcopy(flow_model.folder.meta)
    before_sigmas = before_ms.sigmas.clone()
    (patched,) = run(node, flow_model, shift)

    table = patched.folder.model_sampling.sigmas  # (1000,) training levels, ascending
    want = torch.tensor([shifted(i / 1000, shift) for i in range(1, 1001)], dtype=torch.float64)
    assert torch.allclose(table.double(), want, rtol=0, atol=1e-12)
    # BasicScheduler "simple" reads every 250th table entry from the noisiest: u = 1, .75, .5, .25.
    (sigmas,) = run("BasicScheduler", patched, "simple", 4, 1.0)
    assert sigmas.sigmas.tolist() == pytest.approx([shifted(u, shift) for u in (1, 0.75, 0.5, 0.25)] + [0.0])
    assert patched.folder.prediction == "flow"
    # The network's timestep convention (t = sigma * multiplier) is the model's own, not ComfyUI's 1.0.
    assert patched.folder.model_sampling.multiplier == before_ms.multiplier == 1000.0
    assert patched.folder.denoiser_net is flow_model.folder.denoiser_net  # weights shared, not copied

    # The original model is untouched.
    assert flow_model.folder.model_sampling is before_ms and before_ms.shift == 1.0
    assert torch.equal(before_ms.sigmas, before_sigmas)
    assert flow_model.folder.meta == before_meta
    (plain,) = run("BasicScheduler", flow_model, "simple", 4, 1.0)
    assert plain.sigmas.tolist() == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0])


def test_aura_flow_on_a_non_flow_model_takes_comfyuis_multiplier(vp_model: ModelPayload) -> None:
    (patched,) = run("ModelSamplingAuraFlow", vp_model, 2.0)
    assert patched.folder.model_sampling.multiplier == 1.0 and patched.folder.prediction == "flow"
    (sd3,) = run("ModelSamplingSD3", vp_model, 2.0)
    assert sd3.folder.model_sampling.multiplier == 1000.0
    assert vp_model.folder.prediction == "v"  # the tiny discrete model predicts v


def test_model_sampling_flux_gives_the_exponential_shift(flow_model: ModelPayload) -> None:
    max_shift, base_shift, width, height = 1.15, 0.5, 512, 768
    tokens = width * height / (16 * 16)  # 8x VAE, 2x2 patches
    mu = base_shift + (max_shift - base_shift) * (tokens - 256) / (4096 - 256)
    (patched,) = run("ModelSamplingFlux", flow_model, max_shift, base_shift, width, height)
    table = patched.folder.model_sampling.sigmas
    want = [math.exp(mu) / (math.exp(mu) + (1 / (i / 1000) - 1)) for i in range(1, 1001)]
    assert torch.allclose(table.double(), torch.tensor(want, dtype=torch.float64), rtol=0, atol=1e-12)
    assert flow_model.folder.model_sampling.mu is None


def test_a_patch_reaches_the_sampler(flow_model: ModelPayload) -> None:
    enc_tokens = torch.randn(1, 4, 384, generator=torch.Generator().manual_seed(1))
    pos = ConditioningPayload(Conditioning(tokens=enc_tokens))
    neg = ConditioningPayload(Conditioning(tokens=torch.zeros(1, 4, 384)))
    h, w = flow_model.folder.resolution
    latent = Latent(pixel_size=(h, w), batch_size=1)
    (patched,) = run("ModelSamplingSD3", flow_model, 3.0)
    args = (4, 3, 2.0, "euler", "simple", pos, neg, latent, 1.0)
    (plain,) = run("KSampler", flow_model, *args)
    (shifted_out,) = run("KSampler", patched, *args)
    assert not torch.equal(plain.samples, shifted_out.samples)
    # KSampler on the patched model equals the custom nodes scheduling with the patched sampling.
    (sigmas,) = run("BasicScheduler", patched, "simple", 3, 1.0)
    got, _ = run(
        "SamplerCustomAdvanced", run("RandomNoise", 4)[0], run("CFGGuider", patched, pos, neg, 2.0)[0],
        run("KSamplerSelect", "euler")[0], sigmas, latent,
    )  # fmt: skip
    assert torch.equal(got.samples, shifted_out.samples)
    (again,) = run("KSampler", flow_model, *args)
    assert torch.equal(again.samples, plain.samples)  # the original model still samples as before


def test_model_sampling_discrete(vp_model: ModelPayload) -> None:
    (eps,) = run("ModelSamplingDiscrete", vp_model, "eps", False)
    assert eps.folder.prediction == "eps" and vp_model.folder.prediction == "v"
    assert torch.equal(eps.folder.model_sampling.sigmas, vp_model.folder.model_sampling.sigmas)
    (v,) = run("ModelSamplingDiscrete", vp_model, "v_prediction", False)
    assert v.folder.prediction == "v"
    (x0,) = run("ModelSamplingDiscrete", vp_model, "x0", False)
    assert x0.folder.prediction == "x0"
    # Zero terminal SNR: the last alpha_bar is ComfyUI's 4.8973451890853435e-08, so sigma_max = sqrt((1-a)/a).
    (z,) = run("ModelSamplingDiscrete", vp_model, "v_prediction", True)
    a = 4.8973451890853435e-08
    assert z.folder.model_sampling.sigma_max == pytest.approx(math.sqrt((1 - a) / a), rel=1e-9)
    assert vp_model.folder.model_sampling.sigma_max == pytest.approx(14.6146, abs=1e-3)
    for unsupported in ("lcm", "img_to_img", "img_to_img_flow"):
        with pytest.raises(ValueError, match=f"sampling '{unsupported}' is not supported"):
            run("ModelSamplingDiscrete", vp_model, unsupported, False)
        msg = NODES["ModelSamplingDiscrete"].validate_inputs(sampling=unsupported, zsnr=False)  # type: ignore[misc]
        assert isinstance(msg, str) and "eps, v_prediction, x0" in msg
    assert NODES["ModelSamplingDiscrete"].validate_inputs(sampling="eps", zsnr=False) is True  # type: ignore[misc]


def test_a_patch_wins_over_the_family_resolution_shift(flow_model: ModelPayload) -> None:
    from dataclasses import replace

    from latentworks import families
    from latentworks.pipelines.families import model_sampling_for

    meta = flow_model.folder.meta
    dev_spec = families.get("flux-dev").sampling.to_dict()  # carries FLUX.1's dynamic shift
    flux_like = ModelPayload(
        replace(flow_model.folder, meta={**meta, "denoiser": {**meta["denoiser"], "sampling": dev_spec}})
    )
    unpatched = model_sampling_for(flux_like.folder, latent_height=64, latent_width=64)
    assert unpatched.mu is not None  # FLUX's own sampling shifts with the image size
    (patched,) = run("ModelSamplingSD3", flux_like, 3.0)
    ms = model_sampling_for(patched.folder, latent_height=64, latent_width=64)
    assert ms is patched.folder.model_sampling and ms.mu is None and ms.shift == 3.0
    assert "dynamic_shift" not in patched.folder.meta["denoiser"]["sampling"]  # the patch dropped it
    assert "dynamic_shift" in flux_like.folder.meta["denoiser"]["sampling"]  # the input model is unchanged
