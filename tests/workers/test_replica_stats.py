"""Per-replica outcome windows, adaptive timeouts, hedge delays and the peer verdict (pure)."""

from __future__ import annotations

import pytest

from narrator.workers.replica_stats import (
    ERROR,
    OK,
    SLOW,
    TIMEOUT,
    LatencyBook,
    OutcomeWindow,
    hedge_delay,
    judge,
    quantile,
    request_timeout,
)


def test_failure_rate_counts_every_non_answer_within_the_window() -> None:
    window = OutcomeWindow(window_s=60.0)
    for i in range(10):
        window.add(float(i), OK if i % 2 else TIMEOUT)  # every other request hangs
    assert window.failure_rate(9.0) == 0.5  # a streak rule never sees this: it alternates
    window.add(10.0, ERROR)
    window.add(10.0, SLOW)
    assert window.counts(10.0) == {OK: 5, TIMEOUT: 5, ERROR: 1, SLOW: 1}
    # Outcomes older than the window are forgotten.
    # (t >= 5 remain: answers at 5, 7, 9; timeouts at 6, 8; the error and the slow one)
    assert window.failure_rate(65.0, min_samples=1) == pytest.approx(4 / 7)
    assert window.failure_rate(200.0) is None
    with pytest.raises(ValueError, match="unknown outcome"):
        window.add(0.0, "exploded")


def test_too_few_outcomes_give_no_rate() -> None:
    window = OutcomeWindow(window_s=60.0)
    for i in range(9):
        window.add(float(i), TIMEOUT)
    assert window.failure_rate(9.0) is None
    window.add(9.0, TIMEOUT)
    assert window.failure_rate(9.0) == 1.0


def test_quantile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert quantile(values, 0.99) == 99.0
    assert quantile(values, 0.5) == 50.0
    assert quantile([3.0], 0.99) == 3.0


def test_request_timeout_is_a_multiple_of_the_kind_p99_within_bounds() -> None:
    book = LatencyBook()
    bounds = {"multiple": 6.0, "floor_s": 5.0, "ceiling_s": 120.0}
    assert request_timeout(book, "vqa", **bounds) == 120.0  # nothing known yet
    for _ in range(100):
        book.add("vqa", 0.2)
        book.add("plan", 4.0)
    assert request_timeout(book, "vqa", **bounds) == 5.0  # 6 x 0.2 s, raised to the floor
    assert request_timeout(book, "plan", **bounds) == 24.0  # 6 x 4 s
    assert request_timeout(book, "memory", **bounds) == 120.0  # a kind not seen yet
    assert request_timeout(book, "plan", multiple=0.0, floor_s=5.0, ceiling_s=120.0) == 120.0
    for _ in range(100):
        book.add("plan", 40.0)
    assert request_timeout(book, "plan", **bounds) == 120.0  # never above the configured max


def test_hedge_delay_follows_the_p95_with_fallbacks() -> None:
    book = LatencyBook()
    assert hedge_delay(book, "memory", floor_s=1.0, timeout_s=120.0) == 30.0  # timeout / 4
    for _ in range(50):
        book.add("vqa", 0.4)
    # A kind without its own answers: twice the pooled p99, at least the floor.
    assert hedge_delay(book, "memory", floor_s=1.0, timeout_s=120.0) == 1.0
    for _ in range(50):
        book.add("memory", 2.0)
    assert hedge_delay(book, "memory", floor_s=1.0, timeout_s=120.0) == 3.0  # 1.5 x p95
    assert hedge_delay(book, "memory", floor_s=1.0, timeout_s=4.0) == 2.0  # half the timeout


def test_a_replica_much_worse_than_its_peers_is_ejected() -> None:
    verdict = judge(0.5, [0.0, 0.02], eject_rate=0.3)
    assert verdict.eject and "failure rate 50%" in verdict.reason
    assert verdict.weight < 0.5


def test_a_somewhat_worse_replica_gets_less_work_but_stays() -> None:
    verdict = judge(0.2, [0.0, 0.0], eject_rate=0.3)
    assert not verdict.eject and 0.5 <= verdict.weight < 1.0
    assert judge(0.03, [0.0, 0.01], eject_rate=0.3).weight == 1.0


def test_a_fleet_failing_alike_ejects_nobody_by_rate() -> None:
    assert not judge(0.6, [0.5, 0.55], eject_rate=0.3).eject  # an outage, not a bad replica
    assert not judge(0.9, [], eject_rate=0.3).eject  # the last replica in rotation stays
    assert not judge(0.9, [0.4], eject_rate=0.3).eject  # no sound peer to send work to
    assert judge(None, [0.0], eject_rate=0.3).weight == 1.0  # too few outcomes to judge


def test_a_new_kind_borrows_its_family_latency_with_twice_the_margin() -> None:
    book = LatencyBook()
    for _ in range(30):
        book.add("vqa_bbox", 1.0)
    bounds = {"multiple": 6.0, "floor_s": 5.0, "ceiling_s": 120.0}
    assert request_timeout(book, "vqa_bbox", **bounds) == 6.0
    assert request_timeout(book, "vqa_count", **bounds) == 12.0  # family p99, 2 x 6
    assert request_timeout(book, "plan_memory", **bounds) == 120.0  # another family
    assert hedge_delay(book, "vqa_count", floor_s=0.5, timeout_s=120.0) == 3.0  # 2 x 1.5 x p95
