"""No process of a run outlives `narrator annotate`, however it ends, and an interrupted run
resumes to the same bytes.

* SIGKILL of annotate (no handler runs): its worker pool and pool processes, its writer and
  its embedded redis-server are gone within seconds (checked by pid); the rerun completes and
  its output equals an uninterrupted run's.
* Ctrl-C in a terminal (SIGINT to annotate's whole process group): the embedded redis-server
  does not get it (its own session); annotate stops the workers and the writer first and
  Redis last (with SHUTDOWN, never by the terminal's SIGINT).
* SIGTERM and SIGHUP stop annotate like Ctrl-C (exit 128 + signal), children included.
* A worker pool's processes exit when the pool's parent is SIGKILLed.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from narrator.local.redis_server import LocalRedis
from narrator.simulator.fleet import Fleet
from tests.local.conftest import (
    HOLD_LATENCY_S,
    alive,
    annotate_argv,
    descendants,
    is_redis_server,
    set_latency,
    start_annotate,
)
from tests.support.job_support import requests
from tests.support.pipeline_support import output_hashes
from tests.support.processes import REPO_ROOT, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300), pytest.mark.fleet(2)]

# annotate, then: redis-server, writer, worker pool parent, 2 pool processes (at least).
RUN_PROCESSES = 5


def _running_run(
    original: Path, fleet: Fleet, tmp_path: Path
) -> tuple[Path, Path, list[str], subprocess.Popen[bytes]]:
    """A copy of the dataset with annotate running on it, past its first answers."""
    root = tmp_path / "dataset"
    shutil.copytree(original, root)
    state = tmp_path / "state"
    set_latency(fleet, HOLD_LATENCY_S)
    argv = annotate_argv(root, state, fleet)
    proc = start_annotate(argv, tmp_path / "annotate.log")
    wait_until(
        lambda: requests(fleet) >= 6 and len(descendants(proc.pid)) >= RUN_PROCESSES,
        120,
        "annotate did not get its processes up and answers coming",
    )
    assert proc.poll() is None, (tmp_path / "annotate.log").read_text()[-3000:]
    return root, state, argv, proc


def _rerun_matches(argv: list[str], root: Path, clean: dict[str, str], fleet: Fleet) -> None:
    set_latency(fleet, 0.0)
    rerun = subprocess.run(argv, capture_output=True, text=True, timeout=240, cwd=REPO_ROOT)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert output_hashes(root) == clean


def test_sigkill_of_annotate_leaves_no_process_of_its_run_and_the_rerun_resumes(
    original: Path, fleet: Fleet, clean: dict[str, str], tmp_path: Path
) -> None:
    root, _, argv, proc = _running_run(original, fleet, tmp_path)
    family = descendants(proc.pid)
    assert any(is_redis_server(p) for p in family), [p.cmdline() for p in family]
    pids = [p.pid for p in family]
    os.kill(proc.pid, signal.SIGKILL)  # like the OOM killer: only annotate, no handler runs
    proc.wait(timeout=30)
    wait_until(
        lambda: not any(alive(pid) for pid in pids),
        15,
        f"processes of the killed run are still running: {[p for p in pids if alive(p)]}",
    )
    _rerun_matches(argv, root, clean, fleet)


def test_ctrl_c_in_a_terminal_stops_workers_and_writer_before_redis(
    original: Path, fleet: Fleet, clean: dict[str, str], tmp_path: Path
) -> None:
    root, state, argv, proc = _running_run(original, fleet, tmp_path)
    pids = [p.pid for p in descendants(proc.pid)]
    os.killpg(proc.pid, signal.SIGINT)  # what the terminal sends on Ctrl-C: the whole group
    assert proc.wait(timeout=60) == 130, (tmp_path / "annotate.log").read_text()[-3000:]
    wait_until(lambda: not any(alive(pid) for pid in pids), 15, "a child outlived annotate")
    redis_log = (state / "redis" / "redis.log").read_text()
    assert "Received SIGINT" not in redis_log  # the terminal's signal never reached Redis
    assert "User requested shutdown" in redis_log  # annotate stopped it, after the others
    worker_log = (state / "logs" / "worker.log").read_text()
    for sign in ("ConnectionError", "Connection refused", "Error 111"):
        assert sign not in worker_log, worker_log[-3000:]  # Redis outlived the workers
    _rerun_matches(argv, root, clean, fleet)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_stop_annotate_and_its_children_like_ctrl_c(
    original: Path, fleet: Fleet, tmp_path: Path, sig: signal.Signals
) -> None:
    _, _, _, proc = _running_run(original, fleet, tmp_path)
    pids = [p.pid for p in descendants(proc.pid)]
    os.kill(proc.pid, sig)
    assert proc.wait(timeout=60) == 128 + sig
    wait_until(lambda: not any(alive(pid) for pid in pids), 15, "a child outlived annotate")
    assert "interrupted" in (tmp_path / "annotate.log").read_text()


def test_embedded_redis_runs_in_its_own_session(tmp_path: Path) -> None:
    server = LocalRedis(tmp_path / "redis").start()
    try:
        assert server.process is not None
        assert os.getsid(server.process.pid) == server.process.pid != os.getsid(0)
    finally:
        server.stop()


def test_worker_pool_processes_exit_when_the_pool_parent_is_killed(
    redis_url: str, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "NARRATOR_REDIS_URL": redis_url,
        "NARRATOR_VLM_URLS": "http://127.0.0.1:9",
    }
    with (tmp_path / "worker.log").open("ab") as out:
        pool = subprocess.Popen(
            [sys.executable, "-m", "narrator", "worker", "--workers", "2",
             "--jobs-per-worker", "1"],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO_ROOT,
        )  # fmt: skip
    try:
        wait_until(lambda: len(descendants(pool.pid)) >= 2, 60, "the pool did not start")
        kids = [p.pid for p in descendants(pool.pid)]
        os.kill(pool.pid, signal.SIGKILL)
        pool.wait(timeout=30)
        wait_until(
            lambda: not any(alive(pid) for pid in kids),
            15,
            f"pool processes outlived their parent: {[p for p in kids if alive(p)]}",
        )
    finally:
        if pool.poll() is None:
            os.killpg(pool.pid, signal.SIGKILL)
            pool.wait()
