"""Pipelines: compose text encoder, guided denoiser, sampler and VAE."""

from latentworks.pipelines.text_to_image import Pipeline, PipelineResult, PipelineStep

__all__ = ["Pipeline", "PipelineResult", "PipelineStep"]
