"""The worker runtime: many rq jobs held by one process as coroutines on its loop, with rq's
own bookkeeping (a real Redis, real rq, the simulated VLM over HTTP, the runtime in-process).

* jobs get the process's context (through the job's view of the VLM client) and rq records
  their results; a plain function runs in a thread;
* a PermanentError fails the job at once; another error uses rq's retry with its interval;
* a job past its timeout is cancelled and fails with rq's JobTimeoutException;
* a warm stop lets held jobs finish within the grace and hands the rest back to the front of
  the queue, retries untouched; rq's stop-execution command stops one job;
* one process holds more jobs than ``jobs_per_worker`` while the fleet has room, and never
  more than ``max_jobs_per_worker``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from rq import Queue, Retry
from rq.command import send_stop_execution_command
from rq.executions import ExecutionRegistry
from rq.job import Job, JobStatus
from rq.registry import ScheduledJobRegistry, StartedJobRegistry
from rq.serializers import JSONSerializer

from narrator.common.errors import ConfigError, TransientError
from narrator.common.rq_internals import AsyncJobWorker
from narrator.simulator.config import SimConfig
from narrator.simulator.fleet import Fleet
from narrator.workers.context import WorkerContext, open_worker_context
from narrator.workers.intake import IntakeLimits
from narrator.workers.runtime import TrackedVLM, WorkerRuntime
from narrator.workers.vlm_api import ChatRequest, as_object
from tests.support.pipeline_support import pipeline_config

pytestmark = [pytest.mark.timeout(90), pytest.mark.fleet(1, SimConfig(base_s=0.05))]

QUEUE = "narrator-runtime-test"
GATES: dict[str, asyncio.Event] = {}
CANCELLED: list[str] = []
STARTED_SEEN: list[int] = []  # jobs in the StartedJobRegistry, as each job saw it


# --- job functions (enqueued by dotted name) ------------------------------------------------


async def answer(ctx: WorkerContext, value: int) -> dict[str, Any]:
    return {"value": value, "client": type(ctx.client).__name__}


def plain(ctx: WorkerContext, value: int) -> dict[str, Any]:
    return {"value": value, "in_thread": threading.current_thread() is not threading.main_thread()}


async def refuse(ctx: WorkerContext) -> None:
    raise ConfigError("a permanent problem")


async def flaky(ctx: WorkerContext) -> None:
    raise TransientError("a passing problem")


async def wait_for_gate(ctx: WorkerContext, name: str) -> str:
    try:
        await GATES[name].wait()
    except asyncio.CancelledError:
        CANCELLED.append(name)
        raise
    return name


def _request(item: str) -> ChatRequest:
    return ChatRequest(
        module="vqa",
        item=item,
        messages=[{"role": "user", "content": f"Say something about {item}."}],
        schema={"type": "object", "properties": {"text": {"type": "string"}}},
        schema_name="runtime_test",
        model="narrator-sim-vlm",
        max_tokens=32,
        temperature=0.0,
        seed=1,
    )


def _count_started(conn: redis.Redis) -> int:
    return len(StartedJobRegistry(QUEUE, connection=conn).get_job_ids(cleanup=False))


async def ask_then_wait(ctx: WorkerContext, item: str) -> str:
    await ctx.client.ask(_request(item), as_object)
    STARTED_SEEN.append(await asyncio.to_thread(_count_started, ctx.redis))
    await GATES["release"].wait()
    return item


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _fresh_state() -> Iterator[None]:
    GATES.clear()
    CANCELLED.clear()
    STARTED_SEEN.clear()
    yield


@pytest.fixture
async def ctx(fleet: Fleet, redis_url: str, tmp_path: Path) -> AsyncIterator[WorkerContext]:
    config = pipeline_config(fleet.urls, redis_url=redis_url, state_dir=tmp_path / "s")
    context = await open_worker_context(config)
    yield context
    await context.close()


def _queue(conn: redis.Redis) -> Queue:
    return Queue(QUEUE, connection=conn, serializer=JSONSerializer)


def _fetch(conn: redis.Redis, job: Job) -> Job:
    return Job.fetch(job.id, connection=conn, serializer=JSONSerializer)


class Running:
    """A runtime serving the test queue on the test's loop."""

    def __init__(
        self,
        conn: redis.Redis,
        ctx: WorkerContext,
        *,
        min_jobs: int = 2,
        max_jobs: int = 64,
        burst: bool = True,
        grace_s: float = 30.0,
    ) -> None:
        self.worker = AsyncJobWorker([QUEUE], connection=conn)
        self.worker.begin(burst=burst, with_scheduler=False)
        self.runtime = WorkerRuntime(
            self.worker, ctx, IntakeLimits(min_jobs, max_jobs), burst=burst, stop_grace_s=grace_s
        )
        self.task = asyncio.create_task(self.runtime.serve())

    async def finished(self, timeout_s: float = 60.0) -> None:
        try:
            await asyncio.wait_for(self.task, timeout_s)
        finally:
            self.worker.end()


async def _poll(predicate: Any, timeout_s: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, what
        await asyncio.sleep(0.02)


# --- tests ----------------------------------------------------------------------------------


async def test_jobs_get_the_process_context_and_rq_records_their_results(
    redis_client: redis.Redis, ctx: WorkerContext
) -> None:
    queue = _queue(redis_client)
    done = queue.enqueue(f"{__name__}.answer", 1)
    threaded = queue.enqueue(f"{__name__}.plain", 2)
    await Running(redis_client, ctx).finished()
    assert _fetch(redis_client, done).return_value() == {
        "value": 1,
        "client": TrackedVLM.__name__,  # the process's client as this job sees it
    }
    assert _fetch(redis_client, threaded).return_value() == {"value": 2, "in_thread": True}
    assert _count_started(redis_client) == 0
    assert not ExecutionRegistry(done.id, connection=redis_client).get_execution_ids()


async def test_permanent_errors_fail_at_once_and_others_use_rq_retry(
    redis_client: redis.Redis, ctx: WorkerContext
) -> None:
    queue = _queue(redis_client)
    refused = queue.enqueue(f"{__name__}.refuse", retry=Retry(max=3))
    passing = queue.enqueue(f"{__name__}.flaky", retry=Retry(max=2, interval=[300]))
    await Running(redis_client, ctx).finished()
    failed = _fetch(redis_client, refused)
    assert failed.get_status() == JobStatus.FAILED and failed.retries_left == 0
    assert "a permanent problem" in (failed.latest_result().exc_string or "")  # type: ignore[union-attr]
    retried = _fetch(redis_client, passing)
    assert retried.get_status() == JobStatus.SCHEDULED and retried.retries_left == 1
    assert retried.id in ScheduledJobRegistry(QUEUE, connection=redis_client).get_job_ids()


async def test_a_job_past_its_timeout_is_cancelled_and_fails(
    redis_client: redis.Redis, ctx: WorkerContext
) -> None:
    GATES["never"] = asyncio.Event()
    job = _queue(redis_client).enqueue(f"{__name__}.wait_for_gate", "never", job_timeout=1)
    await Running(redis_client, ctx).finished()
    failed = _fetch(redis_client, job)
    assert failed.get_status() == JobStatus.FAILED
    assert "JobTimeoutException" in (failed.latest_result().exc_string or "")  # type: ignore[union-attr]
    assert CANCELLED == ["never"]


async def test_a_warm_stop_finishes_jobs_within_the_grace(
    redis_client: redis.Redis, ctx: WorkerContext
) -> None:
    GATES["soon"] = asyncio.Event()
    job = _queue(redis_client).enqueue(f"{__name__}.wait_for_gate", "soon")
    running = Running(redis_client, ctx, burst=False, grace_s=60)
    await _poll(lambda: len(running.runtime.held) == 1, 30, "the job was not taken")
    running.runtime.request_stop()
    GATES["soon"].set()
    await running.finished()
    assert _fetch(redis_client, job).get_status() == JobStatus.FINISHED


async def test_a_warm_stop_hands_back_what_outlasts_its_grace(
    redis_client: redis.Redis, ctx: WorkerContext
) -> None:
    GATES["never"] = asyncio.Event()
    queue = _queue(redis_client)
    held = queue.enqueue(f"{__name__}.wait_for_gate", "never", retry=Retry(max=3))
    later = queue.enqueue(f"{__name__}.answer", 3)  # behind it; the process holds one job
    running = Running(redis_client, ctx, min_jobs=1, max_jobs=1, burst=False, grace_s=0.2)
    await _poll(lambda: len(running.runtime.held) == 1, 30, "the job was not taken")
    running.runtime.request_stop()
    await running.finished()
    back = _fetch(redis_client, held)
    assert back.get_status() == JobStatus.QUEUED and back.retries_left == 3
    assert queue.get_job_ids() == [held.id, later.id]  # back at the front
    assert _count_started(redis_client) == 0
    assert not ExecutionRegistry(held.id, connection=redis_client).get_execution_ids()
    assert CANCELLED == ["never"]


async def test_rq_stop_execution_stops_one_job(
    redis_client: redis.Redis, ctx: WorkerContext
) -> None:
    GATES["never"] = asyncio.Event()
    GATES["other"] = asyncio.Event()
    queue = _queue(redis_client)
    stopped = queue.enqueue(f"{__name__}.wait_for_gate", "never", retry=Retry(max=3))
    other = queue.enqueue(f"{__name__}.wait_for_gate", "other")
    running = Running(redis_client, ctx)
    await _poll(lambda: len(running.runtime.held) == 2, 30, "the jobs were not taken")
    (execution_id,) = ExecutionRegistry(stopped.id, connection=redis_client).get_execution_ids()
    send_stop_execution_command(redis_client, stopped.id, execution_id)
    await _poll(lambda: CANCELLED == ["never"], 30, "the job was not stopped")
    GATES["other"].set()
    await running.finished()
    assert _fetch(redis_client, stopped).get_status() == JobStatus.STOPPED
    assert _fetch(redis_client, other).get_status() == JobStatus.FINISHED


@pytest.mark.parametrize("max_jobs", [64, 5])
async def test_a_process_holds_more_jobs_than_jobs_per_worker_while_the_fleet_has_room(
    redis_client: redis.Redis, ctx: WorkerContext, max_jobs: int
) -> None:
    GATES["release"] = asyncio.Event()
    queue = _queue(redis_client)
    jobs = [queue.enqueue(f"{__name__}.ask_then_wait", f"item {i}") for i in range(12)]
    # jobs_per_worker 2: each job sent its request and now waits, so the fleet (one replica,
    # an in-flight limit of 16 to start with) has room for more, and the process takes them.
    running = Running(redis_client, ctx, min_jobs=2, max_jobs=max_jobs)
    expected = min(12, max_jobs)
    await _poll(
        lambda: len(STARTED_SEEN) >= expected and _count_started(redis_client) == expected,
        60,
        f"the process did not hold {expected} jobs at once (saw {STARTED_SEEN})",
    )
    GATES["release"].set()
    await running.finished()
    assert max(STARTED_SEEN) == expected
    assert all(_fetch(redis_client, j).get_status() == JobStatus.FINISHED for j in jobs)
