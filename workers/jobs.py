"""The rq job functions of the worker role (async; run by :class:`workers.runtime.NarratorJob`).

``run_module(run_id, module, episode, module_hash)`` annotates one episode with one module
and publishes the result. Publishing is one Lua script: store the result, remove the
``module:episode`` member from its data file's pending set, add counters and failure records
(first publish only), and claim the file's finalize job if the set became empty. The claimer
enqueues the finalize job on the writer's queue.

Invariants:
* A job whose ``module_hash`` is no longer the run's (settings or prompts changed since it
  was enqueued) does nothing: the producer enqueued its replacement.
* The dataset root comes from the run record; the payload cannot name a path.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import orjson
import structlog
from rq import get_current_job
from rq.job import Job
from rq.serializers import JSONSerializer

from narrator.common import keys
from narrator.common.dataset.reader import read_episode_frames
from narrator.common.errors import ContractError, PermanentError, TransientError
from narrator.common.logging import get_logger
from narrator.common.metrics import EPISODES_DONE, ITEM_FAILURES, JOBS_FAILED
from narrator.common.queueing import (
    ACTIVE_STATES,
    JobOptions,
    enqueue_finalize_job,
    enqueue_module_jobs,
    module_job_data,
)
from narrator.common.runs import RunRecord, load_run_async, text
from narrator.common.staging import ModuleResult, check_module_rows
from narrator.workers.frame_source import EpisodeFrameSource
from narrator.workers.modules.base import EpisodeContext, ModuleOutput, ModuleRunner
from narrator.workers.modules.interjections import run_interjections
from narrator.workers.modules.plan import run_plan
from narrator.workers.modules.vqa import run_vqa
from narrator.workers.runtime import current
from narrator.workers.vlm_client import count_into

log = get_logger(__name__)

RUNNERS: dict[str, ModuleRunner] = {
    "plan": run_plan,
    "interjections": run_interjections,
    "vqa": run_vqa,
}

PUBLISH_SCRIPT = """
redis.call('HSET', KEYS[1], 'hash', ARGV[1], 'data', ARGV[2])
local removed = redis.call('SREM', KEYS[2], ARGV[3])
if removed == 1 then
  local n = tonumber(ARGV[4])
  for i = 0, n - 1 do
    redis.call('HINCRBY', KEYS[4], ARGV[5 + 2 * i], ARGV[6 + 2 * i])
  end
  for i = 5 + 2 * n, #ARGV do
    redis.call('RPUSH', KEYS[5], ARGV[i])
  end
end
if redis.call('SCARD', KEYS[2]) == 0 then
  if redis.call('SET', KEYS[3], '1', 'NX') then
    return 1
  end
end
return 0
"""


class StaleJobError(PermanentError):
    pass


async def run_module(run_id: str, module: str, episode: int, module_hash: str) -> dict[str, Any]:
    job = get_current_job()
    structlog.contextvars.bind_contextvars(
        run=run_id, module=module, episode=episode, job=job.id if job else None
    )
    rt = current()
    started = time.monotonic()
    try:
        run = await load_run_async(rt.aredis, run_id)
        if run.module_hashes.get(module) != module_hash:
            log.info("job superseded by a newer generation; nothing to do")
            return {"stale": True}
        result = await _annotate(run, module, episode, module_hash)
        claimed = await _publish(run, result)
    except Exception as exc:
        kind = "transient" if isinstance(exc, TransientError) else type(exc).__name__
        JOBS_FAILED.labels(module=module, kind=kind).inc()
        log.warning("job failed", error=str(exc), kind=type(exc).__name__)
        raise
    EPISODES_DONE.labels(module=module).inc()
    for failure in result.failures:
        ITEM_FAILURES.labels(module=module, kind=failure.kind).inc()
    if module == "plan" and "interjections" in run.module_hashes:
        await asyncio.to_thread(_enqueue_interjections, run, episode)
    if claimed:
        data_file = run_file_of(run, episode, rt.dataset_meta(run.root, run.fingerprint))
        await asyncio.to_thread(_enqueue_finalize, run_id, data_file, run.generation)
    log.info(
        "job done",
        rows=len(result.rows),
        failures=len(result.failures),
        seconds=round(time.monotonic() - started, 3),
    )
    return {"rows": len(result.rows), "failures": len(result.failures)}


def run_file_of(run: RunRecord, episode: int, meta: Any) -> str:
    return str(meta.episodes[episode].data_file)


async def _annotate(run: RunRecord, module: str, episode: int, module_hash: str) -> ModuleResult:
    rt = current()
    meta = await asyncio.to_thread(rt.dataset_meta, run.root, run.fingerprint)
    if meta.fingerprint() != run.fingerprint:
        raise PermanentError(
            f"the dataset at {run.root} changed since run {run.run_id} was enqueued; "
            "enqueue it again"
        )
    if episode not in meta.episodes:
        raise PermanentError(f"episode {episode} is not in the dataset at {run.root}")
    ep = meta.episodes[episode]
    frames = await asyncio.to_thread(read_episode_frames, meta, episode)
    upstream: dict[str, ModuleResult] = {}
    if module == "interjections":
        upstream["plan"] = await _load_result(run, "plan", episode)
    task = ep.tasks[0] if ep.tasks else meta.tasks.get(int(frames.task_index[0]), "")
    ctx = EpisodeContext(
        run_id=run.run_id,
        episode=ep,
        frames=frames,
        task=task,
        fps=meta.fps,
        # Image cameras always; video cameras the episodes table gives this episode a span of.
        cameras=tuple(c for c in meta.cameras if c.dtype == "image" or c.key in ep.videos),
        settings=run.settings,
        prompts=run.prompts,
        model=run.model,
        frame_source=EpisodeFrameSource(meta, ep, frames, run.settings.frames, rt.frame_pool),
        upstream=upstream,
    )
    with count_into(Counter()) as counts:
        output: ModuleOutput = await RUNNERS[module](ctx, rt.client)
    check_module_rows(module, output.rows)
    _check_frames(output, ctx.length, module)
    return ModuleResult(
        module=module,
        episode=episode,
        module_hash=module_hash,
        rows=output.rows,
        failures=output.failures,
        counts={k: v for k, v in counts.items() if v},
        extra=output.extra,
        prompt_hashes=run.prompts.module_prompt_hashes(module),
    )


def _check_frames(output: ModuleOutput, length: int, module: str) -> None:
    for row in output.rows:
        if not 0 <= row.frame < length:
            raise ContractError(
                f"module {module} placed a row on frame {row.frame}, outside 0..{length - 1}"
            )


async def _load_result(run: RunRecord, module: str, episode: int) -> ModuleResult:
    rt = current()
    raw = await rt.aredis.hmget(keys.result(run.run_id, module, episode), ["hash", "data"])
    if text(raw[0]) != run.module_hashes[module] or raw[1] is None:
        raise TransientError(f"the {module} result of episode {episode} is not staged yet")
    return ModuleResult.decode(raw[1])


async def _publish(run: RunRecord, result: ModuleResult) -> bool:
    rt = current()
    meta = rt.dataset_meta(run.root, run.fingerprint)
    data_file = run_file_of(run, result.episode, meta)
    counters = sorted(result.counts.items())
    args: list[Any] = [
        result.module_hash,
        result.encode(),
        keys.member(result.module, result.episode),
        len(counters),
    ]
    for name, value in counters:
        args += [name, value]
    args += [orjson.dumps(f) for f in result.failures]
    claimed = await rt.aredis.eval(
        PUBLISH_SCRIPT,
        5,
        keys.result(run.run_id, result.module, result.episode),
        keys.pending(run.run_id, data_file),
        keys.finalize_claim(run.run_id, data_file, run.generation),
        keys.stats(run.run_id),
        keys.failures(run.run_id),
        *args,
    )
    return bool(claimed)


def _enqueue_interjections(run: RunRecord, episode: int) -> None:
    """The plan is staged: the episode's interjections job can run now."""
    conn = current().sync_redis
    module_hash = run.module_hashes["interjections"]
    job_id = keys.job_id(run.run_id, "interjections", episode, module_hash)
    if text(conn.hget(keys.result(run.run_id, "interjections", episode), "hash")) == module_hash:
        return
    existing = Job.fetch_many([job_id], connection=conn, serializer=JSONSerializer)[0]
    if existing is not None:
        if existing.get_status(refresh=False) in ACTIVE_STATES:
            return
        existing.delete(remove_from_queue=True)
    options = JobOptions(job_timeout_s=run.job_timeout_s, job_retries=run.job_retries)
    # At the front: it runs next, so the file's shard is not held back until the queue of
    # the whole run has drained, and the run does not end on a tail of low-fan-out jobs.
    job = module_job_data(run.run_id, "interjections", episode, module_hash, options, at_front=True)
    enqueue_module_jobs(conn, [job])


def _enqueue_finalize(run_id: str, data_file: str, generation: str) -> None:
    enqueue_finalize_job(current().sync_redis, run_id, data_file, generation)
