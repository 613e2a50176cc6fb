"""``narrator annotate`` on malformed datasets: every damage of tests/bad_datasets.py (and a
root that is not a dataset) is refused with a message naming the file and the problem, and
the dataset's bytes stay exactly as they were.

* Damage the loader sees (metadata, layout, schemas, an older annotation schema) stops the
  command before anything starts: exit code 2, one line on stderr, no state directory.
* Damage only reading rows or decoding frames shows (timestamps out of order, a frame index
  gap, an unknown task, a broken or short video) fails the jobs of the affected episodes
  without retries; the run stops with exit code 1 and lists each failed job with the file
  and the problem; nothing is committed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from narrator.cli.main import main
from narrator.local.run import annotate
from narrator.ops.status import format_status
from narrator.samples.dataset import make_sample_dataset
from narrator.simulator.fleet import Fleet
from tests.support.bad_datasets import CASES
from tests.support.pipeline_support import file_hashes, pipeline_config

pytestmark = [pytest.mark.timeout(120), pytest.mark.fleet(2)]

RUN_TIME = {
    "non_monotonic_timestamps",
    "frame_index_gap",
    "unknown_task_index",
    "empty_video_file",
    "undecodable_video",
    "video_shorter_than_episodes",
    "video_span_past_the_end",
}
LOAD_TIME = sorted(set(CASES) - RUN_TIME)


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # The smallest dataset bad_datasets.py works on: two cameras, three data files, two chunks.
    return make_sample_dataset(
        tmp_path_factory.mktemp("good") / "dataset", episodes=7, min_length=20, max_length=40
    )


def test_there_are_at_least_twenty_kinds_of_damage() -> None:
    assert len(CASES) >= 20
    assert set(CASES) >= RUN_TIME


def _annotate_cli(root: Path, fleet: Fleet, state: Path) -> list[str]:
    return ["annotate", str(root), "--vlm-url", fleet.urls[0], "--state-dir", str(state)]


@pytest.mark.parametrize("case", LOAD_TIME)
def test_load_time_damage_stops_annotate_with_exit_2(
    case: str, good: Path, fleet: Fleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad"
    expected = CASES[case](good, bad)
    before = file_hashes(bad)
    state = tmp_path / "state"
    code = main([*_annotate_cli(bad, fleet, state), "--no-progress", "--log-level", "error"])
    err = capsys.readouterr().err
    assert code == 2, err
    message = next(line for line in err.splitlines() if line.startswith("narrator: "))
    assert str(bad.absolute() / expected.file) in message, message
    assert expected.problem in message, message
    assert "Traceback" not in err
    assert file_hashes(bad) == before
    assert not state.exists(), "annotate started something before refusing the dataset"


def test_real_process_exit_code_and_one_line_message(
    good: Path, fleet: Fleet, tmp_path: Path
) -> None:
    bad = tmp_path / "bad"
    expected = CASES["truncated_data_parquet"](good, bad)
    before = file_hashes(bad)
    env = {**os.environ, "NARRATOR_LOG_LEVEL": "error"}
    proc = subprocess.run(
        [sys.executable, "-m", "narrator", *_annotate_cli(bad, fleet, tmp_path / "state")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("narrator: ")
    assert str(bad.absolute() / expected.file) in proc.stderr
    assert expected.problem in proc.stderr
    assert file_hashes(bad) == before


@pytest.mark.parametrize("kind", ["missing", "a_file", "meta_dir"])
def test_a_root_that_is_not_a_dataset(
    kind: str, good: Path, fleet: Fleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if kind == "missing":
        root, named, problem = tmp_path / "nothing-here", tmp_path / "nothing-here", "directory"
    elif kind == "a_file":
        root = good / "meta" / "info.json"
        named, problem = root, "is not a directory"
    else:
        root = good / "meta"
        named, problem = root / "meta" / "info.json", "is missing"
    before = file_hashes(good)
    code = main([*_annotate_cli(root, fleet, tmp_path / "state"), "--log-level", "error"])
    err = capsys.readouterr().err
    assert code == 2
    assert str(named.absolute()) in err and problem in err, err
    assert file_hashes(good) == before


@pytest.mark.parametrize("case", sorted(RUN_TIME))
@pytest.mark.slow
def test_read_or_decode_damage_fails_its_episodes_and_writes_nothing(
    case: str,
    good: Path,
    fleet: Fleet,
    redis_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bad = tmp_path / "bad"
    expected = CASES[case](good, bad)
    before = file_hashes(bad)
    config = pipeline_config(
        fleet.urls,
        redis_url=redis_url,
        state_dir=tmp_path / "state",
        annotation={"modules": ["plan", "vqa"]},  # vqa reads every camera
    )
    result = annotate(config, bad, progress=False)
    assert result.exit_code == 1
    status = result.status
    assert status is not None and not status.committed
    assert status.failed_jobs, format_status(status)
    named = str(bad.absolute() / expected.file)
    for job in status.failed_jobs:
        assert named in job.reason and expected.problem in job.reason, job
        assert "DatasetError" in job.reason or "VideoDecodeError" in job.reason, job
    # Permanent: failed at once, not retried.
    assert not any(k.endswith(":retries") for k in status.counters)
    # What the user sees: every failed job with its episode, file and problem.
    shown = capsys.readouterr().err
    for job in status.failed_jobs:
        assert f"FAILED {job.job_id}: " in shown
    assert file_hashes(bad) == before
    # The episodes that failed are named: job ids are nar-<run>-<module>-<episode>-<hash>.
    failed_episodes = {int(job.job_id.split("-")[3]) for job in status.failed_jobs}
    assert failed_episodes and failed_episodes < set(range(7))
