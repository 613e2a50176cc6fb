"""Figures of a run against a simulated fleet, from the replicas' timelines and the samples
taken while it ran (pure: no I/O, no clock).

* :func:`packing_bound_s` - the perfect-packing bound: busy slot-seconds / slots, the wall
  time of the VLM work if every slot were busy from the first request to the last.
* :func:`nominal_service_s` / :func:`service_overrun` - how much longer the replicas held
  their slots than the latency model says (with the occupancy term: each request's busy
  share of its replica is recomputed from that replica's own timeline), i.e. how much a busy
  machine made the simulator oversleep.
* :func:`present_profile` - requests at the replicas (arrived, not yet answered) over time.
* :func:`binding_limit` - which limit held a run below the fleet's capacity, with the figure
  that shows it (see its docstring for the rules).

Timeline entries are the simulator's (``arrival_s``, ``start_s``, ``end_s``, ``images``,
``completion_tokens``), seconds since the fleet's reset; samples carry the same clock.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tests.bench.timeline import busy_seconds

Entry = Mapping[str, Any]


def packing_bound_s(entries: Sequence[Entry], total_slots: int) -> float:
    """Busy slot-seconds of all requests / slots (seconds)."""
    if total_slots < 1:
        raise ValueError("a fleet has at least one slot")
    return sum(float(e["end_s"]) - float(e["start_s"]) for e in entries) / total_slots


def vlm_span_s(entries: Sequence[Entry]) -> float:
    """From the first request's arrival to the last one's end (seconds)."""
    if not entries:
        return 0.0
    return max(float(e["end_s"]) for e in entries) - min(float(e["arrival_s"]) for e in entries)


def busy_at_start(replica_entries: Sequence[Entry]) -> list[int]:
    """For each entry of ONE replica, how many of its requests held a slot when it started,
    itself included (the simulator's occupancy input), in the entries' order."""
    order = sorted(range(len(replica_entries)), key=lambda i: float(replica_entries[i]["start_s"]))
    ends = sorted(float(e["end_s"]) for e in replica_entries)
    out = [0] * len(replica_entries)
    ended = 0
    for rank, i in enumerate(order):
        start = float(replica_entries[i]["start_s"])
        while ended < len(ends) and ends[ended] <= start:
            ended += 1
        out[i] = rank + 1 - ended  # started so far (itself included) minus ended
    return out


def nominal_service_s(
    replica_entries: Sequence[Entry],
    *,
    slots: int,
    base_s: float,
    per_image_s: float,
    per_output_token_s: float,
    occupancy_slowdown: float,
) -> float:
    """Slot-seconds the latency model gives ONE replica's requests."""
    busy = busy_at_start(replica_entries) if occupancy_slowdown else [0] * len(replica_entries)
    total = 0.0
    for entry, held in zip(replica_entries, busy, strict=True):
        work = (
            base_s
            + per_image_s * int(entry["images"])
            + per_output_token_s * int(entry["completion_tokens"])
        )
        total += work * (1.0 + occupancy_slowdown * min(1.0, held / slots))
    return total


def service_overrun(
    timelines: Sequence[Sequence[Entry]],
    *,
    slots: int,
    base_s: float,
    per_image_s: float,
    per_output_token_s: float,
    occupancy_slowdown: float,
) -> float:
    """Measured slot-seconds / the model's, minus 1, over every replica's timeline."""
    nominal = sum(
        nominal_service_s(
            t,
            slots=slots,
            base_s=base_s,
            per_image_s=per_image_s,
            per_output_token_s=per_output_token_s,
            occupancy_slowdown=occupancy_slowdown,
        )
        for t in timelines
    )
    measured = sum(float(e["end_s"]) - float(e["start_s"]) for t in timelines for e in t)
    return measured / nominal - 1.0 if nominal > 0 else 0.0


def mean_present(entries: Sequence[Entry], t0: float, t1: float) -> float:
    """Mean number of requests at the replicas (arrived, not answered) over [t0, t1]."""
    if t1 <= t0:
        return 0.0
    held = sum(
        max(0.0, min(float(e["end_s"]), t1) - max(float(e["arrival_s"]), t0)) for e in entries
    )
    return held / (t1 - t0)


def mean_served(entries: Sequence[Entry], t0: float, t1: float) -> float:
    """Mean number of requests holding a slot over [t0, t1]."""
    return busy_seconds(entries, t0, t1) / (t1 - t0) if t1 > t0 else 0.0


def present_profile(
    entries: Sequence[Entry], step_s: float, end_s: float
) -> list[tuple[float, float]]:
    """(time, mean requests at the replicas) per ``step_s`` from 0 to ``end_s``."""
    steps = max(1, math.ceil(end_s / step_s))
    return [
        (round(i * step_s, 3), round(mean_present(entries, i * step_s, (i + 1) * step_s), 2))
        for i in range(steps)
    ]


@dataclass(frozen=True)
class IdleSplit:
    """Where the idle slot time of a window went (shares of all slot time in the window)."""

    idle: float  # 1 - utilisation
    imbalance: float  # idle while another replica was full with requests waiting for a slot
    underfed: float  # idle while no replica had a queue: nothing more was offered


def idle_split(timelines: Sequence[Sequence[Entry]], slots: int, t0: float, t1: float) -> IdleSplit:
    """Split the idle slot-seconds of [t0, t1] by whether another replica had a queue then.

    A replica queues when all its slots are busy and requests wait for one (a request that
    has arrived but not started while slots are free is still being read and parsed by the
    server, not queued). A replica (FIFO, as vLLM) never leaves a slot idle while it queues,
    so idle slot time is either a request sent to a busier replica (imbalance) or no request
    at all (underfed)."""
    if t1 <= t0 or not timelines:
        return IdleSplit(0.0, 0.0, 0.0)
    events: list[tuple[float, int, int, int]] = []  # (time, replica, d_running, d_waiting)
    for r, timeline in enumerate(timelines):
        for e in timeline:
            events.append((float(e["arrival_s"]), r, 0, 1))
            events.append((float(e["start_s"]), r, 1, -1))
            events.append((float(e["end_s"]), r, -1, 0))
    events.sort(key=lambda ev: ev[0])
    n = len(timelines)
    running, waiting = [0] * n, [0] * n
    imbalance = underfed = 0.0
    last = t0
    for at, r, d_run, d_wait in [*events, (t1, -1, 0, 0)]:
        lo, hi = max(last, t0), min(at, t1)
        if hi > lo:
            queued = [w > 0 and running[i] >= slots for i, w in enumerate(waiting)]
            for q in range(n):
                idle = max(0, slots - running[q]) * (hi - lo)
                if any(queued[o] for o in range(n) if o != q):
                    imbalance += idle
                else:
                    underfed += idle
        last = max(last, at)
        if r >= 0:
            running[r] += d_run
            waiting[r] += d_wait
    total = n * slots * (t1 - t0)
    return IdleSplit((imbalance + underfed) / total, imbalance / total, underfed / total)


@dataclass(frozen=True)
class RunSamples:
    """Means over a run's steady window of what was sampled while it ran."""

    machine_cpu_busy: float  # share of all cores busy (every process on the machine)
    narrator_cores: float  # cores used by narrator's processes (workers, writer, redis)
    sim_cores: float  # cores used by the simulated fleet's process
    jobs_running: float | None  # rq jobs being run (None: not sampled)
    jobs_queued: float | None  # rq jobs waiting in the module queue
    job_capacity: int | None  # jobs the workers can hold at once (None: not fixed)
    jobs_at_capacity_share: float | None  # share of samples with running == capacity, queue > 0


@dataclass(frozen=True)
class Binding:
    limit: str  # short name: "none", "CPU (the machine)", "jobs held by the workers", ...
    evidence: str  # the figures that show it


BUSY_MACHINE = 0.90  # share of the cores busy at which the CPU counts as the limit
CAPPED = 0.5  # share of the window the job count sat at its cap with work queued


def binding_limit(
    *,
    utilisation: float,
    target: float,
    present: float,
    slots: int,
    split: IdleSplit,
    overrun: float,
    samples: RunSamples,
) -> Binding:
    """Which limit held the steady window's utilisation where it is.

    Rules, in order: the target met -> "none"; more idle slot time while another replica
    had a queue than with no queue anywhere -> "replica choice (imbalance)"; otherwise the
    fleet was not offered enough requests, and: the workers' job count at its cap with jobs
    queued >= half the window -> "jobs held by the workers" (a hard cap: more CPU would not
    lift it); the cores >= 90 % busy -> "CPU (the machine)"; else the ready work ran out ->
    "dependency chains (ready work)".
    The simulator's oversleep is shown, not a rule: it holds slots longer (more busy time),
    which stretches wall times but does not lower utilisation.
    """
    shown = (
        f"utilisation {utilisation:.3f} (target {target:.2f}); idle slot time {split.idle:.1%} "
        f"= {split.underfed:.1%} with no request waiting anywhere + {split.imbalance:.1%} "
        f"while another replica queued; requests at the replicas {present:.1f} for {slots} "
        f"slots; cores busy {samples.machine_cpu_busy:.2f} (narrator "
        f"{samples.narrator_cores:.2f}, simulator {samples.sim_cores:.2f} cores); simulator "
        f"oversleep {overrun:+.1%}"
    )
    if samples.jobs_running is not None:
        per_job = present / samples.jobs_running if samples.jobs_running else 0.0
        shown += f"; {samples.jobs_running:.1f} jobs running ({per_job:.2f} requests each)"
        if samples.job_capacity is not None and samples.jobs_at_capacity_share is not None:
            shown += (
                f" of a cap of {samples.job_capacity}, at the cap with jobs queued "
                f"{samples.jobs_at_capacity_share:.0%} of the window"
            )
        if samples.jobs_queued is not None:
            shown += f"; {samples.jobs_queued:.1f} jobs queued"
    if utilisation >= target:
        return Binding("none", shown)
    if split.imbalance > split.underfed:
        return Binding("replica choice (imbalance)", shown)
    if (
        samples.jobs_at_capacity_share is not None
        and samples.job_capacity is not None
        and samples.jobs_at_capacity_share >= CAPPED
    ):
        return Binding("jobs held by the workers", shown)
    if samples.machine_cpu_busy >= BUSY_MACHINE:
        return Binding("CPU (the machine)", shown)
    return Binding("dependency chains (ready work)", shown)
