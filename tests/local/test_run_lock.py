"""One run per dataset: a second `narrator annotate` on a dataset that one is annotating exits
2 at once naming the running one, `narrator status ROOT` still works meanwhile, and an
embedded redis-server never starts on a data directory another server holds."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from narrator.common.errors import ConfigError
from narrator.local.redis_server import LocalRedis, data_dir_held, read_server_info
from narrator.local.run_lock import DatasetBusyError, RunLock, read_holder
from narrator.simulator.fleet import Fleet
from tests.local.conftest import (
    alive,
    annotate_argv,
    start_annotate,
)
from tests.support.processes import REPO_ROOT, wait_until

pytestmark = [pytest.mark.timeout(240), pytest.mark.fleet(2)]


def test_the_run_lock_is_exclusive_and_dies_with_its_holder(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from pathlib import Path; from narrator.local.run_lock import "
         "RunLock; RunLock(Path(sys.argv[1])).acquire(); print('held', flush=True); "
         "time.sleep(600)", str(tmp_path)],
        stdout=subprocess.PIPE, cwd=REPO_ROOT,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == b"held"
        assert (read_holder(tmp_path) or {}).get("pid") == holder.pid
        with pytest.raises(DatasetBusyError, match=f"pid {holder.pid}, started "):
            RunLock(tmp_path).acquire()
        holder.kill()  # no handler runs, nothing is cleaned up: the kernel drops the lock
        holder.wait()
        assert read_holder(tmp_path) is None
        RunLock(tmp_path).acquire().release()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        assert holder.stdout is not None
        holder.stdout.close()


def test_a_redis_data_dir_held_by_a_running_server_is_refused(tmp_path: Path) -> None:
    first = LocalRedis(tmp_path / "redis").start()
    try:
        assert first.process is not None
        with pytest.raises(ConfigError, match=f"another redis-server \\(pid {first.process.pid}"):
            LocalRedis(tmp_path / "redis").start()
        assert first.process.poll() is None  # the first one was left alone
    finally:
        first.stop()
    second = LocalRedis(tmp_path / "redis").start()  # free again once the first stopped
    second.stop()


@pytest.mark.slow
def test_an_orphaned_server_whose_owner_died_is_shut_down_before_a_new_one_starts(
    tmp_path: Path,
) -> None:
    owner = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from pathlib import Path; from narrator.local.redis_server import "
         "LocalRedis; LocalRedis(Path(sys.argv[1])).start(); print('up', flush=True); "
         "time.sleep(600)", str(tmp_path / "redis")],
        stdout=subprocess.PIPE, cwd=REPO_ROOT,
    )  # fmt: skip
    assert owner.stdout is not None and owner.stdout.readline().strip() == b"up"
    owner.stdout.close()
    info = read_server_info(tmp_path / "redis")
    assert info is not None
    owner.kill()  # the owner dies; its server (no parent-death signal asked) lives on
    owner.wait()
    assert alive(info["pid"]) and data_dir_held(tmp_path / "redis")
    server = LocalRedis(tmp_path / "redis").start()
    try:
        assert not alive(info["pid"])
    finally:
        server.stop()


@pytest.mark.slow
def test_a_second_annotate_exits_2_naming_the_first_while_status_still_works(
    original: Path, fleet: Fleet, tmp_path: Path
) -> None:
    root = tmp_path / "dataset"
    shutil.copytree(original, root)
    state = tmp_path / "state"
    for i in range(len(fleet.urls)):  # the first run never finishes: it is stopped below
        fleet.set_faults(i, hang_rate=1.0)
    argv = annotate_argv(root, state, fleet)
    first = start_annotate(argv, tmp_path / "first.log")
    try:
        wait_until(
            lambda: data_dir_held(state / "redis") and read_holder(state) is not None,
            120,
            "the first annotate did not start",
        )
        second = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
        assert second.returncode == 2, second.stderr
        lines = second.stderr.strip().splitlines()
        assert lines[-1].startswith("narrator: another narrator run holds"), second.stderr
        assert f"pid {first.pid}, started " in lines[-1] and "annotate" in lines[-1]
        assert "Traceback" not in second.stderr
        assert first.poll() is None  # the running one is untouched

        status = subprocess.run(
            [sys.executable, "-m", "narrator", "status", str(root), "--state-dir", str(state)],
            capture_output=True, text=True, timeout=120, cwd=REPO_ROOT,
        )  # fmt: skip
        assert status.returncode == 0, status.stderr
        assert f"narrator annotate is running (pid {first.pid}" in status.stdout
        assert "state: running" in status.stdout or "state: writing" in status.stdout
    finally:
        os.kill(first.pid, signal.SIGTERM)
        first.wait(timeout=60)
        fleet.clear_faults()
