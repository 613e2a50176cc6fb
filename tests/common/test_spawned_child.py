"""A spawned child ends with its parent even while it is still importing (issue 14.1).

Seen under load: `narrator worker --workers 2` SIGKILLed right after start left a worker
child running for more than 15 s, because a spawned child imported its target's module
(pyarrow, PyAV, aiohttp, pydantic) before the parent-death guard ran.
:func:`narrator.common.lifecycle.run_as_child` sets the guard before importing the target.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.support.processes import REPO_ROOT, wait_until

PARENT = """
import multiprocessing, sys, time
from narrator.common.lifecycle import run_as_child
if __name__ == "__main__":
    ctx = multiprocessing.get_context("spawn")
    child = ctx.Process(
        target=run_as_child,
        args=(__import__("os").getpid(), "tests.support.slow_import_target:main"),
    )
    child.start()
    print(child.pid, flush=True)
    time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.timeout(120)
def test_a_child_killed_parent_ends_it_during_its_imports(tmp_path: Path) -> None:
    env = {**os.environ, "NARRATOR_TEST_DIR": str(tmp_path)}
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT], env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE,
        start_new_session=True,
    )  # fmt: skip
    try:
        assert parent.stdout is not None
        child_pid = int(parent.stdout.readline())
        wait_until((tmp_path / "importing").exists, 60, "the child never began its import")
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=30)
        wait_until(lambda: not _alive(child_pid), 15, "the child outlived its parent")
        assert not (tmp_path / "ran").exists()
    finally:
        (tmp_path / "release").write_text("")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(parent.pid, signal.SIGKILL)
        parent.wait(timeout=30)
        if parent.stdout is not None:
            parent.stdout.close()
