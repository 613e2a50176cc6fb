"""Entry point of the worker role: N processes x K concurrent jobs on the module queue.

Each process builds one :class:`~workers.context.WorkerContext` (Redis, VLM client, caches) on
its :class:`~workers.runtime.LoopThread` and hands it to its rq workers, which pass it to
every job. With ``jobs_per_worker`` K > 1 it runs K rq workers in threads, so K jobs'
coroutines share one loop, one connection pool and one view of the replicas' load; with
K = 1 a single rq worker runs in the main thread. All use rq's JSON serializer.

Signals: the first SIGINT/SIGTERM asks every worker to stop after its current job (warm
shutdown); a second one exits at once. A parent with several processes forwards signals.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import tempfile
import threading
import time
from types import FrameType

import redis

from narrator.common import keys
from narrator.common.config import NarratorConfig
from narrator.common.errors import ConfigError
from narrator.common.lifecycle import die_with_parent
from narrator.common.logging import configure_logging, get_logger
from narrator.common.metrics import start_metrics_server, start_multiprocess_metrics_server
from narrator.common.rq_internals import ContextWorker, ThreadedWorker
from narrator.workers.context import WorkerContext, open_worker_context
from narrator.workers.runtime import LoopThread

log = get_logger(__name__)

THREAD_WORKER_TTL_S = 20  # idle dequeue wait = TTL - 15 s


def _serve_threads(
    config: NarratorConfig, burst: bool, ctx: WorkerContext, loop: LoopThread
) -> None:
    url = config.redis_url_value()
    assert url is not None
    workers = [
        ThreadedWorker(
            [keys.MODULE_QUEUE],
            connection=redis.Redis.from_url(url),
            context=ctx,
            run_coroutine=loop.run,
            worker_ttl=THREAD_WORKER_TTL_S,
        )
        for _ in range(config.jobs_per_worker)
    ]
    first_signal_at: list[float] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if first_signal_at:
            # A signal sent to the process group and forwarded by the pool parent arrives
            # twice; only a second request a moment later means "stop now".
            if time.monotonic() - first_signal_at[0] > 1.0:
                log.warning("worker_second_stop_signal_exiting")
                os._exit(1)
            return
        first_signal_at.append(time.monotonic())
        log.info("worker_stopping_after_running_jobs", signal=signum)
        for w in workers:
            w.request_warm_stop()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    threads = [
        threading.Thread(
            target=w.work,
            kwargs={"burst": burst, "with_scheduler": i == 0, "logging_level": "WARNING"},
            name=f"rq-worker-{i}",
            daemon=True,
        )
        for i, w in enumerate(workers)
    ]
    for t in threads:
        t.start()
    for t in threads:
        while t.is_alive():
            t.join(timeout=0.5)


def _serve_process(config: NarratorConfig, burst: bool, parent_pid: int | None = None) -> None:
    if parent_pid is not None:  # a pool child ends when its pool parent ends, however
        die_with_parent(parent_pid)
    configure_logging(config.log_level, config.log_format)  # spawned: a fresh interpreter
    loop = LoopThread()
    ctx = loop.run(open_worker_context(config))
    try:
        if config.jobs_per_worker > 1:
            _serve_threads(config, burst, ctx, loop)
            return
        url = config.redis_url_value()
        assert url is not None
        worker = ContextWorker(
            [keys.MODULE_QUEUE],
            connection=redis.Redis.from_url(url),
            context=ctx,
            run_coroutine=loop.run,
        )
        worker.work(burst=burst, with_scheduler=True, logging_level="WARNING")
    finally:
        loop.run(ctx.close())
        loop.stop()


def run_workers(config: NarratorConfig, *, burst: bool = False) -> None:
    if not config.redis_url_value():
        raise ConfigError("narrator worker needs --redis-url (or NARRATOR_REDIS_URL)")
    if not config.vlm.urls:
        raise ConfigError("narrator worker needs --vlm-url (or NARRATOR_VLM_URLS)")
    log.info(
        "worker_starting",
        processes=config.workers,
        jobs_per_worker=config.jobs_per_worker,
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
            target=_serve_process, args=(config, burst, os.getpid()), name=f"narrator-worker-{i}"
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
