"""Entry point of the writer role: one rq worker on the writer's queue.

At start it finishes any commit a crash interrupted, then processes finalize jobs one at a
time (a single writer per dataset: only it writes the dataset).
"""

from __future__ import annotations

import redis
from rq.serializers import JSONSerializer

from narrator.common import keys
from narrator.common.config import NarratorConfig
from narrator.common.errors import ConfigError
from narrator.common.logging import get_logger
from narrator.common.metrics import start_metrics_server
from narrator.common.rq_internals import HeartbeatWorker
from narrator.common.runs import load_run, text
from narrator.writer.finalize import resume_interrupted

log = get_logger(__name__)


def recover(conn: redis.Redis) -> int:
    """Finish interrupted commits of every known run; returns how many were finished."""
    finished = 0
    for raw in conn.smembers(keys.RUNS):
        run_id = text(raw) or ""
        try:
            run = load_run(conn, run_id)
        except Exception as exc:  # a broken record must not stop the writer
            log.warning("run_inspect_failed", run=run_id, error=str(exc))
            continue
        if text(conn.get(keys.committed(run_id))) != run.generation and resume_interrupted(
            conn, run
        ):
            finished += 1
    return finished


def run_writer(config: NarratorConfig, *, burst: bool = False) -> None:
    url = config.redis_url_value()
    if not url:
        raise ConfigError("narrator writer needs --redis-url (or NARRATOR_REDIS_URL)")
    start_metrics_server(config.metrics_port)
    conn = redis.Redis.from_url(url)
    recovered = recover(conn)
    log.info("writer_starting", recovered_commits=recovered)
    worker = HeartbeatWorker(
        [keys.WRITER_QUEUE],
        connection=conn,
        serializer=JSONSerializer,
    )
    worker.work(burst=burst, with_scheduler=True, logging_level="WARNING")
