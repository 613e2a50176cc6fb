"""How cost grows with the dataset: default runs of 50, 200 and 800 episodes (two cameras,
10 episodes per data file; 20/50/100 with ``--quick``) against a fast simulated fleet, so the
run is bound by narrator's own work rather than by the simulated GPUs.

Reported per size: wall time to commit, worker/writer/Redis CPU, peak RSS of the worker pool
and the writer, Redis peak memory. Then, between the smallest and the largest run: the
growth exponent of wall time and of each cost (1.0 = linear; log(cost ratio) / log(size
ratio)), and the per-episode cost of the largest run against the smallest, so a fixed
start-up cost (which makes small runs dearer per episode) is told apart from super-linear
growth (which makes large runs dearer).
"""

from __future__ import annotations

import math
import sys
from typing import Any

from tests.bench.pipeline import PipelineRun, run_default
from tests.bench.processes import SimFleetProcess, SimSettings
from tests.bench.report import main_for
from tests.bench.support import BenchContext, BenchResult, sample_dataset

NAME = "scaling"
FAST_SIM = SimSettings(replicas=4, slots=8, base_s=0.02, per_image_s=0.002, per_output_token_s=0.0)
MIB = 2**20


def growth_exponent(small: float, large: float, size_ratio: float) -> float:
    """k such that large / small = size_ratio ** k (1.0: linear)."""
    if small <= 0 or large <= 0:
        return float("nan")
    return math.log(large / small) / math.log(size_ratio)


def _costs(run: PipelineRun) -> dict[str, float]:
    cpu = run.usage.cpu_s
    return {
        "wall_s": run.wall_s,
        "worker_cpu_s": cpu.get("worker", 0.0),
        "writer_cpu_s": cpu.get("writer", 0.0),
        "redis_cpu_s": cpu.get("redis", 0.0),
        "worker_peak_rss_mib": run.usage.peak_rss.get("worker", 0) / MIB,
        "writer_peak_rss_mib": run.usage.peak_rss.get("writer", 0) / MIB,
        "redis_peak_mib": (run.usage.redis_peak_used - run.redis_used_before) / MIB,
    }


def bench(ctx: BenchContext) -> BenchResult:
    sizes = (20, 50, 100) if ctx.quick else (50, 200, 800)
    sources = {n: sample_dataset(ctx, episodes=n, cameras=2, episodes_per_file=10) for n in sizes}
    runs: dict[int, PipelineRun] = {}
    with SimFleetProcess(FAST_SIM) as fleet:
        for n, source in sources.items():
            runs[n] = run_default(source, fleet, ctx.scratch(f"scaling-{n}"))
            if runs[n].exit_code != 0:
                raise RuntimeError(f"the {n}-episode run exited with {runs[n].exit_code}")
    out = BenchResult()
    costs = {n: _costs(run) for n, run in runs.items()}
    for n in sizes:
        c = costs[n]
        out.add(
            NAME,
            f"{n} episodes: wall time to commit",
            c["wall_s"],
            "s",
            note=f"{runs[n].requests:,} VLM requests; worker CPU {c['worker_cpu_s']:.1f} s, "
            f"writer CPU {c['writer_cpu_s']:.1f} s, redis CPU {c['redis_cpu_s']:.1f} s; peak RSS "
            f"workers {c['worker_peak_rss_mib']:.0f} MiB, writer {c['writer_peak_rss_mib']:.0f} "
            f"MiB; Redis {c['redis_peak_mib']:.1f} MiB",
        )
        out.add(NAME, f"{n} episodes: wall per episode", 1000 * c["wall_s"] / n, "ms")
    small, large = sizes[0], sizes[-1]
    ratio = large / small
    for key, label in (
        ("wall_s", "wall time"),
        ("worker_cpu_s", "worker CPU"),
        ("writer_cpu_s", "writer CPU"),
        ("redis_peak_mib", "Redis peak memory"),
        ("worker_peak_rss_mib", "worker peak RSS"),
    ):
        out.add(
            NAME,
            f"growth exponent {small}->{large}: {label}",
            growth_exponent(costs[small][key], costs[large][key], ratio),
            "",
            "<= 1.1"
            if key in ("wall_s", "worker_cpu_s", "writer_cpu_s", "redis_peak_mib")
            else None,
        )
    out.details = {
        "sim": FAST_SIM.describe(),
        "costs": {str(n): c for n, c in costs.items()},
        "runs": {str(n): _run_summary(run) for n, run in runs.items()},
    }
    return out


def _run_summary(run: PipelineRun) -> dict[str, Any]:
    return {**run.as_json(), "returned_after_commit_s": round(run.returned_s - run.wall_s, 3)}


if __name__ == "__main__":
    sys.exit(main_for(NAME, bench))
