"""The training objective is made of the sampling objects: the target it trains toward is the network output
that makes the matching denoiser return x0 exactly, its inputs follow the schedule's formulas, and it draws
the same numbers as the objective it replaced (so training runs are unchanged)."""

from __future__ import annotations

import pytest
import torch

from latentworks.diffusion.denoisers import (
    DiscreteModelSampling,
    DiscreteSamplingSpec,
    FlowSamplingSpec,
    make_betas,
    make_denoiser,
)
from latentworks.diffusion.objective import DiffusionObjective
from latentworks.pipelines.export import run_objective


def _old_objective(prediction: str, x0: torch.Tensor, gen: torch.Generator):
    """The objective as training/losses.py wrote it by hand before it was built from the sampling objects
    (kept verbatim as the bit-identity reference)."""
    b = x0.shape[0]
    n = torch.randn(x0.shape, generator=gen).to(x0.device, x0.dtype)
    shape = (b,) + (1,) * (x0.ndim - 1)
    if prediction == "flow":
        s = torch.sigmoid(torch.randn(b, generator=gen) * 1.0 + 0.0).to(x0.dtype)
        sb = s.view(shape)
        return (1 - sb) * x0 + sb * n, s * 1000.0, n - x0
    ab_table = torch.cumprod(1 - make_betas("scaled_linear", 1000), 0).float()
    t = torch.randint(0, 1000, (b,), generator=gen)
    ab = ab_table[t].to(x0.dtype).view(shape)
    a, s = ab.sqrt(), (1 - ab).sqrt()
    return a * x0 + s * n, t.to(x0.dtype), (n if prediction == "eps" else a * n - s * x0)


@pytest.mark.parametrize("prediction", ["eps", "v", "flow"])
def test_draws_are_bit_identical_to_the_hand_written_objective(prediction):
    x0 = torch.randn(16, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    new = DiffusionObjective(prediction).noise(x0, torch.Generator().manual_seed(5))
    x_in, t, target = _old_objective(prediction, x0, torch.Generator().manual_seed(5))
    assert torch.equal(new.x_in, x_in) and torch.equal(new.timestep, t) and torch.equal(new.target, target)
    assert new.weight is None
    assert torch.equal(new.loss(target + 1.0), torch.tensor(1.0))  # uniform weight: plain MSE


class _Oracle(torch.nn.Module):
    """A 'network' that outputs a fixed tensor and records what it was given."""

    def __init__(self, out: torch.Tensor) -> None:
        super().__init__()
        self.out = out
        self.seen: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, x_in, t, cond):
        self.seen = (x_in, t)
        return self.out


@pytest.mark.parametrize(
    "prediction,spec",
    [
        ("eps", DiscreteSamplingSpec(betas="scaled_linear")),
        ("v", DiscreteSamplingSpec(betas="linear", linear_start=1e-4, linear_end=2e-2)),
        ("flow", FlowSamplingSpec(shift=1.0)),
        ("flow", FlowSamplingSpec(shift=3.0, multiplier=1.0)),
    ],
)
def test_target_makes_the_sampling_denoiser_exact(prediction, spec):
    # Training toward `target` and sampling with make_denoiser(..., the same model sampling) agree: a network
    # that outputs the target exactly denoises to x0, and it is given the input and time it was trained on.
    objective = DiffusionObjective(prediction, sampling=spec)
    x0 = torch.randn(8, 3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    ex = objective.noise(x0, torch.Generator().manual_seed(3))
    oracle = _Oracle(ex.target)
    den = make_denoiser(oracle, prediction, objective.model_sampling)
    ms = objective.model_sampling
    if isinstance(ms, DiscreteModelSampling):  # the denoiser takes VE samples x = x_vp / sqrt(alpha_bar)
        t = ex.timestep.long()
        sigma = ms.sigmas[t]
        x = ex.x_in * (sigma**2 + 1).sqrt().view(-1, 1, 1, 1)
    else:
        sigma = ex.timestep / ms.multiplier
        x = ex.x_in
    got = den(x, sigma, None)
    torch.testing.assert_close(got, x0, rtol=1e-5, atol=1e-5)  # alpha_bar is float32 in training
    torch.testing.assert_close(oracle.seen[0], ex.x_in, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(oracle.seen[1], ex.timestep, rtol=1e-9, atol=1e-9)


def test_discrete_inputs_follow_the_ddpm_formula():
    # x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) n, alpha_bar from the betas (Ho et al. 2020, eq. 4).
    spec = DiscreteSamplingSpec(betas="linear", linear_start=1e-4, linear_end=2e-2, num_timesteps=50)
    level = spec.model_sampling().training_level(torch.tensor([0, 10, 49]), torch.float64)
    betas = torch.linspace(1e-4, 2e-2, 50, dtype=torch.float64)
    alpha_bar = torch.cumprod(1 - betas, 0)[[0, 10, 49]]
    # Training takes alpha_bar in float32 (as it always has): ~6e-8 absolute error, ~3e-6 after the sqrt.
    torch.testing.assert_close(level.alpha, alpha_bar.sqrt(), rtol=0, atol=1e-7)
    torch.testing.assert_close(level.sigma_in, (1 - alpha_bar).sqrt(), rtol=0, atol=5e-6)
    torch.testing.assert_close(level.sigma, ((1 - alpha_bar) / alpha_bar).sqrt(), rtol=1e-12, atol=0)
    assert level.timestep.tolist() == [0.0, 10.0, 49.0]
    with pytest.raises(ValueError, match="integer training steps"):
        spec.model_sampling().training_level(torch.tensor([0.5]))


def test_objective_refuses_a_spec_of_the_other_kind():
    with pytest.raises(ValueError, match="'flow' objective needs a flow sampling spec"):
        DiffusionObjective("flow", sampling=DiscreteSamplingSpec())
    with pytest.raises(ValueError, match="'eps' objective needs a discrete sampling spec"):
        DiffusionObjective("eps", sampling=FlowSamplingSpec())
    with pytest.raises(ValueError, match="choose eps, v or flow"):
        DiffusionObjective("edm")


def test_export_takes_the_spec_from_the_run_objective():
    # Older runs record no spec: the objective's default, written as export always wrote it.
    assert run_objective({"prediction": "flow"}).sampling.to_dict() == {"kind": "flow", "shift": 1.0}
    assert run_objective({"prediction": "v"}).sampling.to_dict() == {
        "kind": "discrete",
        "betas": "scaled_linear",
    }
    spec = {"kind": "flow", "shift": 3.0}
    objective = run_objective({"prediction": "flow", "sampling": spec, "train": {"logit_mean": 0.5}})
    assert objective.sampling.to_dict() == spec and objective.logit_mean == 0.5
    with pytest.raises(ValueError, match="needs a discrete sampling spec"):
        run_objective({"prediction": "eps", "sampling": spec})
