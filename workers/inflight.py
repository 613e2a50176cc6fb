"""Adaptive in-flight limit of one replica, driven by what the server itself reports (pure).

No capacity hint is needed. vLLM publishes, on ``GET /metrics``, how many requests its engine
runs right now (``vllm:num_requests_running``) and how many wait for a slot
(``vllm:num_requests_waiting``); :func:`parse_vllm_gauges` reads them (summed over every
series: one per engine with data parallelism). :class:`InFlightController` turns successive
readings into the number of requests one client process may have at that replica:

* While the server has never queued, its capacity is unknown: the limit doubles at each
  reading on which the client used all of it ("slow start").
* When the server queues (``waiting > 0``), what it runs is what it can run at once: the
  capacity estimate follows ``running`` (smoothed). The target is
  ``running + waiting = queue_target x capacity`` (1.25 by default: the next request is
  already there when a slot frees, and the queue stays short). Every reading scales the
  limit by ``target / (running + waiting)``, bounded to [0.5, 1.25] (cut fast, raise
  gently) and ignored within a 10 % dead band, and never raises a limit the client does not
  use up.
* Several processes (or pods) sharing a fleet converge without talking to each other: each
  sees the same gauges and scales its own limit by the same factor, so their sum scales by it.
* Where ``/metrics`` has no such gauges (another server, a proxy), latency is the signal: per
  kind of request the client keeps a slowly forgetting minimum (the unloaded latency); when a
  batch of answers takes on average more than ``latency_tolerance`` x that, the limit is cut
  in proportion; when it stays below and the limit binds, it grows.

Invariant: ``floor <= limit <= ceiling`` at all times; the controller never does I/O and takes
time only as arguments, so recorded gauge sequences replay exactly in tests.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
_SAMPLE = re.compile(
    r"^(?P<name>vllm:num_requests_(?:running|waiting))(?:\{[^}]*\})?\s+(?P<value>\S+)",
    re.MULTILINE,
)
MISSES_BEFORE_LATENCY = 3  # readings without gauges before latency becomes the signal
BASELINE_FORGET = 1.001  # per answer, the unloaded-latency minimum may rise by 0.1 %


@dataclass(frozen=True)
class ServerGauges:
    running: float
    waiting: float


def parse_vllm_gauges(metrics_text: str) -> ServerGauges | None:
    """vLLM's running/waiting request gauges from a Prometheus text page, or None.

    Sums every series of each gauge (labels ``model_name``, ``engine``); other metrics with a
    longer name (``..._waiting_by_reason``) are not counted.
    """
    totals: dict[str, float] = {}
    for match in _SAMPLE.finditer(metrics_text):
        try:
            value = float(match["value"])
        except ValueError:
            continue
        if value == value:  # not NaN
            totals[match["name"]] = totals.get(match["name"], 0.0) + value
    if RUNNING not in totals or WAITING not in totals:
        return None
    return ServerGauges(running=max(0.0, totals[RUNNING]), waiting=max(0.0, totals[WAITING]))


@dataclass(frozen=True)
class ControlSettings:
    initial: int = 16
    floor: int = 1
    ceiling: int = 1024
    queue_target: float = 1.25
    deadband: float = 0.1
    max_raise: float = 2.0  # per reading while the capacity is unknown (slow start)
    known_raise: float = 1.25  # per reading once it is known
    max_cut: float = 0.5
    latency_tolerance: float = 1.5
    latency_batch: int = 16  # answers per latency decision


@dataclass
class InFlightController:
    """The in-flight limit of one replica as seen by one client process."""

    settings: ControlSettings = field(default_factory=ControlSettings)
    limit: int = 0
    capacity: float | None = None  # what the server runs at once, once it has queued
    source: str = "start"  # "start", "metrics" or "latency": what set the limit last
    misses: int = 0
    _baselines: dict[str, float] = field(default_factory=dict)
    _ratios: list[float] = field(default_factory=list)
    _congested: bool = False

    def __post_init__(self) -> None:
        if self.limit <= 0:
            self.limit = self._clamp(self.settings.initial)

    def _clamp(self, value: int) -> int:
        return max(self.settings.floor, min(self.settings.ceiling, value))

    def _scale(self, factor: float) -> int:
        s = self.settings
        factor = min(s.max_raise, max(s.max_cut, factor))
        if abs(factor - 1.0) <= s.deadband:
            return self.limit
        scaled = round(self.limit * factor)
        if factor > 1.0:
            scaled = max(scaled, self.limit + 1)
        elif factor < 1.0:
            scaled = min(scaled, self.limit - 1)
        self.limit = self._clamp(scaled)
        return self.limit

    # --- the primary signal: the server's gauges ------------------------------------------

    def on_gauges(self, gauges: ServerGauges, peak_in_flight: int) -> int:
        """The new limit after one reading; ``peak_in_flight`` is the most requests this
        client had at the replica since the previous reading."""
        self.source = "metrics"
        self.misses = 0
        binding = peak_in_flight >= self.limit
        running, waiting = gauges.running, gauges.waiting
        if waiting > 0 and running > 0:
            self.capacity = running if self.capacity is None else 0.5 * (self.capacity + running)
        elif self.capacity is not None and running > self.capacity:
            self.capacity = running  # it runs more than we thought it could
        if self.capacity is None:
            return self._scale(self.settings.max_raise) if binding else self.limit
        total = running + waiting
        target = self.settings.queue_target * self.capacity
        factor = target / total if total > 0 else self.settings.max_raise
        if factor > 1.0 and not binding:
            return self.limit  # room at the server, but this client does not need more
        # Once the capacity is known, raise gently (a dip of `running` between two waves of
        # answers is not room for twice as many) and cut fast: it keeps the queue short.
        return self._scale(min(factor, self.settings.known_raise))

    def on_gauges_missing(self) -> None:
        """A reading without the gauges (no /metrics, not vLLM, unreachable)."""
        self.misses += 1
        if self.misses >= MISSES_BEFORE_LATENCY and self.source != "latency":
            self.source = "latency"
            self._ratios.clear()

    # --- the second signal: latency, where the server publishes no gauges -----------------

    def on_latency(self, kind: str, latency_s: float, peak_in_flight: int) -> int:
        """The limit after one answer of ``kind`` that took ``latency_s``; only acts while
        the gauges are missing (the gauges are the better signal)."""
        if self.source != "latency" or latency_s <= 0:
            return self.limit
        baseline = self._baselines.get(kind)
        baseline = latency_s if baseline is None else min(latency_s, baseline * BASELINE_FORGET)
        self._baselines[kind] = baseline
        self._ratios.append(latency_s / baseline)
        if len(self._ratios) < self.settings.latency_batch:
            return self.limit
        mean = sum(self._ratios) / len(self._ratios)
        self._ratios.clear()
        tolerance = self.settings.latency_tolerance
        if mean > tolerance:
            self._congested = True
            return self._scale(tolerance / mean)
        if peak_in_flight < self.limit:
            return self.limit
        return self._scale(1.25 if self._congested else self.settings.max_raise)
