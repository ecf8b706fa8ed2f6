"""The custom-sampling and model-sampling nodes declare ComfyUI's schemas, so its workflows load unchanged.

The table below is written by hand from ComfyUI's source (comfy_extras/nodes_custom_sampler.py and
comfy_extras/nodes_model_advanced.py, read 2026-12-05): class name, category, inputs in order with
(type, default, min, max, step), outputs as (type, name).
"""

from __future__ import annotations

import pytest

from latentworks.graph.types import NodeSpec
from latentworks.nodes import default_registry
from latentworks.nodes.custom_sampling import custom_sampling_nodes
from latentworks.nodes.model_patches import model_patch_nodes

SEED_MAX = 0xFFFFFFFFFFFFFFFF
MAX_RES = 16384
SIGMA_MAX, SIGMA_MIN = 14.614642, 0.0291675

# name: (category, [(input, type, default, min, max, step)], [(output type, output name)])
COMFY: dict[str, tuple[str, list[tuple], list[tuple]]] = {
    "KSamplerSelect": ("sampling/samplers", [("sampler_name", "COMBO", "euler", None, None, None)], [("SAMPLER", None)]),
    "BasicScheduler": (
        "sampling/schedulers",
        [("model", "MODEL", None, None, None, None), ("scheduler", "COMBO", "normal", None, None, None),
         ("steps", "INT", 20, 1, 10000, None), ("denoise", "FLOAT", 1.0, 0.0, 1.0, 0.01)],
        [("SIGMAS", None)],
    ),
    "KarrasScheduler": (
        "sampling/schedulers",
        [("steps", "INT", 20, 1, 10000, None), ("sigma_max", "FLOAT", SIGMA_MAX, 0.0, 5000.0, 0.01),
         ("sigma_min", "FLOAT", SIGMA_MIN, 0.0, 5000.0, 0.01), ("rho", "FLOAT", 7.0, 0.0, 100.0, 0.01)],
        [("SIGMAS", None)],
    ),
    "ExponentialScheduler": (
        "sampling/schedulers",
        [("steps", "INT", 20, 1, 10000, None), ("sigma_max", "FLOAT", SIGMA_MAX, 0.0, 5000.0, 0.01),
         ("sigma_min", "FLOAT", SIGMA_MIN, 0.0, 5000.0, 0.01)],
        [("SIGMAS", None)],
    ),
    "SDTurboScheduler": (
        "sampling/schedulers",
        [("model", "MODEL", None, None, None, None), ("steps", "INT", 1, 1, 10, None),
         ("denoise", "FLOAT", 1.0, 0, 1.0, 0.01)],
        [("SIGMAS", None)],
    ),
    "BetaSamplingScheduler": (
        "sampling/schedulers",
        [("model", "MODEL", None, None, None, None), ("steps", "INT", 20, 1, 10000, None),
         ("alpha", "FLOAT", 0.6, 0.0, 50.0, 0.01), ("beta", "FLOAT", 0.6, 0.0, 50.0, 0.01)],
        [("SIGMAS", None)],
    ),
    "SplitSigmas": (
        "sampling/sigmas",
        [("sigmas", "SIGMAS", None, None, None, None), ("step", "INT", 0, 0, 10000, None)],
        [("SIGMAS", "high_sigmas"), ("SIGMAS", "low_sigmas")],
    ),
    "SplitSigmasDenoise": (
        "sampling/sigmas",
        [("sigmas", "SIGMAS", None, None, None, None), ("denoise", "FLOAT", 1.0, 0.0, 1.0, 0.01)],
        [("SIGMAS", "high_sigmas"), ("SIGMAS", "low_sigmas")],
    ),
    "FlipSigmas": ("sampling/sigmas", [("sigmas", "SIGMAS", None, None, None, None)], [("SIGMAS", None)]),
    "RandomNoise": ("sampling/noise", [("noise_seed", "INT", 0, 0, SEED_MAX, None)], [("NOISE", None)]),
    "DisableNoise": ("sampling/noise", [], [("NOISE", None)]),
    "BasicGuider": (
        "sampling/guiders",
        [("model", "MODEL", None, None, None, None), ("conditioning", "CONDITIONING", None, None, None, None)],
        [("GUIDER", None)],
    ),
    "CFGGuider": (
        "sampling/guiders",
        [("model", "MODEL", None, None, None, None), ("positive", "CONDITIONING", None, None, None, None),
         ("negative", "CONDITIONING", None, None, None, None), ("cfg", "FLOAT", 8.0, 0.0, 100.0, 0.1)],
        [("GUIDER", None)],
    ),
    "SamplerCustom": (
        "sampling/custom_sampling",
        [("model", "MODEL", None, None, None, None), ("add_noise", "BOOLEAN", True, None, None, None),
         ("noise_seed", "INT", 0, 0, SEED_MAX, None), ("cfg", "FLOAT", 8.0, 0.0, 100.0, 0.1),
         ("positive", "CONDITIONING", None, None, None, None), ("negative", "CONDITIONING", None, None, None, None),
         ("sampler", "SAMPLER", None, None, None, None), ("sigmas", "SIGMAS", None, None, None, None),
         ("latent_image", "LATENT", None, None, None, None)],
        [("LATENT", "output"), ("LATENT", "denoised_output")],
    ),
    "SamplerCustomAdvanced": (
        "sampling/custom_sampling",
        [("noise", "NOISE", None, None, None, None), ("guider", "GUIDER", None, None, None, None),
         ("sampler", "SAMPLER", None, None, None, None), ("sigmas", "SIGMAS", None, None, None, None),
         ("latent_image", "LATENT", None, None, None, None)],
        [("LATENT", "output"), ("LATENT", "denoised_output")],
    ),
    "ModelSamplingDiscrete": (
        "model/patch",
        [("model", "MODEL", None, None, None, None), ("sampling", "COMBO", "eps", None, None, None),
         ("zsnr", "BOOLEAN", False, None, None, None)],
        [("MODEL", None)],
    ),
    "ModelSamplingSD3": (
        "model/patch/stable diffusion",
        [("model", "MODEL", None, None, None, None), ("shift", "FLOAT", 3.0, 0.0, 100.0, 0.01)],
        [("MODEL", None)],
    ),
    "ModelSamplingAuraFlow": (
        "model/patch",
        [("model", "MODEL", None, None, None, None), ("shift", "FLOAT", 1.73, 0.0, 100.0, 0.01),
         ("sampling", "COMBO", "flow", None, None, None)],
        [("MODEL", None)],
    ),
    "ModelSamplingFlux": (
        "model/patch/flux",
        [("model", "MODEL", None, None, None, None), ("max_shift", "FLOAT", 1.15, 0.0, 100.0, 0.01),
         ("base_shift", "FLOAT", 0.5, 0.0, 100.0, 0.01), ("width", "INT", 1024, 16, MAX_RES, 8),
         ("height", "INT", 1024, 16, MAX_RES, 8)],
        [("MODEL", None)],
    ),
}  # fmt: skip

# ComfyUI's KSAMPLER_NAMES + ["ddim", "uni_pc", "uni_pc_bh2"] and SCHEDULER_NAMES (comfy/samplers.py; the
# sampler list is the part we have of it: res_multistep follows deis there too).
COMFY_SAMPLERS = {
    "euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "heun", "heunpp2", "dpm_2",
    "dpm_2_ancestral", "lms", "dpm_fast", "dpm_adaptive", "dpmpp_2s_ancestral", "dpmpp_2s_ancestral_cfg_pp",
    "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_cfg_pp", "dpmpp_2m_sde", "dpmpp_2m_sde_gpu",
    "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm", "lcm", "ipndm", "ipndm_v", "deis", "res_multistep", "ddim",
    "uni_pc", "uni_pc_bh2",
}  # fmt: skip
COMFY_SCHEDULERS = [
    "simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal", "linear_quadratic",
    "kl_optimal",
]  # fmt: skip

SPECS: dict[str, NodeSpec] = {n.name: n for n in [*custom_sampling_nodes(), *model_patch_nodes()]}


@pytest.mark.parametrize("name", sorted(COMFY))
def test_schema_matches_comfyui(name: str) -> None:
    category, inputs, outputs = COMFY[name]
    spec = SPECS[name]
    assert spec.category == category
    got = [(i.name, i.type, i.default, i.min, i.max, i.step) for i in spec.inputs]
    assert got == inputs
    assert [(o.type, o.name) for o in spec.outputs] == outputs


def test_choices_seeds_and_optional_inputs() -> None:
    def inp(node: str, name: str):  # noqa: ANN202
        return next(i for i in SPECS[node].inputs if i.name == name)

    assert set(inp("KSamplerSelect", "sampler_name").choices) <= COMFY_SAMPLERS  # type: ignore[arg-type]
    assert {"euler", "dpmpp_2m", "euler_ancestral"} <= set(inp("KSamplerSelect", "sampler_name").choices)  # type: ignore[arg-type]
    assert set(inp("BasicScheduler", "scheduler").choices) == set(COMFY_SCHEDULERS)  # type: ignore[arg-type]
    assert list(inp("ModelSamplingDiscrete", "sampling").choices) == [  # type: ignore[arg-type]
        "eps", "v_prediction", "lcm", "x0", "img_to_img", "img_to_img_flow",
    ]  # fmt: skip
    assert list(inp("ModelSamplingAuraFlow", "sampling").choices) == ["flow", "img_to_img_velocity"]  # type: ignore[arg-type]
    assert inp("ModelSamplingAuraFlow", "sampling").optional
    for node in ("RandomNoise", "SamplerCustom"):
        assert inp(node, "noise_seed").extra.get("control_after_generate") is True
    assert not any(i.optional for n, s in SPECS.items() if n != "ModelSamplingAuraFlow" for i in s.inputs)
    assert SPECS["BasicGuider"].display_name == "Basic Guider"
    assert SPECS["CFGGuider"].display_name == "CFG Guider"


def test_object_info_serves_the_schemas() -> None:
    info = default_registry().object_info()
    assert set(COMFY) <= set(info)
    adv = info["SamplerCustomAdvanced"]
    assert list(adv["input"]["required"]) == ["noise", "guider", "sampler", "sigmas", "latent_image"]
    assert adv["output"] == ["LATENT", "LATENT"] and adv["output_name"] == ["output", "denoised_output"]
    seed = info["RandomNoise"]["input"]["required"]["noise_seed"]
    assert seed[0] == "INT" and seed[1]["control_after_generate"] is True and seed[1]["max"] == SEED_MAX
    assert "sampling" in info["ModelSamplingAuraFlow"]["input"]["optional"]
