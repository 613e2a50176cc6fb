"""Child processes of the tests: a narrator role in its own process group, and polling.

:class:`RoleProcess` runs ``python -m narrator ARGS`` (or ``python -c CODE``) with its output
in a log file and stops it on exit; :func:`wait_until` (and :func:`wait_until_async`, for
a test's event loop) polls a predicate against a deadline (tests never wait on a bare sleep).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType

REPO_ROOT = Path(__file__).resolve().parents[2]


def wait_until(
    predicate: Callable[[], object], timeout_s: float, what: str, interval_s: float = 0.05
) -> None:
    """Poll ``predicate`` until it is truthy; fail the test with ``what`` after the timeout."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} (after {timeout_s:.0f} s)")
        time.sleep(interval_s)


async def wait_until_async(
    predicate: Callable[[], object], timeout_s: float, what: str, interval_s: float = 0.02
) -> None:
    """:func:`wait_until` for async tests: the event loop keeps running between polls."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} (after {timeout_s:.0f} s)")
        await asyncio.sleep(interval_s)


class RoleProcess:
    """``python -m narrator ARGS`` (or ``python -c CODE``) in its own process group, with its
    output in ``log_dir/<name>.log``; stopped (SIGTERM, then SIGKILL) on exit."""

    def __init__(
        self,
        args: Sequence[str],
        env: dict[str, str],
        log_dir: Path,
        *,
        code: str | None = None,
        name: str | None = None,
    ) -> None:
        self.argv = [sys.executable, "-c", code] if code else [sys.executable, "-m", "narrator"]
        self.argv += [] if code else list(args)
        self.env = env
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"{name or (args[0] if args else 'role')}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RoleProcess:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=REPO_ROOT,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill(self) -> None:
        """SIGKILL the whole process group: no handler runs, nothing is cleaned up."""
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.kill()
        except ProcessLookupError:
            pass

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def __enter__(self) -> RoleProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
