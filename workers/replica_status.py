"""Publish the replica health a worker process sees to Redis, for progress displays.

The VLM client calls :class:`ReplicaStatusPublisher` (its replica observer) on its loop
whenever a replica leaves or rejoins rotation; the publisher writes
``label -> {"healthy", "reason", "at"}`` into the hash :data:`common.keys.REPLICAS`, so the
one-machine progress display (another process) can warn when a replica leaves rotation.

Invariants: the observer never blocks the loop (the write is a task); a Redis error while
publishing is logged, never raised (health reporting must not fail a job); the latest report
of any process wins.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import orjson
import redis
import redis.asyncio as aredis

from narrator.common import keys
from narrator.common.logging import get_logger

log = get_logger(__name__)


def replica_report(healthy: bool, reason: str, at: float) -> bytes:
    """The JSON value stored for one replica (pure)."""
    return orjson.dumps({"healthy": healthy, "reason": reason, "at": at})


class ReplicaStatusPublisher:
    """A replica observer (label, healthy, reason) that writes each change to Redis."""

    def __init__(self, conn: aredis.Redis, clock: Callable[[], float] = time.time) -> None:
        self._conn = conn
        self._clock = clock
        self._tasks: set[asyncio.Task[None]] = set()

    def __call__(self, label: str, healthy: bool, reason: str) -> None:
        payload = replica_report(healthy, reason, self._clock())
        task = asyncio.get_running_loop().create_task(self._write(label, payload))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _write(self, label: str, payload: bytes) -> None:
        try:
            await self._conn.hset(keys.REPLICAS, label, payload)
        except redis.RedisError as exc:
            log.warning("replica_status_not_published", replica=label, error=str(exc))

    async def drain(self) -> None:
        """Wait for the writes still in flight (before the connection is closed)."""
        if self._tasks:
            with contextlib.suppress(Exception):
                await asyncio.gather(*self._tasks)
