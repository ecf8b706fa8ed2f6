"""latentworks.models."""
