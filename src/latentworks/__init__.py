"""latentworks: latent-diffusion image generation.

Layers (lower never imports higher; see docs/design.md and tests/test_layers.py): graph, nn -> diffusion
-> models -> checkpoints, data -> families -> pipelines -> training, evaluation -> nodes -> server ->
commands, cli.
"""

from latentworks._version import __version__

__all__ = ["__version__"]
