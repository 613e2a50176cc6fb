"""A run that cannot get answers fails instead of committing an empty dataset, and failed items
are never frozen as done (issue 10.2).

* every request refused (a wrong API key): the module jobs fail, nothing is committed, the
  dataset is byte-for-byte unchanged;
* more failed items than the threshold (5 % of a module's items): the run is not committed,
  ``annotate`` exits 1 and the status says why, listing them; the same command again asks
  exactly the failed items and ends with the dataset a clean run writes;
* with ``allow_failed_items`` the run commits with its failures, and ``retry-failed`` asks
  them again and commits the completed dataset.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import redis

from narrator.local.run import annotate
from narrator.ops.status import read_status, retry_failed
from narrator.samples.dataset import make_sample_dataset
from narrator.simulator.config import SimConfig
from narrator.simulator.fleet import Fleet, start_fleet
from tests.support.job_support import committed, drain, enqueue, requests, settings
from tests.support.pipeline_support import file_hashes, pipeline_config

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300), pytest.mark.fleet(2)]

VQA = {"modules": ["vqa"], "vqa": {"vqa_hz": 2.0}}
FAULTS = {"error_rate": 0.25, "error_status": 400}  # a refused request: an item failure


@pytest.fixture
def original(tmp_path: Path) -> Path:
    return make_sample_dataset(tmp_path / "original", episodes=4, cameras=1, episodes_per_file=2)


def _copy(original: Path, to: Path) -> Path:
    shutil.copytree(original, to)
    return to


def _annotate(fleet: Fleet, redis_url: str, root: Path, state: Path, **extra: Any) -> Any:
    config = pipeline_config(
        fleet.urls, redis_url=redis_url, state_dir=state, annotation=VQA, **extra
    )
    return annotate(config, root, progress=False)


def _clean_reference(fleet: Fleet, original: Path, tmp_path: Path) -> dict[str, str]:
    """The dataset an uninterrupted, fault-free run writes (on a Redis of its own)."""
    root = _copy(original, tmp_path / "clean")
    result = _annotate(fleet, None, root, tmp_path / "clean-state")  # type: ignore[arg-type]
    assert result.exit_code == 0
    return file_hashes(root)


def _set_faults(fleet: Fleet, **faults: Any) -> None:
    for i in range(len(fleet.urls)):
        fleet.set_faults(i, **faults)


def test_a_refused_api_key_fails_the_jobs_and_commits_nothing(
    tmp_path: Path, redis_url: str
) -> None:
    fleet = start_fleet(1, SimConfig(api_key="the-right-key"))
    try:
        root = make_sample_dataset(tmp_path / "dataset", episodes=2, cameras=1)
        before = file_hashes(root)
        conn = redis.Redis.from_url(redis_url)
        summary = enqueue(conn, root, tmp_path / "state", annotation=settings(**VQA))
        drain(redis_url, fleet.urls, NARRATOR_VLM_API_KEY="a-wrong-key")
        status = read_status(conn, summary.run_id)
    finally:
        fleet.close()
    assert not committed(conn, summary)
    assert file_hashes(root) == before
    assert status.state == "failed"
    assert len(status.failed_jobs) == 2  # both episodes' vqa jobs
    # The refused key refuses every request: a job failure, not item failures.
    assert all("VLMAccessError" in job.reason for job in status.failed_jobs), status.failed_jobs


def test_failed_items_over_the_threshold_hold_the_commit_then_only_they_are_asked_again(
    tmp_path: Path, redis_url: str, fleet: Fleet, original: Path
) -> None:
    clean = _clean_reference(fleet, original, tmp_path)
    root = _copy(original, tmp_path / "dataset")
    before = file_hashes(root)
    state = tmp_path / "state"

    _set_faults(fleet, **FAULTS)
    held = _annotate(fleet, redis_url, root, state)
    assert held.exit_code == 1
    status = held.status
    assert status is not None and status.state == "failed" and not status.committed
    assert status.commit_hold is not None and "vqa:" in status.commit_hold
    failed = len(status.failed_items)
    assert failed > 0 and not status.failed_jobs
    assert status.failed_items[0]["kind"] == "VLMRequestRejectedError"
    assert file_hashes(root) == before  # nothing was committed

    fleet.clear_faults()
    fleet.reset()
    again = _annotate(fleet, redis_url, root, state)  # the same command
    assert again.exit_code == 0
    assert requests(fleet) == failed  # exactly the failed items; the rest was replayed
    assert again.status is not None and again.status.item_failures == 0
    assert file_hashes(root) == clean


def test_allow_failed_items_commits_then_retry_failed_completes_the_dataset(
    tmp_path: Path, redis_url: str, fleet: Fleet, original: Path
) -> None:
    clean = _clean_reference(fleet, original, tmp_path)
    root = _copy(original, tmp_path / "dataset")
    before = file_hashes(root)
    conn = redis.Redis.from_url(redis_url)

    _set_faults(fleet, **FAULTS)
    allowed = _annotate(fleet, redis_url, root, tmp_path / "state", allow_failed_items=True)
    assert allowed.exit_code == 0
    status = allowed.status
    assert status is not None and status.committed and status.item_failures > 0
    assert file_hashes(root) != before
    assert file_hashes(root) != clean  # committed with holes

    fleet.clear_faults()
    fleet.reset()
    assert retry_failed(conn, allowed.run_id) > 0
    drain(redis_url, fleet.urls)
    after = read_status(conn, allowed.run_id)
    assert after.committed and after.item_failures == 0
    assert requests(fleet) == status.item_failures
    assert file_hashes(root) == clean
