"""How many more episode jobs a worker process takes from the queue now (pure, no I/O).

A worker process holds its jobs as coroutines on one event loop (:mod:`workers.runtime`), so
what limits the requests it keeps at the VLM fleet is how many jobs it holds. It takes jobs
while the fleet would accept more requests than the jobs it holds are about to send:

* ``spare`` is the fleet's spare capacity (:meth:`VLMClient.spare_capacity`: how many more
  requests the replicas in rotation would accept now, from the adaptive in-flight limits);
* a *starting* job has not sent its first request yet (it is loading its episode, decoding
  frames): it is expected to send about as many requests as a busy job keeps, soon;
* ``per_job`` is that number: the mean requests a job keeps in progress while it has any
  (:class:`RequestsPerJob`, a moving mean over the process's own jobs).

So it takes ``ceil(spare / per_job) - starting`` jobs (never fewer than zero), and always enough
to hold ``min_jobs`` (``jobs_per_worker``) while work is queued: jobs spend part of their time
on the CPU, and a fleet that is momentarily full (or unreachable: no spare capacity) must not
leave the process idle. It never holds more than ``max_jobs`` (``max_jobs_per_worker``), a
safety cap on memory and CPU. Without a capacity signal (a VLM without
``spare_capacity``) it holds exactly ``min_jobs``, as a fixed pool would.

The adaptive limits grow only while they are used up, so taking jobs until the spare capacity
is covered is what lets them grow; as the limits stop growing (the replicas queue), the spare
capacity falls to zero and the process stops taking jobs. Jobs between two of their requests
(a plan job building its next prompt) are not held back against the spare capacity: reserving
room for them kept the limits from ever being used up, so they grew ten times slower
(measured: 13-19 s per doubling instead of about one reading).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class IntakeLimits:
    min_jobs: int  # held whenever work is queued (jobs_per_worker)
    max_jobs: int  # never more (max_jobs_per_worker)

    def __post_init__(self) -> None:
        if not 1 <= self.min_jobs <= self.max_jobs:
            raise ValueError(f"need 1 <= min_jobs <= max_jobs: {self.min_jobs}, {self.max_jobs}")


@dataclass(frozen=True)
class IntakeView:
    """What the process sees at one decision."""

    held: int  # jobs it holds (running coroutines)
    starting: int  # of those, jobs that have not sent a VLM request yet
    spare: int | None  # the fleet's spare capacity; None: no capacity signal
    per_job: float  # requests a busy job keeps in progress (>= 1)


def jobs_to_take(view: IntakeView, limits: IntakeLimits) -> int:
    """How many more jobs to take now (see the module doc)."""
    room = max(0, limits.max_jobs - view.held)
    floor = max(0, limits.min_jobs - view.held)
    if view.spare is None:
        return min(floor, room)
    wanted = 0
    if view.spare > 0:
        wanted = math.ceil(view.spare / max(1.0, view.per_job)) - view.starting
    return min(max(floor, wanted), room)


class RequestsPerJob:
    """A moving mean of the requests a busy job keeps in progress (at least 1).

    ``observe(in_progress, busy_jobs)`` after each change; moments without a busy job leave
    the estimate as it was. ``weight`` is how much one observation counts."""

    def __init__(self, initial: float = 1.0, weight: float = 0.1) -> None:
        if not 0 < weight <= 1:
            raise ValueError("weight must be in (0, 1]")
        self.value = max(1.0, initial)
        self._weight = weight

    def observe(self, in_progress: int, busy_jobs: int) -> float:
        if busy_jobs > 0:
            sample = max(1.0, in_progress / busy_jobs)
            self.value += self._weight * (sample - self.value)
        return self.value
