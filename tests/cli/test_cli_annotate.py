"""`narrator annotate` as a user runs it: a subprocess, with `--serve` starting the replicas
(the project's simulated server stands in for `vllm serve`, which needs GPUs), and the clear
errors for an unreachable server or a malformed dataset."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from narrator.inspection.dataset_check import check_annotated_dataset
from narrator.local.redis_server import free_port
from narrator.samples.dataset import make_sample_dataset
from narrator.simulator.fleet import Fleet
from tests.support.pipeline_support import file_hashes
from tests.support.ports import consecutive_free_ports

pytestmark = pytest.mark.timeout(180)


def _narrator(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "narrator", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=150,
        env={"PATH": "/usr/bin:/bin", "NARRATOR_LOG_FORMAT": "json"},
    )


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.slow
def test_serve_starts_replicas_annotates_and_stops_them(tmp_path: Path) -> None:
    root = make_sample_dataset(tmp_path / "ds", episodes=3, cameras=1)
    port = consecutive_free_ports(2)  # replica i listens on port + i
    serve = f"{sys.executable} -m narrator.simulator"
    proc = _narrator(
        "annotate", str(root), "--serve", serve, "--replicas", "2", "--serve-port", str(port),
        "--no-progress", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "shards written" in proc.stdout
    assert '"replica_ready"' in proc.stderr and f"127.0.0.1:{port + 1}" in proc.stderr
    assert not _port_open(port) and not _port_open(port + 1)  # replicas stopped at exit
    assert check_annotated_dataset(root).ok


def test_unreachable_server_is_a_clear_error_and_changes_nothing(tmp_path: Path) -> None:
    root = make_sample_dataset(tmp_path / "ds", episodes=2, cameras=0)
    before = file_hashes(root)
    proc = _narrator(
        "annotate", str(root), "--vlm-url", f"http://127.0.0.1:{free_port()}", "--no-progress",
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "cannot reach the VLM server" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert file_hashes(root) == before


def test_malformed_dataset_names_the_file(tmp_path: Path) -> None:
    root = make_sample_dataset(tmp_path / "ds", episodes=2, cameras=0)
    (root / "meta" / "tasks.parquet").unlink()
    proc = _narrator("annotate", str(root), "--vlm-url", "http://127.0.0.1:9", cwd=tmp_path)
    assert proc.returncode == 2
    assert "tasks.parquet" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_the_end_of_a_run_says_how_many_episodes_got_each_style(
    tmp_path: Path, fleet: Fleet
) -> None:
    root = make_sample_dataset(tmp_path / "ds", episodes=2, cameras=1)
    proc = _narrator(
        "annotate", str(root), "--vlm-url", fleet.urls[0] + "/v1", "--no-progress", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("episodes per style")]
    assert len(lines) == 1, proc.stdout
    counted = dict(
        entry.rsplit(" ", 1) for entry in lines[0].removeprefix("episodes per style: ").split(", ")
    )
    assert set(counted) >= {"subtask", "plan", "memory", "task_aug", "interjection", "vqa"}
    for style in ("subtask", "plan", "task_aug", "vqa"):  # every episode gets these
        assert counted[style] == "2/2", lines[0]
    assert all(n.endswith("/2") and 1 <= int(n.split("/")[0]) <= 2 for n in counted.values())
    assert "validation: 0 error(s)" in proc.stdout
