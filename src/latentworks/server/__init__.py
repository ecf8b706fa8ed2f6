"""latentworks.server."""
