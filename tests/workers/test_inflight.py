"""The adaptive in-flight controller as pure code: recorded gauge sequences in, limits out."""

from __future__ import annotations

from narrator.workers.inflight import (
    ControlSettings,
    InFlightController,
    ServerGauges,
    parse_vllm_gauges,
)

VLLM_METRICS = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="Qwen/Qwen2.5-VL-7B-Instruct"} 96.0
vllm:num_requests_running{engine="1",model_name="Qwen/Qwen2.5-VL-7B-Instruct"} 32.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="Qwen/Qwen2.5-VL-7B-Instruct"} 7.0
vllm:num_requests_waiting{engine="1",model_name="Qwen/Qwen2.5-VL-7B-Instruct"} 0.0
vllm:num_requests_waiting_by_reason{engine="0",reason="capacity"} 5.0
vllm:kv_cache_usage_perc{engine="0",model_name="Qwen/Qwen2.5-VL-7B-Instruct"} 0.91
"""


def test_gauges_are_summed_over_engines_and_nothing_else() -> None:
    assert parse_vllm_gauges(VLLM_METRICS) == ServerGauges(running=128.0, waiting=7.0)
    unlabelled = "vllm:num_requests_running 3\nvllm:num_requests_waiting 0\n"
    assert parse_vllm_gauges(unlabelled) == ServerGauges(3.0, 0.0)


def test_missing_gauges_are_none() -> None:
    assert parse_vllm_gauges("") is None
    assert parse_vllm_gauges("vllm:num_requests_running 3\n") is None  # no waiting gauge
    assert parse_vllm_gauges("simvlm_max_num_seqs 8\nprocess_cpu_seconds_total 1.0\n") is None
    assert parse_vllm_gauges("vllm:num_requests_running NaN\nvllm:num_requests_waiting 1\n") is None


def replay(controller: InFlightController, readings: list[tuple[float, float, int]]) -> list[int]:
    """Limits after each (running, waiting, peak in flight of this client) reading."""
    return [controller.on_gauges(ServerGauges(r, w), peak) for r, w, peak in readings]


def test_slow_start_doubles_while_the_server_has_room_and_the_limit_binds() -> None:
    c = InFlightController(ControlSettings(initial=16))
    # A server with 128 slots, this client alone and always using its whole limit.
    limits = replay(c, [(16, 0, 16), (32, 0, 32), (64, 0, 64), (128, 0, 128)])
    assert limits == [32, 64, 128, 256]
    assert c.capacity is None and c.source == "metrics"


def test_an_unused_limit_is_not_raised() -> None:
    c = InFlightController(ControlSettings(initial=16))
    assert replay(c, [(5, 0, 5), (7, 0, 9)]) == [16, 16]


def test_a_queue_past_the_target_cuts_the_limit_to_it() -> None:
    c = InFlightController(ControlSettings(initial=256, queue_target=1.25))
    # Recorded: 256 sent, the server runs 128 and queues 128 -> aim at 1.25 x 128 = 160.
    assert replay(c, [(128, 128, 256)]) == [160]
    assert c.capacity == 128
    # At the target the limit holds (within the dead band), reading after reading.
    assert replay(c, [(128, 32, 160), (128, 30, 160), (127, 35, 160)]) == [160, 160, 160]


def test_a_queue_below_the_target_raises_a_binding_limit() -> None:
    c = InFlightController(ControlSettings(initial=100, queue_target=1.25))
    c.capacity = 128.0
    # 100 at the server, no queue, limit used up: raise towards 160, by 25 % a reading.
    assert replay(c, [(100, 0, 125)]) == [125]
    assert replay(c, [(125, 0, 125), (128, 28, 156)]) == [156, 156]


def test_the_capacity_estimate_follows_a_server_that_can_run_fewer() -> None:
    """KV-cache pressure: a server that ran 128 at once now runs 64 and queues the rest."""
    c = InFlightController(ControlSettings(initial=160, queue_target=1.25))
    assert replay(c, [(128, 32, 160)]) == [160]
    limits = []
    for _ in range(8):  # the client keeps its whole limit at the server
        limits.append(c.on_gauges(ServerGauges(64, c.limit - 64), peak_in_flight=c.limit))
    assert limits[0] < 160 and limits == sorted(limits, reverse=True)
    assert c.capacity is not None and 64 <= c.capacity < 70
    assert 0.9 * 1.25 * 64 <= limits[-1] <= 1.1 * 1.25 * 64, limits


def test_the_limit_stays_within_floor_and_ceiling() -> None:
    c = InFlightController(ControlSettings(initial=4, floor=2, ceiling=6))
    assert replay(c, [(4, 0, 4), (6, 0, 6), (6, 0, 6)]) == [6, 6, 6]
    assert replay(c, [(1, 50, 6), (1, 50, 6), (1, 50, 6)])[-1] == 2


def serve(limits: list[int], capacity: int, other_load: int = 0) -> ServerGauges:
    """A server that runs ``capacity`` at once and queues the rest of what is sent."""
    total = sum(limits) + other_load
    running = min(total, capacity)
    return ServerGauges(float(running), float(total - running))


def test_several_processes_sharing_a_replica_converge_without_overloading_it() -> None:
    """Four worker processes, each keeping its whole limit busy, read the same gauges of one
    128-slot replica: their sum settles near 1.25 x 128 and never runs away."""
    capacity, target = 128, 1.25 * 128
    clients = [InFlightController(ControlSettings(initial=16)) for _ in range(4)]
    totals = []
    for _ in range(40):
        gauges = serve([c.limit for c in clients], capacity)
        for c in clients:
            c.on_gauges(gauges, peak_in_flight=c.limit)
        totals.append(sum(c.limit for c in clients))
    settled = totals[10:]
    assert all(0.85 * target <= t <= 1.2 * target for t in settled), totals
    assert max(totals) <= 2 * 2 * capacity  # slow start overshoots at most one doubling
    # The processes share the replica evenly (same start, same gauges, same decisions).
    assert len({c.limit for c in clients}) == 1


def test_processes_with_uneven_demand_still_converge() -> None:
    """One process needs only 10 requests; the others take the rest of the target."""
    capacity, target = 256, 1.25 * 256
    greedy = [InFlightController(ControlSettings(initial=16)) for _ in range(3)]
    modest = InFlightController(ControlSettings(initial=16))
    for _ in range(40):
        used = [c.limit for c in greedy] + [min(modest.limit, 10)]
        gauges = serve(used, capacity)
        for c in greedy:
            c.on_gauges(gauges, peak_in_flight=c.limit)
        modest.on_gauges(gauges, peak_in_flight=min(modest.limit, 10))
    total = sum(c.limit for c in greedy) + 10
    assert 0.85 * target <= total <= 1.2 * target, total
    assert modest.limit <= 16  # never raised beyond what it used


def test_load_from_another_tool_makes_narrator_back_off() -> None:
    capacity = 64
    c = InFlightController(ControlSettings(initial=16))
    for _ in range(20):
        c.on_gauges(serve([c.limit], capacity), peak_in_flight=c.limit)
    alone = c.limit
    for _ in range(20):
        c.on_gauges(serve([c.limit], capacity, other_load=60), peak_in_flight=c.limit)
    assert c.limit < alone / 2, (alone, c.limit)


def test_latency_is_the_signal_only_where_gauges_are_missing() -> None:
    c = InFlightController(ControlSettings(initial=8, latency_batch=4))
    assert c.on_latency("vqa", 0.1, peak_in_flight=8) == 8  # gauges not known missing yet
    for _ in range(3):
        c.on_gauges_missing()
    assert c.source == "latency"
    # Answers at the unloaded latency with the limit used up: slow start.
    limits = [c.on_latency("vqa", 0.1, peak_in_flight=c.limit) for _ in range(8)]
    assert limits[3] == 16 and limits[7] == 32
    # Answers now take 3x as long (a queue at the server): the limit is cut in proportion.
    for _ in range(4):
        cut = c.on_latency("vqa", 0.3, peak_in_flight=c.limit)
    assert cut == 16  # 32 x 1.5 / 3
    # Back to normal: the limit grows again, now gently (x1.25).
    for _ in range(4):
        grown = c.on_latency("vqa", 0.1, peak_in_flight=c.limit)
    assert grown == 20
    # Kinds of requests have their own baseline: a slow kind is not a queue.
    for _ in range(4):
        same = c.on_latency("plan", 2.0, peak_in_flight=c.limit)
    assert same == 25
    # Gauges reappear: they take over again.
    c.on_gauges(ServerGauges(10, 0), peak_in_flight=0)
    assert c.source == "metrics" and c.on_latency("vqa", 5.0, peak_in_flight=99) == c.limit
