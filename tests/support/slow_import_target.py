"""A module whose import takes as long as the test wants (tests/common/test_spawned_child.py).

At import it writes ``$NARRATOR_TEST_DIR/importing`` and then blocks until
``$NARRATOR_TEST_DIR/release`` exists (at most 60 s): a stand-in for a child whose heavy
imports take seconds on a busy machine.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

_DIR = Path(os.environ["NARRATOR_TEST_DIR"])
(_DIR / "importing").write_text(str(os.getpid()))
_deadline = time.monotonic() + 60
while not (_DIR / "release").exists() and time.monotonic() < _deadline:
    time.sleep(0.02)


def main() -> None:
    (_DIR / "ran").write_text(str(os.getpid()))
