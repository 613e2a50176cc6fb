"""The module job as a plain async function: no rq, a real Redis, the simulated VLM over HTTP.

* it publishes, unblocks the modules that need it (at the front of the queue) and the last
  job of a file claims the file's finalize job;
* a job of an older generation that finishes after a newer generation was enqueued changes
  nothing: it neither empties the newer pending set nor overwrites a newer result
  (issue 10.4, the interleaving held open with a gate in front of the real client);
* a module whose items all failed fails the job instead of staging an empty result
  (issue 10.2), unless the run allows failed items;
* a re-run of an episode whose result has failed items asks only those items.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pytest
import redis

from narrator.common import keys
from narrator.common.errors import ModuleFailedError, VLMAccessError
from narrator.common.queueing import module_queue, writer_queue
from narrator.common.runs import load_run, text
from narrator.common.staging import ModuleResult
from narrator.samples.dataset import make_sample_dataset
from narrator.simulator.config import SimConfig
from narrator.simulator.fleet import Fleet, start_fleet
from narrator.workers.context import WorkerContext, open_worker_context
from narrator.workers.jobs import run_module
from narrator.workers.vlm_api import VLM, AnswerParser, ChatAnswer, ChatRequest
from tests.support.job_support import enqueue, pending_members, requests, settings
from tests.support.pipeline_support import pipeline_config

pytestmark = pytest.mark.timeout(120)

T = TypeVar("T")
VQA_ONLY = settings(modules=["vqa"])


class GatedVLM:
    """The real client behind a gate: requests wait until the test opens it."""

    def __init__(self, inner: VLM) -> None:
        self.inner = inner
        self.waiting = 0
        self.gate = asyncio.Event()

    async def ask(self, request: ChatRequest, parse: AnswerParser[T]) -> ChatAnswer[T]:
        self.waiting += 1
        await self.gate.wait()
        return await self.inner.ask(request, parse)


async def _poll(predicate: Any, timeout_s: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, what
        await asyncio.sleep(0.02)


def _context_config(urls: list[str], redis_url: str, tmp_path: Path, **vlm: Any) -> Any:
    config = pipeline_config(urls, redis_url=redis_url, state_dir=tmp_path / "s")
    return config.model_validate(
        {**config.model_dump(), "vlm": {**config.vlm.model_dump(), "urls": urls, **vlm}}
    )


def _hashes(conn: redis.Redis, run_id: str) -> dict[str, str]:
    return load_run(conn, run_id).module_hashes


def _stored(conn: redis.Redis, run_id: str, module: str, episode: int) -> ModuleResult | None:
    raw = conn.hget(keys.result(run_id, module, episode), "data")
    return ModuleResult.decode(raw) if raw else None


async def test_job_function_publishes_unblocks_what_needs_it_and_claims_finalize(
    tmp_path: Path, redis_url: str, fleet: Fleet
) -> None:
    root = make_sample_dataset(tmp_path / "dataset", episodes=2, cameras=1, episodes_per_file=2)
    conn = redis.Redis.from_url(redis_url)
    summary = enqueue(conn, root, tmp_path / "state")
    run_id, hashes = summary.run_id, _hashes(conn, summary.run_id)
    follow_up = keys.job_id(run_id, "interjections", 0, hashes["interjections"])
    assert follow_up not in module_queue(conn).get_job_ids()  # left to the plan job

    ctx = await open_worker_context(_context_config(fleet.urls, redis_url, tmp_path))
    try:
        out = await run_module(ctx, run_id, "plan", 0, hashes["plan"])
        assert out["rows"] > 0 and out["failures"] == 0
        assert module_queue(conn).get_job_ids()[0] == follow_up  # at the front
        assert "plan:0" not in pending_members(conn, run_id)
        assert not conn.hgetall(keys.finalize_claims(run_id))
        for module, episode in (("interjections", 0), ("plan", 1), ("interjections", 1)):
            await run_module(ctx, run_id, module, episode, hashes[module])
        await run_module(ctx, run_id, "vqa", 0, hashes["vqa"])
        assert writer_queue(conn).get_job_ids() == []
        await run_module(ctx, run_id, "vqa", 1, hashes["vqa"])  # the file's last member
    finally:
        await ctx.close()
    (data_file,) = summary_files = list(conn.hkeys(keys.run_files(run_id)))
    assert len(summary_files) == 1
    claims = {text(k): text(v) for k, v in conn.hgetall(keys.finalize_claims(run_id)).items()}
    assert claims == {text(data_file): summary.generation}
    assert writer_queue(conn).get_job_ids() == [
        keys.finalize_job_id(run_id, text(data_file) or "", summary.generation)
    ]
    assert pending_members(conn, run_id) == set()


async def test_a_job_of_an_older_generation_changes_nothing_of_the_newer_one(
    tmp_path: Path, redis_url: str, fleet: Fleet
) -> None:
    root = make_sample_dataset(tmp_path / "dataset", episodes=2, cameras=1, episodes_per_file=2)
    conn = redis.Redis.from_url(redis_url)
    old = enqueue(conn, root, tmp_path / "state", annotation=VQA_ONLY)
    old_hash = _hashes(conn, old.run_id)["vqa"]

    config = _context_config(fleet.urls, redis_url, tmp_path)
    ctx = await open_worker_context(config)
    gated = GatedVLM(ctx.client)
    old_ctx = WorkerContext(redis=ctx.redis, aredis=ctx.aredis, client=gated, metas=ctx.metas)
    try:
        # Two jobs of the old generation are asking the VLM...
        held = [
            asyncio.create_task(run_module(old_ctx, old.run_id, "vqa", e, old_hash)) for e in (0, 1)
        ]
        await _poll(lambda: gated.waiting >= 2, 30, "both old jobs reach the VLM")
        # ...when a changed setting enqueues a new generation, whose job of episode 0 ends.
        new = enqueue(
            conn,
            root,
            tmp_path / "state",
            annotation=settings(modules=["vqa"], vqa={"vqa_hz": 1.0}),
        )
        new_hash = _hashes(conn, new.run_id)["vqa"]
        assert new.run_id == old.run_id and new_hash != old_hash
        await run_module(ctx, new.run_id, "vqa", 0, new_hash)
        assert pending_members(conn, new.run_id) == {"vqa:1"}
        newer = conn.hget(keys.result(new.run_id, "vqa", 0), "data")

        gated.gate.set()  # the old jobs get their answers and try to publish
        outcomes = await asyncio.gather(*held)
    finally:
        await ctx.close()
    assert pending_members(conn, new.run_id) == {"vqa:1"}  # not emptied
    assert conn.hget(keys.result(new.run_id, "vqa", 0), "data") == newer  # not overwritten
    assert not conn.exists(keys.result(new.run_id, "vqa", 1))  # nothing of the old one
    assert not conn.hgetall(keys.finalize_claims(new.run_id))  # no finalize claimed
    assert writer_queue(conn).get_job_ids() == []
    assert outcomes == [{"stale": True}, {"stale": True}]


async def test_a_module_whose_items_all_failed_fails_the_job(
    tmp_path: Path, redis_url: str
) -> None:
    """Every answer is unusable (each item fails on its own), so the module fails as a whole.
    (A refused API key is not an item failure at all: see the next test.)"""
    fleet = start_fleet(1)
    fleet.set_faults(0, garbage_rate=1.0)
    try:
        root = make_sample_dataset(tmp_path / "dataset", episodes=2, cameras=1, episodes_per_file=2)
        conn = redis.Redis.from_url(redis_url)
        run = enqueue(conn, root, tmp_path / "state", annotation=VQA_ONLY)
        vqa_hash = _hashes(conn, run.run_id)["vqa"]
        config = _context_config(fleet.urls, redis_url, tmp_path)
        ctx = await open_worker_context(config)
        try:
            with pytest.raises(ModuleFailedError, match="every item of the vqa module failed"):
                await run_module(ctx, run.run_id, "vqa", 0, vqa_hash)
            assert not conn.exists(keys.result(run.run_id, "vqa", 0))
            assert pending_members(conn, run.run_id) == {"vqa:0", "vqa:1"}
            assert requests(fleet) > 0 and fleet.stats(0)["by_status"] == {"200": requests(fleet)}

            # A run that allows failed items stages the result, failures recorded.
            enqueue(conn, root, tmp_path / "state", annotation=VQA_ONLY, allow_failed_items=True)
            out = await run_module(ctx, run.run_id, "vqa", 0, vqa_hash)
        finally:
            await ctx.close()
    finally:
        fleet.close()
    result = _stored(conn, run.run_id, "vqa", 0)
    assert result is not None and result.rows == [] and out["failures"] == result.items > 0
    assert "vqa:0" not in pending_members(conn, run.run_id)


async def test_a_refused_api_key_fails_the_job_even_when_failed_items_are_allowed(
    tmp_path: Path, redis_url: str
) -> None:
    """401 refuses every request: VLMAccessError fails the job at the first request, and
    --allow-failed-items does not turn it into an empty result."""
    fleet = start_fleet(1, SimConfig(api_key="the-right-key"))
    try:
        root = make_sample_dataset(tmp_path / "dataset", episodes=2, cameras=1, episodes_per_file=2)
        conn = redis.Redis.from_url(redis_url)
        run = enqueue(conn, root, tmp_path / "state", annotation=VQA_ONLY, allow_failed_items=True)
        vqa_hash = _hashes(conn, run.run_id)["vqa"]
        config = _context_config(fleet.urls, redis_url, tmp_path, api_key="a-wrong-key")
        ctx = await open_worker_context(config)
        try:
            with pytest.raises(VLMAccessError, match="HTTP 401"):
                await run_module(ctx, run.run_id, "vqa", 0, vqa_hash)
        finally:
            await ctx.close()
    finally:
        fleet.close()
    assert not conn.exists(keys.result(run.run_id, "vqa", 0))
    assert pending_members(conn, run.run_id) == {"vqa:0", "vqa:1"}


async def test_rerun_of_an_episode_with_failed_items_asks_only_them(
    tmp_path: Path, redis_url: str, fleet: Fleet
) -> None:
    root = make_sample_dataset(tmp_path / "dataset", episodes=1, cameras=1, episodes_per_file=1)
    conn = redis.Redis.from_url(redis_url)
    vqa = settings(modules=["vqa"], vqa={"vqa_hz": 3.0})
    run = enqueue(conn, root, tmp_path / "state", annotation=vqa)
    vqa_hash = _hashes(conn, run.run_id)["vqa"]
    ctx = await open_worker_context(_context_config(fleet.urls, redis_url, tmp_path))
    try:
        fleet.set_faults(0, error_rate=0.4, error_status=400)
        first = await run_module(ctx, run.run_id, "vqa", 0, vqa_hash)
        before = _stored(conn, run.run_id, "vqa", 0)
        assert before is not None and 0 < first["failures"] < first["items"]
        failures = orjson.loads(conn.hget(keys.item_failures(run.run_id), "vqa:0") or b"[]")
        assert len(failures) == first["failures"]

        fleet.clear_faults()
        fleet.reset()
        assert pending_members(conn, run.run_id) == set()
        again = enqueue(conn, root, tmp_path / "state", annotation=vqa)  # same settings
        assert again.already_done == 0  # a member with failed items is not done
        assert pending_members(conn, run.run_id) == {"vqa:0"}
        second = await run_module(ctx, run.run_id, "vqa", 0, vqa_hash)
    finally:
        await ctx.close()
    assert requests(fleet) == first["failures"]  # the rest was replayed
    after = _stored(conn, run.run_id, "vqa", 0)
    assert after is not None and second["failures"] == 0 and after.items == before.items
    assert len(after.rows) > len(before.rows)
    assert set(before.answers) < set(after.answers)
    assert not conn.hexists(keys.item_failures(run.run_id), "vqa:0")
    totals = {text(k): int(v) for k, v in conn.hgetall(keys.item_totals(run.run_id)).items()}
    assert totals == {"vqa:items": after.items, "vqa:failed": 0}
