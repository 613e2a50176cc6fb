"""Where a worker process does its frame work: decode, resize and JPEG encoding.

That work is CPU-bound and holds the GIL for part of its time, so on the event loop (or in
its threads) it would delay every other request of the process. :class:`FramePool` runs it
in a pool of processes, one per CPU core this process may use by default
(``frame_processes`` in the config), started with ``spawn`` (the worker has threads and an
event loop; forking it is unsafe). ``processes=0`` runs it in a thread instead (tests, tiny
frames).

Invariants:
* :meth:`FramePool.run` never blocks the event loop; the function and its arguments cross to
  the pool by pickle, so they are plain values (paths as strings, numbers).
* A pool whose process died (out of memory, killed) is replaced, and the call that saw it
  fails with a :class:`~common.errors.TransientError` (the job is retried).
* Pool processes ignore SIGINT (the worker decides when they stop, :meth:`FramePool.close`)
  and end with the worker process that started them, however it ends.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import threading
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TypeVar

from narrator.common.errors import TransientError
from narrator.common.lifecycle import init_pool_child
from narrator.common.logging import get_logger

log = get_logger(__name__)

T = TypeVar("T")


def available_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


class FramePool:
    """Runs frame work off the event loop, in processes (or a thread when ``processes=0``)."""

    def __init__(self, processes: int | None = None) -> None:
        self.processes = available_cores() if processes is None else processes
        self._executor: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()
        self._noted: set[object] = set()

    def _pool(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = ProcessPoolExecutor(
                    self.processes,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=init_pool_child,
                    initargs=(os.getpid(),),
                )
            return self._executor

    def _replace(self, broken: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._executor is broken:
                self._executor = None
        broken.shutdown(wait=False, cancel_futures=True)

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        """``fn(*args)`` in the pool; the event loop goes on meanwhile."""
        if self.processes == 0:
            return await asyncio.to_thread(fn, *args)
        pool = self._pool()
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(pool, fn, *args)
        except BrokenProcessPool as exc:
            self._replace(pool)
            log.warning("frame_pool_broken", error=str(exc))
            raise TransientError(
                "a frame-decoding process died (out of memory or killed); the job is retried"
            ) from exc

    def first_time(self, key: object) -> bool:
        """True the first time ``key`` is seen by this pool (for warnings given once)."""
        with self._lock:
            if key in self._noted:
                return False
            self._noted.add(key)
            return True

    def close(self) -> None:
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
