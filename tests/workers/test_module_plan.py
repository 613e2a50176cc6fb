"""The plan module: answer parsing and prompt building (pure), and whole episodes against the
simulated VLM fleet over real HTTP (rows, spans, windows, the memory chain, concurrency)."""

from __future__ import annotations

import itertools

import pytest

from narrator.common.config import AnnotationSettings, PlanSettings
from narrator.common.staging import MODULE_STYLES
from narrator.workers.modules.answers import (
    numbered,
    parse_rephrasings,
    parse_steps,
    parse_subtasks,
)
from narrator.workers.modules.base import EpisodeContext, ModuleOutput
from narrator.workers.modules.plan import run_plan, subtasks_messages
from narrator.workers.modules.schemas import SCHEMA_NAMES
from narrator.workers.modules.spans import Window, plan_windows
from narrator.workers.modules.ticks import sample_frames
from tests.support.module_support import (
    PillowFrameSource,
    contract_findings,
    image_count,
    make_context,
    prompt_text,
    sim_client,
)

# --- pure parts ------------------------------------------------------------------------------


def test_parse_subtasks_checks_positions_and_labels() -> None:
    data = {
        "subtasks": [
            {"start_frame": 0, "label": " grasp  the cup "},
            {"start_frame": 3, "label": "lift"},
        ]
    }
    assert parse_subtasks(data, 4) == [(0, "grasp the cup"), (3, "lift")]
    for bad in (
        {"subtasks": []},
        {"subtasks": [{"start_frame": 4, "label": "x"}]},
        {"subtasks": [{"start_frame": True, "label": "x"}]},
        {"subtasks": [{"start_frame": 0, "label": "  "}]},
        {"steps": ["x"]},
    ):
        with pytest.raises(ValueError):
            parse_subtasks(bad, 4)


def test_steps_lose_model_numbering_and_get_ours() -> None:
    assert parse_steps({"steps": ["1. grasp the cup", "2) lift it", "place it"]}) == [
        "grasp the cup",
        "lift it",
        "place it",
    ]
    assert numbered(["grasp the cup", "lift it"]) == "1. grasp the cup\n2. lift it"
    with pytest.raises(ValueError):
        parse_steps({"steps": []})


def test_rephrasings_drop_copies_of_the_task() -> None:
    data = {"rephrasings": ["Put the cups on the tray", "Place all three cups onto the tray", "x"]}
    got = parse_rephrasings(data, "put the cups on the tray")
    assert got == ["Place all three cups onto the tray", "x"]


async def test_subtask_messages_caption_every_image_or_list_times_without_camera() -> None:
    ctx = make_context(n_frames=50)
    window = Window((0, 10, 20, 30, 40, 49))
    images = dict(zip(window.frames, await ctx.frame_source.get("cam", window.frames), strict=True))
    messages = subtasks_messages(ctx, window, 0, 1, images, "observation.images.top")
    parts = messages[0]["content"]
    assert [p["type"] for p in parts[1:]] == ["text", "image_url"] * len(window.frames)
    assert parts[1]["text"] == "Frame 0 (t=0.00 s):" and parts[-2]["text"] == "Frame 5 (t=4.90 s):"
    assert "put the three cups on the tray" in parts[0]["text"]
    assert "0 to 5" in parts[0]["text"]
    text_only = subtasks_messages(make_context(cameras=()), window, 1, 3, None, None)
    assert isinstance(text_only[0]["content"], str)
    assert "Frame 5 (t=4.90 s)" in text_only[0]["content"]
    assert "part 2 of 3" in text_only[0]["content"]


# --- whole episodes --------------------------------------------------------------------------


def _assert_plan_rows(ctx: EpisodeContext, out: ModuleOutput) -> None:
    allowed = MODULE_STYLES["plan"]["persistent"]
    for row in out.rows:
        assert row.column == "persistent" and row.style in allowed
        assert row.camera is None and row.tool_calls is None
        assert row.content and row.content.strip()
        assert row.role == ("user" if row.style == "task_aug" else "assistant")
    spans = out.extra["subtasks"]
    assert spans[0]["start"] == 0 and spans[-1]["end"] == ctx.length - 1
    for before, after in itertools.pairwise(spans):
        assert after["start"] == before["end"] + 1
    subtask_rows = [r for r in out.rows if r.style == "subtask"]
    assert [(r.frame, r.content) for r in subtask_rows] == [(s["start"], s["label"]) for s in spans]
    memory_frames = [r.frame for r in out.rows if r.style == "memory"]
    assert memory_frames == [s["start"] for s in spans[1:]]
    plans = [r for r in out.rows if r.style == "plan"]
    assert len(plans) == 1 and plans[0].frame == 0
    assert plans[0].content is not None and plans[0].content.startswith("1. ")
    assert all(r.frame == 0 for r in out.rows if r.style == "task_aug")
    per_frame_style = [(r.frame, r.style) for r in out.rows if r.style != "task_aug"]
    assert len(per_frame_style) == len(set(per_frame_style)), "one persistent row per style"
    findings = contract_findings(ctx, "plan", out.rows)
    assert findings == [], findings


async def test_run_plan_windows_memory_chain_and_concurrency() -> None:
    settings = AnnotationSettings(
        plan=PlanSettings(sample_hz=1.0, frames_per_request=5, min_subtask_seconds=1.5),
        temperature=0.3,
        max_tokens=512,
        chat_template_kwargs={"enable_thinking": False},
    )
    source = PillowFrameSource()
    ctx = make_context(n_frames=300, fps=10.0, settings=settings, frame_source=source)
    async with sim_client() as (_fleet, client):
        out = await run_plan(ctx, client)
    _assert_plan_rows(ctx, out)
    assert out.failures == []
    samples = sample_frames(ctx.frames.timestamp, 1.0)
    windows = plan_windows(samples, 5)
    assert len(windows) > 1
    assert source.calls == [("observation.images.top", tuple(samples))], "one decode pass"
    window_calls = client.calls_named(SCHEMA_NAMES["subtasks"])
    assert len(window_calls) == len(windows)
    assert sorted(image_count(c) for c in window_calls) == sorted(len(w.frames) for w in windows)
    spans = out.extra["subtasks"]
    assert 1 < len(spans) <= settings.plan.max_subtasks
    for span in spans:
        assert (span["end"] - span["start"] + 1) / ctx.fps >= 1.5
    # every request carries the run's settings and its own seed
    items = [c["seed"] for c in client.calls]
    assert len(set(items)) == len(items), "a distinct seed per item"
    for call in client.calls:
        assert call["module"] == "plan" and call["model"] == ctx.model
        assert call["temperature"] == 0.3 and call["max_tokens"] == 512
        assert call["chat_template_kwargs"] == {"enable_thinking": False}
        assert callable(call["parse"])
    assert {c["seed"] for c in client.calls_named(SCHEMA_NAMES["plan"])} == {
        ctx.seed_for("plan", "plan")
    }
    # the memory chain: each request sees the previous memory and the completed subtask
    memory_calls = client.calls_named(SCHEMA_NAMES["memory"])
    memories = [r.content for r in out.rows if r.style == "memory"]
    assert len(memory_calls) == len(spans) - 1 == len(memories)
    for i, call in enumerate(memory_calls):
        text = prompt_text(call)
        assert spans[i]["label"] in text and ctx.task in text
        if i > 0:
            assert memories[i - 1] in text
            assert call["started"] >= memory_calls[i - 1]["ended"], "sequential chain"
    # after the spans, plan, task_aug and the first memory request run concurrently
    last_window_end = max(c["ended"] for c in window_calls)
    plan_call = client.calls_named(SCHEMA_NAMES["plan"])[0]
    aug_call = client.calls_named(SCHEMA_NAMES["task_aug"])[0]
    first_memory = memory_calls[0]
    assert min(plan_call["started"], aug_call["started"]) >= last_window_end
    earliest_end = min(plan_call["ended"], aug_call["ended"], first_memory["ended"])
    assert max(plan_call["started"], aug_call["started"], first_memory["started"]) < earliest_end
    labels = [s["label"] for s in spans]
    assert all(label in prompt_text(plan_call) for label in labels)
    task_augs = [r for r in out.rows if r.style == "task_aug"]
    assert 1 <= len(task_augs) <= settings.plan.task_aug_count


async def test_run_plan_without_cameras_uses_text_prompts() -> None:
    settings = AnnotationSettings(plan=PlanSettings(task_aug_count=0))
    ctx = make_context(n_frames=80, cameras=(), settings=settings)
    async with sim_client(replicas=1) as (_fleet, client):
        out = await run_plan(ctx, client)
    _assert_plan_rows(ctx, out)
    assert all(image_count(c) == 0 for c in client.calls)
    assert client.calls_named(SCHEMA_NAMES["task_aug"]) == []
    assert not [r for r in out.rows if r.style == "task_aug"]
    assert out.extra["camera"] is None


async def test_run_plan_respects_max_subtasks() -> None:
    settings = AnnotationSettings(
        plan=PlanSettings(sample_hz=2.0, frames_per_request=16, max_subtasks=2)
    )
    ctx = make_context(n_frames=200, settings=settings)
    async with sim_client(replicas=1) as (_fleet, client):
        out = await run_plan(ctx, client)
    _assert_plan_rows(ctx, out)
    assert len(out.extra["subtasks"]) <= 2


async def test_run_plan_is_deterministic() -> None:
    ctx = make_context(n_frames=150, settings=AnnotationSettings(seed=7))
    async with sim_client() as (_fleet, client):
        first = await run_plan(ctx, client)
        second = await run_plan(ctx, client)
    assert first.rows == second.rows and first.extra == second.extra


async def test_no_usable_subtask_answer_is_a_recorded_failure_and_the_rest_goes_on() -> None:
    ctx = make_context(n_frames=100)
    async with sim_client(replicas=1) as (fleet, client):
        fleet.set_faults(0, garbage_rate=1.0)
        out = await run_plan(ctx, client)
    assert out.extra["subtasks"] == []
    assert not [r for r in out.rows if r.style in ("subtask", "plan", "memory")]
    failed = {f.item: f for f in out.failures}
    assert "no usable subtask answer" in failed["subtasks"].message
    assert failed["subtasks"].kind == "BadAnswerError"
