"""Process faults: the roles run as child processes (``python -m narrator worker|writer``) so
they can be killed, against a real Redis that can be killed too.

* A worker process SIGKILLed in the middle of jobs: its jobs are abandoned (the worker's
  heartbeat stops), a surviving worker's registry maintenance hands them back to rq's retry,
  and the run completes.
* The writer SIGKILLed in the middle of a shard rewrite and again in the middle of the
  commit (a slowed disk keeps both windows open): every data shard is always the old file or
  the new one, and a restarted writer finishes the run.
* Redis SIGKILLed mid-run and restarted on the same directory and port (append-only file):
  workers and writer reconnect and the run completes.

Each run's output must equal a clean run's on another copy of the same dataset, byte for
byte (the simulated VLM answers deterministically).
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import redis
from rq.job import Job
from rq.serializers import JSONSerializer
from rq.worker import Worker

from narrator.common.prompts import load_prompts
from narrator.common.queueing import JobOptions
from narrator.local.redis_server import LocalRedis
from narrator.local.run import annotate, child_env
from narrator.ops.status import format_status, read_status
from narrator.producer.enqueue import enqueue_run
from narrator.samples.dataset import make_sample_dataset
from narrator.simulator.config import DEFAULT_MODEL
from narrator.simulator.fleet import Fleet
from tests.support.pipeline_support import file_hashes, output_hashes, pipeline_config
from tests.support.processes import RoleProcess, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240), pytest.mark.fleet(2)]

# The writer with a slow disk: every fsync takes FSYNC_DELAY_S, so a shard rewrite (temp
# file, fsync, rename) and the commit (renames, fsyncs, info.json) stay open long enough
# for the test to kill the process inside them.
FSYNC_DELAY_S = 0.4
SLOW_DISK_WRITER = f"""
import os, sys, time
_fsync = os.fsync
def slow_fsync(fd):
    time.sleep({FSYNC_DELAY_S})
    _fsync(fd)
os.fsync = slow_fsync
from narrator.cli.main import main
sys.exit(main(["writer"]))
"""


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_sample_dataset(
        tmp_path_factory.mktemp("faults-proc") / "original",
        episodes=6,
        cameras=1,
        episodes_per_file=2,
        min_length=20,
        max_length=40,
    )


@pytest.fixture(scope="module")
def clean(original: Path, fleet: Fleet, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The output hashes of an uninterrupted run."""
    work = tmp_path_factory.mktemp("clean")
    root = work / "dataset"
    shutil.copytree(original, root)
    fleet.reset()
    result = annotate(
        pipeline_config(fleet.urls, redis_url=None, state_dir=work / "state"), root, progress=False
    )
    assert result.exit_code == 0
    return output_hashes(root)


class Run:
    """A run registered by the producer (in this process); roles are started by the test."""

    def __init__(self, original: Path, work: Path, fleet: Fleet, redis_url: str) -> None:
        self.root = work / "dataset"
        shutil.copytree(original, self.root)
        self.work = work
        self.redis_url = redis_url
        self.conn = redis.Redis.from_url(redis_url)
        self.config = pipeline_config(fleet.urls, redis_url=redis_url, state_dir=work / "state")
        self.env = child_env(self.config, redis_url)
        summary = enqueue_run(
            self.conn,
            self.root,
            settings=self.config.annotation,
            prompts=load_prompts(),
            model=DEFAULT_MODEL,
            options=JobOptions(job_retries=3, retry_intervals_s=(1, 2, 5)),
            staging_dir=work / "state" / "staging",
        )
        self.run_id = summary.run_id
        self.staging = work / "state" / "staging" / self.run_id

    def role(self, *args: str, code: str | None = None, name: str | None = None) -> RoleProcess:
        return RoleProcess(args, self.env, self.work / "logs", code=code, name=name)

    def committed(self) -> bool:
        return read_status(self.conn, self.run_id).committed

    def wait_committed(self, timeout_s: float, *roles: RoleProcess) -> None:
        try:
            wait_until(self.committed, timeout_s, "the run did not complete")
        except AssertionError:
            status = format_status(read_status(self.conn, self.run_id))
            logs = "\n".join(f"--- {r.log_path.name}\n{r.log_tail()}" for r in roles)
            raise AssertionError(f"the run did not complete\n{status}\n{logs}") from None


# --- a worker process killed mid-job --------------------------------------------------------


def _busy_worker_pids(conn: redis.Redis) -> dict[int, list[str]]:
    busy: dict[int, list[str]] = {}
    for worker in Worker.all(connection=conn):
        job_id = worker.get_current_job_id()
        if job_id and worker.pid:
            busy.setdefault(int(worker.pid), []).append(job_id)
    return busy


def test_worker_killed_mid_job_is_rerun_and_the_run_completes(
    original: Path,
    fleet: Fleet,
    clean: dict[str, str],
    redis_url: str,
    tmp_path: Path,
) -> None:
    for i in range(2):
        fleet.set_faults(i, latency_s=0.4)  # jobs last long enough to be caught running
    fleet.reset()
    try:
        run = Run(original, tmp_path, fleet, redis_url)
        workers = run.role("worker", "--workers", "2", "--jobs-per-worker", "2")
        writer = run.role("writer")
        with workers, writer:
            wait_until(lambda: _busy_worker_pids(run.conn), 60, "no worker started a job")
            victim, jobs = next(iter(_busy_worker_pids(run.conn).items()))
            assert victim != workers.pid  # a pool child, not the parent
            os.kill(victim, signal.SIGKILL)
            fleet.set_faults(0, latency_s=0.02)
            fleet.set_faults(1, latency_s=0.02)

            def victims_retried() -> bool:
                found = Job.fetch_many(jobs, connection=run.conn, serializer=JSONSerializer)
                return any(j is not None and (j.retries_left or 0) < 3 for j in found)

            # Its heartbeat stopped: a surviving worker's maintenance finds the jobs
            # abandoned and hands them to rq's retry (one of their 3 retries used).
            wait_until(victims_retried, 90, f"the killed worker's jobs {jobs} were not retried")
            run.wait_committed(150, workers, writer)
        status = read_status(run.conn, run.run_id)
        assert not status.failed_jobs
    finally:
        for i in range(2):
            fleet.set_faults(i, latency_s=0.0)
    assert output_hashes(run.root) == clean


# --- the writer killed mid-rewrite and mid-commit ------------------------------------------


def _temp_shards(staging: Path) -> list[Path]:
    return [p for p in staging.rglob(".*.tmp-*")] if staging.exists() else []


def _journal(staging: Path) -> list[Path]:
    return list(staging.rglob("COMMIT.json")) if staging.exists() else []


def _shards_are_old_or_new(
    root: Path, original: Path, clean: dict[str, str], *, strays_allowed: bool = False
) -> int:
    """Every data shard is byte-identical to the original or to the clean result and reads
    back as parquet; returns how many are already the new one. Unless ``strays_allowed``
    (a writer was just killed inside an atomic write), no file was added or removed."""
    before = file_hashes(original)
    now = file_hashes(root)
    new = 0
    for rel, digest in now.items():
        if rel.startswith("data/"):
            assert digest in (before[rel], clean[rel]), f"{rel} is neither old nor new"
            pq.ParquetFile(root / rel)  # readable
            new += digest == clean[rel] != before[rel]
    if not strays_allowed:
        assert set(now) == set(before), "files appeared or vanished in the dataset"
    return new


def test_writer_killed_mid_rewrite_and_mid_commit(
    original: Path,
    fleet: Fleet,
    clean: dict[str, str],
    redis_url: str,
    tmp_path: Path,
) -> None:
    run = Run(original, tmp_path, fleet, redis_url)
    with run.role("worker", "--workers", "1", "--jobs-per-worker", "4") as workers:
        # 1. Killed while a shard is being rewritten into the staging directory.
        writer = run.role(code=SLOW_DISK_WRITER, name="writer-1").start()
        wait_until(lambda: _temp_shards(run.staging), 90, "no shard rewrite was seen")
        writer.kill()
        assert _shards_are_old_or_new(run.root, original, clean) == 0
        assert not run.committed()

        # 2. Restarted; killed again once the commit has swapped in some shards, not all.
        writer = run.role(code=SLOW_DISK_WRITER, name="writer-2").start()
        wait_until(
            lambda: _journal(run.staging) and _shards_are_old_or_new(run.root, original, clean),
            120,
            "the commit never started",
            interval_s=0.02,
        )
        writer.kill()
        swapped = _shards_are_old_or_new(run.root, original, clean)
        total = sum(1 for rel in clean if rel.startswith("data/"))
        assert 0 < swapped < total, (swapped, total)
        assert not run.committed()

        # 3. Restarted: it resumes the commit at start; killed again while the new
        #    meta/info.json is being written beside the old one (every shard swapped in).
        writer = run.role(code=SLOW_DISK_WRITER, name="writer-3").start()
        wait_until(
            lambda: list((run.root / "meta").glob(".info.json.tmp-*")),
            60,
            "the resumed commit never reached meta/info.json",
            interval_s=0.01,
        )
        writer.kill()
        assert _shards_are_old_or_new(run.root, original, clean, strays_allowed=True) == total
        assert file_hashes(run.root)["meta/info.json"] == file_hashes(original)["meta/info.json"]
        assert not run.committed()

        # 4. A normal writer finishes the interrupted commit at start.
        with run.role("writer", name="writer-4") as final:
            run.wait_committed(60, workers, final)
    assert output_hashes(run.root) == clean
    assert set(file_hashes(run.root)) == set(file_hashes(original))
    assert not any(p.is_file() for p in run.staging.rglob("*"))  # staging emptied


# --- Redis killed mid-run --------------------------------------------------------------------


def test_redis_killed_and_restarted_mid_run(
    original: Path,
    fleet: Fleet,
    clean: dict[str, str],
    tmp_path: Path,
) -> None:
    server = LocalRedis(tmp_path / "redis").start()
    try:
        for i in range(2):
            fleet.set_faults(i, latency_s=0.1)
        fleet.reset()
        run = Run(original, tmp_path, fleet, server.url)
        workers = run.role("worker", "--workers", "1", "--jobs-per-worker", "3")
        writer = run.role("writer")
        with workers, writer:
            wait_until(
                lambda: sum(fleet.stats(i)["requests_total"] for i in range(2)) >= 10,
                60,
                "the run made no progress",
            )
            server.kill()
            time.sleep(2.0)
            server = LocalRedis(tmp_path / "redis", port=server.port).start()
            for i in range(2):
                fleet.set_faults(i, latency_s=0.0)
            run.conn = redis.Redis.from_url(server.url)
            run.wait_committed(150, workers, writer)
            assert workers.proc is not None and workers.proc.poll() is None
            assert writer.proc is not None and writer.proc.poll() is None
    finally:
        for i in range(2):
            fleet.set_faults(i, latency_s=0.0)
        server.stop()
    assert output_hashes(run.root) == clean
