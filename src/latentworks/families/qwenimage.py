"""Qwen-Image (Qwen team 2025): a 60-block MM-DiT on the 16-channel latents of its causal 3D VAE, prompted by
Qwen2.5-VL-7B hidden states, rectified flow with a resolution-dependent (dynamic) shift.

The parts: the network (:mod:`latentworks.models.qwenimage`), the VAE (:mod:`latentworks.models.qwenimage_vae`;
ComfyUI's ``qwen_image_vae.safetensors`` or a diffusers folder's ``vae/``), the text encoder (Qwen2.5-VL-7B's
language model, :func:`latentworks.models.text.qwen.build_qwen25`; ComfyUI's ``qwen_2.5_vl_7b*.safetensors``).

Numbers and their sources:

- sampling: diffusers' ``scheduler/scheduler_config.json`` of Qwen/Qwen-Image: exponential time shift with
  ``mu`` linear in the image token count from (256 tokens, 0.5) to (8192 tokens, 0.9), ``shift`` 1,
  1000 train timesteps, and ``shift_terminal: 0.02``: each schedule is stretched so that its last non-zero
  sigma is 0.02 (applied by the pipeline, as diffusers does; ComfyUI does not).
- generation defaults: the release's example (Qwen-Image model card / diffusers docs): 1328 x 1328 for 1:1,
  50 steps, true classifier-free guidance 4.0 with a negative prompt (``" "`` when none).
- CFG: diffusers' ``QwenImagePipeline`` renormalises the guided velocity to the conditional one's norm per
  packed 2x2 token (:data:`~latentworks.diffusion.guidance.QWEN_IMAGE_TRUE_CFG`); the pipeline does the same.
  Workflows get plain CFG unless a CFGNorm node is used, as in ComfyUI.
- prompt: diffusers' ``prompt_template_encode`` (a system turn asking to describe the image, then the user's
  prompt) read by Qwen2.5-VL-7B; the last layer's states (after the final norm) are kept, minus the template's
  first 34 tokens (``prompt_template_encode_start_idx``); at most 1024 prompt tokens (``tokenizer_max_length``).
- latent format: the VAE normalises each channel with its own mean and std (``AutoencoderKLQwenImage``'s
  ``latents_mean`` / ``latents_std``, below); the preview factors are ComfyUI's ``Wan21`` latent format's
  (the Qwen-Image VAE is a fine-tuned Wan 2.1 VAE).
- ComfyUI: CLIPLoader ``type="qwen_image"``, ``ModelSamplingAuraFlow`` for the shift.
"""

from __future__ import annotations

from latentworks.diffusion.denoisers import FlowDynamicShift, FlowSamplingSpec
from latentworks.diffusion.guidance import QWEN_IMAGE_TRUE_CFG
from latentworks.diffusion.latent_formats import LatentFormat
from latentworks.families.architectures import QWENIMAGE
from latentworks.families.base import ComfyNames, DiffusersNames, Generation, ModelFamily
from latentworks.models.qwenimage import QwenImageConfig
from latentworks.models.qwenimage_vae import RELEASE_LATENTS_MEAN, RELEASE_LATENTS_STD
from latentworks.models.text import layouts
from latentworks.models.text.families import QwenRecipe

# diffusers' AutoencoderKLQwenImage defaults (the released VAE): model latent = (z - mean) / std per channel.
LATENTS_MEAN = RELEASE_LATENTS_MEAN
LATENTS_STD = RELEASE_LATENTS_STD
# ComfyUI's Wan21 latent format: RGB preview of normalised latents
RGB_FACTORS = (
    (-0.1299, -0.1692, 0.2932), (0.0671, 0.0406, 0.0442), (0.3568, 0.2548, 0.1747), (0.0372, 0.2344, 0.1420),
    (0.0313, 0.0189, -0.0328), (0.0296, -0.0956, -0.0665), (-0.3477, -0.4059, -0.2925), (0.0166, 0.1902, 0.1975),
    (-0.0412, 0.0267, -0.1364), (-0.1293, 0.0740, 0.1636), (0.0680, 0.3019, 0.1128), (0.0032, 0.0581, 0.0639),
    (-0.1251, 0.0927, 0.1699), (0.0060, -0.0633, 0.0005), (0.3477, 0.2275, 0.2950), (0.1984, 0.0913, 0.1861),
)  # fmt: skip
LATENT_FORMAT = LatentFormat(
    channels=16,
    scale_factor=1.0,
    channel_mean=LATENTS_MEAN,
    channel_std=LATENTS_STD,
    rgb_factors=RGB_FACTORS,
    rgb_bias=(-0.1835, -0.0868, -0.3360),
)
# diffusers' QwenImagePipeline.prompt_template_encode; its first 34 tokens (the system turn and
# "<|im_start|>user\n") are dropped after encoding
PROMPT_TEMPLATE = (
    "<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, text, spatial "
    "relationships of the objects and background:<|im_end|>\n<|im_start|>user\n{prompt}<|im_end|>\n"
    "<|im_start|>assistant\n"
)
DROP_TOKENS = 34  # prompt_template_encode_start_idx
# diffusers' QwenImageEditPipeline.prompt_template_encode (the input image's vision tokens replace
# <|image_pad|>); its first 64 tokens (system turn, "<|im_start|>user\n<|vision_start|>" ...) are dropped
EDIT_TEMPLATE = (
    "<|im_start|>system\nDescribe the key features of the input image (color, shape, size, texture, objects, "
    "background), then explain how the user's text instruction should alter or modify the image. Generate a new "
    "image that meets the user's requirements while maintaining consistency with the original input where "
    "appropriate.<|im_end|>\n<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>{prompt}<|im_end|>\n"
    "<|im_start|>assistant\n"
)
EDIT_DROP_TOKENS = 64
# diffusers' QwenImageEditPlusPipeline (Qwen-Image-Edit-2509 and -2511; ComfyUI's TextEncodeQwenImageEditPlus):
# the same system turn, the images announced before the prompt as "Picture 1: <vision tokens>Picture 2: ...";
# the same 64 leading tokens dropped. The vision tower reads each image at 384 x 384 area (CONDITION_IMAGE_SIZE),
# the VAE at 1024 x 1024 (VAE_IMAGE_SIZE).
EDIT_PLUS_TEMPLATE = (
    "<|im_start|>system\nDescribe the key features of the input image (color, shape, size, texture, objects, "
    "background), then explain how the user's text instruction should alter or modify the image. Generate a new "
    "image that meets the user's requirements while maintaining consistency with the original input where "
    "appropriate.<|im_end|>\n<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"
)
EDIT_PLUS_PICTURE = "Picture {index}: <|vision_start|><|image_pad|><|vision_end|>"
EDIT_PLUS_VISION_AREA = 384 * 384
MAX_PROMPT_TOKENS = 1024  # tokenizer_max_length
# scheduler_config.json of Qwen/Qwen-Image (use_dynamic_shifting, time_shift_type "exponential")
DYNAMIC_SHIFT = FlowDynamicShift(base_seq_len=256, max_seq_len=8192, base_shift=0.5, max_shift=0.9)
SHIFT_TERMINAL = 0.02


def _is_qwenimage(config: object) -> bool:
    """Every released Qwen-Image text-to-image transformer: 16 latent channels, reading states as wide as a
    known Qwen-Image text encoder's (Qwen2.5-VL-7B: 3584; :data:`~latentworks.models.text.layouts.
    QWEN25_KIND_BY_WIDTH`, which tests extend with tiny widths). (Edit models share these shapes; they differ in
    conditioning, which is not implemented.)"""
    return (
        isinstance(config, QwenImageConfig)
        and config.in_channels == 16
        and config.output_channels == 16
        and config.context_dim in layouts.QWEN25_KIND_BY_WIDTH
    )


QWEN_IMAGE = ModelFamily(
    name="qwen-image",
    title="Qwen-Image",
    aliases=("qwenimage", "qwen_image"),
    architecture=QWENIMAGE,
    matches=_is_qwenimage,
    latent_format=LATENT_FORMAT,
    prediction="flow",
    sampling=FlowSamplingSpec(
        shift=1.0, multiplier=1000.0, dynamic_shift=DYNAMIC_SHIFT, shift_terminal=SHIFT_TERMINAL
    ),
    generation=Generation(
        resolution=(1328, 1328),
        defaults={"steps": 50, "guidance": 4.0, "sampler": "euler", "scheduler": "simple"},
        guidance_norm=QWEN_IMAGE_TRUE_CFG,
        edit_text=QwenRecipe(
            name="qwen-image-edit",
            component="qwen25vl_7b",
            template=EDIT_TEMPLATE,
            layer=-1,
            max_length=MAX_PROMPT_TOKENS + EDIT_DROP_TOKENS,
            drop_tokens=EDIT_DROP_TOKENS,
        ),
        edit_plus_text=QwenRecipe(
            name="qwen-image-edit-plus",
            component="qwen25vl_7b",
            template=EDIT_PLUS_TEMPLATE,
            layer=-1,
            max_length=MAX_PROMPT_TOKENS + EDIT_DROP_TOKENS,
            drop_tokens=EDIT_DROP_TOKENS,
            image_prompt=EDIT_PLUS_PICTURE,
        ),
        edit_plus_vision_area=EDIT_PLUS_VISION_AREA,
    ),
    text=QwenRecipe(
        name="qwen-image",
        component="qwen25vl_7b",
        template=PROMPT_TEMPLATE,
        layer=-1,
        max_length=MAX_PROMPT_TOKENS + DROP_TOKENS,
        drop_tokens=DROP_TOKENS,
    ),
    # ComfyUI's all-in-one Qwen-Image checkpoints (supported_models.QwenImage: vae. and text_encoders. prefixes,
    # the text model under qwen25_7b.transformer.)
    single_file_text={"qwen25vl_7b": ("text_encoders.qwen25_7b.transformer.", "hf")},
    single_file_vae_prefix="vae.",
    diffusers=DiffusersNames(
        pipeline_classes=("QwenImagePipeline",),
        text_slots={"text_encoder": "qwen25vl_7b"},
    ),
    comfy=ComfyNames(
        clip_type="qwen_image",
        model_sampling_node="ModelSamplingAuraFlow",
        vae_file="qwen_image_vae.safetensors",
        gguf_architecture="qwen_image",
    ),
)
