"""Register a run and enqueue its jobs with rq (JSON serializer, deterministic job ids).

Resuming is the normal case: results already staged with the current module hash and no
failed item are not recomputed, jobs rq still runs are left alone, failed ones, leftovers of
interrupted ones and members with failed items are enqueued again (see
:mod:`producer.schedule`). Files whose every job is done get their finalize job at once.

Invariants:
* One job per (episode, module). A module that needs another (the job graph of
  :mod:`common.modules`: interjections need the plan) is enqueued by the job of what it needs
  when that is not done yet (no rq dependencies at all).
* Each data file has a pending set of ``module:episode`` members; the finalize job of a file
  is enqueued by whoever empties it (the publish script's claim) or by the producer when it
  is empty already.
* Returning to a generation that was enqueued before starts its file bookkeeping afresh
  (staged marks and finalize claims are per generation of the run and reset on every change
  of generation), so it is finalized and committed again.
* Jobs name a run id only; paths come from the run record.
* ``only_episodes`` (``--only-episodes``) restricts the jobs to those episodes and the files
  to those that hold one (plus files still without language columns, see
  :mod:`producer.selection`); the selection is part of the generation and of the run record.
* Enqueueing a generation removes the staged shards of the run's superseded generations
  (:func:`common.state_dir.prune_superseded_stages`; best effort, a read-only view of the
  dataset leaves them to the writer, which prunes on commit).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import redis

from narrator.common import keys
from narrator.common.cameras import check_camera_settings
from narrator.common.config import AnnotationSettings, format_episode_ranges
from narrator.common.dataset.meta import DatasetMeta
from narrator.common.dataset.reader import check_language_columns, load_dataset_meta
from narrator.common.failed_items import read_tallies, record_hold
from narrator.common.job_specs import CommitPolicy, JobOptions
from narrator.common.logging import get_logger
from narrator.common.prompts import PromptSet
from narrator.common.runs import (
    RunRecord,
    compute_module_hashes,
    compute_run_id,
    default_state_dir,
    generation_of,
    text,
)
from narrator.common.state_dir import check_dataset_writable, prune_superseded_stages
from narrator.producer.schedule import schedule_run
from narrator.producer.selection import run_files

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
    policy: CommitPolicy | None = None,
    only_episodes: frozenset[int] | None = None,
) -> EnqueueSummary:
    options = options or JobOptions()
    root = Path(root).resolve()
    meta = meta or load_dataset_meta(root)
    check_language_columns(meta)
    staging_dir = Path(staging_dir or default_state_dir(root) / "staging")
    # What this process can see: the producer's view of the dataset is often read-only (the
    # writer, another process, writes it), so only the filesystem rule is checked here.
    check_dataset_writable(meta, staging_dir, probe_writes=False)
    check_camera_settings(settings, meta.cameras)
    files = run_files(meta, only_episodes)
    selection = format_episode_ranges(sorted(only_episodes)) if only_episodes else ()
    episodes = sorted(e for eps in files.values() for e in eps)
    run_id = compute_run_id(root, meta.fingerprint())
    module_hashes = compute_module_hashes(settings, prompts, model)
    generation = generation_of(module_hashes, selection)
    total_jobs = len(episodes) * len(module_hashes)
    summary = EnqueueSummary(run_id, generation, total_jobs, files=len(files))

    created_at, previous_generation = conn.hmget(keys.run(run_id), ["created_at", "generation"])
    record = RunRecord(
        run_id=run_id,
        root=root,
        fingerprint=meta.fingerprint(),
        model=model,
        settings=settings,
        prompts=prompts,
        module_hashes=module_hashes,
        generation=generation,
        staging_dir=staging_dir,
        total_files=len(files),
        total_episodes=len(episodes),
        total_jobs=total_jobs,
        job_options=options,
        commit_policy=policy or CommitPolicy(),
        created_at=float(created_at) if created_at else time.time(),
        selection=selection,
    )
    pipe = conn.pipeline(transaction=True)
    pipe.hset(keys.run(run_id), mapping=record.to_redis())
    pipe.sadd(keys.RUNS, run_id)
    pipe.delete(keys.run_files(run_id))
    pipe.hset(
        keys.run_files(run_id),
        mapping={f: orjson.dumps({"path": f, "episodes": list(eps)}) for f, eps in files.items()},
    )
    if text(previous_generation) != generation:
        # Another generation's bookkeeping (which shards are staged, which finalize jobs were
        # claimed) says nothing about this one, even if this one ran before: start afresh.
        pipe.delete(keys.staged_files(run_id), keys.finalize_claims(run_id))
    pipe.execute()
    record_hold(conn, run_id, None)
    # Superseded generations' staged shards (their staged_files entries went above).
    prune_superseded_stages(record.staging_dir, run_id, generation)
    # The record always describes the latest command (status, the dataset card), even when
    # that command asks for a generation that is committed already.
    if text(conn.get(keys.committed(run_id))) == generation and not any(
        t.failed for t in read_tallies(conn, run_id, module_hashes, only_episodes)
    ):
        summary.complete = True
        summary.already_done = total_jobs
        return summary

    lengths = {e: ep.length for e, ep in meta.episodes.items()}
    outcome = schedule_run(conn, record, files, lengths)
    summary.already_done = len(outcome.done)
    summary.enqueued = outcome.enqueued
    summary.already_active = outcome.already_active
    summary.finalize_enqueued = outcome.finalize_enqueued
    log.info(
        "run_enqueued",
        run=run_id,
        generation=generation,
        jobs=total_jobs,
        only_episodes=",".join(selection) or None,
        enqueued=outcome.enqueued,
        done=len(outcome.done),
        active=outcome.already_active,
    )
    return summary
