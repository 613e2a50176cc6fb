"""Bring a registered run's jobs up to date from what Redis holds (used by the producer after
it records a run, and by ``narrator retry-failed``).

For every data file, one atomic script (:data:`~common.job_specs.REBUILD_PENDING_SCRIPT`)
reads the results of the file's members and rebuilds its pending set: a member is done when
its result has the run's module hash, no failed item, and every module it needs is done. So
failed items are never frozen as done, and a file with anything to do is finalized again.

Then every member to do gets its job (in :func:`enqueue_order`: dependency chains first,
long episodes first), unless rq still runs one of that id (queued, running
on a live worker, waiting for a retry); a leftover of an interrupted job is replaced (see
:mod:`common.rq_internals`). A member whose needed modules are not done is left to their
jobs: the last of them to publish enqueues it. Files whose pending set is empty and whose
shard is not staged in this generation get their finalize job.

Invariant: reads and writes Redis only (no dataset access), so it can run anywhere.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import redis

from narrator.common import keys
from narrator.common.job_specs import REBUILD_PENDING_SCRIPT, FinalizeJob, ModuleJob, on_chain
from narrator.common.logging import get_logger
from narrator.common.modules import MODULES, in_order, spec
from narrator.common.queueing import (
    enqueue_unless_live,
    finalize_job_data,
    module_job_data,
    module_queue,
    writer_queue,
)
from narrator.common.runs import RunRecord, text

log = get_logger(__name__)


@dataclass
class ScheduleOutcome:
    done: set[tuple[str, int]]
    enqueued: int
    already_active: int
    finalize_enqueued: int
    reopened_files: int


def file_members(
    episodes: Sequence[int], modules: Sequence[str]
) -> list[tuple[str, int, list[int]]]:
    """(module, episode, 1-based positions of the members it needs) for one file, each
    episode's members in dependency order (pure)."""
    out: list[tuple[str, int, list[int]]] = []
    for episode in episodes:
        position: dict[str, int] = {}
        for module in modules:
            needs = [position[n] for n in spec(module).needs if n in position]
            out.append((module, episode, needs))
            position[module] = len(out)
    return out


def rebuild_pending(
    conn: redis.Redis, run: RunRecord, files: Mapping[str, Sequence[int]]
) -> tuple[set[tuple[str, int]], int]:
    """Rebuild every file's pending set; (members done, files that have something to do)."""
    modules = in_order(run.module_hashes)
    script = conn.register_script(REBUILD_PENDING_SCRIPT)
    done: set[tuple[str, int]] = set()
    reopened = 0
    names = list(files)
    for start in range(0, len(names), 200):
        chunk = names[start : start + 200]
        with conn.pipeline(transaction=False) as pipe:
            for data_file in chunk:
                members = file_members(files[data_file], modules)
                script_keys = [
                    keys.pending(run.run_id, data_file),
                    keys.staged_files(run.run_id),
                    keys.finalize_claims(run.run_id),
                    *(keys.result(run.run_id, m, e) for m, e, _ in members),
                ]
                args: list[str] = [data_file]
                for m, e, needs in members:
                    args += [keys.member(m, e), run.module_hashes[m], ",".join(map(str, needs))]
                script(keys=script_keys, args=args, client=pipe)
            replies = pipe.execute()
        for data_file, finished in zip(chunk, replies, strict=True):
            for raw in finished:
                module, _, episode = (text(raw) or "").partition(":")
                done.add((module, int(episode)))
            if len(finished) < len(files[data_file]) * len(modules):
                reopened += 1
    return done, reopened


def enqueue_order(
    jobs: Sequence[ModuleJob], lengths: Mapping[int, int] | None = None
) -> list[ModuleJob]:
    """The order module jobs go into the queue (pure): jobs on a dependency chain first (plan:
    subtasks, the memory chain, then the episode's interjections), independent ones (vqa: all
    of an episode's requests at once) last, so the run ends on jobs that drain the fleet
    quickly; within each, longer episodes first (their chains are longer: longest first is
    what keeps the last chain from finishing long after the others), then by module and
    episode."""
    sizes = lengths or {}
    rank = {m: i for i, m in enumerate(MODULES)}
    return sorted(
        jobs,
        key=lambda j: (not on_chain(j.module), -sizes.get(j.episode, 0), rank[j.module], j.episode),
    )


def schedule_run(
    conn: redis.Redis,
    run: RunRecord,
    files: Mapping[str, Sequence[int]],
    lengths: Mapping[int, int] | None = None,
) -> ScheduleOutcome:
    """Rebuild the pending sets and enqueue what is to do (see the module doc); ``lengths``
    (episode -> frames), when known, puts long episodes first (:func:`enqueue_order`)."""
    done, reopened = rebuild_pending(conn, run, files)
    if reopened and text(conn.get(keys.committed(run.run_id))) == run.generation:
        # A committed generation with failed items asked again: it is committed anew.
        conn.delete(keys.committed(run.run_id))
    modules = in_order(run.module_hashes)
    episodes = sorted(e for eps in files.values() for e in eps)
    todo = enqueue_order(
        [
            ModuleJob(run.run_id, m, e, run.module_hashes[m])
            for m in modules
            for e in episodes
            if (m, e) not in done and all((n, e) in done for n in spec(m).needs)
        ],
        lengths,
    )
    options = run.job_options
    outcome = enqueue_unless_live(
        conn, module_queue(conn), [module_job_data(job, options) for job in todo]
    )
    staged = {
        text(k) or "": text(v) for k, v in conn.hgetall(keys.staged_files(run.run_id)).items()
    }
    with conn.pipeline(transaction=False) as pipe:
        for data_file in files:
            pipe.scard(keys.pending(run.run_id, data_file))
        sizes = pipe.execute()
    ready = [
        f
        for f, size in zip(files, sizes, strict=True)
        if size == 0 and staged.get(f) != run.generation
    ]
    if ready:
        conn.hset(keys.finalize_claims(run.run_id), mapping=dict.fromkeys(ready, run.generation))
    finalize = enqueue_unless_live(
        conn,
        writer_queue(conn),
        [finalize_job_data(FinalizeJob(run.run_id, f, run.generation)) for f in ready],
    ).enqueued
    log.info(
        "run_scheduled",
        run=run.run_id,
        generation=run.generation,
        done=len(done),
        enqueued=outcome.enqueued,
        active=outcome.live,
        finalize=finalize,
        reopened_files=reopened,
    )
    return ScheduleOutcome(done, outcome.enqueued, outcome.live, finalize, reopened)
