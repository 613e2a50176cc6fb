"""A worker process's jobs: many rq jobs held at once as coroutines on the process's one loop.

:class:`WorkerRuntime` takes jobs from rq (through :class:`~common.rq_internals.AsyncJobWorker`,
one rq worker holding many executions) as long as the VLM fleet has room for the requests they
would send (:mod:`workers.intake` decides how many), runs each as a task on the loop with its
process's :class:`~workers.context.WorkerContext`, and records how each ended with rq's own
steps. So the requests a process keeps in flight are bounded by what the fleet accepts, not by
a number of threads or held jobs.

Invariants:
* rq's calls are synchronous: they run in a small thread pool of their own, never on the loop
  (the jobs' blocking work uses the loop's default pool);
* a held job is STARTED and in the StartedJobRegistry from before its coroutine starts until
  it is settled; a side thread renews every held execution every
  :data:`~common.rq_internals.HEARTBEAT_INTERVAL_S` (also while the loop is busy), so a
  process that dies (SIGKILL, OOM) has its jobs found abandoned by any live worker's
  maintenance about :data:`~common.rq_internals.EXECUTION_TTL_S` later and retried by rq;
* a job ends exactly one way: settled (rq's result, retry with its interval, or failure; a
  :class:`~common.errors.PermanentError` is not retried), handed back to the front of its
  queue (a warm stop past its grace: no retry used), or, when Redis is gone at that moment,
  left to lapse (rq's abandoned-job path retries it);
* a job runs at most ``job.timeout`` seconds (rq's timeout; it is cancelled and fails with
  rq's ``JobTimeoutException``). A job that blocks the loop cannot be timed out: job functions
  do their blocking work off the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, runtime_checkable

import redis
from rq.timeouts import JobTimeoutException

from narrator.common.logging import get_logger
from narrator.common.metrics import WORKER_JOBS
from narrator.common.rq_internals import (
    HEARTBEAT_INTERVAL_S,
    AsyncJobWorker,
    Claim,
    ExcInfo,
)
from narrator.workers.context import WorkerContext
from narrator.workers.intake import IntakeLimits, IntakeView, RequestsPerJob, jobs_to_take
from narrator.workers.vlm_api import VLM, AnswerParser, ChatAnswer, ChatRequest

log = get_logger(__name__)

T = TypeVar("T")

RQ_THREADS = 8  # threads for rq's synchronous calls (claims, settles, maintenance)
CLAIM_BATCH = 32  # jobs claimed per call: they start before the next batch is claimed
IDLE_WAIT_S = 1  # longest wait in Redis for a job when none is queued (a stop waits this)
TICK_S = 0.1  # longest pause between intake decisions while nothing changes
DECISION_GAP_S = 0.02  # shortest one: requests end hundreds of times a second
REDIS_BACKOFF_MAX_S = 10.0


@runtime_checkable
class CapacitySignal(Protocol):
    """What the intake reads from the VLM client (``VLMClient`` has it)."""

    def spare_capacity(self) -> int: ...


@dataclass(eq=False)
class HeldJob:
    claim: Claim
    in_progress: int = 0  # VLM requests of this job now in progress
    asked: bool = False  # it sent a request
    work: asyncio.Task[Any] | None = None
    handing_back: bool = False
    stopped: bool = False  # rq's stop-execution command


class TrackedVLM:
    """The process's VLM client as one job sees it: tells the runtime when the job's requests
    start and end."""

    def __init__(
        self, inner: VLM, held: HeldJob, on_change: Callable[[HeldJob, int], None]
    ) -> None:
        self._inner = inner
        self._held = held
        self._on_change = on_change

    async def ask(self, request: ChatRequest, parse: AnswerParser[T]) -> ChatAnswer[T]:
        self._on_change(self._held, 1)
        try:
            return await self._inner.ask(request, parse)
        finally:
            self._on_change(self._held, -1)


@dataclass
class _Beats:
    """The executions the heartbeat thread renews (shared with rq's threads, under a lock)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    claims: list[Claim] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)


class WorkerRuntime:
    """Holds and runs one process's jobs; see the module doc. :meth:`serve` runs until the
    queue is drained (``burst``) or :meth:`request_stop` is called and the jobs are done or
    handed back."""

    def __init__(
        self,
        worker: AsyncJobWorker,
        ctx: WorkerContext,
        limits: IntakeLimits,
        *,
        burst: bool = False,
        stop_grace_s: float = 3.0,
    ) -> None:
        self.worker = worker
        self.ctx = ctx
        self.limits = limits
        self.burst = burst
        self.stop_grace_s = stop_grace_s
        self.held: dict[str, HeldJob] = {}  # job id -> held job (the loop's thread only)
        self.busy = 0  # held jobs with a request in progress
        self.starting = 0  # held jobs that have not sent a request yet
        self.in_progress = 0  # requests of held jobs in progress
        self.per_job = RequestsPerJob()
        self._capacity = ctx.client if isinstance(ctx.client, CapacitySignal) else None
        self._beats = _Beats()
        self._rq = ThreadPoolExecutor(RQ_THREADS, thread_name_prefix="narrator-rq")
        self._changed = asyncio.Event()
        self._stop = asyncio.Event()
        self._hand_back_now = asyncio.Event()
        self._runners: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- control -------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Warm stop: take no more jobs, let the held ones finish for ``stop_grace_s``, then
        hand the rest back. Called on the loop (a signal handler)."""
        self._stop.set()
        self._changed.set()

    def hand_back_now(self) -> None:
        """Stop at once: hand every held job back without waiting (a second signal)."""
        self._stop.set()
        self._hand_back_now.set()
        self._changed.set()

    async def serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        loop = self._loop

        def stop_job(job_id: str) -> None:  # from rq's command channel thread
            loop.call_soon_threadsafe(self._stop_job, job_id)

        self.worker.on_stop_execution = stop_job
        beat = threading.Thread(target=self._beat_forever, name="narrator-heartbeat", daemon=True)
        beat.start()
        try:
            await self._intake()
            await self._drain()
        finally:
            self._beats.stop.set()
            beat.join(timeout=HEARTBEAT_INTERVAL_S + 1)
            self._rq.shutdown(wait=True)
            self._publish_counts()

    # --- intake --------------------------------------------------------------------------

    def view(self) -> IntakeView:
        per_job = self.per_job.observe(self.in_progress, self.busy)
        spare = self._capacity.spare_capacity() if self._capacity is not None else None
        return IntakeView(held=len(self.held), starting=self.starting, spare=spare, per_job=per_job)

    async def _intake(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                await self._call(self.worker.maintain_if_due)
                wanted = jobs_to_take(self.view(), self.limits)
                if wanted == 0:
                    await self._wait_for_change(TICK_S)
                    continue
                claims = await self._call(self._claim, min(wanted, CLAIM_BATCH), None)
                if not claims:
                    if self.burst and not self.held:
                        log.info("worker_queue_drained")
                        return
                    claims = await self._call(self._claim, 1, IDLE_WAIT_S)
                for claim in claims:
                    self._start(claim)
                backoff = 0.5
            except redis.RedisError as exc:
                log.warning("worker_redis_unavailable", error=str(exc), retry_in_s=backoff)
                await self._wait_for_change(backoff)
                backoff = min(backoff * 2, REDIS_BACKOFF_MAX_S)

    def _claim(self, limit: int, wait_s: int | None) -> list[Claim]:
        """(rq thread) Claim jobs and have them renewed from now on."""
        claims = self.worker.claim(limit, wait_s)
        if claims:
            with self._beats.lock:
                self._beats.claims.extend(claims)
        return claims

    def _release(self, claim: Claim) -> None:
        """(rq thread) Renew ``claim`` no more; once this returns no heartbeat touches it."""
        with self._beats.lock:
            if claim in self._beats.claims:
                self._beats.claims.remove(claim)

    def _start(self, claim: Claim) -> None:
        if self._stop.is_set():  # claimed while a stop was requested: start nothing new
            held = HeldJob(claim, handing_back=True)
            self.held[claim.job.id] = held
            runner = asyncio.create_task(self._hand_back(held))
        else:
            held = HeldJob(claim)
            job_ctx = self.ctx.with_client(TrackedVLM(self.ctx.client, held, self._requests))
            held.work = asyncio.create_task(self._perform(claim, job_ctx), name=claim.job.id)
            self.held[claim.job.id] = held
            self.starting += 1
            runner = asyncio.create_task(self._supervise(held))
        self._runners.add(runner)
        runner.add_done_callback(self._runner_done)
        self._publish_counts()

    def _runner_done(self, runner: asyncio.Task[None]) -> None:
        self._runners.discard(runner)
        if not runner.cancelled() and runner.exception() is not None:
            exc = runner.exception()
            log.error("job_settle_failed", error=repr(exc), exc_info=exc)

    # --- one job -------------------------------------------------------------------------

    async def _perform(self, claim: Claim, job_ctx: WorkerContext) -> Any:
        job = claim.job
        timeout = job.timeout or 180  # rq's default for a job without one
        coro = job.coroutine(job_ctx)
        try:
            async with asyncio.timeout(None if timeout == -1 else timeout) as deadline:
                return await coro
        except TimeoutError:
            if deadline.expired():
                raise JobTimeoutException(
                    f"Task exceeded maximum timeout value ({timeout} seconds)"
                ) from None
            raise

    async def _supervise(self, held: HeldJob) -> None:
        assert held.work is not None
        await asyncio.wait({held.work})
        try:
            if held.work.cancelled():
                if held.handing_back:
                    await self._hand_back(held)
                    return
                stopped = asyncio.CancelledError("stopped by rq's stop-execution command")
                await self._settle(held, exc_info=(asyncio.CancelledError, stopped, None))
                return
            exc = held.work.exception()
            if exc is not None:
                await self._settle(held, exc_info=(type(exc), exc, exc.__traceback__))
            else:
                await self._settle(held, value=held.work.result())
        finally:
            self._forget(held)

    async def _settle(
        self, held: HeldJob, *, value: Any = None, exc_info: ExcInfo | None = None
    ) -> None:
        claim = held.claim
        try:
            await self._call(self._settle_in_thread, claim, value, exc_info)
        except redis.RedisError as exc:
            # rq could not record how the job ended; its registry entry lapses (it is no longer
            # renewed) and rq's abandoned-job path retries it once Redis is back.
            log.warning("redis_lost_during_job", job=claim.job.id, error=str(exc))

    def _settle_in_thread(self, claim: Claim, value: Any, exc_info: ExcInfo | None) -> None:
        self._release(claim)
        self.worker.settle(claim, value=value, exc_info=exc_info)

    async def _hand_back(self, held: HeldJob) -> None:
        claim = held.claim
        try:
            await self._call(self._hand_back_in_thread, claim)
            log.info("job_handed_back", job=claim.job.id)
        except redis.RedisError as exc:
            log.warning("redis_lost_during_job", job=claim.job.id, error=str(exc))
        finally:
            self._forget(held)

    def _hand_back_in_thread(self, claim: Claim) -> None:
        self._release(claim)
        self.worker.hand_back(claim)

    def _requests(self, held: HeldJob, delta: int) -> None:
        """A request of ``held`` started (+1) or ended (-1)."""
        if self.held.get(held.claim.job.id) is not held:
            return  # the job is gone (a request of a cancelled job still unwinding)
        if not held.asked:
            held.asked = True
            self.starting -= 1
        before = held.in_progress
        held.in_progress += delta
        self.in_progress += delta
        if (before == 0) != (held.in_progress == 0):
            self.busy += 1 if before == 0 else -1
            self._publish_counts()
        self._changed.set()

    def _forget(self, held: HeldJob) -> None:
        if self.held.get(held.claim.job.id) is held:
            del self.held[held.claim.job.id]
            if held.work is not None and not held.asked:
                self.starting -= 1
            if held.in_progress:  # a request outlived its job (cancelled, still unwinding)
                self.busy -= 1
                self.in_progress -= held.in_progress
                held.in_progress = 0
        self._publish_counts()
        self._changed.set()

    def _stop_job(self, job_id: str) -> None:
        held = self.held.get(job_id)
        if held is not None and held.work is not None and not held.work.done():
            held.stopped = True
            held.work.cancel()

    # --- stopping ------------------------------------------------------------------------

    async def _drain(self) -> None:
        pending = {h.work for h in self.held.values() if h.work is not None}
        if pending and not self._hand_back_now.is_set():
            log.info("worker_stopping_after_running_jobs", jobs=len(pending))
            hurry = asyncio.create_task(self._hand_back_now.wait())
            await asyncio.wait([*pending, hurry], timeout=self.stop_grace_s)
            hurry.cancel()
        left = [h for h in self.held.values() if h.work is not None and not h.work.done()]
        if left:
            log.info("worker_handing_back_jobs", jobs=len(left))
        for held in left:
            held.handing_back = True
            assert held.work is not None
            held.work.cancel()
        while self._runners:
            await asyncio.wait(set(self._runners))
        self.worker.set_busy(False)

    # --- plumbing ------------------------------------------------------------------------

    async def _call(self, func: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._rq, functools.partial(func, *args))

    async def _wait_for_change(self, timeout_s: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout_s)
        await asyncio.sleep(DECISION_GAP_S)
        self._changed.clear()

    def _publish_counts(self) -> None:
        WORKER_JOBS.labels(state="starting").set(self.starting)
        WORKER_JOBS.labels(state="busy").set(self.busy)
        WORKER_JOBS.labels(state="between").set(len(self.held) - self.busy - self.starting)

    def _beat_forever(self) -> None:
        beats = self._beats
        while not beats.stop.wait(HEARTBEAT_INTERVAL_S):
            with beats.lock:
                try:
                    self.worker.beat(list(beats.claims))
                except redis.RedisError as exc:  # Redis away for a moment: try again next beat
                    log.warning("job_heartbeat_failed", jobs=len(beats.claims), error=str(exc))
