"""After a one-machine run the embedded Redis is gone, yet `narrator status ROOT` and
`narrator retry-failed ROOT` work (the kept Redis data is started on demand), and the command
annotate prints after a failure works exactly as printed."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from narrator.local.redis_server import data_dir_held
from narrator.simulator.fleet import Fleet
from tests.local.conftest import annotate_argv, set_latency
from tests.support.processes import REPO_ROOT

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300), pytest.mark.fleet(2)]


def _narrator(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "narrator", *args],
        capture_output=True, text=True, timeout=120, cwd=REPO_ROOT,
    )  # fmt: skip


def _printed_command(stderr: str, name: str) -> list[str]:
    found = re.findall(r"`(narrator [^`]+)`", stderr)
    commands = [shlex.split(c) for c in found if c.startswith(f"narrator {name}")]
    assert commands, f"no `narrator {name} ...` hint in: {stderr[-2000:]}"
    return commands[-1][1:]


def test_status_and_retry_failed_of_a_finished_run_and_of_a_failed_one(
    original: Path, fleet: Fleet, tmp_path: Path
) -> None:
    root = tmp_path / "dataset"
    shutil.copytree(original, root)
    state = tmp_path / "state"
    argv = annotate_argv(root, state, fleet, "--model", "narrator-sim-vlm")

    # A run that stops on failures: every request answers 500 and nothing is retried.
    no_retries = tmp_path / "no-retries.yaml"
    no_retries.write_text("job_retries: 0\nvlm:\n  max_attempts: 1\n")
    set_latency(fleet, 0.0)
    for i in range(len(fleet.urls)):
        fleet.set_faults(i, error_rate=1.0)
    try:
        failed = subprocess.run(
            [*argv, "--config", str(no_retries), "--no-progress"],
            capture_output=True, text=True, timeout=240, cwd=REPO_ROOT,
        )  # fmt: skip
    finally:
        for i in range(len(fleet.urls)):
            fleet.set_faults(i, error_rate=0.0)
    assert failed.returncode == 1, failed.stderr[-3000:]
    assert not data_dir_held(state / "redis")  # the embedded Redis is gone

    status = _narrator(*_printed_command(failed.stderr, "status"))  # exactly as printed
    assert status.returncode == 0, status.stderr
    assert "no run is going" in status.stdout and "state: failed" in status.stdout
    assert "FAILED nar-" in status.stdout

    retry = _narrator("retry-failed", str(root), "--state-dir", str(state))
    assert retry.returncode == 0, retry.stderr
    assert re.search(r"re-enqueued [1-9]\d* job\(s\) of run \w+", retry.stdout)
    assert f"they run when `narrator annotate {root}` runs again" in retry.stdout

    done = subprocess.run(argv, capture_output=True, text=True, timeout=240, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr[-3000:]

    status = _narrator("status", str(root), "--state-dir", str(state))
    assert status.returncode == 0, status.stderr
    assert "state: done" in status.stdout and "committed: yes" in status.stdout
    again = _narrator("retry-failed", str(root), "--state-dir", str(state))
    assert again.returncode == 0 and "no failed jobs" in again.stdout
