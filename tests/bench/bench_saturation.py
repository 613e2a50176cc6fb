"""Fleet saturation: does a default-configured run keep every simulated GPU busy?

A generated dataset (200 episodes, two cameras; 60 with ``--quick``) is annotated against 4
simulated replicas with a realistic capacity (see :data:`SIM`), twice:

1. the default run (``narrator annotate`` with nothing but the URLs given), and
2. a phase-barrier run (all plan jobs, then all interjections jobs, then all vqa jobs).

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


def bench(ctx: BenchContext) -> BenchResult:
    episodes = 60 if ctx.quick else 200
    source = sample_dataset(ctx, episodes=episodes, **DATASET)
    out = BenchResult()
    with SimFleetProcess(SIM) as fleet:
        default = run_default(source, fleet, ctx.scratch("saturation-default"))
        barrier = run_phase_barrier(source, fleet, ctx.scratch("saturation-barrier"))
    if default.exit_code != 0:
        raise RuntimeError(f"the default run exited with {default.exit_code}")
    out.add(
        NAME,
        "default: slot utilisation (5%-95% of requests)",
        default.utilisation.steady,
        "fraction",
        ">= 0.90",
        note=f"{episodes} episodes, 2 cameras, {SIM.describe()}; "
        f"workers={default.config['workers']} x jobs_per_worker="
        f"{default.config['jobs_per_worker']}",
    )
    out.add(NAME, "default: slot utilisation (whole run)", default.utilisation.overall, "fraction")
    out.add(NAME, "default: wall time", default.wall_s, "s")
    out.add(NAME, "default: VLM requests", default.requests, "requests")
    out.add(
        NAME,
        "phase-barrier: slot utilisation (5%-95%)",
        barrier.utilisation.steady,
        "fraction",
    )
    out.add(NAME, "phase-barrier: wall time", barrier.wall_s, "s")
    out.add(
        NAME,
        "wall time ratio phase-barrier / default",
        barrier.wall_s / default.wall_s,
        "x",
        note="phases (s): " + ", ".join(f"{w:.1f}" for w in barrier.phase_walls_s),
    )
    for label, run in (("default", default), ("phase-barrier", barrier)):
        out.add(
            NAME,
            f"{label}: commit after the last VLM answer",
            run.wall_s - run.utilisation.last_end_s,
            "s",
            note="the writer's tail: last shards, commit" if run is default else "",
        )
    out.add(
        NAME,
        "default: narrator CPU (workers+writer+redis)",
        _narrator_cores(default),
        "cores",
        "<= 1.0",
        note="of the 2 cores; the rest is left to the simulated replicas and the OS",
    )
    out.add(NAME, "default: worker CPU per VLM request", default.cpu_per_request_ms("worker"), "ms")
    out.details = {
        "sim": SIM.describe(),
        "default": _summary(default),
        "phase_barrier": _summary(barrier),
    }
    return out


if __name__ == "__main__":
    sys.exit(main_for(NAME, bench))
