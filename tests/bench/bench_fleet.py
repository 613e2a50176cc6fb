"""Fleets of real size: does narrator keep 4 x 128 and 8 x 256 slots busy with nothing but
the URLs given?

One generated dataset (two cameras) is annotated against a simulated fleet running the
calibrated latency model of issue 13 (base 50 ms + 40 ms per image + 20 ms per output token,
x(1 + 0.2 occupancy)) that publishes no capacity metric, four ways:

1. ``default`` - ``narrator annotate`` with only the URLs (``pipeline.run_default``);
2. ``two pods`` - the producer, a writer and two separate ``narrator worker --workers 1``
   processes sharing the fleet as two pods would (``pods.run_pods``); its pods serve their
   metrics, from which the adaptive limit's trace is read;
3. ``phase-barrier`` - every plan job, barrier, every interjections job, barrier, every vqa
   job (``pipeline.run_phase_barrier``);
4. ``upstream-like`` - LeRobot's executor's shape: one module at a time, 16 episodes at a
   time, plan and interjections requests serial, the VQA batch 16 wide (``upstream``).

Reported per run, from the replicas' timelines: slot utilisation over 5-95 % of the requests
(the target) and over the whole run; wall time beside the perfect-packing bound (busy
slot-seconds / slots); and, to say which limit binds when a target is missed
(``fleet_figures.binding_limit``): requests at the replicas against the slots, the cores busy
(the whole machine) and narrator's share, rq jobs running against their cap, and the request
rate the fleet can serve against the rate the two cores can feed.

Sizes (:data:`CASES`): 4 x 128 runs the calibrated model as issue 13 gives it, 400
episodes. 8 x 256 runs it 10x slower (every duration x10), 1,000 episodes: the request rate
that keeps a fleet full is slots / mean service time (about 1 s here), so 2,048 slots at the
calibrated speed would need some 2,000 requests/s, ten times what two cores can feed
(the "cores could feed" figure); x10 brings the full fleet's rate to about 200 requests/s,
the same order as 4 x 128's 500, while utilisation and the packing ratio, being ratios of
times, do not depend on the scale. ("Faster service" would go the other way: more requests
per second for the same two cores.)

Every run has a deadline (:data:`DEADLINE_S`): a run that has not finished by then is
stopped, its wall time is reported as a lower bound and its utilisation over the part that
ran, so a slow orchestration (the upstream-like one at 8 x 256 would take hours) cannot hold
``make bench`` for the whole afternoon.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from tests.bench.fleet_figures import (
    Binding,
    IdleSplit,
    RunSamples,
    binding_limit,
    idle_split,
    mean_present,
    packing_bound_s,
    present_profile,
    vlm_span_s,
)
from tests.bench.limit_trace import (
    TraceRow,
    fixed_budgets,
    format_trace,
    thin,
    trace_from_gauges,
    trace_from_log,
)
from tests.bench.pipeline import PipelineRun, run_default, run_phase_barrier
from tests.bench.pods import PodRun, run_pods
from tests.bench.processes import SimFleetProcess, SimSettings
from tests.bench.report import main_for
from tests.bench.support import BenchContext, BenchResult, sample_dataset
from tests.bench.upstream import run_upstream_like

NARRATOR_ROLES = ("worker", "writer", "redis", "upstream")
CORES = 2  # the development machine's
TRACE_ROWS = 30


@dataclass(frozen=True)
class FleetCase:
    name: str
    sim: SimSettings
    episodes: int
    target: float  # slot utilisation over 5-95 % of the requests
    deadline_s: float  # per run
    packing_limit: float = 1.2


CASES: dict[str, tuple[FleetCase, FleetCase]] = {  # bench name -> (full, quick)
    "fleet-4x128": (
        FleetCase("4x128", SimSettings.calibrated(4, 128), 400, 0.90, deadline_s=300),
        FleetCase("2x32", SimSettings.calibrated(2, 32), 40, 0.90, deadline_s=120),
    ),
    "fleet-8x256": (
        FleetCase(
            "8x256", SimSettings.calibrated(8, 256, time_scale=10.0), 1000, 0.85, deadline_s=240
        ),
        FleetCase("4x32", SimSettings.calibrated(4, 32, time_scale=2.0), 40, 0.85, deadline_s=120),
    ),
}


def _window_mono(run: PipelineRun) -> tuple[float, float]:
    u = run.utilisation
    return run.clock0_s + u.window_start_s, run.clock0_s + u.window_end_s


def _job_capacity(run: PipelineRun, processes: int | None = None) -> int | None:
    """The most jobs the worker processes can hold at once: ``max_jobs_per_worker`` each (a
    process holds ``jobs_per_worker`` at least and takes more while the fleet has room)."""
    workers = processes if processes is not None else run.config.get("workers")
    per = run.config.get("max_jobs_per_worker", run.config.get("jobs_per_worker"))
    return int(workers) * int(per) if workers and per else None


def run_samples(run: PipelineRun, job_capacity: int | None) -> RunSamples:
    t0, t1 = _window_mono(run)
    usage = run.usage
    window = usage.window(t0, t1)
    capped = None
    if job_capacity is not None and window and "jobs_running" in window[0].probe:
        hits = [
            s
            for s in window
            if s.probe.get("jobs_running", 0) >= job_capacity and s.probe.get("jobs_queued", 0) > 0
        ]
        capped = len(hits) / len(window)
    return RunSamples(
        machine_cpu_busy=usage.machine_busy(t0, t1),
        narrator_cores=sum(usage.cores(role, t0, t1) for role in NARRATOR_ROLES),
        sim_cores=usage.cores("sim", t0, t1),
        jobs_running=usage.probe_mean("jobs_running", t0, t1),
        jobs_queued=usage.probe_mean("jobs_queued", t0, t1),
        job_capacity=job_capacity,
        jobs_at_capacity_share=capped,
    )


def _present(run: PipelineRun) -> float:
    u = run.utilisation
    return mean_present(run.timeline, u.window_start_s, u.window_end_s)


def _split(run: PipelineRun, slots_per_replica: int) -> IdleSplit:
    u = run.utilisation
    return idle_split(run.replica_timelines, slots_per_replica, u.window_start_s, u.window_end_s)


def _binding(run: PipelineRun, case: FleetCase, job_capacity: int | None) -> Binding:
    return binding_limit(
        utilisation=run.utilisation.steady,
        target=case.target,
        present=_present(run),
        slots=case.sim.total_slots,
        split=_split(run, case.sim.slots),
        overrun=run.sim_overrun,
        samples=run_samples(run, job_capacity),
    )


def orchestration_s(run: PipelineRun) -> float:
    """From the first request's arrival to the commit (to the last answer for upstream-like):
    the run less the start-up of its processes, which no orchestration packs."""
    return run.wall_s - run.utilisation.first_arrival_s


def window_cpu_per_request_ms(run: PipelineRun) -> float:
    """narrator's and the simulator's CPU per answered request inside the steady window."""
    u = run.utilisation
    t0, t1 = _window_mono(run)
    cores = sum(run.usage.cores(role, t0, t1) for role in (*NARRATOR_ROLES, "sim"))
    answered = sum(
        1 for e in run.timeline if u.window_start_s <= float(e["end_s"]) <= u.window_end_s
    )
    rate = answered / u.window_s if u.window_s > 0 else 0.0
    return 1000.0 * cores / rate if rate > 0 else 0.0


def _service_rate(run: PipelineRun, slots: int) -> float:
    held = [float(e["end_s"]) - float(e["start_s"]) for e in run.timeline]
    return slots / (sum(held) / len(held)) if held else 0.0


def _adaptive_trace(pods: PodRun, url: str) -> tuple[str, str]:
    """(title, text) of the limit trace of pod-0 for replica ``url``."""
    pod = pods.pods[0]
    rows = trace_from_gauges(pods.gauges, pod, url, pods.run.clock0_s)
    source = "gauge narrator_vlm_in_flight_limit (read every 0.5 s)"
    if not rows:
        rows = trace_from_log(pods.logs.get(pod, []), url, pods.epoch0_s)
        source = "log event vlm_in_flight_limit (written when the limit changes)"
    if rows:
        title = f"adaptive in-flight limit, {pod}, replica {url} ({source})"
        return title, format_trace(thin(rows, TRACE_ROWS))
    budgets = sorted(set(fixed_budgets(pods.logs.get(pod, []))))
    fixed = ", ".join(str(b) for b in budgets) or "unknown"
    # No adaptive limit on this commit: show the fixed budget beside what the client and the
    # replica did, from the gauges that exist (narrator_vlm_in_flight, vllm:num_requests_*).
    in_flight = [r for r in pods.gauges if r.source == pod and r.replica == url]
    server = [r for r in pods.gauges if r.source == "server" and r.replica == url]
    merged_rows = []
    for row in in_flight:
        near = min(server, key=lambda s: abs(s.at_s - row.at_s)) if server else None
        merged_rows.append(
            TraceRow(
                t_s=row.at_s - pods.run.clock0_s,
                limit=float(budgets[0]) if len(budgets) == 1 else None,
                in_flight=row.values.get("in_flight"),
                running=None if near is None else near.values.get("running"),
                waiting=None if near is None else near.values.get("waiting"),
            )
        )
    title = (
        f"in-flight limit, {pod}, replica {url}: NO adaptive limit on this commit (neither the "
        f"gauge narrator_vlm_in_flight_limit nor the log event vlm_in_flight_limit exists); "
        f"the fixed budget from 'vlm client ready' is {fixed}"
    )
    return title, format_trace(thin(merged_rows, TRACE_ROWS))


def _describe_run(run: PipelineRun, slots: int, binding: Binding) -> dict[str, Any]:
    return {
        **run.as_json(),
        "packing_bound_s": round(packing_bound_s(run.timeline, slots), 3),
        "present_at_replicas": round(_present(run), 2),
        "binding": {"limit": binding.limit, "evidence": binding.evidence},
        "present_profile_2s": present_profile(run.timeline, 2.0, run.utilisation.last_end_s),
    }


def _run_figures(
    out: BenchResult, bench: str, label: str, run: PipelineRun, case: FleetCase, note: str
) -> None:
    slots = case.sim.total_slots
    bound = packing_bound_s(run.timeline, slots)
    targeted = label in ("default", "two pods")
    out.add(
        bench,
        f"{label}: slot utilisation (5%-95% of requests)",
        run.utilisation.steady,
        "fraction",
        f">= {case.target:.2f}" if targeted else None,
        note=note,
    )
    out.add(bench, f"{label}: slot utilisation (whole run)", run.utilisation.overall, "fraction")
    end = "last answer" if label == "upstream-like" else "commit"
    if not run.finished:
        end = "the deadline (stopped: a lower bound)"
    out.add(bench, f"{label}: wall time, start to {end}", run.wall_s, "s")
    out.add(
        bench,
        f"{label}: first request to {end} / perfect-packing bound",
        orchestration_s(run) / bound,
        "x",
        f"<= {case.packing_limit}" if targeted else None,
        note=f"bound = busy slot-seconds / {slots} slots = {bound:.1f} s; first request "
        f"{run.utilisation.first_arrival_s:.1f} s after the start (process start-up); whole "
        f"wall time / bound {run.wall_s / bound:.2f}; VLM span {vlm_span_s(run.timeline):.1f} s",
    )


def measure(ctx: BenchContext, bench_name: str) -> BenchResult:
    case = CASES[bench_name][1 if ctx.quick else 0]
    sim = case.sim
    slots = sim.total_slots
    source = sample_dataset(ctx, episodes=case.episodes, cameras=2, episodes_per_file=10)
    out = BenchResult()
    with SimFleetProcess(sim) as fleet:
        capability = fleet.capability_note()
        deadline = case.deadline_s
        default = run_default(source, fleet, ctx.scratch(f"{bench_name}-default"), deadline)
        if default.finished and default.exit_code != 0:
            raise RuntimeError(f"the default run exited with {default.exit_code}")
        pods = run_pods(
            source,
            fleet,
            ctx.scratch(f"{bench_name}-pods"),
            mode="two-pods",
            deadline_s=deadline,
        )
        barrier = run_phase_barrier(source, fleet, ctx.scratch(f"{bench_name}-barrier"), deadline)
        upstream = run_upstream_like(source, fleet, ctx.scratch(f"{bench_name}-upstream"), deadline)
        trace = _adaptive_trace(pods, fleet.urls[0])
    runs = {
        "default": default,
        "two pods": pods.run,
        "phase-barrier": barrier,
        "upstream-like": upstream,
    }
    caps = {
        "default": _job_capacity(default),
        "two pods": _job_capacity(pods.run, processes=len(pods.pods)),
        "phase-barrier": _job_capacity(barrier),
        "upstream-like": None,
    }
    bindings = {label: _binding(run, case, caps[label]) for label, run in runs.items()}
    for label, run in runs.items():
        note = f"{run.requests:,} requests; limit that binds: {bindings[label].limit}"
        if not run.finished:
            note = (
                f"STOPPED at the {deadline:.0f} s deadline, figures over the part that ran; {note}"
            )
        if label == "default":
            note = f"{case.episodes} episodes, 2 cameras, {sim.describe()}; {capability}; {note}"
        _run_figures(out, bench_name, label, run, case, note)
    for label in ("phase-barrier", "upstream-like"):
        if not default.finished:
            break  # no finished reference to compare with
        other = runs[label]
        phases = ", ".join(f"{w:.1f}" for w in other.phase_walls_s)
        out.add(
            bench_name,
            f"{label} / default: first request to the end"
            + ("" if other.finished else " (lower bound: stopped)"),
            orchestration_s(other) / orchestration_s(default),
            "x",
            note=f"phases (s): {phases or 'not all ran'}; whole wall times: "
            f"{other.wall_s / default.wall_s:.2f}x",
        )
    shares = {p: sum(pods.requests_by_pod.get(p, {}).values()) for p in pods.pods}
    all_requests = sum(shares.values())
    split = "; ".join(
        f"{p}: " + ", ".join(f"{r.rsplit(':', 1)[-1]}={v:.0f}" for r, v in sorted(reqs.items()))
        for p, reqs in pods.requests_by_pod.items()
    )
    out.add(
        bench_name,
        "two pods: smaller pod's share of the requests",
        min(shares.values()) / all_requests if all_requests else 0.0,
        "fraction",
        note=f"0.5 = an even split; attempts per pod and replica port: {split}",
    )
    samples = run_samples(default, caps["default"])
    out.add(
        bench_name,
        "default: cores busy, whole machine (5%-95%)",
        samples.machine_cpu_busy,
        "fraction",
        note=f"of {CORES} cores, every process on the machine; narrator "
        f"{samples.narrator_cores:.2f} cores, simulator {samples.sim_cores:.2f} cores",
    )
    per_request = window_cpu_per_request_ms(default)
    out.add(bench_name, "default: narrator + simulator CPU per request (5%-95%)", per_request, "ms")
    out.add(
        bench_name,
        "fleet's service rate when full (slots / mean service time)",
        _service_rate(default, slots),
        "req/s",
    )
    out.add(
        bench_name,
        f"request rate {CORES} whole cores could feed at that CPU per request",
        1000.0 * CORES / per_request if per_request > 0 else 0.0,
        "req/s",
    )
    out.add(
        bench_name,
        "simulator oversleep, worst run (machine busy)",
        max(r.sim_overrun for r in runs.values()),
        "fraction",
        note="slot time beyond the latency model: it stretches wall times by about as much",
    )
    out.texts.append(
        (
            f"{case.name}: which limit binds",
            "\n".join(f"{label}: {b.limit} - {b.evidence}" for label, b in bindings.items()),
        )
    )
    out.texts.append(trace)
    out.details = {
        "case": case.name,
        "sim": sim.describe(),
        "capabilities": fleet.capabilities,
        "runs": {label: _describe_run(run, slots, bindings[label]) for label, run in runs.items()},
        "requests_by_pod": pods.requests_by_pod,
    }
    return out


def bench_4x128(ctx: BenchContext) -> BenchResult:
    return measure(ctx, "fleet-4x128")


def bench_8x256(ctx: BenchContext) -> BenchResult:
    return measure(ctx, "fleet-8x256")


if __name__ == "__main__":
    which = "fleet-8x256" if "--8x256" in sys.argv else "fleet-4x128"
    argv = [a for a in sys.argv[1:] if a != "--8x256"]
    bench = bench_8x256 if which == "fleet-8x256" else bench_4x128
    sys.exit(main_for(which, bench, argv, timeout_s=3600))
