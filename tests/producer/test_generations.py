"""Going back to settings that ran before finishes like any run (issue 10.7): defaults, then
``--vqa-hz 1``, then defaults again used to stop at 90 % (``files 0/2``) because the finalize
claim of the first generation was still set, so nobody enqueued its finalize jobs again.

Runs the real roles (rq workers and the writer in burst mode) against a real Redis and the
simulated VLM."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from narrator.ops.status import format_status, read_status
from narrator.samples.dataset import make_sample_dataset
from narrator.simulator.fleet import Fleet
from tests.support.job_support import committed, drain, enqueue, requests, settings
from tests.support.pipeline_support import file_hashes

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def test_returning_to_earlier_settings_finalizes_and_commits_again(
    tmp_path: Path, redis_url: str, fleet: Fleet
) -> None:
    root = make_sample_dataset(tmp_path / "dataset", episodes=4, cameras=1, episodes_per_file=2)
    conn = redis.Redis.from_url(redis_url)
    after: list[dict[str, str]] = []
    for label, annotation in (
        ("defaults", settings()),
        ("--vqa-hz 1", settings(vqa={"vqa_hz": 1.0})),
        ("defaults again", settings()),
    ):
        fleet.reset()
        summary = enqueue(conn, root, tmp_path / "state", annotation=annotation)
        drain(redis_url, fleet.urls)
        status = read_status(conn, summary.run_id)
        assert committed(conn, summary), f"{label}: not committed\n{format_status(status)}"
        assert status.files_staged == status.files_total == 2, label
        after.append(file_hashes(root))
    assert after[1] != after[0]  # the 1 Hz run changed the vqa rows
    assert after[2] == after[0]  # back to the defaults: the same bytes as the first run
    assert requests(fleet) > 0  # the third run asked vqa again (its results were replaced)
