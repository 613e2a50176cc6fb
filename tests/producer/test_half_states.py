"""A resume never crashes on leftovers of an interrupted run (issue 10.7, Ctrl-C and resume).

Each test builds, with rq's own API, a state that an interrupted worker leaves behind, runs
the producer again, and then drains the run with the real roles: the producer replaces the
leftover job and the run commits.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
import redis
from rq import Queue
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer
from rq.worker import SimpleWorker

from narrator.common import keys
from narrator.common.queueing import module_queue
from narrator.producer.enqueue import EnqueueSummary
from narrator.samples.dataset import make_sample_dataset
from narrator.simulator.fleet import Fleet
from tests.support.job_support import committed, drain, enqueue, settings
from tests.support.processes import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

VQA_ONLY = settings(modules=["vqa"])


def _first_run(tmp_path: Path, conn: redis.Redis) -> tuple[Path, EnqueueSummary, Job]:
    root = make_sample_dataset(tmp_path / "dataset", episodes=2, cameras=1, episodes_per_file=2)
    summary = enqueue(conn, root, tmp_path / "state", annotation=VQA_ONLY)
    job_id = keys.job_id(summary.run_id, "vqa", 0, _vqa_hash(conn, summary))
    job = Job.fetch(job_id, connection=conn, serializer=JSONSerializer)
    return root, summary, job


def _vqa_hash(conn: redis.Redis, summary: EnqueueSummary) -> str:
    raw = conn.hget(keys.run(summary.run_id), "module_hashes")
    assert raw is not None
    return str(orjson.loads(raw)["vqa"])


def _pop(conn: redis.Redis, job_id: str) -> tuple[Job, SimpleWorker]:
    """A worker registers and takes jobs off the queue (rq's dequeue) until it holds
    ``job_id``; the others go back."""
    queue = module_queue(conn)
    worker = SimpleWorker([queue], connection=conn, serializer=JSONSerializer)
    worker.register_birth()
    while True:
        got = Queue.dequeue_any([queue], None, connection=conn, serializer=JSONSerializer)
        assert got is not None, f"{job_id} is not in the queue"
        job, _ = got
        if job.id == job_id:
            return job, worker
        queue.enqueue_job(job)


def _resume_and_drain(
    tmp_path: Path, conn: redis.Redis, redis_url: str, fleet: Fleet, root: Path
) -> EnqueueSummary:
    summary = enqueue(conn, root, tmp_path / "state", annotation=VQA_ONLY)
    drain(redis_url, fleet.urls)
    return summary


def test_resume_replaces_a_started_job_whose_execution_expired(
    tmp_path: Path, redis_url: str, fleet: Fleet
) -> None:
    """The crash of the issue: the worker died mid-job; its execution hash expired while the
    job's execution registry still lists it (rq keeps the entry 60 s longer), so rq's
    ``Job.delete`` raised ``ValueError: Execution ... not found in Redis``."""
    conn = redis.Redis.from_url(redis_url)
    root, _, job = _first_run(tmp_path, conn)
    job, worker = _pop(conn, job.id)
    with conn.pipeline() as pipe:
        execution = Execution.create(job, ttl=1, pipeline=pipe, worker_name=worker.name)
        pipe.execute()
    worker.prepare_job_execution(job, remove_from_intermediate_queue=True)
    worker.register_death()  # type: ignore[no-untyped-call]
    assert job.get_status() == JobStatus.STARTED
    wait_until(lambda: not conn.exists(execution.key), 10, "the execution hash expires")
    assert execution.id in [e.decode() for e in conn.zrange(job.execution_registry.key, 0, -1)]

    summary = _resume_and_drain(tmp_path, conn, redis_url, fleet, root)
    assert committed(conn, summary)


def test_resume_replaces_a_job_hash_without_its_payload(
    tmp_path: Path, redis_url: str, fleet: Fleet
) -> None:
    """A status written after the job's hash was deleted leaves a hash with no payload; rq's
    ``Job.fetch_many`` raises ``NoSuchJobError`` for the whole batch on it."""
    conn = redis.Redis.from_url(redis_url)
    root, _, job = _first_run(tmp_path, conn)
    job.delete()
    job.set_status(JobStatus.STARTED)
    assert conn.hkeys(job.key) == [b"status"]

    summary = _resume_and_drain(tmp_path, conn, redis_url, fleet, root)
    assert committed(conn, summary)


def test_resume_replaces_a_job_popped_by_a_worker_that_died_before_starting_it(
    tmp_path: Path, redis_url: str, fleet: Fleet
) -> None:
    """rq moves a dequeued job to an intermediate list before the worker marks it started;
    a worker killed in between leaves it queued in no queue, so nothing would ever run it
    (rq's maintenance fails it a minute later)."""
    conn = redis.Redis.from_url(redis_url)
    root, _, job = _first_run(tmp_path, conn)
    job, worker = _pop(conn, job.id)
    worker.register_death()  # type: ignore[no-untyped-call]
    queue = module_queue(conn)
    assert job.get_status() == JobStatus.QUEUED and job.id not in queue.get_job_ids()

    summary = _resume_and_drain(tmp_path, conn, redis_url, fleet, root)
    assert committed(conn, summary)
    assert conn.llen(queue.intermediate_queue_key) == 0
