"""latentworks: latent-diffusion image generation.

Layers (lower never imports higher): nn -> diffusion -> models -> checkpoints -> data -> training
-> evaluation -> pipelines -> graph (torch-free) -> nodes -> server -> cli.
"""

__version__ = "0.1.0"
