"""What annotate shows while it runs: a progress line every interval (never tqdm's carriage
returns) when stderr is not a terminal, retries and failures in it, and one line when a
replica leaves rotation or comes back (read from the Redis hash the workers publish)."""

from __future__ import annotations

import io
import time
from typing import Any

import orjson
import redis

from narrator.common.runs import RunRecord
from narrator.local.progress import (
    REPLICAS_KEY,
    ReplicaState,
    Reporter,
    parse_replicas,
    progress_line,
    replica_changes,
)
from narrator.ops.status import FailedJob, RunStatus


def _status(done: int, staged: int = 0, **extra: Any) -> RunStatus:
    run = RunRecord.__new__(RunRecord)  # only what the formatting reads
    fields: dict[str, Any] = {
        "run": run,
        "modules": {"plan": (done, 10)},
        "files_staged": staged,
        "files_total": 2,
        "pending_by_file": {},
        "committed": False,
        "queued": 1,
        "started": 0,
        "deferred": 0,
        "failed_jobs": [],
        "item_failures": 0,
        "item_failure_kinds": {},
        "writer_errors": {},
        "counters": {},
        "elapsed_s": 10.0,
    }
    fields.update(extra)
    return RunStatus(**fields)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_without_a_terminal_one_line_per_interval_and_the_last_one_at_the_end() -> None:
    out = io.StringIO()
    clock = Clock()
    reporter = Reporter(show_progress=True, interval_s=10, stream=out, clock=clock)
    reporter.start("r1", 12)
    for t, done in [(0, 0), (3, 2), (9, 4), (10, 5), (15, 7), (21, 9)]:
        clock.now = 100.0 + t
        reporter.update(_status(done))
    clock.now = 130.0
    reporter.update(_status(10, staged=2, committed=True))
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert [line.split("jobs ")[1].split(" ")[0] for line in lines] == [
        "0/10",
        "5/10",
        "9/10",
        "10/10",
    ]  # fmt: skip  (at 0 s, 10 s, 21 s and when committed)
    assert lines[-1].startswith("narrator: progress 100.0% jobs 10/10 files 2/2")
    assert "elapsed 30 s" in lines[-1]


def test_retries_and_failures_are_in_the_line() -> None:
    status = _status(
        4,
        counters={"plan:retries": 3, "vqa:retries": 2, "vqa:requests": 40},
        item_failures=7,
        failed_jobs=[FailedJob("nar-x-1", "narrator:module", "VLMUnavailableError")],
    )
    line = progress_line(status, elapsed_s=12)
    assert "retries 5 failed items 7 failed jobs 1" in line
    assert line.startswith("progress  33.3% jobs 4/10 files 0/2")
    assert "(workers starting)" not in line
    assert progress_line(_status(0), elapsed_s=3).endswith("elapsed 3 s (workers starting)")
    assert "starting" not in progress_line(_status(0, started=2), elapsed_s=3)


def test_a_replica_leaving_rotation_is_one_warning_and_coming_back_one_line() -> None:
    good = ReplicaState(True, "")
    bad = ReplicaState(False, "5 timeouts in the last 20 requests")
    assert replica_changes({}, {"a": good}) == []
    assert replica_changes({"a": good}, {"a": bad}) == [
        "warning: replica a left rotation: 5 timeouts in the last 20 requests"
    ]
    assert replica_changes({}, {"a": bad}) == [
        "warning: replica a left rotation: 5 timeouts in the last 20 requests"
    ]
    assert replica_changes({"a": bad}, {"a": bad}) == []
    assert replica_changes({"a": bad}, {"a": good}) == ["replica a is back in rotation"]


def test_replica_states_are_read_from_the_hash_the_workers_publish(
    redis_client: redis.Redis,
) -> None:
    at = time.time()
    redis_client.hset(
        REPLICAS_KEY,
        mapping={
            "http://a:8000": orjson.dumps({"healthy": True, "reason": "", "at": at}),
            "http://b:8000": orjson.dumps({"healthy": False, "reason": "refused", "at": at}),
            "junk": b"not json",
        },
    )
    states = parse_replicas(redis_client.hgetall(REPLICAS_KEY))
    assert states == {
        "http://a:8000": ReplicaState(True, ""),
        "http://b:8000": ReplicaState(False, "refused"),
    }
    out = io.StringIO()
    reporter = Reporter(stream=out)
    reporter.replicas(states)
    reporter.replicas(states)  # no change: nothing more
    assert out.getvalue() == "narrator: warning: replica http://b:8000 left rotation: refused\n"


def test_with_no_progress_only_the_phase_lines() -> None:
    out = io.StringIO()
    reporter = Reporter(show_progress=False, stream=out)
    reporter.say("dataset x: 2 episode(s)")
    reporter.start("r", 3)
    reporter.update(_status(1))
    assert out.getvalue() == "narrator: dataset x: 2 episode(s)\n"
