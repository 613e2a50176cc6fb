"""Per-process runtime of a worker: one persistent asyncio loop in a background thread.

rq calls a job's function in the worker's main thread; :class:`NarratorJob` hands the
coroutine it returns to this loop, so the aiohttp session, replica health state and in-flight
budgets of the :class:`~workers.vlm_client.VLMClient` live as long as the process, not one
job. A job that rq times out or stops is cancelled on the loop.

A :class:`~common.errors.PermanentError` from a job clears the job's remaining rq retries:
retrying a malformed dataset or a rejected request would only burn time.

Invariant: :func:`configure` is called once (before the rq worker starts, so forked pool
children inherit it); everything else is created lazily in the process that runs jobs.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any, TypeVar

import redis
import redis.asyncio as aredis
from rq.exceptions import StopRequested
from rq.timeouts import TimerDeathPenalty

from narrator.common.config import NarratorConfig
from narrator.common.dataset.meta import DatasetMeta
from narrator.common.dataset.reader import load_dataset_meta
from narrator.common.errors import ConfigError
from narrator.common.queueing import HeartbeatWorker, PermanentAwareJob
from narrator.workers.frame_pool import FramePool
from narrator.workers.vlm_client import VLMClient

T = TypeVar("T")

STOP_POLL_S = 2  # how often an idle threaded worker checks for a stop request

_config: NarratorConfig | None = None
_runtime: WorkerRuntime | None = None
_runtime_lock = threading.Lock()


def configure(config: NarratorConfig) -> None:
    global _config, _runtime
    _config = config
    _runtime = None


class WorkerRuntime:
    def __init__(self, config: NarratorConfig) -> None:
        url = config.redis_url_value()
        if not url:
            raise ConfigError("the worker needs a Redis URL (--redis-url or NARRATOR_REDIS_URL)")
        if not config.vlm.urls:
            raise ConfigError("the worker needs VLM server URLs (--vlm-url or NARRATOR_VLM_URLS)")
        self.config = config
        self.redis_url = url
        self.sync_redis = redis.Redis.from_url(url)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, name="narrator-loop", daemon=True)
        self._thread.start()
        self._meta_cache: dict[tuple[str, str], DatasetMeta] = {}
        self._meta_lock = threading.Lock()
        self.frame_pool = FramePool(config.frame_processes)  # decode + JPEG, off the loop
        self.client: VLMClient = self.run(self._make_client())
        self.aredis: aredis.Redis = self.run(self._make_aredis())

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    async def _make_client(self) -> VLMClient:
        client = VLMClient(self.config.vlm)
        await client.start()
        return client

    async def _make_aredis(self) -> aredis.Redis:
        return aredis.Redis.from_url(self.redis_url)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the runtime's loop and wait for it (from any other thread)."""
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            while True:
                # Wake up regularly so rq's timer death penalty (an exception raised
                # asynchronously in this thread) can interrupt a job that overruns.
                try:
                    return future.result(timeout=0.25)
                except FutureTimeout:
                    continue
        except BaseException:
            future.cancel()
            raise

    def dataset_meta(self, root: Path, fingerprint: str) -> DatasetMeta:
        """The dataset's metadata, loaded once per (root, fingerprint) per process."""
        key = (str(root), fingerprint)
        with self._meta_lock:
            meta = self._meta_cache.get(key)
            if meta is None:
                meta = load_dataset_meta(root)
                self._meta_cache[key] = meta
            return meta

    def close(self) -> None:
        async def _close() -> None:
            await self.client.close()
            await self.aredis.aclose()

        if self.loop.is_running():
            self.run(_close())
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=5)
        self.frame_pool.close()
        self.sync_redis.close()


def current() -> WorkerRuntime:
    global _runtime
    with _runtime_lock:
        if _runtime is None:
            if _config is None:
                raise ConfigError("workers.runtime.configure() was not called in this process")
            _runtime = WorkerRuntime(_config)
        return _runtime


def shutdown() -> None:
    global _runtime
    with _runtime_lock:
        if _runtime is not None:
            _runtime.close()
            _runtime = None


class NarratorJob(PermanentAwareJob):
    """An rq Job whose coroutine runs on the process's persistent loop."""

    def _call(self) -> Any:
        result = super()._call()
        if asyncio.iscoroutine(result):
            return current().run(result)
        return result


class NarratorWorker(HeartbeatWorker):
    """A SimpleWorker (jobs run in this process, so the loop and client persist) that
    heartbeats while a job runs (see :class:`~common.queueing.HeartbeatWorker`)."""

    def teardown(self) -> None:
        try:
            shutdown()
        finally:
            super().teardown()  # type: ignore[no-untyped-call]


class ThreadedNarratorWorker(HeartbeatWorker):
    """One of several rq workers in threads of one process, sharing its runtime.

    Signals are handled by the process (see :mod:`workers.main`), timeouts by a timer
    thread instead of SIGALRM, and a short worker TTL keeps the idle wait (and so the
    reaction to a stop request) to a few seconds.
    """

    death_penalty_class = TimerDeathPenalty

    def _install_signal_handlers(self) -> None:
        return None

    def request_warm_stop(self) -> None:
        self._stop_requested = True

    def dequeue_job_and_maintain_ttl(
        self, timeout: int | None, max_idle_time: int | None = None
    ) -> Any:
        # rq's idle wait loops until a job arrives and only a signal (main thread) ends it;
        # wait in short slices instead so a stop request is seen within STOP_POLL_S.
        while not self._stop_requested:
            result = super().dequeue_job_and_maintain_ttl(
                timeout, max_idle_time=STOP_POLL_S if timeout is not None else None
            )
            if result is not None or timeout is None:
                return result
        raise StopRequested()
