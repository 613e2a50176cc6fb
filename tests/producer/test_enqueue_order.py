"""The order module jobs reach the queue, and that rq retries chain jobs at its front: long
dependency chains (plan, then interjections) before independent work (vqa), long episodes
first (issue 13.2: the end of a run must not be a serial tail)."""

from __future__ import annotations

import redis
from rq import Queue
from rq.job import Job
from rq.serializers import JSONSerializer

from narrator.common.job_specs import JobOptions, ModuleJob, on_chain
from narrator.common.queueing import module_job_data
from narrator.producer.schedule import enqueue_order


def _job(module: str, episode: int) -> ModuleJob:
    return ModuleJob("run", module, episode, f"{module}-hash")


def test_chains_first_then_longest_episodes_first() -> None:
    jobs = [_job(m, e) for m in ("vqa", "interjections", "plan") for e in (0, 1, 2)]
    lengths = {0: 40, 1: 90, 2: 60}
    order = [(j.module, j.episode) for j in enqueue_order(jobs, lengths)]
    assert order == [
        ("plan", 1),
        ("interjections", 1),
        ("plan", 2),
        ("interjections", 2),
        ("plan", 0),
        ("interjections", 0),
        ("vqa", 1),
        ("vqa", 2),
        ("vqa", 0),
    ]
    # Without lengths (retry-failed reads Redis only): module order, then episode order.
    assert [(j.module, j.episode) for j in enqueue_order(jobs[:3] + jobs[-3:])] == [
        ("plan", 0),
        ("plan", 1),
        ("plan", 2),
        ("vqa", 0),
        ("vqa", 1),
        ("vqa", 2),
    ]


def test_which_modules_are_on_a_chain() -> None:
    assert on_chain("plan") and on_chain("interjections") and not on_chain("vqa")


def test_chain_jobs_are_retried_at_the_front_of_the_queue(redis_client: redis.Redis) -> None:
    queue = Queue("narrator-order-test", connection=redis_client, serializer=JSONSerializer)
    options = JobOptions(job_retries=2, retry_intervals_s=(5, 30))
    for module in ("plan", "vqa"):
        queue.enqueue_many([module_job_data(_job(module, 0), options)])
        job = Job.fetch(_job(module, 0).job_id, redis_client, serializer=JSONSerializer)
        assert job.enqueue_at_front_on_retry is on_chain(module), module
        assert job.retries_left == 2 and job.retry_intervals == [5, 30]
