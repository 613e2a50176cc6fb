"""Ctrl-C in the middle of `narrator annotate` (embedded Redis kept on disk), then the same
command again: the run resumes, finished VLM requests are not repeated (counted at the
simulated server), and the result is byte-identical to an uninterrupted run."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
import redis

from narrator.common import keys
from narrator.local.redis_server import LocalRedis
from narrator.local.run import annotate
from narrator.samples.dataset import make_sample_dataset
from narrator.simulator.fleet import Fleet, start_fleet
from tests.support.job_support import requests
from tests.support.pipeline_support import file_hashes, pipeline_config

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def _staged_results(state_dir: Path) -> dict[str, tuple[bytes, int]]:
    """result key -> (data, HTTP attempts it cost), read from the embedded Redis on disk."""
    server = LocalRedis(state_dir / "redis").start()
    try:
        conn = redis.Redis.from_url(server.url)
        out = {}
        for key in conn.scan_iter(f"{keys.PREFIX}:run:*:result:*"):
            data = conn.hget(key, "data")
            assert data is not None
            counts = orjson.loads(data)["counts"]
            attempts = sum(v for k, v in counts.items() if k.endswith(":attempts"))
            out[key.decode()] = (data, attempts)
        return out
    finally:
        server.stop()


def _annotate_cmd(root: Path, state: Path, fleet: Fleet) -> list[str]:
    cmd = [sys.executable, "-m", "narrator", "annotate", str(root), "--state-dir", str(state)]
    for url in fleet.urls:
        cmd += ["--vlm-url", url]
    # Few jobs at once (a fixed cap: no extra jobs while the fleet has room), so a third of
    # the requests is reached with jobs still queued.
    return [
        *cmd, "--workers", "1", "--jobs-per-worker", "4", "--max-jobs-per-worker", "4",
        "--no-progress",
    ]  # fmt: skip


def test_ctrl_c_then_resume_repeats_no_finished_request(tmp_path: Path) -> None:
    original = tmp_path / "original"
    make_sample_dataset(original, episodes=6, cameras=1, episodes_per_file=2)
    fleet = start_fleet(2)
    try:
        for i in range(2):
            fleet.set_faults(i, latency_s=0.03)
        # Reference: an uninterrupted run.
        clean = tmp_path / "clean" / "dataset"
        shutil.copytree(original, clean)
        fleet.reset()
        ref = annotate(
            pipeline_config(fleet.urls, redis_url=None, state_dir=tmp_path / "clean-state"),
            clean,
            progress=False,
        )
        assert ref.exit_code == 0
        total = requests(fleet)

        # Interrupted run: Ctrl-C (SIGINT) once a third of the requests were made.
        root = tmp_path / "resumed" / "dataset"
        shutil.copytree(original, root)
        state = tmp_path / "resumed-state"
        fleet.reset()
        # No hedging (extra requests by design), as in pipeline_config's reference run.
        env = {**os.environ, "NARRATOR_LOG_FORMAT": "json", "NARRATOR_VLM__HEDGE": "false"}
        proc = subprocess.Popen(_annotate_cmd(root, state, fleet), env=env, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while requests(fleet) < total // 3:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err.decode()[-2000:]
        first = requests(fleet)
        assert first < total, "the run finished before it could be interrupted"
        staged = _staged_results(state)
        assert staged, "nothing was finished before Ctrl-C"
        done_attempts = sum(a for _, a in staged.values())

        # Same command again.
        fleet.reset()
        proc2 = subprocess.run(
            _annotate_cmd(root, state, fleet), env=env, capture_output=True, timeout=240
        )
        assert proc2.returncode == 0, proc2.stderr.decode()[-3000:]
        second = requests(fleet)
    finally:
        fleet.close()

    # Nothing finished was asked again: the second run made exactly the requests a clean run
    # makes minus those whose results were already staged.
    assert second == total - done_attempts
    after = _staged_results(state)
    for key, (data, _) in staged.items():
        assert after[key][0] == data, f"{key} was recomputed"
    assert file_hashes(root) == file_hashes(clean)
