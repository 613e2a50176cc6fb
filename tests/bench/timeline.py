"""Slot utilisation from the simulated replicas' per-request timelines (pure).

A timeline entry is one served request: ``arrival_s`` (it reached the replica), ``start_s``
(it got a slot), ``end_s`` (its slot was freed), seconds since the replica's last reset.
All replicas are reset together, so their clocks agree to a few milliseconds.

Utilisation over a window [t0, t1] = busy slot-seconds inside the window / (total slots x
(t1 - t0)). The steady-state window starts when 5% of the requests have arrived and ends when
95% have finished, so the ramp-up of the first jobs and the drain of the last ones (which no
scheduler can fill) are left out; both are reported separately as "ramp" and "drain".
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Utilisation:
    requests: int
    window_start_s: float
    window_end_s: float
    steady: float  # busy fraction inside [window_start_s, window_end_s]
    overall: float  # busy fraction from the first arrival to the last end
    first_arrival_s: float
    last_end_s: float

    @property
    def window_s(self) -> float:
        return self.window_end_s - self.window_start_s

    def as_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "window_start_s": round(self.window_start_s, 3),
            "window_end_s": round(self.window_end_s, 3),
            "steady": round(self.steady, 4),
            "overall": round(self.overall, 4),
            "first_arrival_s": round(self.first_arrival_s, 3),
            "last_end_s": round(self.last_end_s, 3),
        }


def busy_seconds(entries: Sequence[Mapping[str, Any]], t0: float, t1: float) -> float:
    """Slot-seconds the entries were being served inside [t0, t1]."""
    return sum(max(0.0, min(float(e["end_s"]), t1) - max(float(e["start_s"]), t0)) for e in entries)


def slot_utilisation(
    entries: Sequence[dict[str, Any]], total_slots: int, trim: float = 0.05
) -> Utilisation:
    """Utilisation of ``total_slots`` slots by ``entries`` (all replicas' timelines merged)."""
    if not entries:
        raise ValueError("no requests reached the simulated replicas")
    n = len(entries)
    arrivals = sorted(float(e["arrival_s"]) for e in entries)
    ends = sorted(float(e["end_s"]) for e in entries)
    cut = math.floor(n * trim)
    t0, t1 = arrivals[cut], ends[n - 1 - cut]
    first, last = arrivals[0], ends[-1]
    steady = busy_seconds(entries, t0, t1) / (total_slots * (t1 - t0)) if t1 > t0 else 0.0
    overall = busy_seconds(entries, first, last) / (total_slots * (last - first))
    return Utilisation(n, t0, t1, steady, overall, first, last)


def in_flight_profile(
    entries: Sequence[dict[str, Any]], step_s: float, end_s: float
) -> list[tuple[float, float, float]]:
    """(time, mean requests being served, mean requests at the replicas) per ``step_s``."""
    out: list[tuple[float, float, float]] = []
    t = 0.0
    while t < end_s:
        hi = t + step_s
        served = busy_seconds(entries, t, hi) / step_s
        present = sum(max(0.0, min(e["end_s"], hi) - max(e["arrival_s"], t)) for e in entries)
        out.append((round(t, 3), round(served, 2), round(present / step_s, 2)))
        t = hi
    return out


def merged(timelines: Sequence[Sequence[dict[str, Any]]]) -> list[dict[str, Any]]:
    return [entry for timeline in timelines for entry in timeline]
