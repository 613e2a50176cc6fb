"""The client against misbehaving or unusual servers, over real HTTP with the simulated fleet:
json_schema refused, a replica hanging half its requests, hedged chain requests, the adaptive
in-flight limit, base URLs with /v1 and behind a path prefix, and the rotation observer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import aiohttp
import pytest
from aiohttp import web
from structlog.testing import capture_logs

from narrator.simulator import SimConfig, start_fleet_async
from narrator.simulator.fleet import AsyncFleet
from narrator.workers.replica_stats import SLOW
from narrator.workers.replicas import ReplicaPool
from narrator.workers.vlm_client import VLMClient
from tests.workers.test_vlm_client import ask, settings, strict_check

pytestmark = pytest.mark.fleet(3, SimConfig(slots=8))


async def eventually(predicate: Callable[[], object], timeout_s: float, what: str) -> None:
    """Poll ``predicate`` on the running loop until it is truthy, or fail after a deadline."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} (after {timeout_s:.0f} s)")
        await asyncio.sleep(0.02)


# --- response_format json_schema refused ---------------------------------------------------


@pytest.mark.parametrize("status", [500, 400])
async def test_a_replica_refusing_json_schema_is_asked_with_json_object(status: int) -> None:
    """llama.cpp answers 500 "Input should be 'text' or 'json_object'" (others 400): the
    client re-sends with json_object and the schema in the prompt, remembers it for that
    replica, and logs the switch once."""
    async with await start_fleet_async(2, SimConfig(slots=8)) as fleet:
        fleet.set_faults(0, refuse_json_schema=True, refuse_json_schema_status=status)
        with capture_logs() as logs:
            async with VLMClient(settings(fleet, max_in_flight_per_replica=1)) as client:
                answers = [await ask(client, f"q{i}") for i in range(6)]
                counters = client.counters()
                assert client.pool.replicas[0].json_object
                assert not client.pool.replicas[1].json_object
        refused = fleet.stats(0)
        assert refused["by_status"].get(str(status)) == 1, refused["by_status"]
        assert refused["by_schema"].get("json_object", 0) >= 2  # later requests, no refusal
        assert fleet.stats(1)["by_schema"].get("json_object", 0) == 0
    for answer in answers:
        strict_check(answer.data)  # the schema written in the prompt was followed
    assert any(a.replica == fleet.urls[0] for a in answers)
    switches = [e for e in logs if e["event"] == "vlm_json_schema_refused"]
    assert len(switches) == 1 and switches[0]["replica"] == fleet.urls[0]
    assert counters["vqa:attempts"] == 7 and "vqa:retries" not in counters


async def test_an_unrelated_server_error_does_not_switch_the_format(
    async_fleet: AsyncFleet,
) -> None:
    for index in range(3):
        async_fleet.set_faults(index, error_rate=0.5, error_status=500)
    async with VLMClient(settings(async_fleet)) as client:
        await asyncio.gather(*(ask(client, f"q{i}") for i in range(12)))
        assert not any(r.json_object for r in client.pool.replicas)
        assert client.counters()["vqa:retries"] >= 1


# --- a slow or half-broken replica ---------------------------------------------------------


async def test_a_replica_hanging_half_its_requests_is_ejected_then_probed_back(
    async_fleet: AsyncFleet,
) -> None:
    async_fleet.set_faults(0, hang_rate=0.5)  # it still answers /health
    events: list[tuple[str, bool, str]] = []
    config = settings(
        async_fleet, timeout_s=0.5, health_interval_s=0.1, max_in_flight_per_replica=2
    )
    async with VLMClient(config, observer=lambda *e: events.append(e)) as client:
        url = async_fleet.urls[0]

        def ejected() -> bool:
            return any(e[0] == url and not e[1] and "failure rate" in e[2] for e in events)

        sent = 0
        deadline = time.monotonic() + 30
        while not ejected():
            assert time.monotonic() < deadline, (events, client.pool.snapshot())
            await asyncio.gather(*(ask(client, f"q{sent + i}") for i in range(6)))
            sent += 6
        replica = client.pool.replicas[0]
        assert not replica.healthy and replica.reason_kind == "rate"
        # Out of rotation it gets no more work, although /health says it is fine.
        before = async_fleet.stats(0)["requests_total"]
        await asyncio.gather(*(ask(client, f"after{i}") for i in range(12)))
        assert async_fleet.stats(0)["requests_total"] == before
        # Repaired, it comes back through a probe request, not through /health.
        async_fleet.clear_faults(0)
        await eventually(
            lambda: any(e[0] == url and e[1] and "probe" in e[2] for e in events),
            15,
            "the repaired replica was not probed back into rotation",
        )
        assert replica.healthy


async def test_a_replica_failing_more_than_its_peers_gets_less_work() -> None:
    async with await start_fleet_async(2, SimConfig(slots=8)) as fleet:
        async with VLMClient(settings(fleet, eject_failure_rate=0.9)) as client:
            good, bad = client.pool.replicas
            now = time.monotonic()
            for _ in range(16):
                await client.pool.record_success(good, now)
            for i in range(16):
                if i % 4 == 0:
                    await client.pool.record_failure(bad, "timeout", outcome="timeout", now=now)
                else:
                    await client.pool.record_success(bad, now)
            assert bad.healthy and bad.weight < 1.0 and good.weight == 1.0
            await asyncio.gather(*(ask(client, f"q{i}") for i in range(24)))
        counts = [fleet.stats(i)["requests_total"] for i in range(2)]
    assert counts[1] < counts[0], counts


# --- hedging -------------------------------------------------------------------------------


async def test_a_hedged_request_returns_the_first_answer_and_cancels_the_other() -> None:
    async with await start_fleet_async(2, SimConfig(slots=8)) as fleet:
        fleet.set_faults(0, hang_rate=1.0)  # the first choice of an idle pool never answers
        config = settings(fleet, timeout_s=10.0, hedge_min_delay_s=0.1)
        async with VLMClient(config) as client:
            started = time.monotonic()
            answer = await ask(client, "where next?", on_chain=True)
            took = time.monotonic() - started
            counters = client.counters()
            # The primary on replica 0 was cancelled: the server saw its client go away.
            await eventually(
                lambda: fleet.stats(0)["in_flight"] == 0, 5, "the outrun request is still open"
            )
            assert client.pool.replicas[0].outcomes.counts(time.monotonic())[SLOW] == 1
            assert client.pool.replicas[0].in_flight == 0
        stats = fleet.stats(0)
    strict_check(answer.data)
    assert answer.replica == fleet.urls[1]
    assert took < 5.0  # the hedge delay (a quarter of the timeout, nothing known yet), not 10 s
    assert counters["vqa:hedges"] == 1 and counters["vqa:hedge_wins"] == 1
    assert stats["hung"] == 1 and stats["by_status"].get("499") == 1, stats["by_status"]


async def test_a_fast_primary_is_not_hedged_and_independent_requests_never_are(
    async_fleet: AsyncFleet,
) -> None:
    async with VLMClient(settings(async_fleet, timeout_s=20.0, hedge_min_delay_s=5.0)) as client:
        await asyncio.gather(*(ask(client, f"chain{i}", on_chain=True) for i in range(6)))
        assert "vqa:hedges" not in client.counters()
    async_fleet.set_faults(0, hang_rate=1.0)
    async with VLMClient(settings(async_fleet, timeout_s=0.4, hedge_min_delay_s=0.05)) as client:
        answer = await ask(client, "independent")  # not on a chain: timeout, then a retry
        counters = client.counters()
    assert answer.replica != async_fleet.urls[0] and answer.attempts == 2
    assert "vqa:hedges" not in counters and counters["vqa:retries"] == 1


async def test_a_hedge_that_fails_leaves_the_primary_to_answer() -> None:
    async with await start_fleet_async(2, SimConfig(slots=8)) as fleet:
        fleet.set_faults(0, latency_s=0.6)  # slow but answers
        fleet.set_faults(1, error_rate=1.0, error_status=503)
        # One attempt per copy: a retry of the failed hedge could land on replica 0 as well.
        config = settings(fleet, timeout_s=4.0, hedge_min_delay_s=0.1, max_attempts=1)
        async with VLMClient(config) as client:
            for _ in range(30):  # answers of this kind usually take 50 ms: hedge after 0.1 s
                client.latency.add("vqa_spatial", 0.05)
            answer = await ask(client, "slow one", on_chain=True)
            counters = client.counters()
    assert answer.replica == fleet.urls[0]
    assert counters["vqa:hedges"] == 1 and "vqa:hedge_wins" not in counters


# --- adaptive in-flight limit ---------------------------------------------------------------


async def test_the_adaptive_limit_fills_a_replica_and_keeps_its_queue_short() -> None:
    """No capacity hint: the limit grows from 2 until the server queues, then settles near
    1.25 x what the server runs at once (8 slots)."""
    async with await start_fleet_async(1, SimConfig(slots=8, base_s=0.05)) as fleet:
        config = settings(
            fleet,
            max_in_flight_per_replica=None,
            initial_in_flight_per_replica=2,
            metrics_interval_s=0.05,
        )
        async with VLMClient(config) as client:
            stop = asyncio.Event()

            async def keep_asking(worker: int) -> None:
                n = 0
                while not stop.is_set():
                    await ask(client, f"w{worker}-{n}")
                    n += 1

            load = [asyncio.create_task(keep_asking(w)) for w in range(40)]

            def settled() -> bool:
                queued = [s for s in client.limit_trace() if (s["waiting"] or 0) > 0]
                recent = client.limit_trace()[-5:]
                return len(queued) >= 3 and all(8 <= s["limit"] <= 12 for s in recent)

            try:
                await eventually(settled, 20, f"no steady limit: {client.limit_trace()[-10:]}")
            finally:
                stop.set()
                await asyncio.gather(*load)
            trace = client.limit_trace(fleet.urls[0])
    limits = [s["limit"] for s in trace]
    assert limits[0] <= 4 and max(limits) >= 8, limits
    assert all(s["source"] == "metrics" for s in trace)
    assert {"at_s", "replica", "limit", "running", "waiting", "in_flight"} <= set(trace[0])


async def test_spare_capacity_counts_replicas_in_rotation_and_can_be_awaited() -> None:
    pool = ReplicaPool(["http://spare-a", "http://spare-b"], limit=2)
    assert pool.spare_capacity() == 4
    taken = [await pool.acquire() for _ in range(4)]
    assert pool.spare_capacity() == 0
    waiter = asyncio.create_task(pool.wait_for_capacity())
    await asyncio.sleep(0)
    assert not waiter.done()
    await pool.release(taken[0])
    assert await asyncio.wait_for(waiter, 1) == 1
    for replica in taken[1:]:
        await pool.release(replica)
    a, b = pool.replicas
    await pool.set_healthy(b, False, "GET /health failed")
    assert pool.spare_capacity() == 2  # only replicas in rotation count
    await pool.set_limit(a, 5)
    assert pool.spare_capacity() == 5


# --- base URLs -----------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["", "/", "/v1", "/v1/"])
async def test_every_openai_spelling_of_a_base_url_reaches_the_replica(
    async_fleet: AsyncFleet, suffix: str
) -> None:
    config = settings(async_fleet, urls=tuple(u + suffix for u in async_fleet.urls))
    assert config.urls == tuple(async_fleet.urls)
    async with VLMClient(config) as client:
        assert (await ask(client)).attempts == 1
        assert await client.resolve_model() == "narrator-sim-vlm"


async def start_prefix_proxy(target: str, prefix: str) -> web.AppRunner:
    """A reverse proxy that serves ``target`` under ``prefix`` (as a gateway would)."""

    async def forward(request: web.Request) -> web.Response:
        tail = request.match_info["tail"]
        async with (
            aiohttp.ClientSession() as session,
            session.request(
                request.method,
                f"{target}/{tail}",
                data=await request.read(),
                headers={k: v for k, v in request.headers.items() if k.lower() != "host"},
            ) as upstream,
        ):
            body = await upstream.read()
            return web.Response(
                body=body, status=upstream.status, content_type=upstream.content_type
            )

    app = web.Application()
    app.router.add_route("*", prefix + "/{tail:.*}", forward)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner


async def test_a_path_prefix_before_v1_is_kept(async_fleet: AsyncFleet) -> None:
    runner = await start_prefix_proxy(async_fleet.urls[0], "/gateway/vlm")
    try:
        port = runner.addresses[0][1]
        url = f"http://127.0.0.1:{port}/gateway/vlm/v1"
        config = settings(async_fleet, urls=(url,), max_in_flight_per_replica=None)
        assert config.urls == (f"http://127.0.0.1:{port}/gateway/vlm",)
        async with VLMClient(config) as client:
            assert (await ask(client)).replica == config.urls[0]
            assert await client.resolve_model() == "narrator-sim-vlm"
            await eventually(
                lambda: any(s["running"] is not None for s in client.limit_trace()),
                5,
                "/metrics was not read through the prefix",
            )
    finally:
        await runner.cleanup()
