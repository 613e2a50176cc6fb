"""VLM fault modes through the whole pipeline (issue 3 item 8): a real Redis, the producer,
worker and writer processes, and simulated replicas that misbehave on purpose.

Every run annotates a fresh copy of one small sample dataset. The reference is a clean run
on another copy: the simulator answers deterministically for a given request, so a fault
that a retry fully absorbs (think tags, prose, code fences, 5xx, hangs, dead or dying
replicas, an outage) must give a dataset whose ``data/`` shards and ``meta/info.json`` are
byte-identical to the reference. Faults that cannot be absorbed (answers of the wrong
shape, unusable answers) must still end in a committed dataset that passes the contract
check, with the failures counted in the run's status.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from narrator.inspection.dataset_check import check_annotated_dataset
from narrator.local.run import AnnotateResult, annotate, child_env
from narrator.ops.status import RunStatus, format_status, read_status, retry_failed
from narrator.samples.dataset import make_sample_dataset
from narrator.simulator.fleet import Fleet
from tests.support.job_support import requests
from tests.support.pipeline_support import file_hashes, output_hashes, pipeline_config
from tests.support.processes import RoleProcess, wait_until

REPLICAS = 3
LATENCY_S = 0.02

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240), pytest.mark.fleet(REPLICAS)]


@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_sample_dataset(
        tmp_path_factory.mktemp("faults-vlm") / "original",
        episodes=5,
        cameras=1,
        episodes_per_file=2,
        min_length=20,
        max_length=40,
    )


@dataclass
class Outcome:
    result: AnnotateResult  # of the last annotate call
    root: Path
    status: RunStatus
    earlier: list[AnnotateResult]  # calls before the last one (see run_copy's ``attempts``)
    served: list[dict[str, Any]]  # each replica's stats at the end of the run

    def served_total(self, name: str) -> int:
        return sum(int(stats[name]) for stats in self.served)

    def counter(self, suffix: str) -> int:
        return sum(v for k, v in self.status.counters.items() if k.endswith(suffix))


def _reset(fleet: Fleet) -> None:
    for i in range(REPLICAS):
        fleet.start_replica(i)
        fleet.clear_faults(i)
        fleet.set_faults(i, latency_s=LATENCY_S)
    fleet.reset()


def run_copy(
    original: Path,
    work: Path,
    fleet: Fleet,
    redis_url: str,
    *,
    faults: dict[int, dict[str, Any]] | None = None,
    during: Callable[[Fleet], None] | None = None,
    attempts: int = 1,
    **settings: Any,
) -> Outcome:
    """Annotate a fresh copy of ``original`` under ``faults``; ``during`` runs beside it.

    With ``attempts`` > 1, a run that stops on failed jobs (exit code 1) is resumed by
    running annotate again, as a user would, up to that many calls in all."""
    redis.Redis.from_url(redis_url).flushall()
    _reset(fleet)
    for index, updates in (faults or {}).items():
        fleet.set_faults(index, **updates)
    root = work / "dataset"
    shutil.copytree(original, root)
    config = pipeline_config(fleet.urls, redis_url=redis_url, state_dir=work / "state", **settings)
    box: list[AnnotateResult] = []

    def annotate_until_done() -> None:
        for _ in range(attempts):
            box.append(annotate(config, root, progress=False))
            if box[-1].exit_code != 1:
                return

    runner = threading.Thread(target=annotate_until_done)
    runner.start()
    try:
        if during is not None:
            during(fleet)
    finally:
        runner.join(timeout=200)
        served = [fleet.stats(i) for i in range(REPLICAS)]
        _reset(fleet)
    assert box, "annotate did not return"
    status = read_status(redis.Redis.from_url(redis_url), box[-1].run_id)
    return Outcome(box[-1], root, status, box[:-1], served)


def assert_valid(outcome: Outcome) -> None:
    assert outcome.result.exit_code == 0, format_status(outcome.status)
    assert outcome.status.committed
    report = check_annotated_dataset(outcome.root)
    assert report.errors == 0, [f for f in report.findings if f.severity == "error"][:5]


@pytest.fixture(scope="module")
def clean(
    original: Path, fleet: Fleet, redis_server: Any, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    outcome = run_copy(original, tmp_path_factory.mktemp("clean"), fleet, redis_server.url)
    assert_valid(outcome)
    assert outcome.counter(":retries") == 0 and outcome.status.item_failures == 0
    return output_hashes(outcome.root)


# --- faults a retry or the parser absorbs completely -------------------------------------


ALL = range(REPLICAS)
ABSORBED: dict[str, tuple[dict[int, dict[str, Any]], dict[str, Any]]] = {
    "think_tags": ({i: {"think_tags": True} for i in ALL}, {}),
    "prose_around_json": ({i: {"prose": True} for i in ALL}, {}),
    "code_fences": ({i: {"fences": True} for i in ALL}, {}),
    "http_500_on_one_replica": ({0: {"error_rate": 0.6}}, {}),
    "http_503_on_two_replicas": (
        {0: {"error_rate": 0.3, "error_status": 503}, 1: {"error_rate": 0.3}},
        {},
    ),
    "http_429_throttling": ({1: {"error_rate": 0.5, "error_status": 429}}, {}),
    "hangs_with_short_timeout": ({1: {"hang_rate": 0.4}}, {"timeout_s": 0.8}),
    "dead_replica_from_the_start": ({2: {"dead": True}}, {}),
}
WRAPPERS = {"think_tags", "prose_around_json", "code_fences"}


@pytest.mark.parametrize("case", sorted(ABSORBED))
def test_absorbed_fault_gives_the_clean_result(
    case: str,
    original: Path,
    fleet: Fleet,
    clean: dict[str, str],
    redis_url: str,
    tmp_path: Path,
) -> None:
    faults, vlm = ABSORBED[case]
    settings: dict[str, Any] = {}
    if vlm:
        settings["vlm"] = {
            "urls": fleet.urls,
            "backoff_base_s": 0.05,
            "backoff_max_s": 0.5,
            **vlm,
        }
    outcome = run_copy(original, tmp_path, fleet, redis_url, faults=faults, **settings)
    assert_valid(outcome)
    assert output_hashes(outcome.root) == clean
    assert outcome.status.item_failures == 0
    if case in WRAPPERS:
        # The parser strips the wrapping; no request needed a second try.
        assert outcome.counter(":corrective_retries") == 0
        assert outcome.counter(":retries") == 0
    elif case == "hangs_with_short_timeout":
        # A hung request on a dependency chain (plan, interjections) is outrun by its hedge
        # (sent after at most half the timeout) and cancelled, not retried; a hung one off
        # the chains (vqa) times out and is retried. Which of them hang is up to the
        # balancing, so either absorbed the hangs.
        absorbed = outcome.counter(":retries") + outcome.counter(":hedge_wins")
        assert absorbed > 0, outcome.status.counters
    else:
        assert outcome.counter(":retries") > 0, outcome.status.counters
    # The fault did happen at the servers.
    errors = sum(
        n for stats in outcome.served for code, n in stats["by_status"].items() if code != "200"
    )
    seen = {
        "hangs_with_short_timeout": outcome.served_total("hung"),
        "dead_replica_from_the_start": outcome.served_total("dropped"),
        "http_500_on_one_replica": errors,
        "http_503_on_two_replicas": errors,
        "http_429_throttling": errors,
    }
    assert seen.get(case, 1) > 0, outcome.served


# --- faults that cost answers: the run completes, the losses are counted -------------------


@pytest.mark.parametrize(
    ("case", "faults"),
    [
        ("wrong_shape_answers", {i: {"wrong_shape_rate": 0.3} for i in ALL}),
        ("garbage_answers", {i: {"garbage_rate": 0.2} for i in ALL}),
    ],
)
def test_unusable_answers_are_corrected_or_counted(
    case: str,
    faults: dict[int, dict[str, Any]],
    original: Path,
    fleet: Fleet,
    clean: dict[str, str],
    redis_url: str,
    tmp_path: Path,
) -> None:
    # About 9 % of the items stay unusable: over the failed-items threshold (5 %), so the
    # run commits with its losses only because it is told to (it would stop instead).
    outcome = run_copy(
        original, tmp_path, fleet, redis_url, faults=faults, attempts=4, allow_failed_items=True
    )
    # The plan module fails an episode's job for good when every subtask answer stays
    # unusable after its corrective retry (one window per short episode: 0.2 x 0.2 = 4% of
    # episodes here); the run then stops with exit code 1 and that job listed, and running
    # annotate again resumes it. Any other failure is a bug.
    for stopped in outcome.earlier:
        assert stopped.status is not None and stopped.status.failed_jobs
        for job in stopped.status.failed_jobs:
            assert "-plan-" in job.job_id and "no usable subtask answer" in job.reason, job
    assert_valid(outcome)
    status = outcome.status
    assert outcome.counter(":corrective_retries") > 0, status.counters
    # Every item that stayed unusable after its corrective retry is one recorded failure.
    assert status.item_failures == outcome.counter(":failures:bad_answer"), status.counters
    assert sum(status.item_failure_kinds.values()) == status.item_failures
    if status.item_failures:
        assert "item failures" in format_status(status)
    # A corrected answer differs from the clean one (its request differs), but only the
    # shards were rewritten: everything else in the dataset is as it was.
    before, after = file_hashes(original), file_hashes(outcome.root)
    assert set(before) == set(after)
    assert {k: v for k, v in after.items() if k not in clean} == {
        k: v for k, v in before.items() if k not in clean
    }


# --- replicas dying and coming back -------------------------------------------------------


def _after_requests(fleet: Fleet, count: int, timeout_s: float = 120) -> None:
    wait_until(lambda: requests(fleet) >= count, timeout_s, "the run made no progress")


def test_replica_dying_mid_run_costs_no_annotation(
    original: Path, fleet: Fleet, clean: dict[str, str], redis_url: str, tmp_path: Path
) -> None:
    def kill_one(f: Fleet) -> None:
        _after_requests(f, 8)
        f.stop_replica(1)

    outcome = run_copy(original, tmp_path, fleet, redis_url, during=kill_one)
    assert_valid(outcome)
    assert output_hashes(outcome.root) == clean
    assert outcome.status.item_failures == 0


def test_every_replica_down_for_a_while_then_back(
    original: Path, fleet: Fleet, clean: dict[str, str], redis_url: str, tmp_path: Path
) -> None:
    """All replicas stop for three seconds: requests back off, jobs that run out of attempts
    are retried by rq, and the run completes with the clean result."""

    def outage(f: Fleet) -> None:
        _after_requests(f, 8)
        for i in range(REPLICAS):
            f.stop_replica(i)
        time.sleep(3.0)
        for i in range(REPLICAS):
            f.start_replica(i)

    outcome = run_copy(original, tmp_path, fleet, redis_url, during=outage)
    assert_valid(outcome)
    assert output_hashes(outcome.root) == clean
    assert outcome.status.item_failures == 0
    # The outage was felt: requests were retried, or jobs ran out of attempts and rq
    # retried them (their failed attempts are in the worker log).
    worker_log = (tmp_path / "state" / "logs" / "worker.log").read_text()
    assert outcome.counter(":retries") > 0 or "VLMUnavailableError" in worker_log


def test_outage_with_no_job_retries_fails_cleanly_then_retry_failed_completes(
    original: Path,
    fleet: Fleet,
    clean: dict[str, str],
    redis_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """With no rq retries, jobs caught by an outage fail; annotate exits 1 listing them.
    Once the replicas are back, `retry-failed` plus a worker and a writer finish the run."""
    down: list[bool] = []

    def outage(f: Fleet) -> None:
        _after_requests(f, 8)
        for i in range(REPLICAS):
            f.stop_replica(i)
        down.append(True)

    outcome = run_copy(
        original,
        tmp_path,
        fleet,
        redis_url,
        during=outage,
        job_retries=0,
        vlm={"urls": fleet.urls, "max_attempts": 3, "backoff_base_s": 0.05, "backoff_max_s": 0.2},
    )
    # run_copy restarted the replicas after annotate returned.
    assert down
    assert outcome.result.exit_code == 1
    failed = outcome.status.failed_jobs
    assert failed and outcome.status.state == "failed"
    assert all("VLMUnavailableError" in job.reason for job in failed), failed
    shown = capsys.readouterr().err  # what annotate told the user
    assert all(f"FAILED {job.job_id}: " in shown for job in failed), shown[-2000:]
    assert f"narrator retry-failed {outcome.result.run_id}" in shown
    assert not outcome.status.committed
    assert output_hashes(outcome.root) == output_hashes(original)  # nothing written yet

    conn = redis.Redis.from_url(redis_url)
    assert retry_failed(conn, outcome.result.run_id) == len(failed)
    config = pipeline_config(fleet.urls, redis_url=redis_url, state_dir=tmp_path / "state")
    env = child_env(config, redis_url)
    logs = tmp_path / "retry-logs"
    with (
        RoleProcess(["worker", "--workers", "1", "--jobs-per-worker", "2"], env, logs),
        RoleProcess(["writer"], env, logs),
    ):
        wait_until(
            lambda: read_status(conn, outcome.result.run_id).committed,
            120,
            "the retried jobs did not complete the run",
        )
    status = read_status(conn, outcome.result.run_id)
    assert not status.failed_jobs
    assert output_hashes(outcome.root) == clean
    assert check_annotated_dataset(outcome.root).errors == 0
