"""The writer's rq job: validate a data file's staged rows and stage its rewritten shard.

``finalize_file(ctx, run_id, data_file, generation)`` runs when every job of the file's
episodes is done; ``ctx`` is the writer process's :class:`~writer.context.WriterContext`. It
reads the staged module results, assembles and validates the file's rows
(:mod:`writer.assemble`), keeping the rows the shard already holds that the run does not own,
and writes the new shard into the run's staging directory. When the last file of the run is
staged it commits the run (:mod:`writer.commit`), drops the dataset's cached metadata and
prunes the stages of superseded generations.

Invariants:
* A shard with a contract error is not written; the errors are stored for ``narrator
  status`` and the job fails without retry.
* The file must be one the run registered: a payload naming another path is refused.
* Which rows a shard already holds is read from the shard itself, every time: a shard
  without language columns (never annotated, or only some shards were) holds none.
* Running the job twice produces identical bytes.
* A commit never swaps in fewer shards than the run has: a staged shard that went missing
  is finalized again first.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson
import redis

from narrator.common import keys
from narrator.common.dataset.frame_sizes import FrameSizeProbe
from narrator.common.dataset.language import read_file_language
from narrator.common.dataset.reader import read_file_frames
from narrator.common.errors import ContractError, SecurityError, TransientError
from narrator.common.failed_items import commit_hold, read_tallies, record_hold
from narrator.common.logging import get_logger
from narrator.common.metrics import SHARD_WRITE_SECONDS, SHARDS_WRITTEN, VALIDATION_ERRORS
from narrator.common.queueing import enqueue_finalize_job
from narrator.common.runs import RunRecord, load_run, load_run_files, text
from narrator.common.staging import ModuleResult
from narrator.common.state_dir import (
    JOURNAL,
    check_dataset_writable,
    prune_superseded_stages,
    stage_dir,
)
from narrator.writer.assemble import assemble_file
from narrator.writer.cleanup import forget_finished_jobs
from narrator.writer.commit import commit, resume_commits
from narrator.writer.context import WriterContext
from narrator.writer.merge import untouched_episodes
from narrator.writer.shard import EpisodeRange, language_columns, write_language_shard

log = get_logger(__name__)


def finalize_file(
    ctx: WriterContext, run_id: str, data_file: str, generation: str
) -> dict[str, Any]:
    conn = ctx.conn
    run = load_run(conn, run_id)
    if run.generation != generation:
        log.info("finalize_superseded", run=run_id, file=data_file)
        return {"stale": True}
    files = load_run_files(conn, run_id)
    if data_file not in files:
        raise SecurityError(f"run {run_id} has no data file {data_file!r}; refusing to touch it")
    started = time.monotonic()
    meta = ctx.datasets.meta(run)
    if (run_id, generation) not in ctx.checked:
        check_dataset_writable(meta, run.staging_dir)
        ctx.checked.add((run_id, generation))
    episodes = files[data_file]
    results = _load_results(conn, run, episodes)
    frames = read_file_frames(meta, data_file)
    existing = read_file_language(meta, data_file, absent_ok=True)
    probe = FrameSizeProbe(meta)
    for message in probe.mismatches(episodes):
        log.warning("frame_size_mismatch", run=run_id, file=data_file, problem=message)
    persistent, events, findings = assemble_file(
        list(run.module_hashes),
        [c.key for c in meta.cameras],
        episodes,
        frames,
        results,
        existing=existing,
        frame_sizes={e: probe.sizes(e) for e in episodes},
        plans=run.settings.plan.emit_plan,
    )
    # An --only-episodes run: the file's other episodes are written back as they were.
    kept_persistent, kept_events = untouched_episodes(existing, list(frames), episodes)
    persistent.update(kept_persistent)
    events.update(kept_events)
    errors = [f for f in findings if f.severity == "error"]
    if errors:
        for f in errors:
            VALIDATION_ERRORS.labels(rule=f.rule).inc()
        conn.hset(
            keys.writer_errors(run_id),
            data_file,
            orjson.dumps([f.__dict__ for f in errors[:200]]),
        )
        raise ContractError(
            f"{data_file}: {len(errors)} contract error(s), shard not written; first: "
            f"episode {errors[0].episode} {errors[0].rule}: {errors[0].message}"
        )
    conn.hdel(keys.writer_errors(run_id), data_file)
    n_rows = sum(len(f.timestamp) for f in frames.values())
    ranges = [EpisodeRange(e, f.row_start, len(f.timestamp)) for e, f in frames.items()]
    columns = language_columns(n_rows, ranges, persistent, events)
    stage = stage_dir(run.staging_dir, run_id, generation)
    try:
        write_language_shard(run.root / data_file, stage / data_file, columns)
    except OSError:
        # A new generation was enqueued meanwhile and its producer pruned this stage.
        if load_run(conn, run_id).generation != generation:
            log.info("finalize_superseded_while_writing", run=run_id, file=data_file)
            return {"stale": True}
        raise
    SHARDS_WRITTEN.inc()
    SHARD_WRITE_SECONDS.observe(time.monotonic() - started)
    conn.hset(keys.staged_files(run_id), data_file, generation)
    log.info("shard_staged", run=run_id, file=data_file, rows=n_rows, warnings=len(findings))
    maybe_commit(ctx, run)
    return {"file": data_file, "rows": n_rows, "warnings": len(findings)}


def maybe_commit(ctx: WriterContext, run: RunRecord) -> bool:
    """Commit the run if every file is staged in the current generation."""
    conn = ctx.conn
    with conn.lock(f"{keys.run(run.run_id)}:commit-lock", timeout=600, blocking_timeout=600):
        if text(conn.get(keys.committed(run.run_id))) == run.generation:
            return False
        staged = {
            (text(k) or ""): text(v) for k, v in conn.hgetall(keys.staged_files(run.run_id)).items()
        }
        files = load_run_files(conn, run.run_id)
        if any(staged.get(f) != run.generation for f in files):
            return False
        tallies = read_tallies(conn, run.run_id, run.module_hashes, run.selected_episodes())
        hold = commit_hold(tallies, run.commit_policy)
        record_hold(conn, run.run_id, hold)
        if hold is not None:
            log.warning("commit_held", run=run.run_id, reason=hold)
            return False
        stage = stage_dir(run.staging_dir, run.run_id, run.generation)
        if _refinalize_missing(conn, run, stage, list(files)):
            return False
        commit(run.root, stage, list(files))
        conn.set(keys.committed(run.run_id), run.generation)
        conn.hset(keys.run(run.run_id), "committed_at", repr(time.time()))
    # Outside the lock: the commit is done; what follows frees memory and disk (best effort).
    ctx.datasets.invalidate(run.root)
    prune_superseded_stages(run.staging_dir, run.run_id, run.generation)
    forget_finished_jobs(conn, run, files)
    return True


def _refinalize_missing(conn: redis.Redis, run: RunRecord, stage: Path, files: list[str]) -> bool:
    """Before a first commit attempt: files recorded as staged whose shard is not in the stage
    (it was pruned, or the disk lost it) are finalized again; True if there were any."""
    if (stage / JOURNAL).exists():
        return False  # an interrupted commit: the shards may be in the dataset already
    missing = [f for f in files if not (stage / f).exists()]
    for data_file in missing:
        log.warning("staged_shard_missing", run=run.run_id, file=data_file)
        conn.hdel(keys.staged_files(run.run_id), data_file)
        conn.hset(keys.finalize_claims(run.run_id), data_file, run.generation)
        enqueue_finalize_job(conn, run.run_id, data_file, run.generation)
    return bool(missing)


def resume_interrupted(ctx: WriterContext, run: RunRecord) -> bool:
    """At writer start: finish a commit that a crash interrupted."""
    if resume_commits(run.root, run.staging_dir, run.run_id):
        ctx.conn.set(keys.committed(run.run_id), run.generation)
        ctx.datasets.invalidate(run.root)
        return True
    return maybe_commit(ctx, run) if _all_staged(ctx.conn, run) else False


def _all_staged(conn: redis.Redis, run: RunRecord) -> bool:
    staged = conn.hgetall(keys.staged_files(run.run_id))
    return len(staged) >= run.total_files and all(
        text(v) == run.generation for v in staged.values()
    )


def _load_results(
    conn: redis.Redis, run: RunRecord, episodes: list[int]
) -> dict[tuple[str, int], ModuleResult]:
    pairs = [(m, e) for e in episodes for m in run.module_hashes]
    pipe = conn.pipeline(transaction=False)
    for m, e in pairs:
        pipe.hmget(keys.result(run.run_id, m, e), ["hash", "data"])
    out: dict[tuple[str, int], ModuleResult] = {}
    for (m, e), (h, data) in zip(pairs, pipe.execute(), strict=True):
        if data is None or text(h) != run.module_hashes[m]:
            raise TransientError(f"the {m} result of episode {e} is not staged yet")
        out[(m, e)] = ModuleResult.decode(data)
    return out
