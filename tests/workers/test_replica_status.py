"""Replica health seen by a worker reaches Redis (``narrator:replicas``) for the progress
display of another process: a real client, the simulated fleet, a real Redis."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import redis

from narrator.common.config import load_config
from narrator.ops.status import read_replica_states
from narrator.simulator.fleet import start_fleet_async
from narrator.workers.context import open_worker_context


async def _poll(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


async def test_a_replica_leaving_and_rejoining_rotation_is_published(redis_url: str) -> None:
    fleet = await start_fleet_async(2)
    conn = redis.Redis.from_url(redis_url)
    config = load_config(
        {
            "redis_url": redis_url,
            "vlm": {"urls": fleet.urls, "health_interval_s": 0.1, "connect_timeout_s": 1.0},
        },
        env={},
    )
    ctx = await open_worker_context(config)
    down, up = fleet.urls[1], fleet.urls[0]
    started = time.time()
    try:
        fleet.set_faults(1, dead=True)
        await _poll(
            lambda: read_replica_states(conn).get(down, {}).get("healthy") is False,
            20,
            "the dead replica is reported out of rotation",
        )
        out = read_replica_states(conn)[down]
        assert "health" in out["reason"] and out["at"] >= started
        fleet.clear_faults(1)
        await _poll(
            lambda: read_replica_states(conn).get(down, {}).get("healthy") is True,
            20,
            "the replica is reported back",
        )
    finally:
        await ctx.close()
        await fleet.close()
    assert up not in read_replica_states(conn)  # its health never changed
