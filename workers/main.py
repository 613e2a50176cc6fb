"""Entry point of the worker role: a pool of rq worker processes on the module queue.

Each process is a :class:`~workers.runtime.NarratorWorker` (jobs run in-process on a
persistent event loop) with rq's JSON serializer. ``workers=1`` runs the worker in this
process; more start an rq ``WorkerPool`` (forked children inherit the configuration).
"""

from __future__ import annotations

import multiprocessing

import redis
from rq.serializers import JSONSerializer
from rq.worker_pool import WorkerPool

from common import keys
from common.config import NarratorConfig
from common.errors import ConfigError
from common.logging import get_logger
from common.metrics import start_metrics_server
from workers import runtime
from workers.runtime import NarratorJob, NarratorWorker

log = get_logger(__name__)


def run_workers(config: NarratorConfig, *, burst: bool = False) -> None:
    url = config.redis_url_value()
    if not url:
        raise ConfigError("narrator worker needs --redis-url (or NARRATOR_REDIS_URL)")
    if not config.vlm.urls:
        raise ConfigError("narrator worker needs --vlm-url (or NARRATOR_VLM_URLS)")
    runtime.configure(config)
    start_metrics_server(config.metrics_port)
    conn = redis.Redis.from_url(url)
    log.info("worker starting", processes=config.workers, vlm_urls=list(config.vlm.urls))
    if config.workers == 1:
        worker = NarratorWorker(
            [keys.MODULE_QUEUE],
            connection=conn,
            serializer=JSONSerializer,
            job_class=NarratorJob,
        )
        worker.work(burst=burst, with_scheduler=True, logging_level="WARNING")
        return
    if multiprocessing.get_start_method(allow_none=True) is None:
        multiprocessing.set_start_method("fork")
    pool = WorkerPool(
        [keys.MODULE_QUEUE],
        connection=conn,
        num_workers=config.workers,
        worker_class=NarratorWorker,
        job_class=NarratorJob,
        serializer=JSONSerializer,
    )
    pool.start(burst=burst, logging_level="WARNING")
