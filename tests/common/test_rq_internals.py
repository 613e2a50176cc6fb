"""The one module that reaches below rq's public API: the overrides and the rq methods it calls
still match the pinned rq, permanent errors are not retried, and which jobs rq will still run
(a real Redis, real rq). The module workers' AsyncJobWorker is exercised with its runtime in
``tests/workers/test_runtime.py``."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import redis
import rq
from rq import Queue, Retry
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer
from rq.timeouts import TimerDeathPenalty
from rq.worker import SimpleWorker
from rq.worker.base import BaseWorker

from narrator.common.errors import ConfigError
from narrator.common.rq_internals import (
    AsyncJobWorker,
    ContextJob,
    HeartbeatWorker,
    live_flags,
)

QUEUE = "narrator-test-queue"


def describe(value: int) -> dict[str, Any]:
    return {"value": value}


def refuse() -> None:
    raise ConfigError("a permanent problem")


def test_overrides_name_methods_of_the_pinned_rq(redis_client: redis.Redis) -> None:
    assert rq.__version__.startswith("3.0."), "re-check common/rq_internals.py for this rq"
    overridden = [
        (ContextJob, Job, "_execute"),
        (HeartbeatWorker, SimpleWorker, "execute_job"),
        (HeartbeatWorker, SimpleWorker, "get_heartbeat_ttl"),
        (AsyncJobWorker, SimpleWorker, "get_heartbeat_ttl"),
        (AsyncJobWorker, BaseWorker, "_install_signal_handlers"),
        (AsyncJobWorker, BaseWorker, "request_stop_execution"),
    ]
    for ours, theirs, name in overridden:
        assert name in vars(theirs), f"rq's {theirs.__name__} has no {name} any more"
        assert getattr(ours, name) is not getattr(theirs, name)
    called = (
        "prepare_execution",
        "prepare_job_execution",
        "perform_job",
        "maintain_heartbeats",
        "set_state",
        "bootstrap",
        "teardown",
        "run_maintenance_tasks",
        "should_run_maintenance_tasks",
        "cleanup_execution",
        "heartbeat",
        "_start_scheduler",
        "_finalize_success",
        "_finalize_failure",
    )
    for used in called:
        assert hasattr(BaseWorker, used), f"rq's BaseWorker has no {used} any more"
    # rq 3.0's workers hold several executions at once (AsyncJobWorker relies on it)
    assert isinstance(SimpleWorker([QUEUE], connection=redis_client).executions, dict)
    assert AsyncJobWorker.death_penalty_class is TimerDeathPenalty


def test_permanent_errors_are_not_retried(redis_client: redis.Redis) -> None:
    queue = Queue(QUEUE, connection=redis_client, serializer=JSONSerializer)
    plain = queue.enqueue(f"{__name__}.describe", 1)
    refused = queue.enqueue(f"{__name__}.refuse", retry=Retry(max=3))
    HeartbeatWorker([queue], connection=redis_client).work(burst=True, logging_level="WARNING")
    assert Job.fetch(plain.id, redis_client, serializer=JSONSerializer).return_value() == {
        "value": 1
    }
    failed = Job.fetch(refused.id, redis_client, serializer=JSONSerializer)
    assert failed.get_status() == JobStatus.FAILED and failed.retries_left == 0


def test_which_jobs_rq_will_still_run(redis_client: redis.Redis) -> None:
    conn = redis_client
    queue = Queue(QUEUE, connection=conn, serializer=JSONSerializer)
    queued = queue.enqueue(f"{__name__}.describe", 1)
    popped = queue.enqueue(f"{__name__}.describe", 2)
    finished = queue.enqueue(f"{__name__}.describe", 3)
    scheduled = queue.enqueue_in(timedelta(hours=1), f"{__name__}.describe", 4)
    # rq's dequeue takes the first two: `queued` goes back, `popped` stays taken.
    for _ in range(2):
        got = Queue.dequeue_any([queue], None, connection=conn, serializer=JSONSerializer)
        assert got is not None
        if got[0].id == queued.id:
            queue.enqueue_job(got[0])
    queue.remove(finished)
    finished.set_status(JobStatus.FINISHED)
    jobs = [Job.fetch(j.id, conn, serializer=JSONSerializer) for j in (queued, popped, finished)]
    jobs.append(Job.fetch(scheduled.id, conn, serializer=JSONSerializer))
    # No worker alive: a popped job is an orphan.
    assert live_flags(conn, [*jobs, None]) == [True, False, False, True, False]
    worker = SimpleWorker([queue], connection=conn, serializer=JSONSerializer)
    worker.register_birth()
    try:
        assert live_flags(conn, jobs)[1] is True  # a live worker may be starting it
    finally:
        worker.register_death()  # type: ignore[no-untyped-call]


@pytest.mark.parametrize("many", [False, True])
def test_live_flags_read_queues_in_bulk_for_many_jobs(
    redis_client: redis.Redis, many: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    import narrator.common.rq_internals as internals

    if many:
        monkeypatch.setattr(internals, "FEW_JOBS", 0)  # the LRANGE path
    queue = Queue(QUEUE, connection=redis_client, serializer=JSONSerializer)
    jobs = [queue.enqueue(f"{__name__}.describe", i) for i in range(3)]
    queue.remove(jobs[1])
    assert live_flags(redis_client, jobs) == [True, False, True]
