"""Publish one staged result and start what it unblocks (the workers' side of the job graph).

:func:`publish` runs :data:`~common.job_specs.PUBLISH_SCRIPT`: one atomic step that refuses a
result whose module hash is no longer the run's, stores it, keeps the member's failure
records and item tally, empties the member from its file's pending set and, when the set
became empty, claims the file's finalize job for the run's current generation.

:func:`start_follow_ups` then enqueues, at the front of the queue, each module of the run
that needs this one and is waiting for it (its member is pending and none of the modules it
needs are pending any more), and the file's finalize job if this job won the claim.

Invariant: rq's enqueue API is synchronous; it runs off the event loop.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import orjson

from narrator.common import keys
from narrator.common.dataset.reader import DatasetMeta
from narrator.common.job_specs import PUBLISH_SCRIPT, ModuleJob
from narrator.common.logging import get_logger
from narrator.common.modules import dependents, spec
from narrator.common.queueing import (
    enqueue_finalize_job,
    enqueue_unless_live,
    module_job_data,
    module_queue,
)
from narrator.common.runs import RunRecord, text
from narrator.common.staging import ModuleResult
from narrator.workers.context import WorkerContext

log = get_logger(__name__)


@dataclass(frozen=True)
class PublishOutcome:
    stale: bool  # the run's module hash changed: nothing was written
    claimed_generation: str | None  # this job won the file's finalize claim for it
    data_file: str


async def publish(
    ctx: WorkerContext, run: RunRecord, meta: DatasetMeta, result: ModuleResult
) -> PublishOutcome:
    data_file = str(meta.episodes[result.episode].data_file)
    counters = sorted(result.counts.items())
    failures = orjson.dumps(result.failures) if result.failures else b""
    args: list[str | bytes | int] = [
        result.module,
        result.module_hash,
        result.encode(),
        keys.member(result.module, result.episode),
        data_file,
        result.items,
        result.failed_items,
        failures,
        len(counters),
    ]
    for name, value in counters:
        args += [name, value]
    reply = await ctx.aredis.eval(
        PUBLISH_SCRIPT,
        8,
        keys.run(run.run_id),
        keys.result(run.run_id, result.module, result.episode),
        keys.pending(run.run_id, data_file),
        keys.finalize_claims(run.run_id),
        keys.stats(run.run_id),
        keys.item_failures(run.run_id),
        keys.item_tallies(run.run_id),
        keys.item_totals(run.run_id),
        *args,
    )
    outcome, generation = text(reply[0]), text(reply[1])
    return PublishOutcome(
        stale=outcome == "stale",
        claimed_generation=generation if outcome == "claimed" else None,
        data_file=data_file,
    )


async def start_follow_ups(
    ctx: WorkerContext, run: RunRecord, meta: DatasetMeta, job: ModuleJob, outcome: PublishOutcome
) -> None:
    for module in dependents(job.module, run.module_hashes):
        if await _waiting_for_its_needs(ctx, run, outcome.data_file, module, job.episode):
            follow = ModuleJob(run.run_id, module, job.episode, run.module_hashes[module])
            # At the front: it runs next, so the file's shard is not held back until the
            # queue of the whole run has drained, and the run does not end on a tail of
            # low-fan-out jobs.
            data = module_job_data(follow, run.job_options, at_front=True)
            await asyncio.to_thread(enqueue_unless_live, ctx.redis, module_queue(ctx.redis), [data])
    if outcome.claimed_generation is not None:
        await asyncio.to_thread(
            enqueue_finalize_job,
            ctx.redis,
            run.run_id,
            outcome.data_file,
            outcome.claimed_generation,
        )


async def _waiting_for_its_needs(
    ctx: WorkerContext, run: RunRecord, data_file: str, module: str, episode: int
) -> bool:
    """Is ``module``'s member of ``episode`` pending while every module it needs is staged at
    the run's hash and no longer pending?"""
    needs = spec(module).needs
    members = [keys.member(module, episode), *(keys.member(n, episode) for n in needs)]
    pending = await ctx.aredis.smismember(keys.pending(run.run_id, data_file), members)
    if not pending[0] or any(pending[1:]):
        return False
    for need in needs:
        staged = await ctx.aredis.hget(keys.result(run.run_id, need, episode), "hash")
        if text(staged) != run.module_hashes[need]:
            return False
    return True
