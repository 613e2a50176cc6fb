"""The interjections module: seeded boundary choice (pure), and whole episodes against the
simulated VLM fleet over real HTTP (speech atoms, interjection + speech + plan on one frame)."""

from __future__ import annotations

import random

import pytest

from narrator.common.config import AnnotationSettings, InterjectionSettings, PlanSettings
from narrator.common.errors import ContractError
from narrator.common.staging import MODULE_STYLES, ModuleResult, StagedRow
from narrator.workers.modules.base import EpisodeContext
from narrator.workers.modules.interjections import choose_boundaries, run_interjections, speech_row
from narrator.workers.modules.plan import run_plan
from narrator.workers.modules.schemas import SCHEMA_NAMES
from narrator.workers.modules.spans import Span
from narrator.writer.merge import yield_to_interjections
from tests.support.module_support import (
    PillowFrameSource,
    contract_findings,
    episode_findings,
    errors,
    image_count,
    make_context,
    prompt_text,
    sim_client,
)

SPANS = [
    Span(0, 29, "reach for the first cup"),
    Span(30, 59, "grasp the cup by its rim with the right gripper"),
    Span(60, 89, "place the cup on the tray"),
    Span(90, 119, "push the tray toward the person"),
]


def _plan_result(spans: list[Span], episode: int = 3) -> dict[str, ModuleResult]:
    result = ModuleResult(
        module="plan",
        episode=episode,
        module_hash="h",
        extra={"subtasks": [s.to_dict() for s in spans]},
    )
    return {"plan": ModuleResult.decode(result.encode())}  # as read back from Redis


def _context(
    settings: AnnotationSettings | None = None, frame_source: PillowFrameSource | None = None
) -> EpisodeContext:
    return make_context(
        n_frames=120,
        fps=10.0,
        upstream=_plan_result(SPANS),
        settings=settings,
        frame_source=frame_source,
    )


# --- pure parts ------------------------------------------------------------------------------


def test_choose_boundaries_is_seeded_bounded_and_after_min_time() -> None:
    stamps = [i / 10.0 for i in range(120)]
    seen = set()
    for seed in range(200):
        chosen = choose_boundaries(SPANS, stamps, max_count=2, min_time_s=3.5, seed=seed)
        assert chosen == choose_boundaries(SPANS, stamps, max_count=2, min_time_s=3.5, seed=seed)
        assert chosen == sorted(chosen) and len(chosen) == 2
        assert all(SPANS[i].start > 0 and stamps[SPANS[i].start] >= 3.5 for i in chosen)
        seen.add(tuple(chosen))
    assert seen == {(2, 3)}, "only boundaries at or after 3.5 s qualify"
    choices = {
        tuple(choose_boundaries(SPANS, stamps, max_count=1, min_time_s=0.0, seed=s))
        for s in range(50)
    }
    assert choices == {(1,), (2,), (3,)}, "the seed decides, frame 0 never qualifies"
    assert choose_boundaries(SPANS, stamps, max_count=0, min_time_s=0.0, seed=1) == []
    assert choose_boundaries(SPANS, stamps, max_count=9, min_time_s=0.0, seed=1) == [1, 2, 3]


def test_speech_row_is_the_exact_speech_atom() -> None:
    row = speech_row(7, "On it!")
    assert row == StagedRow(
        column="events",
        frame=7,
        role="assistant",
        content=None,
        style=None,
        camera=None,
        tool_calls=(
            {"type": "function", "function": {"name": "say", "arguments": {"text": "On it!"}}},
        ),
    )


# --- whole episodes --------------------------------------------------------------------------


def _assert_speech_atom(row: StagedRow) -> str:
    assert row.column == "events" and row.role == "assistant"
    assert row.content is None and row.style is None and row.camera is None
    assert row.tool_calls is not None and len(row.tool_calls) == 1
    call = row.tool_calls[0]
    assert set(call) == {"type", "function"} and call["type"] == "function"
    assert set(call["function"]) == {"name", "arguments"} and call["function"]["name"] == "say"
    assert set(call["function"]["arguments"]) == {"text"}
    text = call["function"]["arguments"]["text"]
    assert isinstance(text, str) and text.strip()
    return text


async def test_run_interjections_rows_on_the_chosen_boundaries() -> None:
    settings = AnnotationSettings(
        interjections=InterjectionSettings(
            max_interjections=2, interjection_min_s=2.5, context_frames=4
        )
    )
    source = PillowFrameSource()
    ctx = _context(settings=settings, frame_source=source)
    async with sim_client() as (_fleet, client):
        out = await run_interjections(ctx, client)
        again = await run_interjections(ctx, client)
    assert out.failures == []
    assert again.rows == out.rows
    stamps = [float(t) for t in ctx.frames.timestamp]
    chosen = choose_boundaries(
        SPANS, stamps, max_count=2, min_time_s=2.5, seed=ctx.seed_for("interjections")
    )
    frames = [SPANS[i].start for i in chosen]
    assert out.extra["interjection_frames"] == frames and len(frames) == 2
    allowed = MODULE_STYLES["interjections"]
    for row in out.rows:
        assert row.style in allowed[row.column]
        assert row.camera is None
    ack = [r for r in out.rows if r.frame == 0]
    assert len(ack) == 1
    _assert_speech_atom(ack[0])
    for frame, index in zip(frames, chosen, strict=True):
        on_frame = [r for r in out.rows if r.frame == frame]
        assert len(on_frame) == 3
        said = [r for r in on_frame if r.style == "interjection"]
        assert len(said) == 1 and said[0].role == "user" and said[0].column == "events"
        assert said[0].content and said[0].content.strip()
        speech = [r for r in on_frame if r.style is None]
        assert len(speech) == 1
        reply = _assert_speech_atom(speech[0])
        plans = [r for r in on_frame if r.style == "plan"]
        assert len(plans) == 1 and plans[0].column == "persistent" and plans[0].role == "assistant"
        assert plans[0].content is not None and plans[0].content.startswith("1. ")
        # the interjection request saw the frames around the boundary and the next subtask
        call = next(
            c
            for c in client.calls_named(SCHEMA_NAMES["interjection"])
            if f"t={ctx.time_of(frame):.2f} s" in prompt_text(c)
        )
        assert SPANS[index].label in prompt_text(call)
        assert image_count(call) == 4
        assert ("observation.images.top", (frame - 10, frame - 5, frame, frame + 5)) in source.calls
        # the refreshed plan was asked from the interjection and the remaining subtasks
        refresh = next(
            c
            for c in client.calls_named(SCHEMA_NAMES["plan_refresh"])
            if said[0].content in prompt_text(c)
        )
        assert reply in prompt_text(refresh)
        assert all(s.label in prompt_text(refresh) for s in SPANS[index:])
        assert refresh["seed"] == ctx.seed_for("interjections", f"plan_refresh:{frame}")
    assert errors(contract_findings(ctx, "interjections", out.rows)) == []


async def test_interjections_follow_a_real_plan_result_without_cameras() -> None:
    base = make_context(n_frames=200, cameras=())
    async with sim_client() as (_fleet, client):
        plan = await run_plan(base, client)
        result = ModuleResult("plan", base.episode.index, "h", plan.rows, extra=plan.extra)
        settings = AnnotationSettings(
            interjections=InterjectionSettings(max_interjections=3, interjection_min_s=0.0)
        )
        ctx = make_context(
            n_frames=200,
            cameras=(),
            settings=settings,
            upstream={"plan": ModuleResult.decode(result.encode())},
        )
        out = await run_interjections(ctx, client)
    boundaries = [s["start"] for s in plan.extra["subtasks"][1:]]
    assert out.extra["interjection_frames"] == sorted(out.extra["interjection_frames"])
    assert set(out.extra["interjection_frames"]) <= set(boundaries)
    assert len(out.extra["interjection_frames"]) == min(3, len(boundaries))
    assert all(image_count(c) == 0 for c in client.calls if c["module"] == "interjections")
    # the two modules' rows together obey the contract: on an interjection's frame the
    # refreshed plan replaces the plan module's scheduled one (one plan per timestamp)
    findings = episode_findings(ctx, {"plan": plan.rows, "interjections": out.rows})
    assert findings == [], findings
    scheduled = {r.frame: r.content for r in plan.rows if r.style == "plan"}
    refreshed = {r.frame: r.content for r in out.rows if r.style == "plan"}
    assert set(refreshed) == set(out.extra["interjection_frames"]) <= set(scheduled)
    kept = yield_to_interjections(plan.rows, out.extra["interjection_frames"])
    assert {r.frame for r in kept if r.style == "plan"} == set(scheduled) - set(refreshed)
    assert [r for r in kept if r.style != "plan"] == [r for r in plan.rows if r.style != "plan"]


async def test_no_plan_means_no_refresh_request_and_no_plan_row() -> None:
    settings = AnnotationSettings(
        plan=PlanSettings(emit_plan=False),
        interjections=InterjectionSettings(max_interjections=3, interjection_min_s=0.0),
    )
    ctx = _context(settings=settings)
    async with sim_client(replicas=1) as (_fleet, client):
        out = await run_interjections(ctx, client)
    assert client.calls_named(SCHEMA_NAMES["plan_refresh"]) == []
    assert not [r for r in out.rows if r.style == "plan"]
    frames = [r.frame for r in out.rows if r.style == "interjection"]
    assert frames == [30, 60, 90]
    speech = [r.frame for r in out.rows if r.style is None and r.frame > 0]
    assert speech == frames
    assert contract_findings(ctx, "interjections", out.rows, plans=False) == []
    missing = errors(contract_findings(ctx, "interjections", out.rows, plans=True))
    assert {f.rule for f in missing} == {"interjection_incomplete"}, "the rule needs plans on"


async def test_prompts_use_the_task_the_plan_module_used() -> None:
    result = ModuleResult(
        module="plan",
        episode=3,
        module_hash="h",
        extra={"subtasks": [s.to_dict() for s in SPANS], "task": "stack the cups on the tray"},
    )
    settings = AnnotationSettings(
        interjections=InterjectionSettings(max_interjections=1, interjection_min_s=0.0)
    )
    ctx = make_context(
        task="debug",
        settings=settings,
        upstream={"plan": ModuleResult.decode(result.encode())},
    )
    async with sim_client(replicas=1) as (_fleet, client):
        await run_interjections(ctx, client)
    assert len(client.calls) == 3
    for call in client.calls:
        assert "stack the cups on the tray" in prompt_text(call)
        assert '"debug"' not in prompt_text(call)


async def test_only_the_acknowledgement_when_no_boundary_qualifies() -> None:
    settings = AnnotationSettings(
        interjections=InterjectionSettings(max_interjections=2, interjection_min_s=100.0)
    )
    ctx = _context(settings=settings)
    async with sim_client(replicas=1) as (_fleet, client):
        out = await run_interjections(ctx, client)
    assert len(out.rows) == 1 and out.rows[0].frame == 0
    _assert_speech_atom(out.rows[0])
    assert [c["schema_name"] for c in client.calls] == [SCHEMA_NAMES["ack"]]


async def test_failed_requests_drop_whole_interjections() -> None:
    settings = AnnotationSettings(
        interjections=InterjectionSettings(max_interjections=3, interjection_min_s=0.0)
    )
    ctx = _context(settings=settings)
    async with sim_client(replicas=1) as (fleet, client):
        fleet.set_faults(0, garbage_rate=1.0)
        out = await run_interjections(ctx, client)
    assert out.rows == []
    assert sorted(f.item for f in out.failures) == sorted(
        ["ack", "interjection:30", "interjection:60", "interjection:90"]
    )
    assert all(f.kind == "BadAnswerError" for f in out.failures)


async def test_mixed_failures_never_leave_an_interjection_incomplete() -> None:
    settings = AnnotationSettings(
        interjections=InterjectionSettings(max_interjections=3, interjection_min_s=0.0)
    )
    rng = random.Random(3)
    emitted_total = failed_total = 0
    async with sim_client(replicas=1) as (fleet, client):
        # an item needs two requests, each fails only if its corrective retry fails too
        fleet.set_faults(0, garbage_rate=0.5)
        for episode in range(6):
            spans = [Span(0, 19, "reach")]
            for start in range(20, 400, 20):
                spans.append(Span(start, start + 19, f"step {rng.randint(0, 99)}"))
            ctx = make_context(
                n_frames=400, settings=settings, upstream=_plan_result(spans), episode_index=episode
            )
            out = await run_interjections(ctx, client)
            assert errors(contract_findings(ctx, "interjections", out.rows)) == []
            emitted = {r.frame for r in out.rows if r.style == "interjection"}
            failed = {int(f.item.split(":")[1]) for f in out.failures if f.item != "ack"}
            assert emitted | failed == set(out.extra["interjection_frames"])
            assert not emitted & failed
            emitted_total += len(emitted)
            failed_total += len(failed)
    assert emitted_total > 0 and failed_total > 0, "both outcomes were exercised"


async def test_missing_or_bad_plan_result_is_a_contract_error() -> None:
    async with sim_client(replicas=1) as (_fleet, client):
        with pytest.raises(ContractError, match="needs the plan module"):
            await run_interjections(make_context(), client)
        bad = ModuleResult("plan", 3, "h", extra={"subtasks": [{"start": 0, "end": 999}]})
        with pytest.raises(ContractError, match="malformed"):
            await run_interjections(make_context(upstream={"plan": bad}), client)
        outside = _plan_result([Span(0, 500, "too long")])
        with pytest.raises(ContractError, match="outside"):
            await run_interjections(make_context(upstream=outside), client)
