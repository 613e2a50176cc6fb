"""A degraded fleet (issue 14.3): how much does a half-broken replica and a dead URL cost?

A multi-chunk dataset (two cameras; several data files over several chunks) is annotated
twice with narrator's defaults, each run exactly as ``annotate`` would start it (one worker
pool with annotate's arguments, ``pods.annotate_pool``, so a deadline can stop it):

1. ``good alone`` - the URL of one good replica;
2. ``degraded`` - three URLs: the same good replica, a replica that never answers half of
   its requests (the simulator's ``hang_rate`` 0.5: the request holds its connection and is
   never answered; ``/health`` and ``/metrics`` still answer) and a dead URL (a port nothing
   listens on).

Both replicas run the calibrated latency model with the same capacity. Reported: the ratio
of the degraded run's wall time to the good replica's alone (target <= 1.5), and what the
client did with the broken replica (attempts per replica and outcome, from the pool's
metrics). A degraded run that has not committed at its deadline (a multiple of the
good-alone wall time) is stopped and its ratio reported as a lower bound, so a client that
waits the full request timeout on every hang does not hold ``make bench`` for half an hour.
"""

from __future__ import annotations

import sys
from typing import Any

from narrator.common.config import load_config
from tests.bench.fleet_gauges import client_outcomes
from tests.bench.pods import PodRun, annotate_pool, free_port, run_pods
from tests.bench.processes import SimFleetProcess, SimSettings
from tests.bench.report import main_for
from tests.bench.support import BenchContext, BenchResult, sample_dataset

NAME = "degraded"
SIM = SimSettings.calibrated(replicas=2, slots=32)
HANG_RATE = 0.5
FULL = {"episodes": 60, "cameras": 2, "episodes_per_file": 5, "chunks_size": 2}
QUICK = {"episodes": 20, "cameras": 2, "episodes_per_file": 4, "chunks_size": 2}
DEADLINE_FACTOR = 8.0  # the degraded run is stopped at this multiple of the good-alone run
DEADLINE_MAX_S = {False: 600.0, True: 150.0}  # by quick


def _outcomes(run: PodRun, urls: dict[str, str]) -> str:
    counts: dict[tuple[str, str], float] = {}
    for page in run.client_pages.values():
        for key, value in client_outcomes(page).items():
            counts[key] = counts.get(key, 0.0) + value
    parts = []
    for name, url in urls.items():
        mine = {o: v for (r, o), v in counts.items() if r == url}
        text = ", ".join(f"{o} {v:.0f}" for o, v in sorted(mine.items())) or "none"
        parts.append(f"{name}: {text}")
    return "; ".join(parts)


def bench(ctx: BenchContext) -> BenchResult:
    shape = QUICK if ctx.quick else FULL
    source = sample_dataset(ctx, **shape)
    pool = annotate_pool(load_config({}, env={}))
    with SimFleetProcess(SIM) as fleet:
        good_url, hanging_url = fleet.urls
        dead_url = f"http://127.0.0.1:{free_port()}"
        alone = run_pods(
            source, fleet, ctx.scratch("degraded-alone"), pool, urls=[good_url], mode="alone"
        )
        if not alone.committed:
            raise RuntimeError("the good-replica-alone run did not commit")
        fleet.set_faults(1, hang_rate=HANG_RATE)
        deadline = min(DEADLINE_FACTOR * alone.run.wall_s, DEADLINE_MAX_S[ctx.quick])
        degraded = run_pods(
            source,
            fleet,
            ctx.scratch("degraded-three"),
            pool,
            urls=[good_url, hanging_url, dead_url],
            deadline_s=deadline,
            mode="degraded",
        )
        hung = int(fleet.stats()[1].get("hung", 0))
        fleet.clear_faults()
    ratio = degraded.run.wall_s / alone.run.wall_s
    files = shape["episodes"] // shape["episodes_per_file"]
    urls = {"good": good_url, "half-hanging": hanging_url, "dead": dead_url}
    out = BenchResult()
    out.add(
        NAME,
        "degraded fleet / good replica alone: wall time"
        + ("" if degraded.committed else " (lower bound: stopped at the deadline)"),
        ratio,
        "x",
        "<= 1.5",
        note=f"{shape['episodes']} episodes, 2 cameras, {files} data files in "
        f"{-(-files // shape['chunks_size'])} chunks; simulated {SIM.describe()} (the good and "
        f"the half-hanging one); URLs: good, half-hanging (hang_rate {HANG_RATE}), dead "
        "(nothing listens)",
    )
    out.add(NAME, "good replica alone: wall time to commit", alone.run.wall_s, "s")
    out.add(
        NAME,
        "degraded fleet: wall time" + (" to commit" if degraded.committed else " (not committed)"),
        degraded.run.wall_s,
        "s",
        note=""
        if degraded.committed
        else f"stopped at the deadline of {deadline:.0f} s with {degraded.jobs_done} of "
        f"{degraded.jobs_total} jobs done",
    )
    out.add(
        NAME,
        "degraded fleet: requests the half-hanging replica never answered",
        hung,
        "requests",
        note="client attempts by replica and outcome: " + _outcomes(degraded, urls),
    )
    details: dict[str, Any] = {
        "sim": SIM.describe(),
        "dataset": shape,
        "deadline_s": round(deadline, 1),
        "alone": alone.as_json(),
        "degraded": degraded.as_json(),
        "hung": hung,
    }
    out.details = details
    return out


if __name__ == "__main__":
    sys.exit(main_for(NAME, bench, timeout_s=1200))
