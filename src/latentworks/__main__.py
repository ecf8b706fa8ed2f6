"""``python -m latentworks ...`` runs the ``latentworks`` command."""

from latentworks.cli import main

raise SystemExit(main())
