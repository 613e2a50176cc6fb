"""The pool of VLM replicas a client sends to: in-flight limits, weighted least-loaded choice,
rotation (health, failure streaks, failure rates), spare capacity.

Invariants (all state lives on one event loop; no locks beyond the condition):

* a replica never has more than its ``limit`` requests in flight through this pool; the limit
  is fixed (``--max-in-flight-per-replica``) or set by the replica's
  :class:`~narrator.workers.inflight.InFlightController` from the server's gauges;
* :meth:`ReplicaPool.acquire` picks, among replicas in rotation with room, the one with the
  least ``(in_flight + 1) / weight`` (ties: the one given the fewest requests so far, which
  spreads a burst evenly), preferring replicas the request has not failed on yet. A replica
  that fails much more often than its peers has a weight below 1 and so gets less work: it is
  chosen later and holds at most ``weight x limit`` requests (at least one);
* when every replica in rotation is full it waits on an ``asyncio.Condition`` until one is
  released, a limit rises or a replica comes back; when none is in rotation at all it returns
  one that is out, with room, as a probe instead of waiting, so the caller's backoff and
  attempt budget decide how long a request keeps trying;
* a replica leaves rotation after ``failure_threshold`` consecutive connection errors,
  timeouts or 5xx answers, or one failed health check, and comes back after an answer or a
  successful health check (``reason_kind`` "health"). It also leaves when its failure rate
  over the window is above the ejection rate and much above its peers' (``reason_kind``
  "rate"); such a replica still answers ``/health``, so only probe requests bring it back
  (:meth:`probe_due`, :meth:`probe_result`): three answered in a row, after a cool-down that
  doubles with each failed probe (2 s ... 60 s);
* every change of rotation is reported once to the optional observer
  ``(replica label, in rotation, reason)``, and logged.

Gauges ``VLM_IN_FLIGHT``, ``VLM_IN_FLIGHT_LIMIT`` and ``REPLICA_HEALTHY`` of
:mod:`common.metrics` follow the state.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from narrator.common.logging import get_logger, redact_text
from narrator.common.metrics import (
    REPLICA_EJECTIONS,
    REPLICA_HEALTHY,
    VLM_IN_FLIGHT,
    VLM_IN_FLIGHT_LIMIT,
)
from narrator.workers.inflight import ControlSettings, InFlightController
from narrator.workers.replica_stats import OK, OutcomeWindow, judge

log = get_logger("narrator.workers.replicas")

DEFAULT_FAILURE_THRESHOLD = 3
PROBE_COOLDOWN_S = 2.0
PROBE_COOLDOWN_MAX_S = 60.0
PROBES_TO_REJOIN = 3  # a replica that fails half its requests passes 3 in a row 1 time in 8

ReplicaObserver = Callable[[str, bool, str], None]
"""Called with (replica label, in rotation, reason) whenever a replica leaves or rejoins
rotation. It runs on the client's event loop and must not block."""


@dataclass
class Replica:
    url: str
    limit: int
    controller: InFlightController | None = None  # None: a fixed limit
    outcomes: OutcomeWindow = field(default_factory=lambda: OutcomeWindow(60.0))
    in_flight: int = 0
    peak_in_flight: int = 0  # most in flight since the last gauge reading
    healthy: bool = True  # in rotation
    reason_kind: str = ""  # why out of rotation: "health" or "rate"
    weight: float = 1.0
    failure_streak: int = 0
    started: int = 0  # requests given to this replica since the pool was made
    last_error: str | None = None
    ejections: int = 0  # times taken out for its failure rate
    probe_at: float = 0.0  # when a rate-ejected replica may be probed
    probing: bool = False
    probe_answers: int = 0  # probes answered in a row since the last failed one
    json_object: bool = False  # the server refused json_schema; ask for json_object

    @property
    def label(self) -> str:
        """The replica as it appears in logs and metric labels (credentials masked)."""
        return redact_text(self.url)

    @property
    def room_limit(self) -> int:
        """The limit scaled by the replica's weight: a demoted replica holds fewer requests."""
        return self.limit if self.weight >= 1.0 else max(1, int(self.limit * self.weight))

    @property
    def has_room(self) -> bool:
        return self.in_flight < self.room_limit

    @property
    def budget(self) -> int:
        """The in-flight limit (the name of earlier versions)."""
        return self.limit


class ReplicaPool:
    """Replica choice and bookkeeping for one :class:`~workers.vlm_client.VLMClient`."""

    def __init__(
        self,
        urls: Sequence[str],
        *,
        limit: int | Sequence[int] | None = None,
        control: ControlSettings | None = None,
        failure_threshold: int = DEFAULT_FAILURE_THRESHOLD,
        window_s: float = 60.0,
        eject_rate: float = 0.3,
        observer: ReplicaObserver | None = None,
        budget: int | Sequence[int] | None = None,
    ) -> None:
        fixed = limit if limit is not None else budget
        if not urls:
            raise ValueError("a replica pool needs at least one URL")
        if fixed is None:
            control = control or ControlSettings()
            limits = [control.initial] * len(urls)
        else:
            limits = [fixed] * len(urls) if isinstance(fixed, int) else list(fixed)
            control = None
        if len(limits) != len(urls):
            raise ValueError("a replica pool needs one in-flight limit per URL")
        if min(limits) < 1:
            raise ValueError("the in-flight limit per replica must be at least 1")
        self.replicas = [
            Replica(
                url=u,
                limit=n,
                controller=InFlightController(control) if control is not None else None,
                outcomes=OutcomeWindow(window_s),
            )
            for u, n in zip(urls, limits, strict=True)
        ]
        self.failure_threshold = failure_threshold
        self.eject_rate = eject_rate
        self.observer = observer
        self._changed = asyncio.Condition()
        for replica in self.replicas:
            REPLICA_HEALTHY.labels(replica.label).set(1)
            VLM_IN_FLIGHT.labels(replica.label).set(0)
            VLM_IN_FLIGHT_LIMIT.labels(replica.label).set(replica.limit)

    # --- choice ---------------------------------------------------------------------------

    def _choose(self, avoid: Iterable[Replica], *, probe: bool = True) -> Replica | None:
        avoided = set(map(id, avoid))
        healthy = [r for r in self.replicas if r.healthy]
        if healthy:
            fresh = [r for r in healthy if id(r) not in avoided]
            candidates = fresh or healthy
        elif probe:
            candidates = self.replicas
        else:
            return None
        with_room = [r for r in candidates if r.has_room]
        if not with_room:
            return None
        return min(with_room, key=lambda r: ((r.in_flight + 1) / r.weight, r.started))

    def _take(self, replica: Replica) -> Replica:
        replica.in_flight += 1
        replica.started += 1
        replica.peak_in_flight = max(replica.peak_in_flight, replica.in_flight)
        VLM_IN_FLIGHT.labels(replica.label).set(replica.in_flight)
        return replica

    async def acquire(self, avoid: Iterable[Replica] = ()) -> Replica:
        """A replica with room for one more request, counted as in flight until release()."""
        avoid = list(avoid)
        async with self._changed:
            while (replica := self._choose(avoid)) is None:
                await self._changed.wait()
            return self._take(replica)

    def try_acquire(self, avoid: Iterable[Replica]) -> Replica | None:
        """Like :meth:`acquire` but only a replica in rotation other than ``avoid``, and
        None instead of waiting (a hedge is worth sending only where there is room now)."""
        avoided = set(map(id, avoid))
        candidates = [r for r in self.replicas if r.healthy and id(r) not in avoided]
        with_room = [r for r in candidates if r.has_room]
        if not with_room:
            return None
        return self._take(min(with_room, key=lambda r: ((r.in_flight + 1) / r.weight, r.started)))

    async def release(self, replica: Replica) -> None:
        async with self._changed:
            replica.in_flight -= 1
            VLM_IN_FLIGHT.labels(replica.label).set(replica.in_flight)
            self._changed.notify_all()

    # --- limits and capacity --------------------------------------------------------------

    async def set_limit(self, replica: Replica, limit: int) -> None:
        if limit == replica.limit:
            return
        async with self._changed:
            raised = limit > replica.limit
            replica.limit = limit
            VLM_IN_FLIGHT_LIMIT.labels(replica.label).set(limit)
            if raised:
                self._changed.notify_all()

    def spare_capacity(self) -> int:
        """How many more requests the replicas in rotation would take right now."""
        return sum(max(0, r.room_limit - r.in_flight) for r in self.replicas if r.healthy)

    async def wait_for_capacity(self) -> int:
        """Wait until some replica in rotation has room; the spare capacity then."""
        async with self._changed:
            while (spare := self.spare_capacity()) == 0:
                await self._changed.wait()
            return spare

    # --- outcomes and rotation ------------------------------------------------------------

    async def record_success(self, replica: Replica, now: float | None = None) -> None:
        replica.failure_streak = 0
        replica.outcomes.add(time.monotonic() if now is None else now, OK)
        if not replica.healthy and replica.reason_kind != "rate":
            await self.set_healthy(replica, True, "answered a request")
        self._rejudge(replica, now)

    async def record_failure(
        self, replica: Replica, reason: str, *, outcome: str = "error", now: float | None = None
    ) -> None:
        """Count a connection error / timeout / 5xx / lost hedge; takes the replica out after
        a streak, or when its failure rate is much worse than its peers'."""
        now = time.monotonic() if now is None else now
        replica.outcomes.add(now, outcome)
        replica.last_error = reason
        if outcome != "slow":
            replica.failure_streak += 1
        if replica.healthy and replica.failure_streak >= self.failure_threshold:
            await self.set_healthy(replica, False, f"{replica.failure_streak} failures: {reason}")
            return
        verdict = self._rejudge(replica, now)
        if verdict and replica.healthy:
            replica.ejections += 1
            cooldown = min(PROBE_COOLDOWN_MAX_S, PROBE_COOLDOWN_S * 2 ** (replica.ejections - 1))
            replica.probe_at = now + cooldown
            REPLICA_EJECTIONS.labels(replica.label, "failure_rate").inc()
            await self.set_healthy(replica, False, verdict, kind="rate")

    def _rejudge(self, replica: Replica, now: float | None) -> str:
        """Update the replica's weight; the ejection reason if it should leave rotation."""
        now = time.monotonic() if now is None else now
        rate = replica.outcomes.failure_rate(now)
        peers = [
            peer_rate
            for peer in self.replicas
            if peer is not replica and peer.healthy
            if (peer_rate := peer.outcomes.failure_rate(now)) is not None
        ]
        verdict = judge(rate, peers, eject_rate=self.eject_rate)
        if verdict.weight != replica.weight:
            if verdict.weight < replica.weight and replica.weight == 1.0:
                log.info(
                    "vlm_replica_demoted",
                    replica=replica.label,
                    weight=round(verdict.weight, 2),
                    failure_rate=rate,
                )
            replica.weight = verdict.weight
        return verdict.reason if verdict.eject else ""

    def probe_due(self, now: float) -> list[Replica]:
        """Replicas out for their failure rate whose cool-down is over (marked as probing)."""
        due = [
            r
            for r in self.replicas
            if not r.healthy and r.reason_kind == "rate" and not r.probing and now >= r.probe_at
        ]
        for replica in due:
            replica.probing = True
        return due

    async def probe_result(self, replica: Replica, ok: bool, reason: str, now: float) -> None:
        """One probe's outcome: ``PROBES_TO_REJOIN`` answers in a row (one per health
        interval) bring the replica back; one failure starts a longer cool-down."""
        replica.probing = False
        if ok:
            replica.probe_answers += 1
            if replica.probe_answers < PROBES_TO_REJOIN:
                return  # probed again at the next health check
            replica.probe_answers = 0
            replica.outcomes.clear()
            replica.weight = 1.0
            await self.set_healthy(replica, True, f"probe answered: {reason}")
        else:
            replica.probe_answers = 0
            cooldown = min(PROBE_COOLDOWN_MAX_S, PROBE_COOLDOWN_S * 2**replica.ejections)
            replica.ejections += 1
            replica.probe_at = now + cooldown
            log.info("vlm_replica_probe_failed", replica=replica.label, reason=reason)

    async def set_healthy(
        self, replica: Replica, healthy: bool, reason: str, *, kind: str = "health"
    ) -> None:
        """Put a replica in or out of rotation. A replica out for its failure rate ignores
        good health checks (it answers /health while it fails requests)."""
        if replica.healthy == healthy:
            return
        if healthy and replica.reason_kind == "rate" and not reason.startswith("probe"):
            return
        async with self._changed:
            replica.healthy = healthy
            replica.reason_kind = "" if healthy else kind
            if healthy:
                replica.failure_streak = 0
            REPLICA_HEALTHY.labels(replica.label).set(1 if healthy else 0)
            self._changed.notify_all()
        event = "vlm_replica_back_in_rotation" if healthy else "vlm_replica_out_of_rotation"
        log.info(event, replica=replica.label, reason=reason)
        if self.observer is not None:
            try:
                self.observer(replica.label, healthy, reason)
            except Exception as exc:  # an observer must not break the client
                log.warning("vlm_replica_observer_failed", error=repr(exc))

    @property
    def healthy_count(self) -> int:
        return sum(1 for r in self.replicas if r.healthy)

    def snapshot(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        return [
            {
                "replica": r.label,
                "healthy": r.healthy,
                "in_flight": r.in_flight,
                "limit": r.limit,
                "weight": round(r.weight, 3),
                "started": r.started,
                "failure_streak": r.failure_streak,
                "failure_rate": r.outcomes.failure_rate(now),
                "last_error": r.last_error,
                "json_object": r.json_object,
            }
            for r in self.replicas
        ]
