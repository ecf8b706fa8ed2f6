"""latentworks.data."""
