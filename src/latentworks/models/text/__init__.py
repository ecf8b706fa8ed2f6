"""latentworks.models.text."""
