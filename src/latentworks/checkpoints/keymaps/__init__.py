"""latentworks.checkpoints.keymaps."""
