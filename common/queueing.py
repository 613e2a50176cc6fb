"""Queues and enqueueing, shared by the roles: the module and writer queues, and the one way
narrator (re)enqueues a job: :func:`enqueue_unless_live`.

Invariants: every queue uses rq's JSON serializer (a pickled job payload cannot be
deserialized, so it is refused rather than executed); job functions are named by dotted
path so roles do not import each other; job ids are deterministic
(:mod:`common.job_specs`), so enqueueing the same work again names the same job, and a job
that rq will still run is left alone while any other job of that id (finished, failed, or a
leftover of an interrupted worker, see :mod:`common.rq_internals`) is replaced.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis
from rq import Queue, Retry
from rq.job import Job
from rq.serializers import JSONSerializer

from narrator.common import keys
from narrator.common.job_specs import (
    FAILURE_TTL_S,
    FINALIZE_JOB,
    FINALIZE_RETRIES,
    FINALIZE_RETRY_INTERVALS_S,
    FINALIZE_TIMEOUT_S,
    MODULE_BATCH,
    MODULE_JOB,
    RESULT_TTL_S,
    FinalizeJob,
    JobOptions,
    ModuleJob,
    on_chain,
)
from narrator.common.rq_internals import discard_job, fetch_jobs, live_flags

__all__ = [
    "JobOptions",
    "enqueue_finalize_job",
    "enqueue_module_jobs",
    "enqueue_unless_live",
    "module_job_data",
    "module_queue",
    "writer_queue",
]


def module_queue(conn: redis.Redis) -> Queue:
    return Queue(keys.MODULE_QUEUE, connection=conn, serializer=JSONSerializer)


def writer_queue(conn: redis.Redis) -> Queue:
    return Queue(keys.WRITER_QUEUE, connection=conn, serializer=JSONSerializer)


def module_job_data(job: ModuleJob, options: JobOptions, *, at_front: bool = False) -> Any:
    """rq's enqueue data of one (episode, module) job, with its deterministic id.

    ``at_front`` puts the job at the head of the queue (a job whose input just became
    ready, so its episode's data file is finished soon and the run does not end on a tail
    of such jobs). A job on a dependency chain (:func:`~common.job_specs.on_chain`) is
    also retried at the head of the queue."""
    return Queue.prepare_data(
        MODULE_JOB,
        args=job.args(),
        job_id=job.job_id,
        timeout=options.job_timeout_s,
        result_ttl=RESULT_TTL_S,
        failure_ttl=FAILURE_TTL_S,
        description=f"{job.module} episode {job.episode} (run {job.run_id})",
        at_front=at_front,
        retry=Retry(
            max=options.job_retries,
            interval=options.intervals(),
            enqueue_at_front=on_chain(job.module),
        )
        if options.job_retries
        else None,
    )


def finalize_job_data(job: FinalizeJob) -> Any:
    return Queue.prepare_data(
        FINALIZE_JOB,
        args=job.args(),
        job_id=job.job_id,
        timeout=FINALIZE_TIMEOUT_S,
        result_ttl=RESULT_TTL_S,
        failure_ttl=FAILURE_TTL_S,
        retry=Retry(max=FINALIZE_RETRIES, interval=list(FINALIZE_RETRY_INTERVALS_S)),
        description=f"finalize {job.data_file} (run {job.run_id})",
    )


def enqueue_module_jobs(conn: redis.Redis, batch: Sequence[Any]) -> None:
    """Enqueue prepared module jobs as they are (no check for existing ones)."""
    queue = module_queue(conn)
    for start in range(0, len(batch), MODULE_BATCH):
        with conn.pipeline() as pipe:
            queue.enqueue_many(list(batch[start : start + MODULE_BATCH]), pipeline=pipe)
            pipe.execute()


@dataclass(frozen=True)
class EnqueueOutcome:
    enqueued: int
    live: int  # jobs rq still runs (queued, running, waiting for a retry) that were kept


def enqueue_unless_live(
    conn: redis.Redis, queue: Queue, prepared: Sequence[Any], *, keep_live: bool = True
) -> EnqueueOutcome:
    """Enqueue the prepared jobs whose id has no live job (see
    :func:`~common.rq_internals.live_flags`); any other job of the same id is removed first.
    With ``keep_live=False`` a live job is replaced too."""
    if not prepared:
        return EnqueueOutcome(0, 0)
    ids = [data.job_id for data in prepared]
    existing = fetch_jobs(conn, ids)
    flags = live_flags(conn, existing)
    batch = []
    live = 0
    for data, job, is_live in zip(prepared, existing, flags, strict=True):
        if is_live and keep_live:
            live += 1
            continue
        if job is not None:
            discard_job(conn, job)
        batch.append(data)
    for start in range(0, len(batch), MODULE_BATCH):
        with conn.pipeline() as pipe:
            queue.enqueue_many(list(batch[start : start + MODULE_BATCH]), pipeline=pipe)
            pipe.execute()
    return EnqueueOutcome(len(batch), live)


def enqueue_finalize_job(conn: redis.Redis, run_id: str, data_file: str, generation: str) -> Job:
    """Put the finalize job of ``data_file`` for ``generation`` on the writer's queue unless
    one is live; returns the job (the new one, or the live one kept).

    Callers first win the file's finalize claim, so this runs once per file generation."""
    payload = FinalizeJob(run_id, data_file, generation)
    enqueue_unless_live(conn, writer_queue(conn), [finalize_job_data(payload)])
    job = fetch_jobs(conn, [payload.job_id])[0]
    if job is None:  # pragma: no cover - removed between the two calls (a concurrent cleanup)
        raise RuntimeError(f"finalize job {payload.job_id} vanished right after enqueueing")
    return job
