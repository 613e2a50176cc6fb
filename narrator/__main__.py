"""``python -m narrator`` runs the CLI (as the ``narrator`` console script does)."""

from narrator.cli.main import run

run()
