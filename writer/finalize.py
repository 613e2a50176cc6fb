"""The writer's rq job: validate a data file's staged rows and stage its rewritten shard.

``finalize_file(run_id, data_file, generation)`` runs when every job of the file's episodes
is done. It reads the staged module results, places each row on its frame with the
timestamp copied from the shard's ``timestamp`` column, validates every episode (SPEC
section 4), and writes the new shard into the run's staging directory. When the last file of
the run is staged it commits the run (see :mod:`writer.commit`).

Invariants:
* A shard with a contract error is not written; the errors are stored for ``narrator
  status`` and the job fails without retry.
* The file must be one the run registered: a payload naming another path is refused.
* Running the job twice produces identical bytes.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson
import redis
from rq import get_current_job

from narrator.common import keys
from narrator.common.contract import LanguageRow, sort_events, sort_persistent
from narrator.common.dataset.language import EpisodeLanguage, read_file_language
from narrator.common.dataset.reader import (
    DatasetMeta,
    EpisodeFrames,
    load_dataset_meta,
    read_file_frames,
)
from narrator.common.errors import ContractError, PermanentError, SecurityError, TransientError
from narrator.common.failed_items import commit_hold, read_tallies, record_hold
from narrator.common.logging import get_logger
from narrator.common.metrics import SHARD_WRITE_SECONDS, SHARDS_WRITTEN, VALIDATION_ERRORS
from narrator.common.runs import RunRecord, load_run, load_run_files, text
from narrator.common.staging import ModuleResult, StagedRow
from narrator.common.validation import Finding, validate_episode
from narrator.writer.cleanup import forget_finished_jobs
from narrator.writer.commit import commit, resume_commits, stage_dir
from narrator.writer.merge import kept_rows, yield_to_interjections
from narrator.writer.shard import EpisodeRange, language_columns, write_language_shard

log = get_logger(__name__)

_meta_cache: dict[tuple[str, str], DatasetMeta] = {}
_meta_lock = threading.Lock()


def _connection() -> redis.Redis:
    job = get_current_job()
    if job is None:
        raise RuntimeError("finalize_file must run inside an rq job")
    return job.connection


def _meta(run: RunRecord) -> DatasetMeta:
    key = (str(run.root), run.fingerprint)
    with _meta_lock:
        if key not in _meta_cache:
            meta = load_dataset_meta(run.root)
            if meta.fingerprint() != run.fingerprint:
                raise PermanentError(
                    f"the dataset at {run.root} changed since run {run.run_id} was enqueued; "
                    "enqueue it again"
                )
            _meta_cache[key] = meta
        return _meta_cache[key]


def finalize_file(run_id: str, data_file: str, generation: str) -> dict[str, Any]:
    conn = _connection()
    run = load_run(conn, run_id)
    if run.generation != generation:
        log.info("finalize_superseded", run=run_id, file=data_file)
        return {"stale": True}
    files = load_run_files(conn, run_id)
    if data_file not in files:
        raise SecurityError(f"run {run_id} has no data file {data_file!r}; refusing to touch it")
    started = time.monotonic()
    meta = _meta(run)
    episodes = files[data_file]
    results = _load_results(conn, run, episodes)
    frames = read_file_frames(meta, data_file)
    existing = (
        read_file_language(meta, data_file) if meta.language_columns_state == "current" else {}
    )
    persistent, events, findings = assemble_file(
        run, meta, episodes, frames, results, existing=existing
    )
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
    write_language_shard(run.root / data_file, stage / data_file, columns)
    SHARDS_WRITTEN.inc()
    SHARD_WRITE_SECONDS.observe(time.monotonic() - started)
    conn.hset(keys.staged_files(run_id), data_file, generation)
    log.info("shard_staged", run=run_id, file=data_file, rows=n_rows, warnings=len(findings))
    maybe_commit(conn, run)
    return {"file": data_file, "rows": n_rows, "warnings": len(findings)}


def maybe_commit(conn: redis.Redis, run: RunRecord) -> bool:
    """Commit the run if every file is staged in the current generation."""
    with conn.lock(f"{keys.run(run.run_id)}:commit-lock", timeout=600, blocking_timeout=600):
        if text(conn.get(keys.committed(run.run_id))) == run.generation:
            return False
        staged = {
            (text(k) or ""): text(v) for k, v in conn.hgetall(keys.staged_files(run.run_id)).items()
        }
        files = load_run_files(conn, run.run_id)
        if any(staged.get(f) != run.generation for f in files):
            return False
        hold = commit_hold(read_tallies(conn, run.run_id, run.module_hashes), run.commit_policy)
        record_hold(conn, run.run_id, hold)
        if hold is not None:
            log.warning("commit_held", run=run.run_id, reason=hold)
            return False
        commit(run.root, stage_dir(run.staging_dir, run.run_id, run.generation), list(files))
        conn.set(keys.committed(run.run_id), run.generation)
        conn.hset(keys.run(run.run_id), "committed_at", repr(time.time()))
    # Outside the lock: the commit is done; this only frees Redis memory (best effort).
    forget_finished_jobs(conn, run, files)
    return True


def resume_interrupted(conn: redis.Redis, run: RunRecord) -> bool:
    """At writer start: finish a commit that a crash interrupted."""
    if resume_commits(run.root, run.staging_dir, run.run_id):
        conn.set(keys.committed(run.run_id), run.generation)
        return True
    return maybe_commit(conn, run) if _all_staged(conn, run) else False


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


def _to_row(row: StagedRow, timestamp: float | None) -> LanguageRow:
    calls = (
        tuple(orjson.dumps(c).decode() for c in row.tool_calls)
        if row.tool_calls is not None
        else None
    )
    return LanguageRow(
        role=row.role,
        content=row.content,
        style=row.style,
        timestamp=timestamp,
        camera=row.camera,
        tool_calls=calls,
    )


def assemble_file(
    run: RunRecord,
    meta: DatasetMeta,
    episodes: list[int],
    frames: dict[int, EpisodeFrames],
    results: dict[tuple[str, int], ModuleResult],
    existing: Mapping[int, EpisodeLanguage] | None = None,
) -> tuple[dict[int, list[LanguageRow]], dict[int, dict[int, list[LanguageRow]]], list[Finding]]:
    """Place staged rows on frames with the shard's timestamps, add the existing rows the run
    does not own (see :mod:`writer.merge`), sort, and validate."""
    cameras = {c.key for c in meta.cameras}
    persistent: dict[int, list[LanguageRow]] = {}
    events: dict[int, dict[int, list[LanguageRow]]] = {}
    findings: list[Finding] = []
    for ep in episodes:
        ts = frames[ep].timestamp
        p_rows: list[LanguageRow] = []
        e_rows: dict[int, list[LanguageRow]] = defaultdict(list)
        old = (existing or {}).get(ep)
        if old is not None and len(old.timestamps) == len(ts):
            keep_p, keep_e = kept_rows(
                old.persistent, old.events_by_frame, [float(t) for t in ts], run.module_hashes
            )
            p_rows.extend(keep_p)
            for frame, rows in keep_e.items():
                e_rows[frame].extend(rows)
        interjection_frames = {
            row.frame
            for module in run.module_hashes
            for row in results[(module, ep)].rows
            if row.style == "interjection"
        }
        interjection_frames |= {
            f for f, rows in e_rows.items() if any(r.style == "interjection" for r in rows)
        }
        for module in run.module_hashes:
            staged = results[(module, ep)].rows
            if module == "plan":
                staged = yield_to_interjections(staged, interjection_frames)
            for row in staged:
                if not 0 <= row.frame < len(ts):
                    raise ContractError(f"episode {ep}: {module} row on missing frame {row.frame}")
                if row.column == "persistent":
                    p_rows.append(_to_row(row, float(ts[row.frame])))
                else:
                    e_rows[row.frame].append(_to_row(row, None))
        vqa_types: dict[tuple[int, str], str] = {}
        if ("vqa", ep) in results:
            for asked in results[("vqa", ep)].extra.get("question_types", []):
                vqa_types[(int(asked["frame"]), str(asked["camera"]))] = str(asked["type"])
        persistent[ep] = sort_persistent(p_rows)
        events[ep] = {f: sort_events(rows) for f, rows in sorted(e_rows.items())}
        findings += validate_episode(
            episode=ep,
            frame_timestamps=[float(t) for t in ts],
            persistent=persistent[ep],
            events_by_frame=events[ep],
            cameras=cameras,
            vqa_types=vqa_types or None,
            plans=run.settings.plan.emit_plan,
        )
    return persistent, events, findings


def writer_data_root(run: RunRecord) -> Path:
    return run.root
