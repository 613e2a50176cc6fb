"""rq plumbing shared by the roles: queue handles, the finalize job, the job and worker classes.

Invariants: every queue uses rq's JSON serializer (a pickled job payload cannot be
deserialized, so it is refused rather than executed); job functions are named by dotted
path so roles do not import each other.

Dead workers: rq's ``SimpleWorker`` does not heartbeat while a job runs, so its
StartedJobRegistry entry lives ``job timeout + 60 s`` and a worker killed mid-job (SIGKILL,
OOM) would hold its job for half an hour. :class:`HeartbeatWorker` keeps the entry short
(:data:`EXECUTION_TTL_S`) and renews it from a side thread while the job runs; once a dead
worker's entry expires, the next registry maintenance of any live worker (every
:data:`MAINTENANCE_INTERVAL_S`) treats the job as abandoned, and rq 3 then retries it if it
has retries left (scheduled after its retry interval) or moves it to the FailedJobRegistry
(``AbandonedJobError``), where ``narrator retry-failed`` or a re-run picks it up. When Redis
goes away while a job runs, rq cannot record the job's end and would stop the worker; a
:class:`HeartbeatWorker` waits for Redis instead, and the job takes the abandoned-job path.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis
from rq import Queue, Retry
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer
from rq.worker import SimpleWorker, WorkerStatus

from narrator.common import keys
from narrator.common.errors import PermanentError
from narrator.common.logging import get_logger

log = get_logger(__name__)

MODULE_JOB = "narrator.workers.jobs.run_module"
ACTIVE_STATES = {JobStatus.QUEUED, JobStatus.STARTED, JobStatus.DEFERRED, JobStatus.SCHEDULED}
FINALIZE_JOB = "narrator.writer.finalize.finalize_file"
FINALIZE_TIMEOUT_S = 3600
EXECUTION_TTL_S = 20  # a running job whose worker stops heartbeating is abandoned after this
HEARTBEAT_INTERVAL_S = 4.0  # how often a running job's registry entry is renewed
MAINTENANCE_INTERVAL_S = 10  # how often a worker looks for abandoned jobs
IDLE_WORKER_TTL_S = 20  # idle dequeue wait = this - 15 s, so maintenance runs that often
REDIS_WAIT_MAX_S = 10.0  # longest pause between pings while Redis is away


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
        retry=Retry(max=options.job_retries, interval=retry_intervals(options))
        if options.job_retries
        else None,
    )


def retry_intervals(options: JobOptions) -> list[int]:
    """The waits before retry 1, 2, ... of a module job.

    rq takes a job's interval from the *end* of the list (``intervals[len - retries_left]``),
    so the list is cut to the retry count: one retry waits the first interval, not the last.
    """
    return list(options.retry_intervals_s[: options.job_retries])


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


class ContextJob(PermanentAwareJob):
    """A job whose function takes its process's services first: ``func(context, *args)``.

    The services (Redis connection, caches) are built once per process and handed in by the
    :class:`ContextWorker` that runs the job, as arq passes ``ctx``: job functions reach them
    as an argument, never through module globals, and tests call them with a context of
    their own."""

    context: Any = None

    def _call(self) -> Any:
        if not self.func:
            raise ValueError("cannot execute job: function is None")
        if self.context is None:
            raise RuntimeError(f"job {self.id} needs a context; run it with a ContextWorker")
        return self.func(self.context, *self.args, **self.kwargs)


class HeartbeatWorker(SimpleWorker):
    """A SimpleWorker whose running jobs stay visibly alive, so dead peers are found fast."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("maintenance_interval", MAINTENANCE_INTERVAL_S)
        kwargs.setdefault("worker_ttl", IDLE_WORKER_TTL_S)
        super().__init__(*args, **kwargs)

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        return EXECUTION_TTL_S

    def execute_job(self, job: Job, queue: Queue) -> None:
        try:
            self._execute_with_heartbeat(job, queue)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            # Redis went away while the job ran, so rq could not record how it ended (rq
            # would stop this worker). The job's registry entry lapses once Redis is back
            # and the abandoned-job path retries it; this worker waits and carries on.
            log.warning("lost Redis during a job; it will be retried", job=job.id, error=str(exc))
            self._wait_for_redis()

    def _wait_for_redis(self) -> None:
        delay = 0.5
        while not self._stop_requested:
            try:
                self.connection.ping()
                return
            except (redis.ConnectionError, redis.TimeoutError):
                time.sleep(delay)
                delay = min(delay * 2, REDIS_WAIT_MAX_S)

    def _execute_with_heartbeat(self, job: Job, queue: Queue) -> None:
        execution = self.prepare_execution(job)
        done = threading.Event()
        beat = threading.Thread(
            target=self._beat_while_running,
            args=(job, execution, done),
            name=f"heartbeat-{job.id}",
            daemon=True,
        )
        beat.start()
        try:
            self.perform_job(job, queue, execution)
        finally:
            done.set()
            beat.join()
        self.set_state(WorkerStatus.IDLE)

    def _beat_while_running(self, job: Job, execution: Execution, done: threading.Event) -> None:
        while not done.wait(HEARTBEAT_INTERVAL_S):
            try:
                self.maintain_heartbeats(job, execution)
            except redis.RedisError as exc:  # Redis away for a moment: try again next beat
                log.warning("job heartbeat failed", job=job.id, error=str(exc))


class ContextWorker(HeartbeatWorker):
    """A :class:`HeartbeatWorker` that hands ``context`` to every :class:`ContextJob` it runs."""

    def __init__(self, *args: Any, context: Any, **kwargs: Any) -> None:
        kwargs.setdefault("job_class", ContextJob)
        super().__init__(*args, **kwargs)
        self.context = context

    def execute_job(self, job: Job, queue: Queue) -> None:
        if isinstance(job, ContextJob):
            job.context = self.context
        super().execute_job(job, queue)
