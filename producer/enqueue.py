"""Register a run and enqueue its jobs with rq (JSON serializer, deterministic job ids).

Resuming is the normal case: results already staged with the current module hash are not
recomputed, jobs already queued or running are left alone, failed ones and ones orphaned by a
dead worker are enqueued again. Files whose every job is done get their finalize job at once.

Invariants:
* One job per (episode, module). ``interjections`` needs its episode's plan: when the plan
  is not staged yet, the plan job enqueues it on success (no rq dependencies at all).
* Each data file has a pending set of ``module:episode`` members; the finalize job of a file
  is enqueued by whoever empties it (workers) or by the producer when it is empty already.
* Jobs name a run id only; paths come from the run record.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import redis
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer
from rq.worker import Worker

from narrator.common import keys
from narrator.common.cameras import check_camera_settings
from narrator.common.config import AnnotationSettings
from narrator.common.dataset.reader import DatasetMeta, check_language_columns, load_dataset_meta
from narrator.common.logging import get_logger
from narrator.common.prompts import PromptSet
from narrator.common.queueing import (
    ACTIVE_STATES,
    JobOptions,
    enqueue_finalize_job,
    enqueue_module_jobs,
    module_job_data,
)
from narrator.common.runs import (
    RunRecord,
    compute_module_hashes,
    compute_run_id,
    default_state_dir,
    generation_of,
    text,
)

log = get_logger(__name__)


@dataclass
class EnqueueSummary:
    run_id: str
    generation: str
    total_jobs: int
    enqueued: int = 0
    already_done: int = 0
    already_active: int = 0
    finalize_enqueued: int = 0
    complete: bool = False
    files: int = 0
    notes: list[str] = field(default_factory=list)


def enqueue_run(
    conn: redis.Redis,
    root: Path,
    *,
    settings: AnnotationSettings,
    prompts: PromptSet,
    model: str,
    options: JobOptions | None = None,
    staging_dir: Path | None = None,
    meta: DatasetMeta | None = None,
) -> EnqueueSummary:
    options = options or JobOptions()
    root = Path(root).resolve()
    meta = meta or load_dataset_meta(root)
    check_language_columns(meta)
    check_camera_settings(settings, meta.cameras)
    run_id = compute_run_id(root, meta.fingerprint())
    module_hashes = compute_module_hashes(settings, prompts, model)
    generation = generation_of(module_hashes)
    modules = [m for m in keys.MODULES if m in module_hashes]
    total_jobs = len(meta.episodes) * len(modules)
    summary = EnqueueSummary(run_id, generation, total_jobs, files=len(meta.files))

    if text(conn.get(keys.committed(run_id))) == generation:
        summary.complete = True
        summary.already_done = total_jobs
        return summary

    existing = conn.hget(keys.run(run_id), "created_at")
    record = RunRecord(
        run_id=run_id,
        root=root,
        fingerprint=meta.fingerprint(),
        model=model,
        settings=settings,
        prompts=prompts,
        module_hashes=module_hashes,
        generation=generation,
        staging_dir=Path(staging_dir or default_state_dir(root) / "staging"),
        total_files=len(meta.files),
        total_episodes=len(meta.episodes),
        total_jobs=total_jobs,
        job_timeout_s=options.job_timeout_s,
        job_retries=options.job_retries,
        created_at=float(existing) if existing else time.time(),
    )
    pipe = conn.pipeline(transaction=True)
    pipe.hset(keys.run(run_id), mapping=record.to_redis())
    pipe.sadd(keys.RUNS, run_id)
    pipe.delete(keys.run_files(run_id))
    pipe.hset(
        keys.run_files(run_id),
        mapping={
            f: orjson.dumps({"path": f, "episodes": list(eps)}) for f, eps in meta.files.items()
        },
    )
    pipe.execute()

    done = _finished_members(conn, run_id, meta, module_hashes)
    summary.already_done = len(done)

    # Rebuild the pending sets from scratch for this generation.
    pipe = conn.pipeline(transaction=False)
    for data_file, episodes in meta.files.items():
        members = [keys.member(m, e) for e in episodes for m in modules if (m, e) not in done]
        pipe.delete(keys.pending(run_id, data_file))
        if members:
            pipe.sadd(keys.pending(run_id, data_file), *members)
    pipe.execute()

    # Module-major: every plan job first (the longest chains: subtasks, then the memory chain,
    # then the episode's interjections), the vqa jobs (one step, all requests at once) last,
    # so the run ends on jobs that drain the fleet quickly (tests/bench/bench_saturation.py).
    todo = [(m, e) for m in modules for e in sorted(meta.episodes) if (m, e) not in done]
    enqueued, active = _enqueue_module_jobs(conn, run_id, todo, done, module_hashes, options)
    summary.enqueued, summary.already_active = enqueued, active

    for data_file in meta.files:
        if conn.scard(keys.pending(run_id, data_file)) == 0:
            summary.finalize_enqueued += int(enqueue_finalize(conn, run_id, data_file, generation))
    log.info(
        "run enqueued",
        run=run_id,
        generation=generation,
        jobs=total_jobs,
        enqueued=enqueued,
        done=len(done),
        active=active,
    )
    return summary


def _finished_members(
    conn: redis.Redis, run_id: str, meta: DatasetMeta, module_hashes: dict[str, str]
) -> set[tuple[str, int]]:
    pairs = [(m, e) for e in sorted(meta.episodes) for m in module_hashes]
    pipe = conn.pipeline(transaction=False)
    for m, e in pairs:
        pipe.hget(keys.result(run_id, m, e), "hash")
    found = pipe.execute()
    return {pair for pair, h in zip(pairs, found, strict=True) if text(h) == module_hashes[pair[0]]}


def _live_worker_names(conn: redis.Redis) -> set[str]:
    return {w.name for w in Worker.all(connection=conn)}


def _enqueue_module_jobs(
    conn: redis.Redis,
    run_id: str,
    todo: list[tuple[str, int]],
    done: set[tuple[str, int]],
    module_hashes: dict[str, str],
    options: JobOptions,
) -> tuple[int, int]:
    """Enqueue what is to do; an ``interjections`` job whose episode's plan is not done yet
    is left to that plan job, which enqueues it when it finishes (no rq dependencies)."""
    todo = [(m, e) for m, e in todo if m != "interjections" or ("plan", e) in done] + [
        (m, e) for m, e in todo if m == "interjections" and ("plan", e) not in done
    ]
    ids = [keys.job_id(run_id, m, e, module_hashes[m]) for m, e in todo]
    existing = Job.fetch_many(ids, connection=conn, serializer=JSONSerializer) if ids else []
    live_workers = _live_worker_names(conn) if ids else set()
    active = 0
    batch = []
    for (module, episode), job in zip(todo, existing, strict=True):
        if job is not None:
            status = job.get_status(refresh=False)
            orphan = status == JobStatus.STARTED and job.worker_name not in live_workers
            if status in ACTIVE_STATES and not orphan:
                active += 1
                continue
            job.delete(remove_from_queue=True)
        if module == "interjections" and ("plan", episode) not in done:
            continue  # the plan job enqueues it
        batch.append(module_job_data(run_id, module, episode, module_hashes[module], options))
    enqueue_module_jobs(conn, batch)
    return len(batch), active


def enqueue_finalize(conn: redis.Redis, run_id: str, data_file: str, generation: str) -> bool:
    """Enqueue the writer's finalize job for ``data_file`` once per generation."""
    if not conn.set(keys.finalize_claim(run_id, data_file, generation), b"1", nx=True):
        return False
    enqueue_finalize_job(conn, run_id, data_file, generation)
    return True
