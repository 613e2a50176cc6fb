"""Capacity model and counters of one simulated replica.

:class:`SlotPool` admits at most ``capacity`` requests at once and queues the rest strictly in
arrival order (a request cancelled while waiting leaves the queue; one cancelled right after
being admitted hands its slot on). :class:`ServerStats` counts requests and measures how busy
the slots were.

:func:`service_time_s` is the latency model (pure): ``(base_s + per_image_s * images +
per_output_token_s * completion_tokens) * (1 + occupancy_slowdown * occupancy)``, where
``occupancy`` is the share of the replica's slots busy when the request enters service, itself
included (1/slots for a lone request, 1.0 for a full replica). With ``occupancy_slowdown`` 0.2
this is the calibrated model "base 50 ms + 40 ms per image + 20 ms per output token,
x(1 + 0.2 occupancy)" of the benchmarks.

Times are ``time.monotonic()`` seconds; everything reported is relative to the last reset.
Utilisation is busy slot-seconds / (slots * window): ``utilisation`` uses the window from the
first request's arrival to the last request's end (or now while requests run), and
``utilisation_since_reset`` the window from the reset to now. The per-request timeline lets a
benchmark compute utilisation over any window it likes.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

TIMELINE_LIMIT = 200_000


def service_time_s(
    *,
    base_s: float,
    per_image_s: float,
    per_output_token_s: float,
    occupancy_slowdown: float,
    images: int,
    completion_tokens: int,
    busy: int,
    slots: int,
) -> float:
    """Seconds one request holds its slot (see the module docstring); ``busy`` counts it."""
    work = base_s + per_image_s * images + per_output_token_s * completion_tokens
    occupancy = min(1.0, max(0, busy) / max(1, slots))
    return work * (1.0 + occupancy_slowdown * occupancy)


class SlotPool:
    """A FIFO semaphore whose capacity can change at runtime."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.busy = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def queued(self) -> int:
        return sum(1 for waiter in self._waiters if not waiter.done())

    async def acquire(self) -> None:
        if self.busy < self.capacity and not self._waiters:
            self.busy += 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()
            else:
                waiter.cancel()
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        self.busy -= 1
        self._admit()

    def set_capacity(self, capacity: int) -> None:
        self.capacity = capacity
        self._admit()

    def _admit(self) -> None:
        while self._waiters and self.busy < self.capacity:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.busy += 1
                waiter.set_result(None)


@dataclass
class TimelineEntry:
    arrival_s: float
    start_s: float
    end_s: float
    images: int
    completion_tokens: int
    schema: str

    def as_json(self) -> dict[str, Any]:
        return {
            "arrival_s": round(self.arrival_s, 6),
            "start_s": round(self.start_s, 6),
            "end_s": round(self.end_s, 6),
            "images": self.images,
            "completion_tokens": self.completion_tokens,
            "schema": self.schema,
        }


@dataclass
class ServerStats:
    """Counters since the last reset (all mutation happens on the server's event loop)."""

    reset_at: float = field(default_factory=time.monotonic)
    requests_total: int = 0
    by_schema: Counter[str] = field(default_factory=Counter)
    by_status: Counter[str] = field(default_factory=Counter)
    images: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    busy_slot_s: float = 0.0
    in_flight: int = 0
    max_in_flight: int = 0
    running: int = 0
    max_running: int = 0
    dropped: int = 0
    hung: int = 0
    ignored_fields: Counter[str] = field(default_factory=Counter)
    request_options: Counter[str] = field(default_factory=Counter)  # see ChatRequest.options
    first_arrival: float | None = None
    last_end: float | None = None
    timeline: list[TimelineEntry] = field(default_factory=list)

    def request_arrived(self) -> float:
        now = time.monotonic()
        self.requests_total += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        if self.first_arrival is None:
            self.first_arrival = now
        return now

    def request_left(self, status: int | str) -> None:
        self.in_flight -= 1
        self.by_status[str(status)] += 1
        self.last_end = time.monotonic()

    def service_started(self) -> float:
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        return time.monotonic()

    def fresh(self) -> ServerStats:
        """New counters for a reset; requests still in flight stay counted as in flight."""
        return ServerStats(in_flight=self.in_flight, running=self.running)

    def service_ended(
        self, arrival: float, start: float, *, images: int, tokens: int, schema: str
    ) -> None:
        end = time.monotonic()
        self.running -= 1
        self.busy_slot_s += end - start
        if len(self.timeline) < TIMELINE_LIMIT:
            base = self.reset_at
            self.timeline.append(
                TimelineEntry(arrival - base, start - base, end - base, images, tokens, schema)
            )

    def snapshot(self, slots: int, queued: int) -> dict[str, Any]:
        now = time.monotonic()
        window_end = now if self.in_flight else (self.last_end or now)
        window = window_end - self.first_arrival if self.first_arrival is not None else 0.0
        since_reset = now - self.reset_at
        return {
            "requests_total": self.requests_total,
            "by_schema": dict(self.by_schema),
            "by_status": dict(self.by_status),
            "images": self.images,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "busy_slot_s": round(self.busy_slot_s, 6),
            "slots": slots,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "running": self.running,
            "max_running": self.max_running,
            "queued": queued,
            "dropped": self.dropped,
            "hung": self.hung,
            "ignored_fields": dict(self.ignored_fields),
            "request_options": dict(self.request_options),
            "first_request_s": None
            if self.first_arrival is None
            else round(self.first_arrival - self.reset_at, 6),
            "last_request_s": None
            if self.last_end is None
            else round(self.last_end - self.reset_at, 6),
            "wall_s": round(since_reset, 6),
            "utilisation": round(self.busy_slot_s / (slots * window), 6) if window > 0 else 0.0,
            "utilisation_since_reset": round(self.busy_slot_s / (slots * since_reset), 6)
            if since_reset > 0
            else 0.0,
        }
