"""The configurable-sampler nodes give our samplers with their options: at their defaults they equal
KSamplerSelect's sampler bit for bit, and each option reaches the sampler (changing it changes the latents,
eta 0 turns Euler ancestral into Euler)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from latentworks.diffusion.conditioning import Conditioning
from latentworks.graph import ExecutionContext, OutputCache
from latentworks.nodes import default_registry
from latentworks.nodes.payloads import ConditioningPayload, Latent, ModelPayload
from latentworks.pipelines.loading import load_model_folder

REG = default_registry()


def run(name: str, *args: object) -> tuple:
    return REG.get(name).execute(ExecutionContext(prompt_id="smp", cache=OutputCache()), *args)


@pytest.fixture(scope="module")
def sample(tiny_model: Path):  # noqa: ANN201
    model = ModelPayload(load_model_folder(tiny_model))
    h, w = model.folder.resolution
    g = torch.Generator().manual_seed(0)
    pos = ConditioningPayload(Conditioning(tokens=torch.randn(1, 4, 384, generator=g)))
    neg = ConditioningPayload(Conditioning(tokens=torch.zeros(1, 4, 384)))
    (guider,) = run("CFGGuider", model, pos, neg, 3.0)
    (sigmas,) = run("BasicScheduler", model, "karras", 4, 1.0)
    (noise,) = run("RandomNoise", 9)
    latent = Latent(pixel_size=(h, w), batch_size=1)

    def go(sampler: object) -> torch.Tensor:
        out, _ = run("SamplerCustomAdvanced", noise, guider, sampler, sigmas, latent)
        return out.samples

    return go


@pytest.mark.parametrize(
    "node,args,name,changed",
    [
        ("SamplerEulerAncestral", (1.0, 1.0), "euler_ancestral", (1.0, 0.5)),
        ("SamplerDPMPP_2S_Ancestral", (1.0, 1.0), "dpmpp_2s_ancestral", (0.5, 1.0)),
        ("SamplerDPMPP_SDE", (1.0, 1.0, 0.5, "gpu"), "dpmpp_sde", (1.0, 1.0, 0.3, "gpu")),
        ("SamplerDPMPP_2M_SDE", ("midpoint", 1.0, 1.0, "cpu"), "dpmpp_2m_sde", ("heun", 1.0, 1.0, "cpu")),
        ("SamplerDPMPP_3M_SDE", (1.0, 1.0, "gpu"), "dpmpp_3m_sde", (0.0, 1.0, "gpu")),
        ("SamplerLMS", (4,), "lms", (2,)),
    ],
)
def test_defaults_equal_ksampler_select_and_options_reach_the_sampler(
    sample, node, args, name, changed
) -> None:  # noqa: ANN001
    (plain,) = run("KSamplerSelect", name)
    (configured,) = run(node, *args)
    assert configured.name == name
    want = sample(plain)
    assert torch.equal(sample(configured), want)
    assert not torch.equal(sample(run(node, *changed)[0]), want)


def test_euler_ancestral_with_eta_0_is_euler(sample) -> None:  # noqa: ANN001
    (euler,) = run("KSamplerSelect", "euler")
    (no_noise,) = run("SamplerEulerAncestral", 0.0, 1.0)
    torch.testing.assert_close(sample(no_noise), sample(euler), rtol=1e-5, atol=1e-5)
