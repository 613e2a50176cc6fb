"""``python -m narrator`` runs the CLI."""

from narrator.cli.main import main

raise SystemExit(main())
