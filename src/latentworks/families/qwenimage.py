"""Qwen-Image (Qwen team 2025): a 60-block MM-DiT on the 16-channel latents of its causal 3D VAE, prompted by
Qwen2.5-VL-7B hidden states, rectified flow with a resolution-dependent (dynamic) shift.

Not yet in :data:`latentworks.families.REGISTRY`: its text recipe (Qwen2.5-VL with the release's chat template
and the dropped system-prompt tokens) and its VAE are still to be written, and every registered family must be
complete. The network, key maps and detection are in place (``tests/families/test_qwenimage_family.py``
registers the family to show detection end to end).

Numbers and their sources:

- sampling: diffusers' ``scheduler/scheduler_config.json`` of Qwen/Qwen-Image: exponential time shift with
  ``mu`` linear in the image token count from (256 tokens, 0.5) to (8192 tokens, 0.9), ``shift`` 1,
  1000 train timesteps. Its ``shift_terminal: 0.02`` (stretch the schedule so the last non-zero sigma is 0.02)
  has no field in :class:`FlowSamplingSpec` yet and is not applied.
- generation defaults: the release's example (Qwen-Image model card / diffusers docs): 1328 x 1328 for 1:1,
  50 steps, true classifier-free guidance 4.0 with a negative prompt (``" "`` when none).
- latent format: the VAE normalises each channel with its own mean and std (``AutoencoderKLQwenImage``'s
  ``latents_mean`` / ``latents_std``, below); :class:`LatentFormat` has one scalar scale and shift, so
  ``latent_format`` is None until it takes per-channel factors.
- ComfyUI: CLIPLoader ``type="qwen_image"``, ``ModelSamplingAuraFlow`` for the shift.
"""

from __future__ import annotations

from latentworks.diffusion.denoisers import FlowDynamicShift, FlowSamplingSpec
from latentworks.families.architectures import QWENIMAGE
from latentworks.families.base import ComfyNames, DiffusersNames, Generation, ModelFamily
from latentworks.models.qwenimage import QwenImageConfig

# diffusers' AutoencoderKLQwenImage defaults (the released VAE): model latent = (z - mean) / std per channel.
LATENTS_MEAN = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)  # fmt: skip
LATENTS_STD = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)  # fmt: skip
# scheduler_config.json of Qwen/Qwen-Image (use_dynamic_shifting, time_shift_type "exponential")
DYNAMIC_SHIFT = FlowDynamicShift(base_seq_len=256, max_seq_len=8192, base_shift=0.5, max_shift=0.9)
SHIFT_TERMINAL = 0.02  # not applied yet (see the module docstring)


def _is_qwenimage(config: object) -> bool:
    """Every released Qwen-Image text-to-image transformer: 16 latent channels, Qwen2.5-VL-7B's 3584-wide
    states. (Edit models share these shapes; they differ in conditioning, which is not implemented.)"""
    return (
        isinstance(config, QwenImageConfig)
        and config.in_channels == 16
        and config.output_channels == 16
        and config.context_dim == 3584
    )


QWEN_IMAGE = ModelFamily(
    name="qwen-image",
    title="Qwen-Image",
    aliases=("qwenimage", "qwen_image"),
    architecture=QWENIMAGE,
    matches=_is_qwenimage,
    latent_format=None,  # per-channel mean/std (LATENTS_MEAN / LATENTS_STD); LatentFormat is scalar only
    prediction="flow",
    sampling=FlowSamplingSpec(shift=1.0, multiplier=1000.0, dynamic_shift=DYNAMIC_SHIFT),
    generation=Generation(
        resolution=(1328, 1328),
        defaults={"steps": 50, "guidance": 4.0, "sampler": "euler", "scheduler": "simple"},
    ),
    text=None,  # Qwen2.5-VL-7B recipe: not written yet
    single_file_vae_prefix="vae.",
    diffusers=DiffusersNames(
        pipeline_classes=("QwenImagePipeline",),
        text_slots={"text_encoder": "qwen25vl_7b"},
    ),
    comfy=ComfyNames(
        clip_type="qwen_image", model_sampling_node="ModelSamplingAuraFlow", gguf_architecture="qwen_image"
    ),
)
