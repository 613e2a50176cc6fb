"""Fixtures of the one-machine runner's process tests (each module asks for a two-replica
``fleet`` with ``pytest.mark.fleet(2)``; the fixture is in tests/conftest.py): a sample
dataset, the hashes of an uninterrupted run's output, and helpers to run `narrator annotate`
as a real process (in its own session, as a terminal would start it) and to find its
processes by pid."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import psutil  # type: ignore[import-untyped]
import pytest

from narrator.local.run import annotate
from narrator.samples.dataset import make_sample_dataset
from narrator.simulator.fleet import Fleet
from tests.support.pipeline_support import output_hashes, pipeline_config
from tests.support.processes import REPO_ROOT

LATENCY_S = 0.05  # slow enough that a run is still going when the test acts on it
# A run the test must act on while it is still going: each episode's chain (plan, then its
# interjections) is at least two answers of this latency apart, so the run cannot end in the
# moments between the test seeing it busy and the test's signal, however busy the machine.
HOLD_LATENCY_S = 10.0


@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_sample_dataset(
        tmp_path_factory.mktemp("local-proc") / "original", episodes=6, cameras=1,
        episodes_per_file=2,
    )  # fmt: skip


@pytest.fixture(scope="module")
def clean(original: Path, fleet: Fleet, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The output of an uninterrupted run on a copy of ``original``."""
    work = tmp_path_factory.mktemp("clean")
    root = work / "dataset"
    shutil.copytree(original, root)
    set_latency(fleet, 0.0)
    result = annotate(
        pipeline_config(fleet.urls, redis_url=None, state_dir=work / "state"), root, progress=False
    )
    assert result.exit_code == 0
    return output_hashes(root)


def set_latency(fleet: Fleet, latency_s: float) -> None:
    for i in range(len(fleet.urls)):
        fleet.set_faults(i, latency_s=latency_s)
    fleet.reset()


def annotate_argv(root: Path, state: Path, fleet: Fleet, *extra: str) -> list[str]:
    argv = [sys.executable, "-m", "narrator", "annotate", str(root), "--state-dir", str(state)]
    for url in fleet.urls:
        argv += ["--vlm-url", url]
    return [*argv, "--workers", "2", "--jobs-per-worker", "2", *extra]


def start_annotate(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    """`narrator annotate` as a terminal starts it: the leader of its own process group."""
    with log.open("ab") as out:
        return subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=REPO_ROOT,
            env={**os.environ, "NARRATOR_LOG_LEVEL": "info"},
        )


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return list(psutil.Process(pid).children(recursive=True))
    except psutil.NoSuchProcess:
        return []


def alive(pid: int) -> bool:
    """Running (a zombie waiting for a reaper that never comes does not count)."""
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def is_redis_server(proc: psutil.Process) -> bool:
    try:
        return "redis-server" in " ".join(proc.cmdline()) or "redis-server" in proc.name()
    except psutil.Error:
        return False
