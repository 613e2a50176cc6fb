"""`narrator annotate --serve` as a user runs it (a subprocess), with the stand-in vLLM
executable tests/support/fake_vllm_exe.py, which records the argv and CUDA_VISIBLE_DEVICES
each replica was started with: replicas beyond the visible GPUs wrap around them,
--gpus-per-replica hands each replica its own group, and --serve-ready-timeout bounds the wait
for a replica that never answers (exit 2, every replica stopped)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from narrator.samples.dataset import make_sample_dataset
from tests.local.test_serve import alive
from tests.support.ports import consecutive_free_ports

pytestmark = pytest.mark.timeout(180)

FAKE = str(Path(__file__).parents[1] / "support" / "fake_vllm_exe.py")


def _annotate(
    root: Path, serve: str, visible: str, *flags: str
) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "NARRATOR_LOG_FORMAT": "json",
        "CUDA_VISIBLE_DEVICES": visible,
    }
    return subprocess.run(
        [sys.executable, "-m", "narrator", "annotate", str(root), "--serve", serve, *flags,
         "--no-progress"],
        capture_output=True, text=True, timeout=150, env=env, cwd=root.parent,
    )  # fmt: skip


def _records(directory: Path, base: int, count: int) -> list[dict[str, object]]:
    return [json.loads((directory / f"replica-{base + i}.json").read_text()) for i in range(count)]


def test_three_replicas_on_two_gpus_wrap_around(tmp_path: Path) -> None:
    root = make_sample_dataset(tmp_path / "ds", episodes=1, cameras=0)
    record = tmp_path / "records"
    record.mkdir()
    base = consecutive_free_ports(3)
    # The last replica dies at start (after recording), so the command ends at once (exit 2).
    serve = f"{sys.executable} {FAKE} serve m --record {record} --die-with 3 --die-port {base + 2}"
    proc = _annotate(root, serve, "0,1", "--replicas", "3", "--serve-port", str(base))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "replica 2" in proc.stderr and "exited with code 3" in proc.stderr
    devices = [r["cuda_visible_devices"] for r in _records(record, base, 3)]
    assert devices == ["0", "1", "0"], "replica 2 must share GPU 0, not get a GPU 2 that is absent"
    assert not any(alive(int(str(r["pid"]))) for r in _records(record, base, 3))


def test_gpus_per_replica_and_the_ready_timeout(tmp_path: Path) -> None:
    root = make_sample_dataset(tmp_path / "ds", episodes=1, cameras=0)
    record = tmp_path / "records"
    record.mkdir()
    base = consecutive_free_ports(2)
    serve = (
        f"{sys.executable} {FAKE} serve m --tensor-parallel-size 2 --record {record} "
        "--sleep-before-serve 120"
    )
    proc = _annotate(
        root, serve, "4,5,6,7", "--gpus-per-replica", "2", "--serve-port", str(base),
        "--serve-ready-timeout", "1.5",
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    error = next(line for line in proc.stderr.splitlines() if line.startswith("narrator: replica"))
    assert "did not answer" in error and "within 1.5s" in error and "--serve-ready-timeout" in error
    records = _records(record, base, 2)
    assert [r["cuda_visible_devices"] for r in records] == ["4,5", "6,7"]
    assert "--tensor-parallel-size" in records[0]["unknown"]  # the user's argv, untouched
    assert not any(alive(int(str(r["pid"]))) for r in records)
    assert "replica 0 on GPU 4,5, replica 1 on GPU 6,7" in proc.stderr
