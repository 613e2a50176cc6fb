"""The role processes ``narrator annotate`` starts: spawned to die with it, stopped together.

Each child is ``python -m narrator worker|writer`` in its own session (a terminal's Ctrl-C
reaches only annotate, which then stops the children in order), with its output appended
to a log file, and ``NARRATOR_PARENT_PID`` set so that it ends when annotate ends, however
annotate ends (see narrator.common.lifecycle).

:func:`stop_children` sends SIGTERM to every child's process group at once, waits for all of
them together up to a grace period, then SIGKILLs what is left: stopping N children costs
one grace period, not N.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from narrator.common.lifecycle import PARENT_PID_ENV

STOP_GRACE_S = 5.0


TAIL_CHARS = 1500


@dataclass
class RoleChild:
    name: str  # "writer", "worker"
    proc: subprocess.Popen[bytes]
    log_path: Path

    def exit_message(self) -> str:
        """Why the run cannot go on: the child's exit code and the end of its log."""
        try:
            tail = self.log_path.read_text(errors="replace")[-TAIL_CHARS:].strip()
        except OSError:
            tail = ""
        last = tail.splitlines()[-1] if tail else "(no output)"
        return (
            f"the {self.name} process exited with code {self.proc.returncode}: {last} "
            f"(its whole log: {self.log_path})"
        )


def spawn_role(name: str, args: list[str], env: dict[str, str], log_path: Path) -> RoleChild:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    child_env = {**env, PARENT_PID_ENV: str(os.getpid())}
    with log_path.open("ab") as log_file:
        proc = subprocess.Popen(  # fixed argv, no shell
            [sys.executable, "-m", "narrator", *args],
            env=child_env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return RoleChild(name, proc, log_path)


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def stop_children(
    children: Sequence[RoleChild],
    grace_s: float = STOP_GRACE_S,
    grace_by_name: Mapping[str, float] | None = None,
) -> None:
    """SIGTERM all at once, wait for each up to its grace (``grace_by_name`` overrides
    ``grace_s`` per child name; the waits overlap), then SIGKILL what is left."""
    running = [c for c in children if c.proc.poll() is None]
    for child in running:
        _signal_group(child.proc, signal.SIGTERM)
    started = time.monotonic()
    for child in running:
        grace = (grace_by_name or {}).get(child.name, grace_s)
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.proc.wait(timeout=max(0.0, started + grace - time.monotonic()))
    for child in running:
        if child.proc.poll() is None:
            _signal_group(child.proc, signal.SIGKILL)  # the leader and its pool processes
            child.proc.wait()
