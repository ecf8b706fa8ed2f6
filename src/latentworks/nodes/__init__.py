"""latentworks.nodes."""
