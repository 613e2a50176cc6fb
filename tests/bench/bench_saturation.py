"""Fleet saturation: does a default-configured run keep every simulated GPU busy?

A generated dataset (200 episodes, two cameras; 60 with ``--quick``) is annotated against 4
simulated replicas with a realistic capacity (see :data:`SIM`), in two ways:

1. the default run (``narrator annotate`` with nothing but the URLs given), and
2. a phase-barrier run (all plan jobs, then all interjections jobs, then all vqa jobs),

in the order default, barrier, barrier, default (one of each with ``--quick``).

Reported: slot utilisation of both (busy slot-seconds / (slots x window) between the arrival
of 5% and the end of 95% of the requests, from the replicas' timelines; limit >= 0.90 for
the default), their wall times and the ratio, and narrator's own CPU (workers, writer,
Redis) per VLM request and in cores, to show the CPU is not what limits the run.

Why this capacity: B=4 slots per replica and 0.2 s + 0.02 s/image + 0.002 s/output token
make a request take 0.25-0.5 s, so 16 slots serve about 40 requests/s: the 200-episode run
takes about a minute, while narrator needs well under one of the two cores for it.
"""

from __future__ import annotations

import sys
from typing import Any

from tests.bench.pipeline import PipelineRun, run_default, run_phase_barrier
from tests.bench.processes import SimFleetProcess, SimSettings
from tests.bench.report import main_for
from tests.bench.support import BenchContext, BenchResult, sample_dataset
from tests.bench.timeline import in_flight_profile

NAME = "saturation"
SIM = SimSettings(replicas=4, slots=4, base_s=0.2, per_image_s=0.02, per_output_token_s=0.002)
DATASET = {"cameras": 2, "episodes_per_file": 10}


def _summary(run: PipelineRun) -> dict[str, Any]:
    profile = in_flight_profile(run.timeline, 2.0, run.utilisation.last_end_s)
    return {
        **run.as_json(),
        "schemas": _count_schemas(run.timeline),
        "profile_2s": profile,  # (t, mean served, mean present at the replicas)
    }


def _count_schemas(timeline: list[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for entry in timeline:
        counts[entry["schema"]] = counts.get(entry["schema"], 0) + 1
    return dict(sorted(counts.items()))


def _narrator_cores(run: PipelineRun) -> float:
    cpu = sum(run.usage.cpu_s.get(role, 0.0) for role in ("worker", "writer", "redis"))
    return cpu / run.wall_s


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def bench(ctx: BenchContext) -> BenchResult:
    episodes = 60 if ctx.quick else 200
    source = sample_dataset(ctx, episodes=episodes, **DATASET)
    # ABBA order in the full run, so a machine that gets busier (or quieter) during the
    # benchmark does not favour one orchestration.
    order = ("default", "barrier") if ctx.quick else ("default", "barrier", "barrier", "default")
    runs: dict[str, list[PipelineRun]] = {"default": [], "barrier": []}
    with SimFleetProcess(SIM) as fleet:
        for i, mode in enumerate(order):
            orchestrate = run_default if mode == "default" else run_phase_barrier
            runs[mode].append(orchestrate(source, fleet, ctx.scratch(f"saturation-{mode}-{i}")))
    for run in runs["default"]:
        if run.exit_code != 0:
            raise RuntimeError(f"a default run exited with {run.exit_code}")
    default, barrier = runs["default"], runs["barrier"]
    first = default[0]
    out = BenchResult()
    out.add(
        NAME,
        "default: slot utilisation (5%-95% of requests)",
        min(r.utilisation.steady for r in default),
        "fraction",
        ">= 0.90",
        note=f"{episodes} episodes, 2 cameras, {SIM.describe()}; workers="
        f"{first.config['workers']} x jobs_per_worker={first.config['jobs_per_worker']}; "
        f"the lower of {len(default)} run(s)",
    )
    out.add(
        NAME,
        "default: slot utilisation (whole run)",
        min(r.utilisation.overall for r in default),
        "fraction",
    )
    out.add(NAME, "default: wall time to commit", _mean([r.wall_s for r in default]), "s",
            note=f"mean of {len(default)} run(s)")  # fmt: skip
    out.add(NAME, "default: VLM requests", first.requests, "requests")
    out.add(
        NAME,
        "phase-barrier: slot utilisation (5%-95%)",
        min(r.utilisation.steady for r in barrier),
        "fraction",
    )
    out.add(NAME, "phase-barrier: wall time to commit", _mean([r.wall_s for r in barrier]), "s")
    out.add(
        NAME,
        "wall time ratio phase-barrier / default",
        _mean([r.wall_s for r in barrier]) / _mean([r.wall_s for r in default]),
        "x",
        note="phases (s): "
        + "; ".join(", ".join(f"{w:.1f}" for w in r.phase_walls_s) for r in barrier),
    )
    for label, mode_runs in (("default", default), ("phase-barrier", barrier)):
        out.add(
            NAME,
            f"{label}: commit after the last VLM answer",
            _mean([r.wall_s - r.utilisation.last_end_s for r in mode_runs]),
            "s",
        )
        out.add(
            NAME,
            f"{label}: simulator oversleep (machine busy)",
            _mean([r.sim_overrun for r in mode_runs]),
            "fraction",
            note="slot time beyond the capacity model; inflates wall times by about as much"
            if label == "default"
            else "",
        )
    out.add(
        NAME,
        "default: narrator CPU (workers+writer+redis)",
        max(_narrator_cores(r) for r in default),
        "cores",
        "<= 1.0",
        note="of the 2 cores; the rest is left to the simulated replicas and the OS",
    )
    out.add(NAME, "default: worker CPU per VLM request", first.cpu_per_request_ms("worker"), "ms")
    out.details = {
        "sim": SIM.describe(),
        "order": list(order),
        "default": [_summary(r) for r in default],
        "phase_barrier": [_summary(r) for r in barrier],
    }
    return out


if __name__ == "__main__":
    sys.exit(main_for(NAME, bench))
