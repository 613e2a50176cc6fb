"""What the client has seen of each replica and of the fleet, over a window (pure).

* :class:`OutcomeWindow`: one replica's recent request outcomes (answered, timed out,
  failed, outrun by a hedge) within ``window_s``; its failure rate counts everything but
  answers. Streaks alone miss a replica that fails every other request; rates do not.
* :class:`LatencyBook`: the latencies of answered requests per kind of request (the schema
  name: a 16-frame plan and a one-image question differ tenfold) and per family of kinds (the
  module: ``vqa_bbox`` and ``vqa_count`` are alike), fleet-wide, last ``LATENCY_SAMPLES``
  each. It gives the adaptive request timeout (a multiple of the p99, between a floor and the
  configured maximum; a kind with few answers borrows its family's p99 with twice the
  margin) and the hedge delay (1.5 x the p95).
* :func:`judge`: compares one replica's failure rate with its peers': a replica much worse
  than the others gets less work (a weight below 1) and, above the ejection rate, leaves
  rotation. A fleet that fails everywhere alike ejects nobody by rate (that is an outage, not
  a bad replica), and the last replica in rotation is never ejected by rate.

Times are arguments (monotonic seconds); nothing here does I/O.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

LATENCY_SAMPLES = 256  # answers kept per kind of request
MIN_LATENCY_SAMPLES = 10  # before this many, the configured timeout applies
MIN_RATE_SAMPLES = 10  # outcomes a replica needs before its failure rate counts
OUTCOMES_KEPT = 400
HEDGE_P95_MULTIPLE = 1.5
PEER_MARGIN = 0.1  # "much worse than its peers": rate >= 2 x peers' median + this margin
WEIGHT_FLOOR = 0.1

OK = "ok"
TIMEOUT = "timeout"
ERROR = "error"
SLOW = "slow"  # outrun by a hedge sent to another replica
FAMILY = "family:"  # key prefix of a family's pooled latencies in a LatencyBook
OUTCOMES = (OK, TIMEOUT, ERROR, SLOW)


@dataclass
class OutcomeWindow:
    window_s: float
    _events: deque[tuple[float, str]] = field(default_factory=lambda: deque(maxlen=OUTCOMES_KEPT))

    def add(self, now: float, outcome: str) -> None:
        if outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {outcome!r}")
        self._events.append((now, outcome))

    def _trim(self, now: float) -> None:
        horizon = now - self.window_s
        while self._events and self._events[0][0] < horizon:
            self._events.popleft()

    def counts(self, now: float) -> dict[str, int]:
        self._trim(now)
        out = dict.fromkeys(OUTCOMES, 0)
        for _, outcome in self._events:
            out[outcome] += 1
        return out

    def failure_rate(self, now: float, min_samples: int = MIN_RATE_SAMPLES) -> float | None:
        """Share of outcomes in the window that were not answers; None below min_samples."""
        counts = self.counts(now)
        total = sum(counts.values())
        if total < min_samples:
            return None
        return (total - counts[OK]) / total

    def clear(self) -> None:
        self._events.clear()


def quantile(values: list[float], q: float) -> float:
    """The ``q`` quantile (nearest rank) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


@dataclass
class LatencyBook:
    _by_kind: dict[str, deque[float]] = field(default_factory=dict)

    def add(self, kind: str, latency_s: float) -> None:
        for key in (kind, family_key(kind)):
            samples = self._by_kind.get(key)
            if samples is None:
                samples = self._by_kind[key] = deque(maxlen=LATENCY_SAMPLES)
            samples.append(latency_s)

    def quantile(self, kind: str, q: float, min_samples: int = MIN_LATENCY_SAMPLES) -> float | None:
        samples = self._by_kind.get(kind)
        if samples is None or len(samples) < min_samples:
            return None
        return quantile(list(samples), q)

    def family_quantile(self, kind: str, q: float) -> float | None:
        """The quantile over the kind's family (``vqa_bbox`` -> every ``vqa_*`` kind)."""
        return self.quantile(family_key(kind), q)

    def pooled_quantile(self, q: float, min_samples: int = MIN_LATENCY_SAMPLES) -> float | None:
        """The quantile over every kind (a rough guide before a kind has its own samples)."""
        pooled = [
            value
            for key, samples in self._by_kind.items()
            if not key.startswith(FAMILY)
            for value in samples
        ]
        if len(pooled) < min_samples:
            return None
        return quantile(pooled, q)

    def known(self, kind: str) -> bool:
        samples = self._by_kind.get(kind)
        return samples is not None and len(samples) >= MIN_LATENCY_SAMPLES


def family_key(kind: str) -> str:
    """The family of a kind of request: its schema name up to the first ``_`` (the module)."""
    return FAMILY + kind.split("_", 1)[0]


def request_timeout(
    book: LatencyBook, kind: str, *, multiple: float, floor_s: float, ceiling_s: float
) -> float:
    """How long a request of ``kind`` may take now: ``multiple`` x its fleet p99 within
    [floor_s, ceiling_s]; while the kind has too few answers, twice that multiple of its
    family's p99 (the same module's other kinds); ``ceiling_s`` when neither is known (or
    multiple is 0)."""
    if multiple <= 0:
        return ceiling_s
    p99 = book.quantile(kind, 0.99)
    if p99 is None:
        family = book.family_quantile(kind, 0.99)
        if family is None:
            return ceiling_s
        p99, multiple = family, 2 * multiple
    return min(ceiling_s, max(floor_s, multiple * p99))


def hedge_delay(book: LatencyBook, kind: str, *, floor_s: float, timeout_s: float) -> float:
    """How long to wait for an answer of ``kind`` before hedging: 1.5 x its p95 (else 3 x its
    family's p95, else 2 x the fleet's pooled p99 while the kind is new, else a quarter of the
    timeout), at least ``floor_s`` and at most half the timeout."""
    p95 = book.quantile(kind, 0.95)
    family = book.family_quantile(kind, 0.95)
    if p95 is not None:
        delay = HEDGE_P95_MULTIPLE * p95
    elif family is not None:
        delay = 2 * HEDGE_P95_MULTIPLE * family
    else:
        pooled = book.pooled_quantile(0.99)
        delay = 2.0 * pooled if pooled is not None else timeout_s / 4
    return min(timeout_s / 2, max(floor_s, delay))


@dataclass(frozen=True)
class Verdict:
    weight: float  # share of work relative to a sound replica (1 = full)
    eject: bool
    reason: str


def judge(rate: float | None, peer_rates: list[float], *, eject_rate: float) -> Verdict:
    """Weight and ejection of a replica with failure ``rate`` among peers in rotation
    (``peer_rates``: the known rates of the *other* replicas in rotation)."""
    if rate is None:
        return Verdict(1.0, False, "")
    peer = quantile(peer_rates, 0.5) if peer_rates else None
    baseline = 0.0 if peer is None else peer
    excess = rate - baseline
    weight = 1.0 if excess <= PEER_MARGIN / 2 else max(WEIGHT_FLOOR, 1.0 - 2.0 * excess)
    sound_peer = any(r < eject_rate for r in peer_rates)
    much_worse = rate >= 2.0 * baseline + PEER_MARGIN
    if rate >= eject_rate and much_worse and sound_peer:
        peers = "no peer data" if peer is None else f"peers {peer:.0%}"
        return Verdict(weight, True, f"failure rate {rate:.0%} ({peers})")
    return Verdict(weight, False, "")
