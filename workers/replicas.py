"""The pool of VLM replicas a client sends to: in-flight budgets, least-loaded choice, health.

Invariants (all state lives on one event loop; no locks beyond the condition):

* a replica never has more than its ``budget`` requests in flight through this pool;
* :meth:`ReplicaPool.acquire` picks, among healthy replicas with free budget, the one with the
  fewest requests in flight (ties: the one that has been given the fewest requests so far,
  which spreads a burst evenly), preferring replicas the request has not failed on yet;
* when every healthy replica is full it waits on an ``asyncio.Condition`` until one is released
  or a replica becomes healthy; when no replica is healthy at all it returns an unhealthy one
  with free budget as a probe instead of waiting, so the caller's backoff and attempt budget
  decide how long a request keeps trying;
* a replica leaves rotation after ``failure_threshold`` consecutive connection errors, timeouts
  or 5xx answers, or one failed health check; it comes back after a successful answer or
  health check.

Gauges ``VLM_IN_FLIGHT`` and ``REPLICA_HEALTHY`` of :mod:`common.metrics` follow the state,
and an optional observer hears every change of a replica's health (label, healthy, reason).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from narrator.common.logging import get_logger, redact_text
from narrator.common.metrics import REPLICA_HEALTHY, VLM_IN_FLIGHT

log = get_logger("narrator.workers.replicas")

DEFAULT_FAILURE_THRESHOLD = 3

ReplicaObserver = Callable[[str, bool, str], None]
"""Called on the pool's loop with (replica label, healthy, reason) when a replica's health
changes; must not block."""


@dataclass
class Replica:
    url: str
    budget: int
    in_flight: int = 0
    healthy: bool = True
    failure_streak: int = 0
    started: int = 0  # requests given to this replica since the pool was made
    last_error: str | None = None

    @property
    def label(self) -> str:
        """The replica as it appears in logs and metric labels (credentials masked)."""
        return redact_text(self.url)

    @property
    def has_room(self) -> bool:
        return self.in_flight < self.budget


class ReplicaPool:
    """Replica choice and bookkeeping for one :class:`~workers.vlm_client.VLMClient`."""

    def __init__(
        self,
        urls: Sequence[str],
        *,
        budget: int | Sequence[int],
        failure_threshold: int = DEFAULT_FAILURE_THRESHOLD,
        observer: ReplicaObserver | None = None,
    ) -> None:
        budgets = [budget] * len(urls) if isinstance(budget, int) else list(budget)
        if not urls or len(budgets) != len(urls):
            raise ValueError("a replica pool needs at least one URL and one budget per URL")
        if min(budgets) < 1:
            raise ValueError("the in-flight budget per replica must be at least 1")
        self.replicas = [Replica(url=u, budget=b) for u, b in zip(urls, budgets, strict=True)]
        self.failure_threshold = failure_threshold
        self._observer = observer
        self._changed = asyncio.Condition()
        for replica in self.replicas:
            REPLICA_HEALTHY.labels(replica.label).set(1)
            VLM_IN_FLIGHT.labels(replica.label).set(0)

    def _choose(self, avoid: Iterable[Replica]) -> Replica | None:
        avoided = set(map(id, avoid))
        healthy = [r for r in self.replicas if r.healthy]
        if healthy:
            fresh = [r for r in healthy if id(r) not in avoided]
            candidates = fresh or healthy
        else:
            candidates = self.replicas
        with_room = [r for r in candidates if r.has_room]
        if not with_room:
            return None
        return min(with_room, key=lambda r: (r.in_flight, r.started))

    async def acquire(self, avoid: Iterable[Replica] = ()) -> Replica:
        """A replica with room for one more request, counted as in flight until release()."""
        avoid = list(avoid)
        async with self._changed:
            while (replica := self._choose(avoid)) is None:
                await self._changed.wait()
            replica.in_flight += 1
            replica.started += 1
            VLM_IN_FLIGHT.labels(replica.label).set(replica.in_flight)
            return replica

    async def release(self, replica: Replica) -> None:
        async with self._changed:
            replica.in_flight -= 1
            VLM_IN_FLIGHT.labels(replica.label).set(replica.in_flight)
            self._changed.notify_all()

    async def record_success(self, replica: Replica) -> None:
        replica.failure_streak = 0
        if not replica.healthy:
            await self.set_healthy(replica, True, "answered a request")

    async def record_failure(self, replica: Replica, reason: str) -> None:
        """Count a connection error / timeout / 5xx; takes the replica out after a streak."""
        replica.failure_streak += 1
        replica.last_error = reason
        if replica.healthy and replica.failure_streak >= self.failure_threshold:
            await self.set_healthy(replica, False, f"{replica.failure_streak} failures: {reason}")

    async def set_healthy(self, replica: Replica, healthy: bool, reason: str) -> None:
        if replica.healthy == healthy:
            return
        async with self._changed:
            replica.healthy = healthy
            if healthy:
                replica.failure_streak = 0
            REPLICA_HEALTHY.labels(replica.label).set(1 if healthy else 0)
            self._changed.notify_all()
        event = "vlm replica back in rotation" if healthy else "vlm replica out of rotation"
        log.info(event, replica=replica.label, reason=reason)
        if self._observer is not None:
            self._observer(replica.label, healthy, reason)

    @property
    def healthy_count(self) -> int:
        return sum(1 for r in self.replicas if r.healthy)

    def snapshot(self) -> list[dict[str, Any]]:
        return [
            {
                "replica": r.label,
                "healthy": r.healthy,
                "in_flight": r.in_flight,
                "budget": r.budget,
                "started": r.started,
                "failure_streak": r.failure_streak,
                "last_error": r.last_error,
            }
            for r in self.replicas
        ]
