"""One ``narrator annotate`` per dataset: an OS file lock on the run's state directory.

``STATE_DIR/run.lock`` is locked with ``flock`` by the annotate process for its whole run.
The kernel drops the lock when the process dies, however it dies, so a crashed run never
leaves a stale lock behind. Who holds it is written, atomically, to ``STATE_DIR/run.json``
(pid, start time, command line) so that a second ``annotate`` can exit at once with a message
naming the running one, and ``narrator status`` can tell a live run from a finished one.

The lock fd is not inherited by children (Python's default): the lock is the annotate
process's alone, and its children die with it (narrator.common.lifecycle).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import orjson

from narrator.common.errors import ConfigError

LOCK_NAME = "run.lock"
HOLDER_NAME = "run.json"


class DatasetBusyError(ConfigError):
    """Another narrator process holds the dataset's state directory."""


def describe_holder(holder: dict[str, Any] | None) -> str:
    """'pid 123, started 2026-01-02 10:11:12, narrator annotate ...' (what is known)."""
    if not holder:
        return "a process that did not say who it is"
    parts = [f"pid {holder.get('pid', '?')}"]
    started = holder.get("started_at")
    if isinstance(started, int | float):
        parts.append("started " + time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)))
    command = holder.get("command")
    if isinstance(command, str) and command:
        parts.append(command)
    return ", ".join(parts)


def read_holder(state_dir: Path) -> dict[str, Any] | None:
    """Who holds the lock of ``state_dir`` now (None when nobody does)."""
    path = Path(state_dir) / LOCK_NAME
    if not path.exists():
        return None
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        pass  # held
    else:
        return None
    finally:
        os.close(fd)
    try:
        holder = orjson.loads((Path(state_dir) / HOLDER_NAME).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return {}
    return holder if isinstance(holder, dict) else {}


@dataclass
class RunLock:
    """The lock of one state directory; a context manager (acquire on enter)."""

    state_dir: Path
    purpose: str = "narrator annotate"
    _fd: int | None = field(default=None, repr=False)

    def acquire(self, **details: Any) -> RunLock:
        self.state_dir = Path(self.state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.state_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = read_holder(self.state_dir)
            raise DatasetBusyError(
                f"another narrator run holds {self.state_dir} ({describe_holder(holder)}); "
                "one run per dataset: wait for it to finish (`narrator status` shows its "
                "progress) or stop it, then run again"
            ) from None
        self._fd = fd
        holder = {
            "pid": os.getpid(),
            "started_at": time.time(),
            "command": " ".join(["narrator", *sys.argv[1:]]) if sys.argv else self.purpose,
            "purpose": self.purpose,
            **details,
        }
        tmp = self.state_dir / f".{HOLDER_NAME}.{os.getpid()}.tmp"
        tmp.write_bytes(orjson.dumps(holder))
        tmp.replace(self.state_dir / HOLDER_NAME)
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            (self.state_dir / HOLDER_NAME).unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
