"""Thin node adapters over the library, with ComfyUI's class and input names.

``default_registry(models_dir, input_dir)`` returns a fresh ``NodeRegistry`` holding every node
latentworks ships; nothing is registered globally.
"""

from __future__ import annotations

from pathlib import Path

from latentworks.graph.registry import NodeRegistry


def default_registry(
    models_dir: str | Path | None = None, input_dir: str | Path | None = None
) -> NodeRegistry:
    from latentworks.nodes.clip_vision import clip_vision_nodes
    from latentworks.nodes.conditioning_ops import conditioning_ops_nodes
    from latentworks.nodes.controlnet import controlnet_nodes

    # custom sampling and model-sampling patches (issue 23)
    from latentworks.nodes.custom_sampling import custom_sampling_nodes
    from latentworks.nodes.edit_plus import edit_plus_nodes
    from latentworks.nodes.image import image_nodes
    from latentworks.nodes.image_ops import image_ops_nodes
    from latentworks.nodes.inpaint import inpaint_nodes
    from latentworks.nodes.latent_ops import latent_ops_nodes
    from latentworks.nodes.loaders import split_loader_nodes
    from latentworks.nodes.model_advanced import model_advanced_nodes
    from latentworks.nodes.model_patches import model_patch_nodes
    from latentworks.nodes.models import loader_nodes
    from latentworks.nodes.primitives import primitive_nodes
    from latentworks.nodes.qwen_edit import qwen_edit_nodes
    from latentworks.nodes.sampler_options import sampler_option_nodes
    from latentworks.nodes.sampling import sampling_nodes
    from latentworks.nodes.text_encode import text_encode_nodes
    from latentworks.nodes.upscale import upscale_nodes
    from latentworks.nodes.utility import utility_nodes
    from latentworks.nodes.vae_tiled import vae_tiled_nodes

    md = None if models_dir is None else Path(models_dir)
    idir = None if input_dir is None else Path(input_dir)
    return NodeRegistry(
        [
            *loader_nodes(md),
            *sampling_nodes(),
            *image_nodes(idir),
            *primitive_nodes(),
            *image_ops_nodes(idir),
            *latent_ops_nodes(),
            *conditioning_ops_nodes(),
            # custom sampling and model-sampling patches (issue 23)
            *custom_sampling_nodes(),
            *model_patch_nodes(),
            *inpaint_nodes(),  # InpaintModelConditioning, DifferentialDiffusion, GrowMask, ThresholdMask
            *upscale_nodes(md),  # UpscaleModelLoader, ImageUpscaleWithModel (spandrel)
            *split_loader_nodes(md),  # UNETLoader, CLIPLoader, ..., VAELoader (nodes/loaders.py)
            *clip_vision_nodes(md),  # CLIPVisionLoader, CLIPVisionEncode, unCLIP (nodes/clip_vision.py)
            *utility_nodes(),  # SaveImageAdvanced, ImageCompare, ResolutionSelector (template coverage)
            *text_encode_nodes(),  # CLIPTextEncodeSDXL, ...Refiner, ...Flux, ...SD3
            *model_advanced_nodes(),  # RescaleCFG, ModelMergeSimple
            *vae_tiled_nodes(),  # VAEDecodeTiled, VAEEncodeTiled
            *sampler_option_nodes(),  # SamplerEulerAncestral, SamplerDPMPP_*, SamplerLMS
            *controlnet_nodes(md),  # ControlNetLoader, ControlNetApplyAdvanced, ControlNetApply, Canny
            *qwen_edit_nodes(),  # TextEncodeQwenImageEdit, ReferenceLatent (issue 22)
            *edit_plus_nodes(),  # TextEncodeQwenImageEditPlus, FluxKontextImageScale, ...MultiReferenceLatentMethod
        ]
    )


__all__ = ["default_registry"]
