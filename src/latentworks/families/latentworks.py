"""Our own model folders (``latentworks train`` + ``convert --from-run``, and the embedded default model).

A model folder names its architecture, objective, sampling, text encoder, size and defaults in its
``model.json``, so the family itself holds only what applies when those are absent.
"""

from __future__ import annotations

from latentworks.diffusion.denoisers import FlowSamplingSpec
from latentworks.families.base import Generation, ModelFamily

LATENTWORKS = ModelFamily(
    name="latentworks",
    title="latentworks model folder",
    prediction="flow",
    sampling=FlowSamplingSpec(shift=1.0),
    generation=Generation(resolution=(64, 64)),
)
