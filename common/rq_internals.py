"""Every place narrator reaches below rq's public API, in one module (rq 3.0.x, pinned in
``pyproject.toml``: each override below names the rq method it replaces; check them all
before widening the pin).

Overrides, and why each exists:

* :class:`ContextJob` overrides ``Job._execute``: rq calls ``func(*args)`` and runs a coroutine
  with ``asyncio.run`` (a fresh event loop per job). A narrator job gets its process's
  services first (``func(context, *args)``, as arq passes ``ctx``) and its coroutine runs on
  the process's persistent loop, so the VLM client's connections, replica state and
  in-flight budgets outlive one job. A :class:`~common.errors.PermanentError` clears the
  job's remaining retries: retrying a malformed dataset or a rejected request cannot help.
* :class:`HeartbeatWorker` overrides ``SimpleWorker.get_heartbeat_ttl`` and
  ``SimpleWorker.execute_job``: a SimpleWorker does not heartbeat while its job runs, so its
  StartedJobRegistry entry lives ``job timeout + 60 s`` and a worker killed mid-job (SIGKILL,
  OOM) would hold its job for half an hour. The entry is kept short
  (:data:`EXECUTION_TTL_S`) and renewed from a side thread while the job runs (rq's own
  ``maintain_heartbeats``); once a dead worker's entry expires, the next registry maintenance
  of any live worker (every :data:`MAINTENANCE_INTERVAL_S`) treats the job as abandoned and
  retries or fails it. When Redis goes away while a job runs, rq cannot record the job's end
  and would stop the worker; this worker waits for Redis instead.
* :class:`ContextWorker` extends ``execute_job`` to hand its context to each job.
* :class:`ThreadedWorker` (several workers in threads of one process) overrides
  ``death_penalty_class`` (a timer thread: SIGALRM only reaches the main thread),
  ``_install_signal_handlers`` (signals belong to the process, :mod:`workers.main`) and
  ``dequeue_job_and_maintain_ttl`` (rq's idle wait ends only on a signal; waiting in short
  slices lets a stop request end it within :data:`STOP_POLL_S`).

Leftovers of interrupted jobs ("half states"; a Ctrl-C, a SIGKILL or a lost Redis
connection can leave each of them, and rq's own calls raise on some):

* an execution listed in a job's execution registry whose hash already expired (it lives
  the heartbeat TTL, the registry entry 60 s longer): ``Job.delete`` raises
  ``ValueError: Execution ... not found in Redis``;
* a job hash without its ``data`` field (a status written after the job was deleted):
  ``Job.fetch_many`` raises ``NoSuchJobError`` for the whole batch;
* a job marked queued that is in no queue (popped by a worker that died before starting it,
  it sits in rq's intermediate queue), marked started by a dead worker, or marked scheduled
  but in no scheduled registry.

:func:`fetch_jobs`, :func:`live_flags` and :func:`discard_job` read and remove such jobs
without raising, so the producer can always replace them.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import redis
from rq.exceptions import NoSuchJobError, StopRequested
from rq.executions import Execution, ExecutionRegistry
from rq.job import Job, JobStatus
from rq.queue import Queue
from rq.registry import (
    CanceledJobRegistry,
    DeferredJobRegistry,
    FailedJobRegistry,
    FinishedJobRegistry,
    ScheduledJobRegistry,
    StartedJobRegistry,
)
from rq.results import Result
from rq.serializers import JSONSerializer
from rq.timeouts import TimerDeathPenalty
from rq.worker import SimpleWorker, Worker, WorkerStatus

from narrator.common.errors import PermanentError
from narrator.common.logging import get_logger

log = get_logger(__name__)

EXECUTION_TTL_S = 20  # a running job whose worker stops heartbeating is abandoned after this
HEARTBEAT_INTERVAL_S = 4.0  # how often a running job's registry entry is renewed
MAINTENANCE_INTERVAL_S = 10  # how often a worker looks for abandoned jobs
IDLE_WORKER_TTL_S = 20  # idle dequeue wait = this - 15 s, so maintenance runs that often
REDIS_WAIT_MAX_S = 10.0  # longest pause between pings while Redis is away
STOP_POLL_S = 2  # how often an idle threaded worker checks for a stop request
FEW_JOBS = 64  # up to this many jobs, queue membership is asked per job (LPOS)

CoroutineRunner = Callable[[Coroutine[Any, Any, Any]], Any]


# --- jobs and workers ----------------------------------------------------------------------


class ContextJob(Job):
    """A job whose function receives its process's context first; see the module doc."""

    context: Any = None
    run_coroutine: CoroutineRunner | None = None

    def _execute(self) -> Any:
        try:
            if not self.func:
                raise ValueError("cannot execute job: function is None")
            if self.context is not None:
                result = self.func(self.context, *self.args, **self.kwargs)
            else:
                result = self.func(*self.args, **self.kwargs)
            if asyncio.iscoroutine(result):
                if self.run_coroutine is None:
                    result.close()
                    raise RuntimeError(f"job {self.id} is async; run it with a ContextWorker")
                return self.run_coroutine(result)
            return result
        except PermanentError:
            self.retries_left = 0  # retrying cannot help; fail now and record why
            raise


class HeartbeatWorker(SimpleWorker):
    """A SimpleWorker whose running jobs stay visibly alive, so dead peers are found fast."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("maintenance_interval", MAINTENANCE_INTERVAL_S)
        kwargs.setdefault("worker_ttl", IDLE_WORKER_TTL_S)
        kwargs.setdefault("serializer", JSONSerializer)
        kwargs.setdefault("job_class", ContextJob)
        super().__init__(*args, **kwargs)

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        return EXECUTION_TTL_S

    def execute_job(self, job: Job, queue: Queue) -> None:
        try:
            self._execute_with_heartbeat(job, queue)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            # Redis went away while the job ran, so rq could not record how it ended. The
            # job's registry entry lapses once Redis is back and the abandoned-job path
            # retries it; this worker waits and carries on.
            log.warning("redis_lost_during_job", job=job.id, error=str(exc))
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
                log.warning("job_heartbeat_failed", job=job.id, error=str(exc))


class ContextWorker(HeartbeatWorker):
    """A :class:`HeartbeatWorker` that hands ``context`` (and the runner of async jobs) to
    every :class:`ContextJob` it runs. Without a context, job functions are called with
    their arguments only."""

    def __init__(
        self,
        *args: Any,
        context: Any = None,
        run_coroutine: CoroutineRunner | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.context = context
        self.run_coroutine = run_coroutine

    def execute_job(self, job: Job, queue: Queue) -> None:
        if isinstance(job, ContextJob):
            job.context = self.context
            job.run_coroutine = self.run_coroutine
        super().execute_job(job, queue)


class ThreadedWorker(ContextWorker):
    """One of several rq workers in threads of one process, sharing its context.

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
        while not self._stop_requested:
            result = super().dequeue_job_and_maintain_ttl(
                timeout, max_idle_time=STOP_POLL_S if timeout is not None else None
            )
            if result is not None or timeout is None:
                return result
        raise StopRequested()


# --- leftovers of interrupted jobs -----------------------------------------------------------


def fetch_jobs(conn: redis.Redis, job_ids: Sequence[str]) -> list[Job | None]:
    """The jobs of ``job_ids`` (None where there is none). A job hash that cannot be read
    (a leftover without its payload) is removed, with the job's other keys, and reads as None.
    """
    try:
        return list(Job.fetch_many(job_ids, connection=conn, serializer=JSONSerializer))
    except NoSuchJobError:
        pass  # at least one unreadable hash in the batch: read them one by one
    out: list[Job | None] = []
    for job_id in job_ids:
        try:
            out.append(Job.fetch_many([job_id], connection=conn, serializer=JSONSerializer)[0])
        except NoSuchJobError:
            log.warning("unreadable_job_leftover_removed", job=job_id)
            _delete_job_keys(conn, Job(job_id, connection=conn, serializer=JSONSerializer))
            out.append(None)
    return out


def live_worker_names(conn: redis.Redis) -> set[str]:
    return {w.name for w in Worker.all(connection=conn)}


def live_flags(conn: redis.Redis, jobs: Sequence[Job | None]) -> list[bool]:
    """For each job: will rq still run it (or is it running) without narrator's help?

    Queued: in its queue, or just popped (rq's intermediate queue) while a worker lives.
    Started: by a worker that is alive. Scheduled: in the scheduled registry (a retry waiting
    its interval). Anything else (finished, failed, stopped, canceled, deferred, or a state
    its registries do not confirm) is not live and may be replaced.
    """
    present = [j for j in jobs if j is not None]
    if not present:
        return [False] * len(jobs)
    workers = live_worker_names(conn)
    statuses = [j.get_status(refresh=False) for j in present]
    queued = [j for j, s in zip(present, statuses, strict=True) if s == JobStatus.QUEUED]
    in_queue = _queued_ids(conn, queued)
    flags: dict[str, bool] = {}
    for job, status in zip(present, statuses, strict=True):
        if status == JobStatus.QUEUED:
            live = job.id in in_queue.get("queue", set()) or (
                bool(workers) and job.id in in_queue.get("intermediate", set())
            )
        elif status == JobStatus.STARTED:
            live = job.worker_name in workers
        elif status == JobStatus.SCHEDULED:
            registry = ScheduledJobRegistry(job.origin, connection=conn)  # type: ignore[no-untyped-call]
            live = conn.zscore(registry.key, job.id) is not None
        else:
            live = False
        flags[job.id] = live
    return [False if j is None else flags[j.id] for j in jobs]


def _queued_ids(conn: redis.Redis, jobs: Sequence[Job]) -> dict[str, set[str]]:
    """Which of ``jobs`` are in their queue's list / its intermediate list."""
    out: dict[str, set[str]] = {"queue": set(), "intermediate": set()}
    by_origin: dict[str, list[Job]] = {}
    for job in jobs:
        by_origin.setdefault(job.origin, []).append(job)
    for origin, members in by_origin.items():
        queue = Queue(origin, connection=conn, serializer=JSONSerializer)
        for kind, key in (("queue", queue.key), ("intermediate", queue.intermediate_queue_key)):
            if len(members) <= FEW_JOBS:
                with conn.pipeline(transaction=False) as pipe:
                    for job in members:
                        pipe.lpos(key, job.id)
                    found = pipe.execute()
                out[kind] |= {
                    j.id for j, pos in zip(members, found, strict=True) if pos is not None
                }
            else:
                ids = {
                    i.decode() if isinstance(i, bytes) else str(i) for i in conn.lrange(key, 0, -1)
                }
                out[kind] |= {j.id for j in members} & ids
    return out


def discard_job(conn: redis.Redis, job: Job) -> None:
    """Remove ``job`` (hash, result stream, executions, queue and registry entries), whatever
    half state an interrupted worker left it in."""
    _drop_expired_executions(conn, job)
    try:
        job.delete(remove_from_queue=True)
    except (ValueError, NoSuchJobError, redis.ResponseError) as exc:
        log.warning("job_leftover_removed_by_hand", job=job.id, error=str(exc))
        _delete_job_keys(conn, job)
    if job.origin:
        # rq's delete leaves a job popped by a worker that died in the intermediate queue,
        # whose cleanup would later fail the job enqueued again under the same id.
        intermediate = Queue(job.origin, connection=conn).intermediate_queue
        with conn.pipeline(transaction=False) as pipe:
            pipe.lrem(intermediate.key, 0, job.id)
            pipe.delete(intermediate.get_first_seen_key(job.id))
            pipe.execute()


def _drop_expired_executions(conn: redis.Redis, job: Job) -> None:
    """Forget executions listed for ``job`` whose hash has expired (so rq's delete, which
    reads every listed execution, does not raise)."""
    registry = ExecutionRegistry(job_id=job.id, connection=conn)
    ids = [i.decode() if isinstance(i, bytes) else str(i) for i in conn.zrange(registry.key, 0, -1)]
    if not ids:
        return
    executions = [Execution(id=i, job_id=job.id, connection=conn) for i in ids]
    with conn.pipeline(transaction=False) as pipe:
        for execution in executions:
            pipe.exists(execution.key)
        alive = pipe.execute()
    gone = [e for e, ok in zip(executions, alive, strict=True) if not ok]
    if not gone:
        return
    started = StartedJobRegistry(job.origin or "default", connection=conn)
    with conn.pipeline(transaction=False) as pipe:
        for execution in gone:
            pipe.zrem(registry.key, execution.id)
            pipe.zrem(started.key, execution.composite_key)
        pipe.execute()


def _delete_job_keys(conn: redis.Redis, job: Job) -> None:
    """The fallback of :func:`discard_job`: every key and entry rq keeps for one job."""
    registry = ExecutionRegistry(job_id=job.id, connection=conn)
    ids = [i.decode() if isinstance(i, bytes) else str(i) for i in conn.zrange(registry.key, 0, -1)]
    executions = [Execution(id=i, job_id=job.id, connection=conn) for i in ids]
    origins = {job.origin} if job.origin else set()
    origins |= {q.name for q in Queue.all(connection=conn)}
    with conn.pipeline(transaction=False) as pipe:
        for origin in origins:
            queue = Queue(origin, connection=conn, serializer=JSONSerializer)
            pipe.lrem(queue.key, 0, job.id)
            pipe.lrem(queue.intermediate_queue_key, 0, job.id)
            for registry_class in (
                FinishedJobRegistry,
                FailedJobRegistry,
                DeferredJobRegistry,
                ScheduledJobRegistry,
                CanceledJobRegistry,
            ):
                pipe.zrem(registry_class(origin, connection=conn).key, job.id)
            started = StartedJobRegistry(origin, connection=conn)
            for execution in executions:
                pipe.zrem(started.key, execution.composite_key)
        for execution in executions:
            pipe.delete(execution.key)
        pipe.delete(
            job.key,
            job.dependents_key,
            job.dependencies_key,
            registry.key,
            Result.get_key(job.id),  # type: ignore[no-untyped-call]
        )
        pipe.execute()
