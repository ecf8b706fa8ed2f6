"""latentworks.checkpoints."""
