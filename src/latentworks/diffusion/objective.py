"""The training objective: which noise levels training draws, and in what order it draws its randomness.

Everything else comes from the objects sampling uses, as in EDM's single preconditioned ``D``: the model
sampling (``DiscreteModelSampling.training_level`` / ``FlowModelSampling.training_level``) turns a drawn
level into the network's input coefficients and time, and the denoiser wrapper of the prediction type
(``EpsDenoiser``, ``VDenoiser``, ``FlowDenoiser``...) gives the regression target and loss weight. The
sampling spec the objective was built from is what an exported model folder records, so the model is
sampled with the schedule it was trained on.

* eps / v (discrete DDPM, SD's scaled-linear betas by default): step t uniform in {0..N-1}.
* flow (rectified flow): ``sigma = sigmoid(m + std * N(0, 1))``, logit-normal time as in SD3 (Esser et al.
  2024, sec. 3.1); network time ``multiplier * sigma``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from latentworks.diffusion.denoisers import (
    DENOISERS,
    Denoiser,
    DiscreteSamplingSpec,
    FlowModelSampling,
    FlowSamplingSpec,
    Network,
    SamplingSpec,
    TrainingExample,
    make_denoiser,
)

TRAINED_PREDICTIONS = ("eps", "v", "flow")


def default_training_sampling(prediction: str) -> SamplingSpec:
    """The sampling spec a run trains with when it names none: flow shift 1, or SD's discrete schedule."""
    return (
        FlowSamplingSpec(shift=1.0) if prediction == "flow" else DiscreteSamplingSpec(betas="scaled_linear")
    )


class DiffusionObjective:
    """Noising and targets for training a ``prediction`` network (see the module docstring).

    ``sampling`` (a spec; default ``default_training_sampling(prediction)``) must be a flow spec for
    ``flow`` and a discrete one for ``eps`` / ``v``.
    """

    def __init__(
        self,
        prediction: str,
        logit_mean: float = 0.0,
        logit_std: float = 1.0,
        *,
        sampling: SamplingSpec | None = None,
    ) -> None:
        if prediction not in TRAINED_PREDICTIONS:
            raise ValueError(f"unknown objective {prediction!r}; choose eps, v or flow")
        spec = default_training_sampling(prediction) if sampling is None else sampling
        if isinstance(spec, FlowSamplingSpec) != (prediction == "flow"):
            raise ValueError(
                f"a {prediction!r} objective needs a {'flow' if prediction == 'flow' else 'discrete'} sampling "
                f"spec, got {spec.to_dict()}"
            )
        self.prediction = prediction
        self.logit_mean, self.logit_std = logit_mean, logit_std
        self.sampling = spec
        self.model_sampling = spec.model_sampling()
        self.parameterization = DENOISERS[prediction]

    def denoiser(self, network: Network) -> Denoiser:
        """``network`` as the denoiser this objective trains it to be (for sampling)."""
        return make_denoiser(network, self.prediction, self.model_sampling)

    def noise(self, x0: Tensor, generator: torch.Generator) -> TrainingExample:
        """Draw noise and levels for clean latents ``x0`` (B, C, h, w) from ``generator``: the noise first,
        then one level per sample, on the generator's device (CPU), so every device gets the same numbers."""
        b = x0.shape[0]
        gdev = generator.device
        n = torch.randn(x0.shape, generator=generator, device=gdev).to(x0.device, x0.dtype)
        ms = self.model_sampling
        if isinstance(ms, FlowModelSampling):
            u = (
                torch.randn(b, generator=generator, device=gdev).to(x0.device) * self.logit_std
                + self.logit_mean
            )
            level = ms.training_level(torch.sigmoid(u).to(x0.dtype))
        else:
            t = torch.randint(0, ms.num_timesteps, (b,), generator=generator, device=gdev).to(x0.device)
            level = ms.training_level(t, x0.dtype)
        return self.parameterization.training_example(x0, n, level)


def logit_normal_density(s: float, mean: float = 0.0, std: float = 1.0) -> float:
    """Density of the logit-normal time distribution (for docs/tests)."""
    if not 0 < s < 1:
        return 0.0
    z = (math.log(s / (1 - s)) - mean) / std
    return math.exp(-0.5 * z * z) / (std * math.sqrt(2 * math.pi) * s * (1 - s))
