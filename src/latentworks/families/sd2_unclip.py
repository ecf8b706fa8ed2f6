"""Stable Diffusion 2.1 unCLIP: SD 2.x's U-Net and OpenCLIP-H text encoder, plus a class embedding that reads a
noise-augmented CLIP image embedding (:mod:`latentworks.models.unclip`), for image variations.

Two releases, told apart by the class embedding's input width (``label_emb.0.0.weight``, diffusers'
``projection_class_embeddings_input_dim``): 2 x 1024 for the OpenCLIP ViT-H image encoder (``unclip-h``) and
2 x 768 for OpenAI's ViT-L (``unclip-l``). Both are 768 px v-prediction models. Their single files also hold the
image encoder (``embedder.model.visual.*``, open_clip layout) and the embedding statistics
(``noise_augmentor.data_mean`` / ``data_std``), which unCLIPCheckpointLoader reads.
"""

from __future__ import annotations

from dataclasses import replace

from latentworks.families.base import DiffusersNames, Generation
from latentworks.families.sd1 import SD_DEFAULTS
from latentworks.families.sd2 import SD2
from latentworks.models.unet import UNetConfig

# where the single file keeps the image encoder and the embedding statistics
EMBEDDER_PREFIX = "embedder.model.visual."
NOISE_AUGMENTOR_PREFIX = "noise_augmentor."


def _class_input(width: int):  # noqa: ANN202 - a UNetConfig predicate
    return lambda c: (
        isinstance(c, UNetConfig)
        and c.context_dim == 1024
        and c.has_added_conditioning
        and c.num_time_ids == 0
        and c.pooled_dim == width
    )


SD2_UNCLIP_H = replace(
    SD2,
    name="sd2-unclip-h",
    title="Stable Diffusion 2.1 unCLIP (OpenCLIP ViT-H image embeddings, 768 px, v-prediction)",
    aliases=("sd21-unclip-h", "unclip-h"),
    matches=_class_input(2048),
    inspect=None,
    by_prediction={},
    prediction="v",
    generation=Generation(resolution=(768, 768), defaults=SD_DEFAULTS, class_input_dim=2048),
    single_file_markers={},
    diffusers=DiffusersNames(
        pipeline_classes=("StableUnCLIPImg2ImgPipeline",),
        text_slots={"text_encoder": "clip_h"},
        sample_size=96,
    ),
)
SD2_UNCLIP_L = replace(
    SD2_UNCLIP_H,
    name="sd2-unclip-l",
    title="Stable Diffusion 2.1 unCLIP (OpenAI ViT-L image embeddings, 768 px, v-prediction)",
    aliases=("sd21-unclip-l", "unclip-l"),
    matches=_class_input(1536),
    generation=Generation(resolution=(768, 768), defaults=SD_DEFAULTS, class_input_dim=1536),
)
