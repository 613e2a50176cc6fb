"""Soak run (``make soak`` = ``python -m tests.bench.soak``; not part of ``make test``).

Annotates a generated dataset of ``--episodes`` one-camera episodes of 2-6 s (1000 by default)
end to end (producer, ``narrator worker`` and ``narrator writer`` processes, a Redis with its
append-only file) against ``--replicas`` simulated replicas that misbehave all along: some
5xx answers, some unusable answers, and one replica stopped at 30% of the jobs and started
again at 55%. While it runs, a sampler records every second the RSS of the workers, the
writer and redis-server and Redis' ``used_memory``.

Afterwards it checks that nothing was lost or duplicated:

* every shard keeps its rows (``episode_index``, ``frame_index``, ``index`` unchanged);
* ``narrator validate``'s check finds no error;
* per episode, the language rows in the dataset are exactly the rows the workers staged in
  Redis (counted per column, style, role and camera): none lost, none written twice;
* per episode: one ``plan`` row and one ``subtask`` row on the first frame, and for every
  camera as many vqa questions and answers as vqa ticks minus the vqa items recorded as
  failures.

It prints a report table (also written as JSON beside the work directory) and exits 1 if
a check failed or a role's memory grew by more than ``MAX_GROWTH`` (peak RSS over the last
quarter of the jobs against the peak over the second quarter).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]
import pyarrow.parquet as pq
import redis

from narrator.common import keys
from narrator.common.config import load_config
from narrator.common.contract import EVENTS_COLUMN, PERSISTENT_COLUMN
from narrator.common.dataset.reader import load_dataset_meta, read_episode_frames
from narrator.common.failed_items import read_failure_records
from narrator.common.runs import text
from narrator.common.staging import ModuleResult
from narrator.inspection.dataset_check import check_annotated_dataset
from narrator.local.redis_server import LocalRedis
from narrator.local.run import annotate
from narrator.ops.status import RunStatus, read_status
from narrator.samples.dataset import make_sample_dataset
from narrator.simulator.fleet import Fleet, start_fleet
from narrator.workers.modules.ticks import tick_frames
from narrator.writer.merge import yield_to_interjections

MAX_ATTEMPTS = 3  # annotate runs (the first and resumes) before the soak gives up
MAX_GROWTH = 1.30  # peak RSS over the last quarter of the jobs / over the second quarter
STOP_AT, RESTART_AT = 0.30, 0.55  # fractions of the jobs done
FAULTS = {"error_rate": 0.04, "error_status": 503, "garbage_rate": 0.03, "latency_s": 0.01}
MiB = 1024 * 1024


# --- sampling -----------------------------------------------------------------------------


def role_of_tree(process: psutil.Process) -> str:
    """redis, worker or writer: the role of ``process`` or of its nearest ancestor that has
    one (a worker pool's spawned children do not say ``narrator worker`` themselves)."""
    current: psutil.Process | None = process
    while current is not None and current.pid != psutil.Process().pid:
        text = " ".join(current.cmdline())
        if "redis-server" in text:
            return "redis"
        for role in ("worker", "writer"):
            if f"narrator {role}" in text:
                return role
        current = current.parent()
    return "other"


@dataclass
class Sample:
    t: float
    progress: float  # jobs done / jobs total
    rss: dict[str, int]  # role -> summed RSS of its process tree, bytes
    redis_used: int


@dataclass
class Sampler:
    conn: redis.Redis
    samples: list[Sample] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def progress(self) -> float:
        runs = list(self.conn.smembers(keys.RUNS))  # the soak's Redis holds its run only
        if not runs:
            return 0.0
        status = read_status(self.conn, text(runs[0]) or "")
        return status.jobs_done / status.jobs_total if status.jobs_total else 0.0

    def loop(self, started: float) -> None:
        while not self.stop.wait(1.0):
            rss: Counter[str] = Counter()
            for child in psutil.Process().children(recursive=True):
                try:
                    rss[role_of_tree(child)] += int(child.memory_info().rss)
                except psutil.Error:
                    continue
            try:
                used = int(self.conn.info("memory")["used_memory"])
                progress = self.progress()
            except redis.RedisError:
                used, progress = 0, self.samples[-1].progress if self.samples else 0.0
            self.samples.append(Sample(time.monotonic() - started, progress, dict(rss), used))


def peak_between(samples: list[Sample], role: str, low: float, high: float) -> int:
    """The role's highest RSS while the jobs done were between ``low`` and ``high``."""
    return max((s.rss.get(role, 0) for s in samples if low <= s.progress <= high), default=0)


# --- checks (pure over what was read) -----------------------------------------------------


RowKey = tuple[str, str | None, str, str | None]  # (column, style, role, camera)


def staged_counts(results: list[ModuleResult]) -> Counter[RowKey]:
    """The rows the writer keeps of the staged results: all of them, except the plan
    module's plan rows on interjection frames (the refreshed plan replaces them)."""
    interjections = {r.frame for res in results for r in res.rows if r.style == "interjection"}
    counts: Counter[RowKey] = Counter()
    for res in results:
        rows = res.rows
        if res.module == "plan":
            rows = yield_to_interjections(rows, interjections)
        counts.update((r.column, r.style, r.role, r.camera) for r in rows)
    return counts


def dataset_counts(
    persistent: list[dict[str, Any]], events: list[list[dict[str, Any]]]
) -> Counter[RowKey]:
    counts: Counter[RowKey] = Counter(
        ("persistent", r["style"], r["role"], r["camera"]) for r in persistent
    )
    for frame_rows in events:
        counts.update(("events", r["style"], r["role"], r["camera"]) for r in frame_rows)
    return counts


@dataclass
class EpisodeRows:
    persistent: list[dict[str, Any]] = field(default_factory=list)  # from its first frame
    events: list[list[dict[str, Any]]] = field(default_factory=list)  # one list per frame
    first_timestamp: float = 0.0


def read_episode_rows(root: Path) -> dict[int, EpisodeRows]:
    out: dict[int, EpisodeRows] = {}
    for shard in sorted((root / "data").rglob("*.parquet")):
        table = pq.read_table(
            shard, columns=["episode_index", "timestamp", PERSISTENT_COLUMN, EVENTS_COLUMN]
        )
        columns = [table.column(n).to_pylist() for n in table.column_names]
        for episode, ts, persistent, events in zip(*columns, strict=True):
            if episode not in out:
                out[episode] = EpisodeRows(persistent, [], ts)
            out[episode].events.append(events)
    return out


def episode_problems(
    episode: int,
    rows: EpisodeRows,
    results: list[ModuleResult],
    ticks: int,
    cameras: list[str],
    failed_items: list[tuple[str, str]],  # (module, item) recorded as failures
) -> list[str]:
    problems = []
    vqa_failures = sum(1 for module, _ in failed_items if module == "vqa")
    # the first frame's plan is deterministic from the spans (no request that could fail)
    expected_first = {"plan": 1, "subtask": 1}
    staged, written = staged_counts(results), dataset_counts(rows.persistent, rows.events)
    if staged != written:
        problems.append(f"episode {episode}: rows staged {dict(staged)} != written {dict(written)}")
    first = [r for r in rows.persistent if r["timestamp"] == rows.first_timestamp]
    for style, expected in expected_first.items():
        if sum(1 for r in first if r["style"] == style) != expected:
            problems.append(f"episode {episode}: not {expected} {style} row(s) on the first frame")
    for camera in cameras:
        asked = Counter(
            r["role"]
            for f in rows.events
            for r in f
            if r["style"] == "vqa" and r["camera"] == camera
        )
        if asked["user"] != asked["assistant"]:
            problems.append(f"episode {episode} {camera}: vqa questions != answers {dict(asked)}")
    answered = sum(1 for f in rows.events for r in f if r["style"] == "vqa" and r["role"] == "user")
    if answered + vqa_failures != ticks * len(cameras):
        problems.append(
            f"episode {episode}: {answered} vqa answered + {vqa_failures} failed != "
            f"{ticks * len(cameras)} ticks"
        )
    return problems


# --- the run ------------------------------------------------------------------------------


def drive_faults(fleet: Fleet, sampler: Sampler, done: threading.Event, events: list[str]) -> None:
    stopped = False
    while not done.wait(0.5):
        progress = sampler.samples[-1].progress if sampler.samples else 0.0
        if not stopped and progress >= STOP_AT:
            fleet.stop_replica(len(fleet.urls) - 1)
            events.append(f"replica {len(fleet.urls) - 1} stopped at {progress:.0%} of the jobs")
            stopped = True
        elif stopped and progress >= RESTART_AT:
            fleet.start_replica(len(fleet.urls) - 1)
            events.append(f"replica {len(fleet.urls) - 1} started at {progress:.0%} of the jobs")
            return


def load_results(
    conn: redis.Redis, run_id: str, episodes: list[int], modules: list[str]
) -> dict[int, list[ModuleResult]]:
    pipe = conn.pipeline(transaction=False)
    for episode in episodes:
        for module in modules:
            pipe.hget(keys.result(run_id, module, episode), "data")
    raw = iter(pipe.execute())
    return {
        episode: [ModuleResult.decode(data) for data in (next(raw) for _ in modules) if data]
        for episode in episodes
    }


def verify(original: Path, root: Path, conn: redis.Redis, status: RunStatus) -> list[str]:
    problems: list[str] = []
    for shard in sorted((original / "data").rglob("*.parquet")):
        rel = shard.relative_to(original)
        ids = ["episode_index", "frame_index", "index"]
        if not pq.read_table(shard, columns=ids).equals(pq.read_table(root / rel, columns=ids)):
            problems.append(f"{rel}: frame rows changed")
    report = check_annotated_dataset(root)
    problems += [
        f"validate: {f.rule}: {f.message}" for f in report.findings if f.severity == "error"
    ]
    meta = load_dataset_meta(root)
    cameras = [c.key for c in meta.cameras]
    episodes = sorted(meta.episodes)
    modules = list(status.run.module_hashes)
    results = load_results(conn, status.run.run_id, episodes, modules)
    failures = read_failure_records(conn, status.run.run_id, modules)
    failed_items: dict[int, list[tuple[str, str]]] = {}
    for failure in failures:
        failed_items.setdefault(failure["episode"], []).append((failure["module"], failure["item"]))
    rows = read_episode_rows(root)
    hz = status.run.settings.vqa.vqa_hz
    for episode in episodes:
        if episode not in rows or len(results[episode]) != len(modules):
            problems.append(f"episode {episode}: missing from the dataset or from Redis")
            continue
        ticks = len(tick_frames(read_episode_frames(meta, episode).timestamp, hz))
        problems += episode_problems(
            episode, rows[episode], results[episode], ticks, cameras, failed_items.get(episode, [])
        )
    return problems


def run_soak(work: Path, episodes: int, replicas: int) -> dict[str, Any]:
    started = time.monotonic()
    original = make_sample_dataset(
        work / "original", episodes=episodes, cameras=1, episodes_per_file=50, chunks_size=10,
        min_length=20, max_length=60, width=48, height=32,
    )  # fmt: skip
    generated_s = time.monotonic() - started
    root = Path(shutil.copytree(original, work / "run" / "dataset"))
    server = LocalRedis(work / "redis").start()
    fleet = start_fleet(replicas)
    events: list[str] = []
    try:
        for i in range(replicas):
            fleet.set_faults(i, **FAULTS)
        conn = redis.Redis.from_url(server.url)
        config = load_config(
            {"vlm": {"urls": fleet.urls, "backoff_base_s": 0.1, "backoff_max_s": 2.0},
             "redis_url": server.url, "state_dir": str(work / "state")},
            env={},
        )  # fmt: skip
        sampler = Sampler(conn)
        done = threading.Event()
        run_started = time.monotonic()
        threads = [
            threading.Thread(target=sampler.loop, args=(run_started,), daemon=True),
            threading.Thread(target=drive_faults, args=(fleet, sampler, done, events), daemon=True),
        ]
        for thread in threads:
            thread.start()
        # A job that fails for good (e.g. every subtask answer of an episode unusable) stops
        # the run with exit code 1; as a user would, run the same command again (it resumes).
        for attempt in range(1, MAX_ATTEMPTS + 1):
            result = annotate(config, root, progress=False)
            if result.exit_code != 1:
                break
            failed = result.status.failed_jobs if result.status else []
            reasons = Counter(j.reason.split(": ", 2)[-1][:60] for j in failed)
            events.append(f"annotate attempt {attempt} exited 1; failed jobs: {dict(reasons)}")
        run_s = time.monotonic() - run_started
        done.set()
        sampler.stop.set()
        for thread in threads:
            thread.join(timeout=10)
        status = read_status(conn, result.run_id)
        problems = [] if result.exit_code == 0 else [f"annotate exited {result.exit_code}"]
        if status.committed:
            problems += verify(original, root, conn, status)
        requests = [fleet.stats(i) for i in range(replicas)]
    finally:
        fleet.close()
        server.stop()
    frames = sum(ep.length for ep in load_dataset_meta(original).episodes.values())
    return summarize(
        episodes, frames, generated_s, run_s, status, sampler.samples, requests, events, problems
    )


def summarize(
    episodes: int,
    frames: int,
    generated_s: float,
    run_s: float,
    status: RunStatus,
    samples: list[Sample],
    requests: list[dict[str, Any]],
    events: list[str],
    problems: list[str],
) -> dict[str, Any]:
    memory = {}
    for role in ("worker", "writer", "redis"):
        peak = max(s.rss.get(role, 0) for s in samples)
        # Growth: the peak over the last quarter of the jobs against the peak over the
        # second quarter (after start-up, imports and the first shards).
        second, last = peak_between(samples, role, 0.25, 0.5), peak_between(samples, role, 0.75, 1)
        growth = last / second if second else 0.0
        memory[role] = {"peak_mib": peak / MiB, "q2_peak_mib": second / MiB,
                        "q4_peak_mib": last / MiB, "growth": growth}  # fmt: skip
    # Redis holds every staged result until the run ends (the resume cache): it grows with
    # the episodes done by design, so only the processes are held to MAX_GROWTH.
    bounded = all(memory[role]["growth"] <= MAX_GROWTH for role in ("worker", "writer"))
    counters = status.counters

    def total(suffix: str) -> int:
        return sum(v for k, v in counters.items() if k.endswith(suffix))

    return {
        "episodes": episodes,
        "frames": frames,
        "generate_s": round(generated_s, 1),
        "run_s": round(run_s, 1),
        "jobs": status.jobs_total,
        "committed": status.committed,
        "vlm_requests_served": sum(int(r["requests_total"]) for r in requests),
        "http_errors_served": sum(
            int(n) for r in requests for code, n in r["by_status"].items() if code != "200"
        ),
        "requests": total(":requests"),
        "retries": total(":retries"),
        "corrective_retries": total(":corrective_retries"),
        "item_failures": status.item_failures,
        "item_failure_kinds": status.item_failure_kinds,
        "failed_jobs": len(status.failed_jobs),
        "fault_events": events,
        "memory": memory,
        "redis_used_peak_mib": max(s.redis_used for s in samples) / MiB,
        "redis_used_peak_kib_per_episode": max(s.redis_used for s in samples) / 1024 / episodes,
        "redis_used_end_mib": samples[-1].redis_used / MiB,
        "memory_bounded": bounded,
        "problems": problems[:50],
        "problem_count": len(problems),
        "ok": not problems and bounded and status.committed,
    }


def print_report(report: dict[str, Any]) -> None:
    out = sys.stdout
    out.write(
        f"soak: {report['episodes']} episodes ({report['frames']} frames), {report['jobs']} jobs, "
        f"run {report['run_s']} s (dataset generated in {report['generate_s']} s)\n"
    )
    for event in report["fault_events"]:
        out.write(f"  fault: {event}\n")
    rows = [
        ("committed", report["committed"]),
        (
            "VLM requests (client) / served",
            f"{report['requests']} / {report['vlm_requests_served']}",
        ),
        ("HTTP errors served", report["http_errors_served"]),
        ("retries / corrective retries", f"{report['retries']} / {report['corrective_retries']}"),
        ("item failures", f"{report['item_failures']} {report['item_failure_kinds']}"),
        ("failed jobs at the end", report["failed_jobs"]),
        ("lost or duplicated rows", report["problem_count"]),
    ]
    for name, value in rows:
        out.write(f"  {name:<34} {value}\n")
    out.write(f"  {'RSS (MiB)':<14}{'peak':>9}{'25-50%':>9}{'75-100%':>9}{'growth':>8}\n")
    for role, m in report["memory"].items():
        out.write(f"  {role:<14}{m['peak_mib']:>9.1f}{m['q2_peak_mib']:>9.1f}"
                  f"{m['q4_peak_mib']:>9.1f}{m['growth']:>8.2f}\n")  # fmt: skip
    out.write(f"  redis used_memory peak {report['redis_used_peak_mib']:.1f} MiB "
              f"({report['redis_used_peak_kib_per_episode']:.1f} KiB per episode), "
              f"{report['redis_used_end_mib']:.1f} MiB after the commit\n")  # fmt: skip
    for problem in report["problems"]:
        out.write(f"  PROBLEM {problem}\n")
    out.write(f"soak {'PASSED' if report['ok'] else 'FAILED'}\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.soak", description=__doc__)
    parser.add_argument("--episodes", type=int, default=1000)
    parser.add_argument("--replicas", type=int, default=4)
    parser.add_argument("--work", type=Path, help="work directory (default: a temporary one)")
    parser.add_argument("--json", type=Path, help="also write the report here as JSON")
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="narrator-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        report = run_soak(work, args.episodes, args.replicas)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
