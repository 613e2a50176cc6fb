"""rq queue handles and the finalize job, shared by the producer and the workers.

Invariants: every queue uses rq's JSON serializer (a pickled job payload cannot be
deserialized, so it is refused rather than executed); job functions are named by dotted
path so roles do not import each other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis
from rq import Queue, Retry
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from common import keys
from common.errors import PermanentError

MODULE_JOB = "workers.jobs.run_module"
ACTIVE_STATES = {JobStatus.QUEUED, JobStatus.STARTED, JobStatus.DEFERRED, JobStatus.SCHEDULED}
FINALIZE_JOB = "writer.finalize.finalize_file"
FINALIZE_TIMEOUT_S = 3600


def module_queue(conn: redis.Redis) -> Queue:
    return Queue(keys.MODULE_QUEUE, connection=conn, serializer=JSONSerializer)


def writer_queue(conn: redis.Redis) -> Queue:
    return Queue(keys.WRITER_QUEUE, connection=conn, serializer=JSONSerializer)


@dataclass(frozen=True)
class JobOptions:
    """rq settings of module jobs (stored in the run record so workers enqueue alike)."""

    job_timeout_s: int = 1800
    job_retries: int = 3
    retry_intervals_s: tuple[int, ...] = (5, 30, 120)


def module_job_data(
    run_id: str,
    module: str,
    episode: int,
    module_hash: str,
    options: JobOptions,
    *,
    at_front: bool = False,
) -> Any:
    """rq's enqueue data of one (episode, module) job, with its deterministic id.

    ``at_front`` puts the job at the head of the queue (a job whose input just became
    ready, so its episode's data file is finished soon and the run does not end on a tail
    of such jobs)."""
    return Queue.prepare_data(
        MODULE_JOB,
        args=(run_id, module, episode, module_hash),
        job_id=keys.job_id(run_id, module, episode, module_hash),
        timeout=options.job_timeout_s,
        result_ttl=3600,
        failure_ttl=7 * 24 * 3600,
        description=f"{module} episode {episode} (run {run_id})",
        at_front=at_front,
        retry=Retry(max=options.job_retries, interval=list(options.retry_intervals_s))
        if options.job_retries
        else None,
    )


def enqueue_module_jobs(conn: redis.Redis, batch: Sequence[Any]) -> None:
    queue = module_queue(conn)
    for start in range(0, len(batch), 500):
        with conn.pipeline() as pipe:
            queue.enqueue_many(list(batch[start : start + 500]), pipeline=pipe)
            pipe.execute()


def enqueue_finalize_job(conn: redis.Redis, run_id: str, data_file: str, generation: str) -> Job:
    """Put the finalize job of ``data_file`` on the writer's queue (replacing an old one).

    Callers first win the file's finalize claim, so this runs once per file generation.
    """
    job_id = keys.finalize_job_id(run_id, data_file, generation)
    old = Job.fetch_many([job_id], connection=conn, serializer=JSONSerializer)[0]
    if old is not None:
        old.delete(remove_from_queue=True)
    return writer_queue(conn).enqueue_call(
        FINALIZE_JOB,
        args=(run_id, data_file, generation),
        job_id=job_id,
        timeout=FINALIZE_TIMEOUT_S,
        result_ttl=3600,
        failure_ttl=7 * 24 * 3600,
        retry=Retry(max=3, interval=[5, 30, 60]),
        description=f"finalize {data_file} (run {run_id})",
    )


class PermanentAwareJob(Job):
    """An rq Job that does not retry a :class:`~common.errors.PermanentError`."""

    def _execute(self) -> Any:
        try:
            return self._call()
        except PermanentError:
            self.retries_left = 0  # retrying cannot help; fail now and record why
            raise

    def _call(self) -> Any:
        if not self.func:
            raise ValueError("cannot execute job: function is None")
        return self.func(*self.args, **self.kwargs)
