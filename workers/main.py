"""Entry point of the worker role: N processes, each holding many jobs of the module queue.

Each process is one rq worker (:class:`~common.rq_internals.AsyncJobWorker`, rq's JSON
serializer) and one event loop: it builds one :class:`~workers.context.WorkerContext` (Redis,
VLM client, caches) on the loop and runs its jobs there as coroutines
(:class:`~workers.runtime.WorkerRuntime`), taking as many as the VLM fleet has room for,
between ``jobs_per_worker`` and ``max_jobs_per_worker``. rq's scheduler (retry intervals) is
started by every process; rq's locks let one of them run it.

Signals: the first SIGINT/SIGTERM stops taking jobs and lets the held ones finish for
``stop_grace_s``, then hands the rest back to the front of the queue (warm stop); a second one
hands them back at once; a third exits at once. A signal arriving twice within a second (sent
to the process group and forwarded by the pool parent) counts once. A parent with several
processes forwards signals.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import pickle
import signal
import tempfile
import time
from types import FrameType

import redis

from narrator.common import keys
from narrator.common.config import NarratorConfig
from narrator.common.errors import ConfigError
from narrator.common.lifecycle import run_as_child
from narrator.common.logging import configure_logging, get_logger
from narrator.common.metrics import start_metrics_server, start_multiprocess_metrics_server
from narrator.common.rq_internals import AsyncJobWorker
from narrator.workers.context import open_worker_context
from narrator.workers.intake import IntakeLimits
from narrator.workers.runtime import WorkerRuntime

log = get_logger(__name__)

DUPLICATE_SIGNAL_S = 1.0


class _Signals:
    """Counts stop requests; the runtime is told once it exists."""

    def __init__(self) -> None:
        self.count = 0
        self._last = -DUPLICATE_SIGNAL_S
        self.runtime: WorkerRuntime | None = None

    def on_signal(self, signum: int) -> None:
        at = time.monotonic()
        if self.count and at - self._last < DUPLICATE_SIGNAL_S:
            return
        self._last = at
        self.count += 1
        if self.count >= 3:
            log.warning("worker_third_stop_signal_exiting")
            os._exit(1)
        if self.count == 1:
            log.info("worker_stop_requested", signal=signum)
        else:
            log.warning("worker_second_stop_signal_handing_back_jobs", signal=signum)
        self.apply()

    def apply(self) -> None:
        if self.runtime is None or not self.count:
            return
        if self.count == 1:
            self.runtime.request_stop()
        else:
            self.runtime.hand_back_now()


async def _serve(config: NarratorConfig, worker: AsyncJobWorker, burst: bool) -> None:
    signals = _Signals()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, signals.on_signal, signum)
    ctx = await open_worker_context(config)
    try:
        if signals.count:
            return  # stopped while the VLM client started: nothing was taken
        runtime = WorkerRuntime(
            worker,
            ctx,
            IntakeLimits(config.jobs_per_worker, config.max_jobs_per_worker),
            burst=burst,
            stop_grace_s=config.stop_grace_s,
        )
        signals.runtime = runtime
        await runtime.serve()
    finally:
        await ctx.close()


def serve_pickled(payload: bytes) -> None:
    """A pool child's work (started through :func:`~common.lifecycle.run_as_child`, which has
    made it end with its pool parent before anything heavy is imported)."""
    config, burst = pickle.loads(payload)
    _serve_process(config, burst)


def _serve_process(config: NarratorConfig, burst: bool) -> None:
    configure_logging(config.log_level, config.log_format)  # spawned: a fresh interpreter
    url = config.redis_url_value()
    assert url is not None
    worker = AsyncJobWorker([keys.MODULE_QUEUE], connection=redis.Redis.from_url(url))
    # Registered (and rq's scheduler forked) before the loop and the VLM client start threads.
    worker.begin(burst=burst, with_scheduler=True)
    try:
        asyncio.run(_serve(config, worker, burst))
    finally:
        worker.end()


def run_workers(config: NarratorConfig, *, burst: bool = False) -> None:
    if not config.redis_url_value():
        raise ConfigError("narrator worker needs --redis-url (or NARRATOR_REDIS_URL)")
    if not config.vlm.urls:
        raise ConfigError("narrator worker needs --vlm-url (or NARRATOR_VLM_URLS)")
    log.info(
        "worker_starting",
        processes=config.workers,
        jobs_per_worker=config.jobs_per_worker,
        max_jobs_per_worker=config.max_jobs_per_worker,
        vlm_urls=list(config.vlm.urls),
    )
    if config.workers == 1:
        start_metrics_server(config.metrics_port)
        _serve_process(config, burst)
        return
    # Children are spawned (fresh interpreters) with PROMETHEUS_MULTIPROC_DIR set, so their
    # metrics land in files this process sums for Prometheus.
    metrics_dir = tempfile.mkdtemp(prefix="narrator-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    start_multiprocess_metrics_server(config.metrics_port, metrics_dir)
    ctx = multiprocessing.get_context("spawn")
    children = [
        ctx.Process(
            target=run_as_child,
            args=(os.getpid(), f"{__name__}:serve_pickled", pickle.dumps((config, burst))),
            name=f"narrator-worker-{i}",
        )
        for i in range(config.workers)
    ]
    for child in children:
        child.start()

    def forward(signum: int, frame: FrameType | None) -> None:
        for child in children:
            if child.pid is not None and child.is_alive():
                os.kill(child.pid, signum)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    for child in children:
        child.join()
