"""How many jobs a worker process takes (pure): the intake's decisions from the fleet's spare
capacity, the jobs held and how many requests a job keeps in progress."""

from __future__ import annotations

import pytest

from narrator.workers.intake import IntakeLimits, IntakeView, RequestsPerJob, jobs_to_take

LIMITS = IntakeLimits(min_jobs=16, max_jobs=1024)


def take(held: int, starting: int, spare: int | None, per_job: float = 1.0) -> int:
    return jobs_to_take(IntakeView(held, starting, spare, per_job), LIMITS)


def test_at_the_start_it_takes_enough_jobs_to_cover_the_spare_capacity() -> None:
    assert take(held=0, starting=0, spare=64) == 64  # 4 replicas x the initial limit of 16
    assert take(held=0, starting=0, spare=64, per_job=4.0) == 16  # the floor
    assert take(held=0, starting=0, spare=640, per_job=1.75) == 366


def test_jobs_that_have_not_sent_their_requests_yet_count_against_the_spare_capacity() -> None:
    # 64 jobs just taken, none has asked anything yet: take no more.
    assert take(held=64, starting=64, spare=64) == 0
    # half of them asked; 32 are still expected to.
    assert take(held=64, starting=32, spare=96) == 64
    assert take(held=64, starting=32, spare=96, per_job=2.0) == 16
    # All asked; room left (jobs between two requests do not hold it back): take more.
    assert take(held=64, starting=0, spare=20) == 20


def test_a_full_fleet_stops_the_intake_but_not_below_the_floor() -> None:
    assert take(held=300, starting=0, spare=0) == 0
    assert take(held=3, starting=0, spare=0) == 13  # jobs_per_worker is the floor
    assert take(held=3, starting=3, spare=None) == 13  # no capacity signal: a fixed pool
    assert take(held=16, starting=0, spare=None) == 0


def test_never_more_than_the_cap() -> None:
    assert take(held=1000, starting=0, spare=500) == 24
    assert take(held=1024, starting=0, spare=500) == 0
    small = IntakeLimits(min_jobs=4, max_jobs=4)
    assert jobs_to_take(IntakeView(2, 0, 1000, 1.0), small) == 2


def test_limits_are_checked() -> None:
    with pytest.raises(ValueError, match="min_jobs <= max_jobs"):
        IntakeLimits(min_jobs=8, max_jobs=4)


def test_requests_per_job_follows_the_busy_jobs_and_ignores_idle_moments() -> None:
    estimate = RequestsPerJob(weight=0.5)
    assert estimate.value == 1.0
    assert estimate.observe(in_progress=8, busy_jobs=2) == 2.5  # halfway to 4
    assert estimate.observe(in_progress=0, busy_jobs=0) == 2.5  # nothing to learn from
    assert estimate.observe(in_progress=1, busy_jobs=4) == 1.75  # a sample never below 1
    for _ in range(30):
        estimate.observe(in_progress=30, busy_jobs=10)
    assert estimate.value == pytest.approx(3.0)
