"""latentworks.evaluation."""
