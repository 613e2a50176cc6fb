"""The benchmarks' pure arithmetic: packing bound, occupancy-aware overrun, idle-time split,
the binding-limit rules, Prometheus parsing and the limit trace (no processes, no timing)."""

from __future__ import annotations

import json

import pytest

from tests.bench.fleet_figures import (
    IdleSplit,
    RunSamples,
    binding_limit,
    busy_at_start,
    idle_split,
    mean_present,
    nominal_service_s,
    packing_bound_s,
    service_overrun,
)
from tests.bench.fleet_gauges import (
    GaugeRow,
    client_gauges,
    client_outcomes,
    parse_prometheus,
    server_gauges,
)
from tests.bench.limit_trace import (
    TraceRow,
    fixed_budgets,
    thin,
    trace_from_gauges,
    trace_from_log,
)


def entry(
    arrival: float, start: float, end: float, images: int = 0, tokens: int = 0
) -> dict[str, float]:
    return {
        "arrival_s": arrival,
        "start_s": start,
        "end_s": end,
        "images": images,
        "completion_tokens": tokens,
    }


def test_packing_bound_is_busy_slot_seconds_over_slots() -> None:
    entries = [entry(0, 0, 2), entry(0, 1, 4), entry(0, 0, 1)]
    assert packing_bound_s(entries, 2) == pytest.approx(3.0)
    with pytest.raises(ValueError):
        packing_bound_s(entries, 0)


def test_busy_at_start_counts_the_request_itself_and_those_still_running() -> None:
    # a: 0-3, b: 1-2, c: 2-4 (b ended at c's start), d: 3-5 (a ended at d's start)
    entries = [entry(0, 0, 3), entry(0, 1, 2), entry(0, 2, 4), entry(0, 3, 5)]
    assert busy_at_start(entries) == [1, 2, 2, 2]


def test_nominal_service_applies_the_occupancy_term_per_request() -> None:
    entries = [entry(0, 0, 1, images=1, tokens=10), entry(0, 0, 1, images=1, tokens=10)]
    plain = nominal_service_s(
        entries, slots=2, base_s=0.1, per_image_s=0.2, per_output_token_s=0.01,
        occupancy_slowdown=0.0,
    )  # fmt: skip
    slowed = nominal_service_s(
        entries, slots=2, base_s=0.1, per_image_s=0.2, per_output_token_s=0.01,
        occupancy_slowdown=0.2,
    )  # fmt: skip
    assert plain == pytest.approx(0.8)
    # the first starts alone (1/2 busy), the second beside it (2/2 busy)
    assert slowed == pytest.approx(0.4 * 1.1 + 0.4 * 1.2)


def test_service_overrun_is_zero_when_the_timeline_matches_the_model() -> None:
    def overrun(timeline: list[dict[str, float]]) -> float:
        return service_overrun(
            [timeline], slots=4, base_s=0.1, per_image_s=0.4, per_output_token_s=0.0,
            occupancy_slowdown=0.0,
        )  # fmt: skip

    assert overrun([entry(0, 0, 0.5, images=1), entry(0, 1, 1.5, images=1)]) == pytest.approx(0)
    late = [entry(0, 0, 0.55, images=1), entry(0, 1, 1.55, images=1)]
    assert overrun(late) == pytest.approx(0.1)


def test_mean_present_counts_waiting_and_running_requests() -> None:
    entries = [entry(0, 1, 2), entry(1, 1, 3)]
    assert mean_present(entries, 0, 2) == pytest.approx(1.5)


def test_idle_split_tells_a_queue_elsewhere_from_no_request_at_all() -> None:
    # replica 0 (1 slot): two requests, the second waits 1-2; replica 1 idle throughout
    busy = [entry(0, 0, 2), entry(1, 2, 3)]
    split = idle_split([busy, []], slots=1, t0=0, t1=3)
    # slot time 6: replica 1 idle 3 (1 s of it while replica 0 queued), replica 0 never idle
    assert split.idle == pytest.approx(3 / 6)
    assert split.imbalance == pytest.approx(1 / 6)
    assert split.underfed == pytest.approx(2 / 6)


def test_a_request_being_read_while_slots_are_free_is_no_queue() -> None:
    # replica 0 (2 slots): one request runs, another arrived at 0 but starts at 1 (the
    # server was still parsing it: a slot was free); replica 1 idle throughout
    parsing = [entry(0, 0, 3), entry(0, 1, 3)]
    split = idle_split([parsing, []], slots=2, t0=0, t1=3)
    assert split.imbalance == pytest.approx(0.0)
    assert split.underfed == pytest.approx((1 + 6) / 12)


def test_idle_split_of_a_full_fleet_is_zero() -> None:
    full = [[entry(0, 0, 4)], [entry(0, 0, 4)]]
    assert idle_split(full, slots=1, t0=1, t1=3) == IdleSplit(0.0, 0.0, 0.0)


def samples(busy: float = 0.5, running: float | None = 32, queued: float | None = 100,
            capacity: int | None = 32, capped: float | None = 0.9) -> RunSamples:  # fmt: skip
    return RunSamples(busy, 0.3, 0.1, running, queued, capacity, capped)


def binding(utilisation: float, split: IdleSplit, run: RunSamples) -> str:
    return binding_limit(
        utilisation=utilisation, target=0.9, present=50, slots=100, split=split, overrun=0.01,
        samples=run,
    ).limit  # fmt: skip


def test_binding_limit_rules_in_order() -> None:
    underfed = IdleSplit(0.5, 0.1, 0.4)
    assert binding(0.95, underfed, samples()) == "none"
    assert binding(0.5, IdleSplit(0.5, 0.4, 0.1), samples()) == "replica choice (imbalance)"
    assert binding(0.5, underfed, samples(busy=0.95)) == "jobs held by the workers"
    assert binding(0.5, underfed, samples(busy=0.95, capped=0.1)) == "CPU (the machine)"
    assert binding(0.5, underfed, samples()) == "jobs held by the workers"
    assert binding(0.5, underfed, samples(capped=0.1)) == "dependency chains (ready work)"
    no_jobs = samples(running=None, queued=None, capacity=None, capped=None)
    assert binding(0.5, underfed, no_jobs) == "dependency chains (ready work)"


METRICS = """# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 7.0
vllm:num_requests_running{engine="1",model_name="m"} 5.0
vllm:num_requests_waiting{engine="0",model_name="m"} 2.0
vllm:num_requests_waiting_by_reason{engine="0",reason="capacity"} 9.0
narrator_vlm_in_flight_limit{replica="http://a:1"} 40.0
narrator_vlm_in_flight{replica="http://a:1"} 12.0
narrator_vlm_requests_total{module="vqa",outcome="ok",replica="http://a:1"} 30.0
narrator_vlm_requests_total{module="plan",outcome="timeout",replica="http://a:1"} 2.0
not a sample line
"""


def test_prometheus_parsing_sums_engines_and_skips_longer_names() -> None:
    assert len(parse_prometheus(METRICS)) == 8
    assert server_gauges(METRICS) == {"running": 12.0, "waiting": 2.0}
    assert client_gauges(METRICS) == {"http://a:1": {"limit": 40.0, "in_flight": 12.0}}
    assert client_outcomes(METRICS) == {("http://a:1", "ok"): 30.0, ("http://a:1", "timeout"): 2.0}


def test_trace_from_gauges_pairs_each_limit_with_the_nearest_server_reading() -> None:
    rows = [
        GaugeRow(10.0, "server", "http://a:1", {"running": 3, "waiting": 0}),
        GaugeRow(10.1, "pod-0", "http://a:1", {"limit": 16, "in_flight": 3}),
        GaugeRow(10.5, "server", "http://a:1", {"running": 8, "waiting": 2}),
        GaugeRow(10.6, "pod-0", "http://a:1", {"limit": 32, "in_flight": 10}),
        GaugeRow(10.6, "pod-1", "http://a:1", {"limit": 99, "in_flight": 1}),
    ]
    trace = trace_from_gauges(rows, "pod-0", "http://a:1", clock0_s=10.0)
    assert trace == [
        TraceRow(pytest.approx(0.1), 16, 3, 3, 0),  # type: ignore[arg-type]
        TraceRow(pytest.approx(0.6), 32, 10, 8, 2),  # type: ignore[arg-type]
    ]


def test_trace_from_log_reads_the_limit_events_of_one_replica() -> None:
    lines = [
        json.dumps({"event": "vlm client ready", "budgets": [40, 40]}),
        json.dumps(
            {
                "event": "vlm_in_flight_limit",
                "replica": "http://a:1",
                "limit": 32,
                "running": 20,
                "waiting": 0,
                "in_flight": 16,
                "timestamp": "2026-01-01T00:00:02Z",
            }
        ),
        json.dumps(
            {
                "event": "vlm_in_flight_limit",
                "replica": "http://b:2",
                "limit": 8,
                "timestamp": "2026-01-01T00:00:03Z",
            }
        ),
        "garbage",
    ]
    epoch0 = 1767225600.0  # 2026-01-01T00:00:00Z
    assert trace_from_log(lines, "http://a:1", epoch0) == [TraceRow(2.0, 32, 16, 20, 0)]
    assert fixed_budgets(lines) == [40, 40]


def test_thin_keeps_the_ends_and_the_limit_changes() -> None:
    rows = [TraceRow(float(i), 16 if i < 50 else 32, None, None, None) for i in range(100)]
    kept = thin(rows, 10)
    assert len(kept) <= 10
    assert kept[0] == rows[0] and kept[-1] == rows[-1]
    assert rows[50] in kept
    assert thin(rows[:5], 10) == rows[:5]
