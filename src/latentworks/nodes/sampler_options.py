"""The configurable-sampler nodes with ComfyUI's schemas (``comfy_extras/nodes_custom_sampler.py``):
SamplerEulerAncestral, SamplerDPMPP_2S_Ancestral, SamplerDPMPP_SDE, SamplerDPMPP_2M_SDE, SamplerDPMPP_3M_SDE
and SamplerLMS. Each gives a SAMPLER (for SamplerCustom / SamplerCustomAdvanced) that is one of our registered
samplers with its options set.

``noise_device`` (gpu/cpu) is accepted and has no effect: our SDE noise always comes from per-sample CPU
generators (``diffusion.noise``), so results are the same on every device.
"""

from __future__ import annotations

from typing import Any

from latentworks.graph.types import InputSpec, NodeSpec, OutputSpec, input_spec
from latentworks.nodes.payloads import SamplerPayload


def _sampler(name: str, **options: Any) -> tuple[Any, ...]:
    return (SamplerPayload(name, tuple(sorted(options.items()))),)


def _euler_ancestral(ctx: Any, eta: float, s_noise: float) -> tuple[Any, ...]:
    return _sampler("euler_ancestral", eta=float(eta), s_noise=float(s_noise))


def _dpmpp_2s_ancestral(ctx: Any, eta: float, s_noise: float) -> tuple[Any, ...]:
    return _sampler("dpmpp_2s_ancestral", eta=float(eta), s_noise=float(s_noise))


def _dpmpp_sde(ctx: Any, eta: float, s_noise: float, r: float, noise_device: str) -> tuple[Any, ...]:
    return _sampler("dpmpp_sde", eta=float(eta), s_noise=float(s_noise), r=float(r))


def _dpmpp_2m_sde(
    ctx: Any, solver_type: str, eta: float, s_noise: float, noise_device: str
) -> tuple[Any, ...]:
    return _sampler("dpmpp_2m_sde", eta=float(eta), s_noise=float(s_noise), solver_type=str(solver_type))


def _dpmpp_3m_sde(ctx: Any, eta: float, s_noise: float, noise_device: str) -> tuple[Any, ...]:
    return _sampler("dpmpp_3m_sde", eta=float(eta), s_noise=float(s_noise))


def _lms(ctx: Any, order: int) -> tuple[Any, ...]:
    return _sampler("lms", order=int(order))


def sampler_option_nodes() -> list[NodeSpec]:
    I = input_spec  # noqa: E741, N806

    exact = {"round": False, "advanced": True}

    def f(name: str, default: float) -> InputSpec:
        return I(name, "FLOAT", default=default, min=0.0, max=100.0, step=0.01, extra=exact)

    device = I("noise_device", "COMBO", choices=("gpu", "cpu"), default="gpu", extra={"advanced": True})
    out = (OutputSpec(type="SAMPLER"),)
    cat = "sampling/custom_sampling/samplers"
    return [
        NodeSpec(
            name="SamplerEulerAncestral",
            category=cat,
            description="Euler ancestral with its eta and noise scale.",
            execute=_euler_ancestral,
            inputs=(f("eta", 1.0), f("s_noise", 1.0)),
            outputs=out,
        ),
        NodeSpec(
            name="SamplerDPMPP_2S_Ancestral",
            category=cat,
            description="DPM-Solver++(2S) ancestral with its eta and noise scale.",
            execute=_dpmpp_2s_ancestral,
            inputs=(f("eta", 1.0), f("s_noise", 1.0)),
            outputs=out,
        ),
        NodeSpec(
            name="SamplerDPMPP_SDE",
            category=cat,
            description="DPM-Solver++ SDE with its eta, noise scale and midpoint ratio r.",
            execute=_dpmpp_sde,
            inputs=(f("eta", 1.0), f("s_noise", 1.0), f("r", 0.5), device),
            outputs=out,
        ),
        NodeSpec(
            name="SamplerDPMPP_2M_SDE",
            category=cat,
            description="DPM-Solver++(2M) SDE (midpoint or heun) with its eta and noise scale.",
            execute=_dpmpp_2m_sde,
            inputs=(
                I("solver_type", "COMBO", choices=("midpoint", "heun"), default="midpoint"),
                f("eta", 1.0),
                f("s_noise", 1.0),
                device,
            ),
            outputs=out,
        ),
        NodeSpec(
            name="SamplerDPMPP_3M_SDE",
            category=cat,
            description="DPM-Solver++(3M) SDE with its eta and noise scale.",
            execute=_dpmpp_3m_sde,
            inputs=(f("eta", 1.0), f("s_noise", 1.0), device),
            outputs=out,
        ),
        NodeSpec(
            name="SamplerLMS",
            category=cat,
            description="Linear multistep of the given order.",
            execute=_lms,
            inputs=(I("order", "INT", default=4, min=1, max=100, extra={"advanced": True}),),
            outputs=out,
        ),
    ]
