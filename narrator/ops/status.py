"""Progress of a run, read from Redis: per module, per file, failures, throughput, ETA.

Used by ``narrator status``, the progress bar of ``narrator annotate`` and ``retry-failed``.
Read-only, except :func:`retry_failed`, which schedules a run's failed jobs and failed items
again (the producer's :func:`~producer.schedule.schedule_run` on the recorded run).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis
from rq.job import Job
from rq.registry import DeferredJobRegistry, FailedJobRegistry, StartedJobRegistry
from rq.serializers import JSONSerializer

from narrator.common import keys
from narrator.common.failed_items import (
    ModuleTally,
    read_failure_records,
    read_hold,
    read_tallies,
    record_hold,
)
from narrator.common.queueing import module_queue, writer_queue
from narrator.common.runs import RunRecord, load_run, load_run_files, text
from narrator.producer.schedule import schedule_run

FAILURES_SHOWN = 20  # failed items listed by format_status


@dataclass
class FailedJob:
    job_id: str
    queue: str
    reason: str


@dataclass
class RunStatus:
    run: RunRecord
    modules: dict[str, tuple[int, int]]  # module -> (done, total)
    files_staged: int
    files_total: int
    pending_by_file: dict[str, int]
    committed: bool
    queued: int
    started: int
    deferred: int
    failed_jobs: list[FailedJob]
    item_failures: int
    item_failure_kinds: dict[str, int]
    writer_errors: dict[str, list[dict[str, Any]]]
    counters: dict[str, int]
    elapsed_s: float
    notes: list[str] = field(default_factory=list)
    item_tallies: list[ModuleTally] = field(default_factory=list)
    failed_items: list[dict[str, Any]] = field(default_factory=list)  # the failure records
    commit_hold: str | None = None  # why the writer did not commit (too many failed items)

    @property
    def jobs_done(self) -> int:
        return sum(d for d, _ in self.modules.values())

    @property
    def jobs_total(self) -> int:
        return sum(t for _, t in self.modules.values())

    @property
    def state(self) -> str:
        if self.committed:
            return "done"
        if self.queued or self.started or self.deferred:
            return "running"
        if self.failed_jobs or self.writer_errors or self.commit_hold:
            return "failed"
        if self.jobs_done == self.jobs_total and self.files_staged < self.files_total:
            return "writing"
        return "idle"

    def throughput_per_s(self) -> float:
        return self.jobs_done / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def eta_s(self) -> float | None:
        rate = self.throughput_per_s()
        remaining = self.jobs_total - self.jobs_done
        return remaining / rate if rate > 0 else None


def _run_jobs(ids: list[str], run_id: str) -> list[str]:
    prefix = f"nar-{run_id}-"
    return [i for i in ids if i.startswith(prefix)]


def read_status(conn: redis.Redis, run_id: str) -> RunStatus:
    run = load_run(conn, run_id)
    files = load_run_files(conn, run_id)
    pipe = conn.pipeline(transaction=False)
    for f in files:
        pipe.smembers(keys.pending(run_id, f))
    pending_sets = pipe.execute()
    pending_by_module: Counter[str] = Counter()
    pending_by_file: dict[str, int] = {}
    for f, members in zip(files, pending_sets, strict=True):
        pending_by_file[f] = len(members)
        for m in members:
            pending_by_module[(text(m) or "").split(":", 1)[0]] += 1
    modules = {
        m: (run.total_episodes - pending_by_module[m], run.total_episodes)
        for m in run.module_hashes
    }
    staged = conn.hgetall(keys.staged_files(run_id))
    files_staged = sum(1 for v in staged.values() if text(v) == run.generation)
    committed = text(conn.get(keys.committed(run_id))) == run.generation

    failed: list[FailedJob] = []
    queued = started = deferred = 0
    for queue in (module_queue(conn), writer_queue(conn)):
        queued += len(_run_jobs(queue.get_job_ids(), run_id))
        started += len(_run_jobs(StartedJobRegistry(queue=queue).get_job_ids(), run_id))
        deferred += len(_run_jobs(DeferredJobRegistry(queue=queue).get_job_ids(), run_id))
        failed_ids = _run_jobs(FailedJobRegistry(queue=queue).get_job_ids(), run_id)
        jobs = Job.fetch_many(failed_ids, connection=conn, serializer=JSONSerializer)
        for job_id, job in zip(failed_ids, jobs, strict=True):
            reason = "job data missing"
            if job is not None:
                info = job.latest_result()
                exc = (info.exc_string if info is not None else None) or ""
                reason = exc.strip().splitlines()[-1] if exc.strip() else "unknown"
            failed.append(FailedJob(job_id, queue.name, reason))
    selected = run.selected_episodes()
    records = read_failure_records(conn, run_id, run.module_hashes, selected)
    kinds: Counter[str] = Counter(str(r["kind"]) for r in records)
    writer_errors = {
        text(k) or "": orjson.loads(v) for k, v in conn.hgetall(keys.writer_errors(run_id)).items()
    }
    counters = {text(k) or "": int(v) for k, v in conn.hgetall(keys.stats(run_id)).items()}
    return RunStatus(
        run=run,
        modules=modules,
        files_staged=files_staged,
        files_total=len(files),
        pending_by_file=pending_by_file,
        committed=committed,
        queued=queued,
        started=started,
        deferred=deferred,
        failed_jobs=failed,
        item_failures=len(records),
        item_failure_kinds=dict(kinds),
        writer_errors=writer_errors,
        counters=counters,
        elapsed_s=max(time.time() - run.created_at, 0.0),
        item_tallies=read_tallies(conn, run_id, run.module_hashes, selected),
        failed_items=records,
        commit_hold=None if committed else read_hold(conn, run_id),
    )


def list_runs(conn: redis.Redis) -> list[str]:
    return sorted(text(r) or "" for r in conn.smembers(keys.RUNS))


def retry_failed(conn: redis.Redis, run_id: str) -> int:
    """Schedule ``run_id`` again: failed jobs (module and writer queues), leftovers of
    interrupted ones and every member whose result has failed items are enqueued anew (the
    replayed answers of their successful items are not asked again). Returns how many jobs
    were enqueued (module and finalize jobs)."""
    run = load_run(conn, run_id)  # fail clearly on an unknown run
    record_hold(conn, run_id, None)
    outcome = schedule_run(conn, run, load_run_files(conn, run_id))
    return outcome.enqueued + outcome.finalize_enqueued


def read_replica_states(conn: redis.Redis) -> dict[str, dict[str, Any]]:
    """label -> {"healthy", "reason", "at"}: the latest health change of each VLM replica
    that a worker reported (see ``workers.replica_status``)."""
    out: dict[str, dict[str, Any]] = {}
    for label, raw in conn.hgetall(keys.REPLICAS).items():
        out[text(label) or ""] = orjson.loads(raw)
    return out


def selection_text(run: RunRecord) -> str:
    """Which episodes the run annotates, as ``status`` shows it."""
    if not run.selection:
        return f"all {run.total_episodes} in {run.total_files} file(s)"
    return (
        f"only {','.join(run.selection)} ({run.total_episodes} episode(s) in "
        f"{run.total_files} file(s); the others keep their rows)"
    )


def format_status(status: RunStatus) -> str:
    run = status.run
    settings = run.settings
    lines = [
        f"run {run.run_id}  state: {status.state}  dataset: {run.root}",
        f"model: {run.model}  generation: {run.generation}",
        f"episodes: {selection_text(run)}",
        f"requests: temperature {settings.temperature:g}  max_tokens {settings.max_tokens}  "
        f"seed {settings.seed}  reasoning_effort {settings.reasoning_effort or 'unset'}",
    ]
    for module, (done, total) in status.modules.items():
        lines.append(f"  {module:<14} {done:>7}/{total:<7} episodes")
    lines.append(
        f"  files staged {status.files_staged}/{status.files_total}"
        f"  committed: {'yes' if status.committed else 'no'}"
    )
    lines.append(
        f"  jobs queued {status.queued}  running {status.started}  waiting {status.deferred}"
        f"  failed {len(status.failed_jobs)}"
    )
    rate = status.throughput_per_s()
    eta = status.eta_s()
    lines.append(
        f"  throughput {rate:.2f} jobs/s"
        + (f"  ETA {eta:.0f} s" if eta is not None and not status.committed else "")
    )
    if status.counters:
        req = sum(v for k, v in status.counters.items() if k.endswith(":requests"))
        toks = sum(v for k, v in status.counters.items() if k.endswith("tokens"))
        imgs = sum(v for k, v in status.counters.items() if k.endswith(":images"))
        lines.append(f"  VLM requests {req}  tokens {toks}  images {imgs}")
    if status.item_failures:
        kinds = ", ".join(f"{k}: {v}" for k, v in sorted(status.item_failure_kinds.items()))
        tallies = ", ".join(
            f"{t.module} {t.failed}/{t.items}" for t in status.item_tallies if t.failed
        )
        lines.append(f"  item failures {status.item_failures} ({kinds}; failed/items: {tallies})")
        for record in status.failed_items[:FAILURES_SHOWN]:
            lines.append(
                f"  FAILED ITEM {record['module']} episode {record['episode']} "
                f"{record['item']}: {record['kind']}: {str(record['message'])[:160]}"
            )
        if len(status.failed_items) > FAILURES_SHOWN:
            lines.append(f"  ... and {len(status.failed_items) - FAILURES_SHOWN} more")
    if status.commit_hold:
        lines.append(f"  NOT COMMITTED: {status.commit_hold}")
    for job in status.failed_jobs[:20]:
        lines.append(f"  FAILED {job.job_id}: {job.reason}")
    for data_file, errors in list(status.writer_errors.items())[:10]:
        first = errors[0] if errors else {}
        lines.append(
            f"  NOT WRITTEN {data_file}: {len(errors)} error(s), e.g. "
            f"{first.get('rule')}: {first.get('message')}"
        )
    unfinished = {f: n for f, n in status.pending_by_file.items() if n}
    if unfinished and len(unfinished) <= 20:
        for data_file, n in unfinished.items():
            lines.append(f"  {data_file}: {n} job(s) to go")
    return "\n".join(lines)
