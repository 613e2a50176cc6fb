"""Processes that die with their parent, and stop signals that unwind like Ctrl-C.

A child started by ``narrator annotate`` (the worker pool, the writer, the embedded
redis-server) or by a worker pool (its worker processes) must not outlive its parent,
however the parent dies (SIGTERM, SIGINT, SIGHUP, or SIGKILL, which no handler sees).

* Linux: ``prctl(PR_SET_PDEATHSIG, sig)`` makes the kernel send ``sig`` to the child when
  its parent exits. It is set in the child: by a Python role at start-up
  (:func:`die_with_parent`) and, for a binary such as redis-server, between fork and exec
  (:func:`parent_death_preexec`); it survives ``execve``. Caveat: the kernel counts the
  parent *thread* that forked, so spawn long-lived children from a thread that outlives them.
* Everywhere: a daemon thread polls ``os.getppid()`` and kills the process once the parent
  it was started by is gone (the fallback where ``prctl`` does not exist, and the guard for
  a parent that died before ``prctl`` ran).

:func:`install_stop_handlers` turns SIGTERM and SIGHUP into :class:`StopSignal` (a
``KeyboardInterrupt``), so a process stopped by ``kill`` or a closed terminal unwinds its
``with`` blocks and stops its own children in order, exactly as Ctrl-C does.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import os
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

PARENT_PID_ENV = "NARRATOR_PARENT_PID"  # set by a parent for the Python children it starts
PR_SET_PDEATHSIG = 1
WATCH_INTERVAL_S = 0.5


class StopSignal(KeyboardInterrupt):
    """SIGTERM or SIGHUP arrived: stop like Ctrl-C; the exit code is 128 + ``signum``."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        function: Callable[..., int] = libc.prctl
    except (OSError, AttributeError):
        return None
    return function


def set_parent_death_signal(sig: int = signal.SIGKILL) -> bool:
    """Ask the kernel to send ``sig`` to this process when its parent exits (Linux)."""
    prctl = _prctl()
    return prctl is not None and prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0


def parent_death_preexec(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A ``preexec_fn`` for :class:`subprocess.Popen` that sets the parent-death signal of
    the child before it execs (None where the platform has no such thing).

    The function is resolved here, in the parent, so that the child only makes one C call
    between fork and exec (nothing that could need a lock another thread holds).
    """
    prctl = _prctl()
    if prctl is None:
        return None
    signum = int(sig)

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0)

    return preexec


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def watch_parent(
    parent_pid: int, sig: int = signal.SIGKILL, interval_s: float = WATCH_INTERVAL_S
) -> threading.Thread:
    """A daemon thread that sends ``sig`` to this process once ``parent_pid`` is no longer
    its parent (the parent died and the process was re-parented)."""

    def watch() -> None:
        stopped = threading.Event()
        while not stopped.wait(interval_s):
            if os.getppid() != parent_pid or not _alive(parent_pid):
                os.kill(os.getpid(), sig)
                return

    thread = threading.Thread(target=watch, name="narrator-parent-watch", daemon=True)
    thread.start()
    return thread


def die_with_parent(parent_pid: int, sig: int = signal.SIGKILL) -> None:
    """Make this process end when ``parent_pid`` (the process that started it) ends.

    SIGKILL by default: a role child holds nothing that a kill loses (results are published
    atomically, shards are replaced by rename, interrupted jobs are run again on resume).
    """
    set_parent_death_signal(sig)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os.kill(os.getpid(), sig)
    watch_parent(parent_pid, sig)


def run_as_child(parent_pid: int, target: str, *args: Any) -> None:
    """Entry point of a ``spawn``-ed child process: :func:`die_with_parent` first, then import
    ``target`` (``"package.module:function"``) and call it with ``args``.

    A spawned child imports its target's module (and unpickles its arguments) before the
    target runs; for a worker that is pyarrow, PyAV, aiohttp and pydantic, seconds on a busy
    machine, and a parent killed meanwhile left the child running. This module imports only
    the standard library, so the guard is in place within a few milliseconds of the start;
    pass heavy arguments pickled (bytes) and load them in the target.
    """
    die_with_parent(parent_pid)
    module, _, name = target.partition(":")
    getattr(importlib.import_module(module), name)(*args)


def init_pool_child(parent_pid: int) -> None:
    """``initializer`` of a ``spawn`` process pool: SIGINT is the parent's to handle, and the
    process ends with the parent that started it, however that one ends (``kill -9``
    included). Lives here, not beside the pool, so that unpickling it imports nothing
    heavy before the guard is set."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent(parent_pid)


def die_with_parent_from_env(environ: dict[str, str] | None = None) -> int | None:
    """:func:`die_with_parent` for the pid in ``NARRATOR_PARENT_PID``, if it is set; the
    variable is removed so that this process's own children do not inherit it."""
    env = os.environ if environ is None else environ
    raw = env.pop(PARENT_PID_ENV, "")
    if not raw.strip().isdigit():
        return None
    parent = int(raw)
    die_with_parent(parent)
    return parent


def install_stop_handlers() -> None:
    """SIGTERM and SIGHUP raise :class:`StopSignal` in the main thread (main thread only)."""

    def on_signal(signum: int, frame: FrameType | None) -> None:
        raise StopSignal(signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        with contextlib.suppress(ValueError, OSError):  # not the main thread / no such signal
            signal.signal(sig, on_signal)


def exit_code_of(interrupt: KeyboardInterrupt) -> int:
    """128 + the signal number, as shells report a process ended by that signal."""
    return 128 + (interrupt.signum if isinstance(interrupt, StopSignal) else signal.SIGINT)
