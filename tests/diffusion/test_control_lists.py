"""A ControlNet on area, mask or timestep-range conditioning (a conditioning list) is refused with a clear error,
wherever in the lists it sits; the same lists without a ControlNet sample normally."""

from __future__ import annotations

import pytest
import torch

from latentworks.diffusion.conditioning import Conditioning
from latentworks.diffusion.control import ControlInput
from latentworks.diffusion.denoisers import DiscreteModelSampling
from latentworks.diffusion.regions import CondEntry
from latentworks.models.unet import PRESETS, UNet
from latentworks.pipelines.sampling import NetworkModel, denoise_latents, seeds_for
from support.controlnet import tiny_controlnet

REFUSAL = "ControlNet together with area, mask or timestep-range conditioning"


@pytest.fixture(scope="module")
def model() -> NetworkModel:
    torch.manual_seed(0)
    return NetworkModel(UNet(PRESETS["tiny"]).eval(), "eps", DiscreteModelSampling())


def _cond(seed: int) -> Conditioning:
    g = torch.Generator().manual_seed(seed)
    return Conditioning(tokens=torch.randn(1, 3, PRESETS["tiny"].context_dim, generator=g))


def _controlled(seed: int) -> Conditioning:
    hint = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(seed))
    return _cond(seed).with_control(ControlInput(tiny_controlnet(PRESETS["tiny"], seed=1), hint))


def _run(model: NetworkModel, cond: object, uncond: object) -> torch.Tensor:
    sigmas = torch.tensor([10.0, 1.0, 0.0])
    return denoise_latents(
        model, torch.zeros(1, 4, 8, 8), sigmas, seeds_for(0, 1), cond, uncond, 3.0, "euler"
    )  # type: ignore[arg-type]


def test_a_controlnet_on_an_area_entry_of_the_prompt_is_refused(model: NetworkModel) -> None:
    cond = (CondEntry(_cond(1)), CondEntry(_controlled(2), area=(4, 4, 0, 0)))
    with pytest.raises(ValueError, match=REFUSAL) as e:
        _run(model, cond, _cond(3))
    assert "apply the ControlNet to a plain prompt" in str(e.value)


def test_a_controlnet_on_the_plain_prompt_next_to_a_masked_negative_list_is_refused(
    model: NetworkModel,
) -> None:
    mask = torch.ones(1, 8, 8)
    with pytest.raises(ValueError, match=REFUSAL):
        _run(model, _controlled(1), (CondEntry(_cond(3), mask=mask),))


def test_the_same_lists_without_a_controlnet_sample(model: NetworkModel) -> None:
    cond = (CondEntry(_cond(1)), CondEntry(_cond(2), area=(4, 4, 0, 0)))
    out = _run(model, cond, (CondEntry(_cond(3), mask=torch.ones(1, 8, 8)),))
    assert out.shape == (1, 4, 8, 8) and torch.isfinite(out).all()
