"""``narrator worker`` as a process: one process holds more episode jobs than
``--jobs-per-worker`` while the fleet has room (issue 13.2), rq sees them all (one worker,
many executions), and the run's jobs all finish (real roles, a real Redis, the simulated VLM
over HTTP)."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer
from rq.worker import Worker

from narrator.common import keys
from narrator.common.runs import load_run
from narrator.samples.dataset import make_sample_dataset
from narrator.simulator.config import SimConfig
from narrator.simulator.fleet import Fleet
from tests.support.job_support import enqueue, pending_members, role_env
from tests.support.processes import RoleProcess, wait_until

# Slow answers (0.4 s each, 64 slots): jobs stay running long enough to be counted.
pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(180),
    pytest.mark.fleet(2, SimConfig(slots=64, base_s=0.4)),
]

JOBS_PER_WORKER = 2
EPISODES = 8


def _started(conn: redis.Redis) -> int:
    return len(StartedJobRegistry(keys.MODULE_QUEUE, connection=conn).get_job_ids(cleanup=False))


def test_one_process_holds_more_jobs_than_jobs_per_worker_when_the_fleet_has_room(
    tmp_path: Path, redis_url: str, fleet: Fleet
) -> None:
    root = make_sample_dataset(
        tmp_path / "dataset", episodes=EPISODES, cameras=1, episodes_per_file=4
    )
    conn = redis.Redis.from_url(redis_url)
    summary = enqueue(conn, root, tmp_path / "state")
    env = role_env(redis_url, fleet.urls, NARRATOR_VLM__HEDGE="false")
    most = 0
    worker = RoleProcess(
        ["worker", "--workers", "1", "--jobs-per-worker", str(JOBS_PER_WORKER)],
        env,
        tmp_path / "logs",
    )
    with worker:

        def many_running() -> bool:
            nonlocal most
            started = _started(conn)
            most = max(most, started)
            if started <= 2 * JOBS_PER_WORKER:
                return False
            # One rq worker holds them, each one of its executions.
            workers = Worker.all(connection=conn)
            held = [len(w.get_current_executions(refresh=True)) for w in workers]
            return max(held, default=0) > 2 * JOBS_PER_WORKER

        try:
            wait_until(many_running, 90, "one process never held many jobs")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: at most {most} jobs ran at once") from None
        wait_until(lambda: not pending_members(conn, summary.run_id), 120, "jobs left pending")
    assert _started(conn) == 0
    ids = [
        keys.job_id(summary.run_id, m, e, h)
        for m, h in load_run(conn, summary.run_id).module_hashes.items()
        for e in range(EPISODES)
    ]
    jobs = Job.fetch_many(ids, connection=conn, serializer=JSONSerializer)
    assert all(j is not None and j.get_status() == JobStatus.FINISHED for j in jobs)
