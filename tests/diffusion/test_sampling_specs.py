"""Sampling specs (model.json ``denoiser.sampling``) as dataclasses: exact JSON round trips, and the model
sampling they build equals the one built by hand."""

from __future__ import annotations

import json

import pytest
import torch

from latentworks.checkpoints.keymaps.diffusers_configs import scheduler_from_diffusers
from latentworks.diffusion.denoisers import (
    SD_DISCRETE_SAMPLING,
    DiscreteModelSampling,
    DiscreteSamplingSpec,
    FlowDynamicShift,
    FlowModelSampling,
    FlowSamplingSpec,
    make_betas,
    sampling_spec_from_dict,
)
from latentworks.pipelines.loading import EMBEDDED, sampling_from_meta

SPECS = [
    {"kind": "flow", "shift": 1.0},  # what export writes for flow runs (and the default model holds)
    {"kind": "discrete", "betas": "scaled_linear"},  # what export writes for eps/v runs
    dict(SD_DISCRETE_SAMPLING),
    {"kind": "flow", "shift": 3.0, "multiplier": 1000},  # detection writes an int multiplier
    scheduler_from_diffusers({"_class_name": "EulerDiscreteScheduler", "beta_schedule": "squaredcos_cap_v2",
                              "rescale_betas_zero_snr": True, "prediction_type": "v_prediction"})[1],
    scheduler_from_diffusers({"_class_name": "FlowMatchEulerDiscreteScheduler", "use_dynamic_shifting": True,
                              "num_train_timesteps": 500})[1],
]  # fmt: skip


@pytest.mark.parametrize("spec", SPECS, ids=lambda d: json.dumps(d))
def test_dict_round_trip_keeps_the_json_text(spec):
    typed = sampling_spec_from_dict(spec)
    assert type(typed) is (FlowSamplingSpec if spec["kind"] == "flow" else DiscreteSamplingSpec)
    back = typed.to_dict()
    assert back == spec
    assert json.dumps(back) == json.dumps(spec)  # same key order, ints stay ints
    assert type(typed).from_dict(back) == typed


def test_embedded_default_model_spec_is_written_back_unchanged():
    meta = json.loads((EMBEDDED / "default" / "model.json").read_text())
    spec = meta["denoiser"]["sampling"]
    typed = sampling_spec_from_dict(spec)
    # Stage 15 samples with flow shift 2 (docs/model_card_default.md).
    assert typed == FlowSamplingSpec(shift=2.0)
    assert json.dumps(typed.to_dict(), indent=2) == json.dumps(spec, indent=2)


def test_model_sampling_equals_the_hand_built_one():
    for spec in (FlowSamplingSpec(shift=1.0), {"kind": "flow", "shift": 1.0}):
        ms = sampling_from_meta(spec)
        assert isinstance(ms, FlowModelSampling)
        assert torch.equal(ms.sigmas, FlowModelSampling(shift=1.0, multiplier=1000.0).sigmas)
    shifted = sampling_from_meta({"kind": "flow", "shift": 3.0, "num_train_timesteps": 500})
    assert shifted.shift == 3.0 and shifted.sigmas.numel() == 500
    for spec in (DiscreteSamplingSpec(betas="scaled_linear"), {"kind": "discrete", "betas": "scaled_linear"}):
        ms = sampling_from_meta(spec)
        assert isinstance(ms, DiscreteModelSampling)
        assert torch.equal(ms.sigmas, DiscreteModelSampling(make_betas("scaled_linear")).sigmas)
    zsnr = sampling_from_meta(DiscreteSamplingSpec(betas="linear", zero_terminal_snr=True))
    assert torch.equal(
        zsnr.sigmas, DiscreteModelSampling(make_betas("linear"), zero_terminal_snr=True).sigmas
    )


def test_dynamic_shift_is_typed():
    spec = sampling_spec_from_dict(SPECS[-1])
    assert isinstance(spec, FlowSamplingSpec) and isinstance(spec.dynamic_shift, FlowDynamicShift)
    assert spec.dynamic_shift.max_shift == 1.15


@pytest.mark.parametrize(
    "bad,match",
    [
        ({"kind": "ddpm"}, "unknown sampling kind 'ddpm'"),
        ({"shift": 1.0}, "unknown sampling kind None"),
        ({"kind": "flow", "shfit": 1.0}, "unknown key.*'shfit'.*known: shift"),
        ({"kind": "discrete", "betas": "quadratic"}, "unknown betas 'quadratic'"),
        ({"kind": "flow", "shift": "3"}, "shift must be a number"),
        ({"kind": "flow", "shift": 0.0}, "shift must be a number greater than 0, got 0.0"),
        ({"kind": "flow", "shift": float("nan")}, "shift must be a number greater than 0, got nan"),
        ({"kind": "flow", "multiplier": -1000}, "multiplier must be a number greater than 0, got -1000"),
        ({"kind": "discrete", "num_timesteps": 1000.5}, "num_timesteps must be an integer"),
        ({"kind": "flow", "dynamic_shift": {"max_shift": 1.15}}, "dynamic_shift must have exactly the keys"),
    ],
)
def test_bad_specs_say_what_is_wrong(bad, match):
    with pytest.raises(ValueError, match=match):
        sampling_from_meta(bad)
    with pytest.raises(ValueError, match="^model.json: "):
        sampling_from_meta(bad)
