"""Forget a committed run's finished rq jobs, so Redis does not keep them for rq's result TTL.

Once a run is committed nothing reads its finished jobs: progress comes from the pending sets
and the staged results, failures from the FailedJobRegistry. rq would keep each finished
job's hash and result stream for ``result_ttl`` (an hour), about 20 KB per episode (three
module jobs) - three quarters of what a finished run holds in Redis.

Invariants:
* Only jobs of this run in the FINISHED state are deleted (module jobs of the run's current
  module hashes, finalize jobs of its generation). Queued, running, scheduled and failed jobs
  stay (``narrator retry-failed`` needs the failed ones).
* The run record, its counters, failure records and staged results stay: the staged results
  are the resume cache (a re-run with a changed prompt recomputes only that module).
* Best effort: a Redis error is logged, never raised; the commit it follows is already done,
  and what is left expires with rq's result TTL anyway.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import redis
from rq.job import JobStatus

from narrator.common import keys
from narrator.common.logging import get_logger
from narrator.common.rq_internals import fetch_jobs
from narrator.common.runs import RunRecord

log = get_logger(__name__)

BATCH = 1000


def run_job_ids(run: RunRecord, files: Mapping[str, Sequence[int]]) -> list[str]:
    """Ids of every module job and finalize job of ``run``'s current generation (pure)."""
    ids = [
        keys.job_id(run.run_id, module, episode, module_hash)
        for episodes in files.values()
        for episode in episodes
        for module, module_hash in run.module_hashes.items()
    ]
    ids += [keys.finalize_job_id(run.run_id, f, run.generation) for f in files]
    return ids


def forget_finished_jobs(
    conn: redis.Redis, run: RunRecord, files: Mapping[str, Sequence[int]]
) -> int:
    """Delete the run's finished jobs (hash, result stream, registry entry); how many."""
    ids = run_job_ids(run, files)
    forgotten = 0
    try:
        for start in range(0, len(ids), BATCH):
            jobs = fetch_jobs(conn, ids[start : start + BATCH])
            with conn.pipeline(transaction=False) as pipe:
                for job in jobs:
                    if job is not None and job.get_status(refresh=False) == JobStatus.FINISHED:
                        job.delete(pipeline=pipe, remove_from_queue=False)
                        forgotten += 1
                pipe.execute()
    except redis.RedisError as exc:
        log.warning("finished_jobs_forget_failed", run=run.run_id, error=str(exc))
    else:
        log.info("finished_jobs_forgotten", run=run.run_id, jobs=forgotten)
    return forgotten
