"""Model-sampling patch nodes with ComfyUI's names and inputs: ModelSamplingDiscrete, ModelSamplingSD3,
ModelSamplingAuraFlow, ModelSamplingFlux; and CFGNorm (ComfyUI's guidance renormalisation, used by its
Qwen-Image templates).

Each returns a new MODEL: ``dataclasses.replace`` of the loaded ``ModelFolder`` with another
``model_sampling`` (and prediction), sharing the networks. The input model is never changed, so other
branches of a workflow that use it sample as before. The patch drops the ``dynamic_shift`` of the model's
sampling spec (and records itself in ``meta["model_sampling_patch"]``, for people reading the metadata), so the
sampler nodes schedule with the patched sampling as it is (no FLUX resolution shift on top).

The flow patches change only the shift: the timestep ``multiplier`` is our network's input convention
(Z-Image's network takes ``t = sigma``, SD3/FLUX/Qwen-Image's ``t = 1000 sigma``), so a flow model keeps its
own. ComfyUI's multipliers (1000 for SD3, 1.0 for AuraFlow) describe ComfyUI's networks and are used only
when a non-flow model is switched to flow.

Not supported: ComfyUI's ``lcm``, ``img_to_img`` and ``img_to_img_flow`` samplings of ModelSamplingDiscrete
(their denoisers have no exact counterpart here; the node says so). RescaleCFG lives in
``nodes/model_advanced.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from latentworks.diffusion.denoisers import DiscreteSamplingSpec, FlowModelSampling, flux_shift_mu
from latentworks.diffusion.guidance import GuidanceNorm
from latentworks.graph.types import NodeSpec, OutputSpec, input_spec
from latentworks.nodes.image_ops import MAX_RESOLUTION
from latentworks.nodes.payloads import ModelPayload

DISCRETE_SAMPLINGS = ("eps", "v_prediction", "lcm", "x0", "img_to_img", "img_to_img_flow")
"""ComfyUI's ModelSamplingDiscrete choices, in its order."""

PREDICTION_OF = {"eps": "eps", "v_prediction": "v", "x0": "x0"}
"""The choices we express exactly: ComfyUI's name -> our prediction type (``diffusion.denoisers.DENOISERS``)."""

# FLUX's token counts for ModelSamplingFlux's linear mu (ComfyUI: 256 and 4096 tokens).
FLUX_BASE_SEQ_LEN, FLUX_MAX_SEQ_LEN = 256, 4096


def patched(
    model: ModelPayload, model_sampling: Any, prediction: str, patch: Mapping[str, Any]
) -> ModelPayload:
    """A new MODEL sharing ``model``'s networks with another model sampling and prediction type."""
    folder = model.folder
    meta = dict(folder.meta)
    denoiser = dict(meta.get("denoiser", {}))
    spec = {
        k: v
        for k, v in dict(denoiser.get("sampling") or {}).items()
        if k not in ("dynamic_shift", "shift_terminal")
    }
    meta["denoiser"] = {**denoiser, "prediction": prediction, "sampling": spec}
    meta["model_sampling_patch"] = dict(patch)
    return ModelPayload(replace(folder, meta=meta, model_sampling=model_sampling))


def _check_discrete(sampling: str) -> str | bool:
    if sampling in PREDICTION_OF:
        return True
    return (
        f"ModelSamplingDiscrete: sampling {sampling!r} is not supported by latentworks (its denoiser has no exact "
        f"counterpart here); choose one of: {', '.join(PREDICTION_OF)}"
    )


def _discrete(ctx: Any, model: ModelPayload, sampling: str, zsnr: bool) -> tuple[Any, ...]:
    ok = _check_discrete(sampling)
    if ok is not True:
        raise ValueError(ok)
    # The model's own betas when it is a discrete model (ComfyUI: the model config's), else SD's.
    spec = model.folder.meta.get("denoiser", {}).get("sampling", {})
    base = (
        DiscreteSamplingSpec.from_dict(spec)
        if isinstance(spec, Mapping) and spec.get("kind") == DiscreteSamplingSpec.kind
        else DiscreteSamplingSpec()
    )
    ms = replace(base, zero_terminal_snr=bool(zsnr)).model_sampling()
    node = {"node": "ModelSamplingDiscrete", "sampling": sampling, "zsnr": bool(zsnr)}
    return (patched(model, ms, PREDICTION_OF[sampling], node),)


def _multiplier(model: ModelPayload, comfy_multiplier: float) -> float:
    ms = model.folder.model_sampling
    return float(ms.multiplier) if isinstance(ms, FlowModelSampling) else comfy_multiplier


def _flow(model: ModelPayload, node: str, comfy_multiplier: float, **shift: float) -> ModelPayload:
    multiplier = _multiplier(model, comfy_multiplier)
    if "mu" in shift:
        ms = FlowModelSampling(multiplier=multiplier, mu=shift["mu"])
    else:
        if shift["shift"] <= 0:
            raise ValueError(f"{node}: shift must be greater than 0, got {shift['shift']}")
        ms = FlowModelSampling(shift=shift["shift"], multiplier=multiplier)
    return patched(model, ms, "flow", {"node": node, **shift, "multiplier": multiplier})


def _sd3(ctx: Any, model: ModelPayload, shift: float) -> tuple[Any, ...]:
    return (_flow(model, "ModelSamplingSD3", 1000.0, shift=float(shift)),)


def _aura_flow(ctx: Any, model: ModelPayload, shift: float, sampling: str = "flow") -> tuple[Any, ...]:
    if sampling != "flow":
        raise ValueError(
            f"ModelSamplingAuraFlow: sampling {sampling!r} is not supported by latentworks; use 'flow'"
        )
    return (_flow(model, "ModelSamplingAuraFlow", 1.0, shift=float(shift)),)


def _flux(
    ctx: Any, model: ModelPayload, max_shift: float, base_shift: float, width: int, height: int
) -> tuple[Any, ...]:
    # ComfyUI counts FLUX tokens as pixels / (8 * 8 * 2 * 2): 8x VAE, 2x2 patches.
    mu = flux_shift_mu(
        int(width) * int(height) / 256,  # type: ignore[arg-type]
        base_seq_len=FLUX_BASE_SEQ_LEN,
        max_seq_len=FLUX_MAX_SEQ_LEN,
        base_shift=float(base_shift),
        max_shift=float(max_shift),
    )
    return (_flow(model, "ModelSamplingFlux", 1000.0, mu=float(mu)),)


def _cfg_norm(ctx: Any, model: ModelPayload, strength: float) -> tuple[Any, ...]:
    """ComfyUI's CFGNorm: after CFG, x0 *= min(1, ||x0_cond|| / ||x0_cfg||) * strength, norms over the channels of
    each latent pixel (:class:`~latentworks.diffusion.guidance.GuidanceNorm`, ``space="x0"``)."""
    if not 0.0 <= float(strength) <= 100.0:
        raise ValueError(f"CFGNorm: strength must be in [0, 100], got {strength}")
    norm = GuidanceNorm(space="x0", clamp=True, strength=float(strength))
    return (ModelPayload(replace(model.folder, guidance_norm=norm)),)


def model_patch_nodes() -> list[NodeSpec]:
    I = input_spec  # noqa: E741, N806

    model_out = (OutputSpec(type="MODEL"),)
    shift_range = {"min": 0.0, "max": 100.0, "step": 0.01}
    advanced = {"advanced": True}
    return [
        NodeSpec(
            name="ModelSamplingDiscrete",
            category="model/patch",
            description="Sample a discrete-time model as eps, v or x0 prediction, optionally with zero "
            "terminal SNR (Lin et al. 2023). ComfyUI's lcm and img_to_img samplings are not supported.",
            execute=_discrete,
            inputs=(
                I("model", "MODEL"),
                I("sampling", "COMBO", choices=DISCRETE_SAMPLINGS, default="eps"),
                I("zsnr", "BOOLEAN", default=False, extra=advanced),
            ),
            outputs=model_out,
            validate_inputs=lambda sampling=None, **_: (
                True if sampling is None else _check_discrete(sampling)
            ),
        ),
        NodeSpec(
            name="ModelSamplingSD3",
            category="model/patch/stable diffusion",
            description="Sample as a rectified-flow model with SD3's static time shift "
            "sigma' = shift * s / (1 + (shift - 1) * s).",
            execute=_sd3,
            inputs=(I("model", "MODEL"), I("shift", "FLOAT", default=3.0, **shift_range)),
            outputs=model_out,
        ),
        NodeSpec(
            name="ModelSamplingAuraFlow",
            category="model/patch",
            description="Sample as a rectified-flow model with a static time shift (AuraFlow, Lumina 2, "
            "Z-Image, Qwen-Image); the network's timestep convention is kept.",
            execute=_aura_flow,
            inputs=(
                I("model", "MODEL"),
                I("shift", "FLOAT", default=1.73, **shift_range),
                I(
                    "sampling",
                    "COMBO",
                    choices=("flow", "img_to_img_velocity"),
                    default="flow",
                    optional=True,
                    extra=advanced,
                ),
            ),  # fmt: skip
            outputs=model_out,
        ),
        NodeSpec(
            name="ModelSamplingFlux",
            category="model/patch/flux",
            description="FLUX's exponential time shift for an image size: mu linear in the token count "
            "from (256 tokens, base_shift) to (4096 tokens, max_shift).",
            execute=_flux,
            inputs=(
                I("model", "MODEL"),
                I("max_shift", "FLOAT", default=1.15, **shift_range, extra=advanced),
                I("base_shift", "FLOAT", default=0.5, **shift_range, extra=advanced),
                I("width", "INT", default=1024, min=16, max=MAX_RESOLUTION, step=8),
                I("height", "INT", default=1024, min=16, max=MAX_RESOLUTION, step=8),
            ),
            outputs=model_out,
        ),
        NodeSpec(
            name="CFGNorm",
            category="advanced/guidance",
            description="After classifier-free guidance, scale each latent pixel's guided prediction down to "
            "the conditional prediction's norm (never up), times strength. (The Qwen-Image pipeline's own "
            "norm rescale differs: it acts on the velocity per 2x2 token, unclamped.)",
            execute=_cfg_norm,
            inputs=(I("model", "MODEL"), I("strength", "FLOAT", default=1.0, min=0.0, max=100.0, step=0.01)),
            outputs=(OutputSpec(type="MODEL", name="patched_model"),),
        ),
    ]
