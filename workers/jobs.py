"""The job function of the worker role: annotate one episode with one module, then publish.

``run_module(ctx, run_id, module, episode, module_hash)`` is what rq runs (named by dotted
path, :data:`~common.job_specs.MODULE_JOB`); ``ctx`` is the process's
:class:`~workers.context.WorkerContext`, so the function is a plain async function that a
test calls with a context of its own.

Flow: load the run record; a job whose ``module_hash`` is no longer the run's does nothing
(the producer enqueued its replacement). Read the results of the modules it needs
(:mod:`common.modules`), run the module's runner through a :class:`ReplayingVLM` fed with
the answers of an earlier result of the same hash (so a re-run asks only what failed), check
the rows, and publish (:mod:`workers.publishing`).

Failure semantics:
* an item error (a refused request, an answer that stays unusable) is recorded as a failed
  item and the rest of the episode goes on;
* when every item failed, the job fails (:class:`~common.errors.ModuleFailedError`, no rq
  retry) instead of staging an empty result, unless the run allows failed items;
* any other error (a whole-request refusal such as a wrong key or model, a VLM that stays
  unavailable, an undecodable video) propagates and fails the job; rq retries the transient
  ones.

Invariant: the dataset root comes from the run record; the payload cannot name a path.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import time
from collections import Counter
from typing import Any, cast

import structlog

from narrator.common import keys
from narrator.common.dataset.reader import DatasetMeta, read_episode_frames
from narrator.common.errors import ContractError, ModuleFailedError, PermanentError, TransientError
from narrator.common.job_specs import ModuleJob
from narrator.common.logging import get_logger
from narrator.common.metrics import EPISODES_DONE, ITEM_FAILURES, JOBS_FAILED
from narrator.common.modules import spec
from narrator.common.runs import RunRecord, load_run_async, text
from narrator.common.staging import ModuleResult, check_module_rows
from narrator.workers.answer_replay import ReplayingVLM
from narrator.workers.context import WorkerContext
from narrator.workers.frame_source import VideoFrameSource
from narrator.workers.modules.base import EpisodeContext, ModuleOutput, ModuleRunner
from narrator.workers.publishing import publish, start_follow_ups
from narrator.workers.vlm_client import count_into

log = get_logger(__name__)


@functools.cache
def runner_of(module: str) -> ModuleRunner:
    """The module's runner, imported from the path its registry entry names."""
    path, _, name = spec(module).runner.partition(":")
    return cast(ModuleRunner, getattr(importlib.import_module(path), name))


async def run_module(
    ctx: WorkerContext, run_id: str, module: str, episode: int, module_hash: str
) -> dict[str, Any]:
    job = ModuleJob(run_id, module, episode, module_hash)
    structlog.contextvars.bind_contextvars(
        run=run_id, module=module, episode=episode, job=job.job_id
    )
    started = time.monotonic()
    try:
        run = await load_run_async(ctx.aredis, run_id)
        if run.module_hashes.get(module) != module_hash:
            log.info("job_superseded", reason="the run has a newer module hash")
            return {"stale": True}
        meta = await asyncio.to_thread(ctx.metas.get, run.root, run.fingerprint)
        result = await annotate(ctx, run, meta, job)
        outcome = await publish(ctx, run, meta, result)
    except Exception as exc:
        kind = "transient" if isinstance(exc, TransientError) else type(exc).__name__
        JOBS_FAILED.labels(module=module, kind=kind).inc()
        log.warning("job_failed", error=str(exc), kind=type(exc).__name__)
        raise
    if outcome.stale:
        log.info("job_superseded", reason="the run changed while the job ran; not published")
        return {"stale": True}
    EPISODES_DONE.labels(module=module).inc()
    for failure in result.failures:
        ITEM_FAILURES.labels(module=module, kind=failure.kind).inc()
    await start_follow_ups(ctx, run, meta, job, outcome)
    log.info(
        "job_done",
        rows=len(result.rows),
        items=result.items,
        failures=len(result.failures),
        seconds=round(time.monotonic() - started, 3),
    )
    return {"rows": len(result.rows), "items": result.items, "failures": len(result.failures)}


async def annotate(
    ctx: WorkerContext, run: RunRecord, meta: DatasetMeta, job: ModuleJob
) -> ModuleResult:
    """The module's result for the episode (not published); see the module doc."""
    if job.episode not in meta.episodes:
        raise PermanentError(f"episode {job.episode} is not in the dataset at {run.root}")
    ep = meta.episodes[job.episode]
    frames = await asyncio.to_thread(read_episode_frames, meta, job.episode)
    upstream = {
        need: await load_result(ctx, run, need, job.episode, required=True)
        for need in spec(job.module).needs
    }
    earlier = await load_result(ctx, run, job.module, job.episode, required=False)
    task = ep.tasks[0] if ep.tasks else meta.tasks.get(int(frames.task_index[0]), "")
    episode_ctx = EpisodeContext(
        run_id=run.run_id,
        episode=ep,
        frames=frames,
        task=task,
        fps=meta.fps,
        cameras=tuple(c for c in meta.cameras if c.key in ep.videos),
        settings=run.settings,
        prompts=run.prompts,
        model=run.model,
        frame_source=VideoFrameSource(meta, ep, frames, run.settings.frames),
        upstream={k: v for k, v in upstream.items() if v is not None},
    )
    client = ReplayingVLM(ctx.client, earlier.answers if earlier is not None else None)
    with count_into(Counter()) as counts:
        output: ModuleOutput = await runner_of(job.module)(episode_ctx, client)
    check_module_rows(job.module, output.rows)
    _check_frames(output, episode_ctx.length, job.module)
    failed_items = {f.item for f in output.failures}
    if failed_items and not client.answered_items and not run.commit_policy.allow_failed_items:
        first = output.failures[0]
        raise ModuleFailedError(
            f"every item of the {job.module} module failed for episode {job.episode} "
            f"({len(failed_items)} item(s)); first: {first.item}: {first.kind}: "
            f"{first.message}"
        )
    if client.replayed:
        log.info("answers_replayed", replayed=client.replayed, asked=client.asked)
    return ModuleResult(
        module=job.module,
        episode=job.episode,
        module_hash=job.module_hash,
        rows=output.rows,
        failures=output.failures,
        counts={k: v for k, v in counts.items() if v},
        extra=output.extra,
        prompt_hashes=run.prompts.module_prompt_hashes(job.module),
        answers=client.answers,
        items=len(client.answered_items | failed_items),
    )


def _check_frames(output: ModuleOutput, length: int, module: str) -> None:
    for row in output.rows:
        if not 0 <= row.frame < length:
            raise ContractError(
                f"module {module} placed a row on frame {row.frame}, outside 0..{length - 1}"
            )


async def load_result(
    ctx: WorkerContext, run: RunRecord, module: str, episode: int, *, required: bool
) -> ModuleResult | None:
    """The staged result of ``module`` for ``episode`` at the run's module hash; a missing one
    is None, or a :class:`TransientError` when ``required``."""
    raw = await ctx.aredis.hmget(keys.result(run.run_id, module, episode), ["hash", "data"])
    if text(raw[0]) != run.module_hashes.get(module) or raw[1] is None:
        if required:
            raise TransientError(f"the {module} result of episode {episode} is not staged yet")
        return None
    return ModuleResult.decode(raw[1])
