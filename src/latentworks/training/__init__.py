"""latentworks.training."""
