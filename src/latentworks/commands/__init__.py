"""Subcommands of the latentworks CLI; see latentworks.cli."""
