"""The persistent event loop of a worker process, in a background thread.

rq calls a job's function in a worker thread; the :class:`~common.rq_internals.ContextJob`
hands the coroutine it returns to :meth:`LoopThread.run`, so the aiohttp session, replica
health state and in-flight budgets of the VLM client (built on this loop, see
:mod:`workers.context`) live as long as the process, not one job, and every job of the
process shares them. A job that rq times out or stops is cancelled on the loop.

Invariant: one loop per process, started before the first job and stopped after the last.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, TypeVar

T = TypeVar("T")

WAKE_S = 0.25  # how often a waiting caller wakes so rq's timer death penalty can reach it


class LoopThread:
    """An asyncio loop running forever in a daemon thread; :meth:`run` waits for a coroutine
    on it from any other thread."""

    def __init__(self, name: str = "narrator-loop") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the loop and wait for its result (cancelled if the wait is
        interrupted, e.g. by rq's job timeout)."""
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            while True:
                # Wake up regularly so rq's timer death penalty (an exception raised
                # asynchronously in this thread) can interrupt a job that overruns.
                try:
                    return future.result(timeout=WAKE_S)
                except FutureTimeout:
                    continue
        except BaseException:
            future.cancel()
            raise

    def stop(self, timeout_s: float = 5.0) -> None:
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=timeout_s)
