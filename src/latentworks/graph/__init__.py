"""latentworks.graph."""
