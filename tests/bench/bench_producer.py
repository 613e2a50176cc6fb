"""Producer and Redis: scanning and enqueuing a 10k-episode dataset, and what a run costs in
Redis memory per episode.

1. A metadata-only dataset of 10,000 episodes (100 per data file; 2,000 with ``--quick``) is
   generated, then timed: the scan (:func:`common.dataset.load_dataset_meta`), the enqueue
   (:func:`producer.enqueue.enqueue_run`: run record, file table, pending sets, 2 jobs per
   episode), a second enqueue of the same run (the resume check), and one
   :func:`common.status.read_status` (what ``narrator annotate``'s progress bar pays every
   poll). Redis ``used_memory`` above the empty server, per episode, after the enqueue.
2. Real runs of 20 and 60 episodes (two cameras; 10 and 30 with ``--quick``) against a fast
   simulated fleet: Redis memory per episode (the slope between the two sizes) at the run's
   peak, and after the commit and its cleanup, with what is left broken down by kind of key.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import redis

from narrator.common.config import AnnotationSettings
from narrator.common.dataset.reader import load_dataset_meta
from narrator.common.prompts import load_prompts
from narrator.local.redis_server import LocalRedis
from narrator.ops.status import read_status
from narrator.producer.enqueue import enqueue_run
from narrator.simulator import DEFAULT_MODEL
from tests.bench.pipeline import PipelineRun, run_default
from tests.bench.processes import SimFleetProcess, SimSettings
from tests.bench.report import main_for
from tests.bench.support import BenchContext, BenchResult, sample_dataset

NAME = "producer"
FAST_SIM = SimSettings(replicas=4, slots=8, base_s=0.02, per_image_s=0.002, per_output_token_s=0.0)


def used_memory(conn: redis.Redis) -> int:
    return int(conn.info("memory")["used_memory"])


def memory_by_kind(conn: redis.Redis) -> dict[str, int]:
    """Bytes per kind of key: narrator's per-run keys by their role, rq's by their prefix."""
    sizes: Counter[str] = Counter()
    for raw in conn.scan_iter(count=1000):
        key = raw.decode()
        parts = key.split(":")
        if key.startswith("narrator:run:") and len(parts) > 3:
            kind = "narrator " + parts[3] + (f" {parts[4]}" if parts[3] == "result" else "")
        elif key.startswith("narrator:run:"):
            kind = "narrator run record"
        else:
            kind = " ".join(parts[:2])
        sizes[kind] += int(conn.memory_usage(key) or 0)
    return dict(sizes.most_common())


def _enqueue_figures(ctx: BenchContext, out: BenchResult) -> dict[str, Any]:
    episodes = 2000 if ctx.quick else 10_000
    root = sample_dataset(ctx, episodes=episodes, episodes_per_file=100, metadata_only=True)
    with LocalRedis(ctx.scratch("producer-redis")) as server:
        conn = redis.Redis.from_url(server.url)
        empty = used_memory(conn)
        started = time.perf_counter()
        meta = load_dataset_meta(root)
        scan_s = time.perf_counter() - started
        settings, prompts = AnnotationSettings(), load_prompts()

        def enqueue() -> Any:
            return enqueue_run(
                conn, root, settings=settings, prompts=prompts, model=DEFAULT_MODEL, meta=meta
            )

        started = time.perf_counter()
        summary = enqueue()
        enqueue_s = time.perf_counter() - started
        queued = used_memory(conn) - empty
        started = time.perf_counter()
        again = enqueue()
        again_s = time.perf_counter() - started
        started = time.perf_counter()
        status = read_status(conn, summary.run_id)
        status_s = time.perf_counter() - started
        conn.close()
    note = f"{episodes:,} episodes in {len(meta.files)} data files; {summary.enqueued:,} jobs"
    out.add(NAME, "scan (load_dataset_meta)", scan_s, "s", note=note)
    out.add(NAME, "enqueue (run record, pending sets, jobs)", enqueue_s, "s")
    out.add(NAME, "enqueue per episode", 1e6 * enqueue_s / episodes, "us")
    out.add(NAME, "second enqueue of the same run (resume)", again_s, "s")
    out.add(NAME, "read_status once (progress poll)", 1000 * status_s, "ms")
    out.add(NAME, "Redis memory per episode, enqueued", queued / episodes, "bytes")
    return {
        "episodes": episodes,
        "files": len(meta.files),
        "jobs_enqueued": summary.enqueued,
        "second_enqueue_enqueued": again.enqueued,
        "second_enqueue_active": again.already_active,
        "queued_in_status": status.queued,
    }


def _run_figures(ctx: BenchContext, out: BenchResult) -> dict[str, Any]:
    """Redis memory of real runs of two sizes; per episode = the slope between them, so the
    fixed part (registered rq workers, client buffers) is not spread over the episodes."""
    sizes = (10, 30) if ctx.quick else (20, 60)
    sources = {n: sample_dataset(ctx, episodes=n, cameras=2, episodes_per_file=10) for n in sizes}
    runs, kinds = {}, {}
    with SimFleetProcess(FAST_SIM) as fleet:
        for n, source in sources.items():
            work = ctx.scratch(f"producer-run-{n}")
            runs[n] = run_default(source, fleet, work)
            # The run's redis-server is stopped; reopen its append-only file to look inside.
            with LocalRedis(work / "redis") as server:
                conn = redis.Redis.from_url(server.url)
                kinds[n] = memory_by_kind(conn)
                conn.close()
    small, large = sizes
    extra = large - small

    def slope(value: Callable[[PipelineRun], float]) -> float:
        return (value(runs[large]) - value(runs[small])) / extra

    peak = slope(lambda r: r.usage.redis_peak_used - r.redis_used_before)
    after = slope(lambda r: r.redis_used_after - r.redis_used_before)
    note = f"slope between runs of {small} and {large} episodes, 2 cameras, default modules"
    out.add(NAME, "Redis memory per episode, peak of a run", peak, "bytes", note=note)
    out.add(NAME, "Redis memory per episode, after commit + cleanup", after, "bytes")
    for label, prefix in (("staged results", "narrator result"), ("rq keys", "rq")):
        grow = sum(v for k, v in kinds[large].items() if k.startswith(prefix)) - sum(
            v for k, v in kinds[small].items() if k.startswith(prefix)
        )
        out.add(NAME, f"{label} left after the run, per episode", grow / extra, "bytes")
    return {
        "runs": {str(n): r.as_json() for n, r in runs.items()},
        "memory_by_kind_after": {str(n): k for n, k in kinds.items()},
    }


def bench(ctx: BenchContext) -> BenchResult:
    out = BenchResult()
    out.details = {"enqueue": _enqueue_figures(ctx, out), "run": _run_figures(ctx, out)}
    return out


if __name__ == "__main__":
    sys.exit(main_for(NAME, bench))
