"""Every place narrator reaches below rq's public API, in one module (rq 3.0.x, pinned in
``pyproject.toml``: each override below names the rq method it replaces or calls; check them
all before widening the pin).

Overrides, and why each exists:

* :class:`ContextJob` overrides ``Job._execute`` so that a
  :class:`~common.errors.PermanentError` clears the job's remaining retries (retrying a
  malformed dataset or a rejected request cannot help), and adds :meth:`ContextJob.coroutine`:
  a narrator job function receives its process's services first (``func(context, *args)``, as
  arq passes ``ctx``) and is awaited on the process's event loop, not ``asyncio.run`` (a fresh
  loop per job), so the VLM client's connections and limits outlive one job.
* :class:`HeartbeatWorker` (the writer's, extended by :class:`ContextWorker` to hand the
  writer's context to each job) overrides ``SimpleWorker.get_heartbeat_ttl`` and
  ``SimpleWorker.execute_job``: a SimpleWorker does not heartbeat while its job runs, so its
  StartedJobRegistry entry lives ``job timeout + 60 s`` and a worker killed mid-job (SIGKILL,
  OOM) would hold its job for half an hour. The entry is kept short
  (:data:`EXECUTION_TTL_S`) and renewed from a side thread while the job runs (rq's own
  ``maintain_heartbeats``); once a dead worker's entry expires, the next registry maintenance
  of any live worker (every :data:`MAINTENANCE_INTERVAL_S`) treats the job as abandoned and
  retries or fails it. When Redis goes away while a job runs, rq cannot record the job's end
  and would stop the worker; this worker waits for Redis instead.
* :class:`AsyncJobWorker` (the module workers) is one rq worker that holds *many* jobs at
  once, each one of rq 3.0's executions (``Worker.executions``, the worker's execution index),
  run as coroutines by :mod:`workers.runtime`. It never runs rq's ``work`` loop; it offers
  rq's own steps one at a time, each synchronous (called off the event loop): claiming a job
  (``Queue.dequeue_any``, ``prepare_execution``, ``prepare_job_execution``: the job is in
  the StartedJobRegistry and STARTED before it runs), renewing every held execution's
  registry entry in one pipeline (what ``maintain_heartbeats`` does per job), settling a job
  (``_finalize_success`` / ``_finalize_failure``: results, rq retries with their intervals,
  the FailedJobRegistry, exactly as ``perform_job`` does), handing a job back to the front of
  its queue (a warm stop that outlasts its grace: no retry is used), registry maintenance
  (``run_maintenance_tasks``: abandoned jobs of dead workers, the intermediate queue, the
  scheduler's restart) and rq's scheduler (``_start_scheduler``). rq's ``stop-execution``
  command cancels that one job (``request_stop_execution``); it is recorded as STOPPED.
  Callbacks run under :class:`~rq.timeouts.TimerDeathPenalty` (SIGALRM only reaches the main
  thread).

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
import inspect
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import redis
from rq.exceptions import DequeueTimeout, NoSuchJobError
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
from rq.utils import now
from rq.worker import SimpleWorker, Worker, WorkerStatus

from narrator.common.errors import PermanentError
from narrator.common.logging import get_logger

log = get_logger(__name__)

EXECUTION_TTL_S = 20  # a running job whose worker stops heartbeating is abandoned after this
HEARTBEAT_INTERVAL_S = 4.0  # how often a running job's registry entry is renewed
MAINTENANCE_INTERVAL_S = 10  # how often a worker looks for abandoned jobs
IDLE_WORKER_TTL_S = 20  # idle dequeue wait = this - 15 s, so maintenance runs that often
REDIS_WAIT_MAX_S = 10.0  # longest pause between pings while Redis is away
FEW_JOBS = 64  # up to this many jobs, queue membership is asked per job (LPOS)

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]


# --- jobs ------------------------------------------------------------------------------------


class ContextJob(Job):
    """A job whose function may receive its process's context first; see the module doc."""

    context: Any = None  # set by :class:`ContextWorker` before the job runs

    def _execute(self) -> Any:
        try:
            if self.context is not None:
                func = self.func
                if func is None:
                    raise ValueError(f"cannot execute job {self.id}: function is None")
                return func(self.context, *self.args, **self.kwargs)
            return super()._execute()
        except PermanentError:
            self.retries_left = 0  # retrying cannot help; fail now and record why
            raise

    def coroutine(self, context: Any) -> Coroutine[Any, Any, Any]:
        """The job's work as one coroutine: ``func(context, *args, **kwargs)`` awaited, or, for
        a plain function, called in a worker thread. Reading the function and its arguments
        deserializes the payload: a payload that is not rq JSON raises here
        (``DeserializationError``), before anything of it runs."""
        func = self.func
        if func is None:
            raise ValueError(f"cannot execute job {self.id}: function is None")
        args, kwargs = self.args, self.kwargs
        if inspect.iscoroutinefunction(func):
            return func(context, *args, **kwargs)  # type: ignore[no-any-return]
        return asyncio.to_thread(func, context, *args, **kwargs)


# --- the writer's worker ---------------------------------------------------------------------


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
    """The writer's worker: a :class:`HeartbeatWorker` that hands ``context`` to every
    :class:`ContextJob` it runs (``func(context, *args)``, as arq passes ``ctx``)."""

    def __init__(self, *args: Any, context: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.context = context

    def execute_job(self, job: Job, queue: Queue) -> None:
        if isinstance(job, ContextJob):
            job.context = self.context
        super().execute_job(job, queue)


# --- the module workers' worker: many jobs held at once --------------------------------------


@dataclass(eq=False)
class Claim:
    """One job this worker holds: rq's job, its queue and its execution."""

    job: ContextJob
    queue: Queue
    execution: Execution


class AsyncJobWorker(SimpleWorker):
    """One rq worker holding many executions at once; see the module doc. Every method is
    synchronous and safe to call from several threads at once."""

    death_penalty_class = TimerDeathPenalty

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("maintenance_interval", MAINTENANCE_INTERVAL_S)
        kwargs.setdefault("worker_ttl", IDLE_WORKER_TTL_S)
        kwargs.setdefault("serializer", JSONSerializer)
        kwargs.setdefault("job_class", ContextJob)
        super().__init__(*args, **kwargs)
        self._lock = threading.Lock()  # the worker's own fields below and rq's _stopped_job_id
        self._stopping: set[str] = set()  # job ids asked to stop (rq's stop-execution)
        self.on_stop_execution: Callable[[str], None] | None = None  # called with a job id

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        return EXECUTION_TTL_S

    def _install_signal_handlers(self) -> None:
        return None  # signals belong to the process (workers/main.py)

    # life cycle

    def begin(self, *, burst: bool, with_scheduler: bool) -> None:
        """Register the worker (rq's ``bootstrap``: birth, command channel) and start rq's
        scheduler (in burst mode: move due jobs once)."""
        self.bootstrap(logging_level="WARNING")
        if with_scheduler:
            self._start_scheduler(burst, logging_level="WARNING")

    def end(self) -> None:
        """Stop the scheduler and register the worker's death (rq's ``teardown``)."""
        self.teardown()  # type: ignore[no-untyped-call]

    def maintain_if_due(self) -> None:
        """rq's registry maintenance (abandoned jobs, the intermediate queue, a scheduler
        that died) when its interval has passed."""
        if self.should_run_maintenance_tasks:
            self.run_maintenance_tasks()  # type: ignore[no-untyped-call]

    # jobs

    def claim(self, limit: int, wait_s: int | None = None) -> list[Claim]:
        """Take up to ``limit`` jobs from the queues, in their order; only when none is queued,
        wait up to ``wait_s`` seconds for one. Each is STARTED and in the StartedJobRegistry
        (heartbeat TTL :data:`EXECUTION_TTL_S`) when this returns."""
        claims: list[Claim] = []
        while len(claims) < limit:
            block = wait_s if not claims and wait_s else None
            try:
                got = Queue.dequeue_any(
                    self._ordered_queues,
                    block,
                    connection=self.connection,
                    job_class=self.job_class,
                    serializer=self.serializer,
                    death_penalty_class=self.death_penalty_class,
                )
            except DequeueTimeout:
                got = None
            if got is None:
                break
            job, queue = got
            assert isinstance(job, ContextJob)
            execution = self.prepare_execution(job)
            try:
                # Also reads the payload (rq's procline names the function): a payload that
                # is not rq JSON fails its job here, as in rq's perform_job.
                self.prepare_job_execution(job, remove_from_intermediate_queue=True)
            except Exception:
                self._finalize_failure(job, queue, execution, sys.exc_info())
                continue
            job.started_at = now()
            claims.append(Claim(job, queue, execution))
        return claims

    def settle(self, claim: Claim, *, value: Any = None, exc_info: ExcInfo | None = None) -> None:
        """Record how a held job ended, as rq's ``perform_job`` would: its result, or its
        failure (rq's retry with its interval, or the FailedJobRegistry; a
        :class:`PermanentError` is not retried, a stopped job is STOPPED)."""
        job, queue, execution = claim.job, claim.queue, claim.execution
        if exc_info is None:
            try:
                self._finalize_success(job, queue, execution, value)
                return
            except redis.RedisError:
                raise
            except Exception:  # e.g. a result the serializer refuses: a failure, as in rq
                exc_info = sys.exc_info()  # type: ignore[assignment]
                assert exc_info is not None
        if isinstance(exc_info[1], PermanentError):
            job.retries_left = 0
        with self._lock:
            stopped = job.id in self._stopping
            self._stopping.discard(job.id)
            if stopped:  # rq reads this one field to record the job as STOPPED
                self._stopped_job_id = job.id
                self._finalize_failure(job, queue, execution, exc_info)
                return
        self._finalize_failure(job, queue, execution, exc_info)

    def hand_back(self, claim: Claim) -> None:
        """Put a held job back at the front of its queue, unfinished and with its retries
        untouched (its execution ends; another worker, or this one, takes it again)."""
        job, queue = claim.job, claim.queue
        with self.connection.pipeline() as pipe:
            pipe.multi()  # rq's enqueue_job opens the transaction unless the caller did
            self.cleanup_execution(job, pipeline=pipe, execution=claim.execution)
            queue.enqueue_job(job, pipeline=pipe, at_front=True)
            pipe.execute()

    def beat(self, claims: Sequence[Claim]) -> None:
        """Renew the worker's key and every held execution's registry entries at once."""
        with self.connection.pipeline() as pipe:
            self.heartbeat(pipeline=pipe)
            stamp = now()
            for claim in claims:
                claim.execution.heartbeat(
                    claim.job.started_job_registry, EXECUTION_TTL_S, pipeline=pipe
                )
                claim.job.heartbeat(stamp, EXECUTION_TTL_S, pipeline=pipe, xx=True)
            pipe.execute()

    def set_busy(self, busy: bool) -> None:
        self.set_state(WorkerStatus.BUSY if busy else WorkerStatus.IDLE)

    def request_stop_execution(self, execution_id: str) -> None:
        """rq's ``stop-execution`` command (from its command channel thread): cancel that
        job; it is recorded as STOPPED and not retried."""
        execution = self.executions.get(execution_id)
        if execution is None or self.on_stop_execution is None:
            log.warning("stop_execution_ignored", execution=execution_id)
            return
        with self._lock:
            self._stopping.add(execution.job_id)
        self.on_stop_execution(execution.job_id)


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
