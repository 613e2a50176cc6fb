"""``python -m narrator`` runs the CLI."""

from narrator.cli import main

raise SystemExit(main())
