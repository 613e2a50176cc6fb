"""Replaying recorded answers through the VLM seam (real client, simulated VLM over HTTP)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from narrator.common.errors import BadAnswerError
from narrator.workers.answer_replay import REPLAYED, ReplayingVLM, request_key
from narrator.workers.modules.plan import run_plan
from narrator.workers.vlm_api import ChatRequest, as_object
from tests.support.module_support import make_context, sim_client


def _request(**changes: Any) -> ChatRequest:
    base = ChatRequest(
        module="vqa",
        item="observation.images.top:3",
        messages=[{"role": "user", "content": "How many cups are on the tray?"}],
        schema={"type": "object", "properties": {"count": {"type": "integer"}}},
        schema_name="vqa_count",
        model="narrator-sim-vlm",
        max_tokens=64,
        temperature=0.2,
        seed=7,
    )
    return dataclasses.replace(base, **changes)


def _keys_of(calls: list[dict[str, Any]]) -> set[str]:
    names = {f.name for f in dataclasses.fields(ChatRequest)}
    return {request_key(ChatRequest(**{k: v for k, v in c.items() if k in names})) for c in calls}


def test_request_key_covers_what_changes_the_answer() -> None:
    key = request_key(_request())
    assert key == request_key(_request())
    for change in (
        {"seed": 8},
        {"item": "observation.images.top:4"},
        {"messages": [{"role": "user", "content": "How many bowls?"}]},
        {"model": "another"},
        {"temperature": 0.0},
        {"max_tokens": 65},
        {"chat_template_kwargs": {"enable_thinking": False}},
        {"reasoning_effort": "low"},
    ):
        assert request_key(_request(**change)) != key, change


async def test_recorded_answers_are_replayed_without_asking() -> None:
    async with sim_client(1) as (_, client):
        first = ReplayingVLM(client)
        asked = await first.ask(_request(), as_object)
        assert len(client.calls) == 1 and first.asked == 1
        again = ReplayingVLM(client, first.answers)
        replayed = await again.ask(_request(), as_object)
        other = await again.ask(_request(seed=8), as_object)
    assert len(client.calls) == 2  # only the changed request went out
    assert replayed.value == asked.value and replayed.replica == REPLAYED
    assert again.replayed == 1 and again.asked == 1 and set(again.answers) > set(first.answers)
    assert other.replica != REPLAYED


async def test_a_recorded_answer_that_no_longer_parses_is_asked_again() -> None:
    async with sim_client(1) as (_, client):
        first = ReplayingVLM(client)
        await first.ask(_request(), as_object)

        def strict(data: dict[str, Any]) -> dict[str, Any]:
            if "never_there" not in data:
                raise ValueError("a newer parser wants another field")
            return data

        again = ReplayingVLM(client, first.answers)
        with pytest.raises(BadAnswerError):  # nor does a fresh answer: it was asked
            await again.ask(_request(), strict)
    assert again.replayed == 0 and again.asked == 1 and len(client.calls) == 2


async def test_after_failures_a_replayed_plan_asks_only_what_failed_or_changed() -> None:
    ctx = make_context(n_frames=160)
    async with sim_client(1) as (fleet, client):
        clean = ReplayingVLM(client)
        reference = await run_plan(ctx, clean)
        fleet.set_faults(0, error_rate=0.35, error_status=400)
        faulty = ReplayingVLM(client)
        holed = await run_plan(ctx, faulty)
        fleet.clear_faults()
        before = len(client.calls)
        replay = ReplayingVLM(client, faulty.answers)
        repaired = await run_plan(ctx, replay)
        new_calls = client.calls[before:]
    assert holed.failures and not reference.failures and not repaired.failures
    assert repaired.rows == reference.rows and repaired.extra == reference.extra
    assert set(replay.answers) == set(clean.answers)
    # Asked: the failed requests and those a failure changed (a later memory of the chain);
    # nothing that had an answer.
    assert _keys_of(new_calls) == set(clean.answers) - set(faulty.answers)
    assert replay.replayed == len(set(clean.answers) & set(faulty.answers)) > 0
