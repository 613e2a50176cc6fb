"""The plan module: answer parsing and plan rows (pure), and whole episodes against the
simulated VLM fleet over real HTTP in both modes (contact sheets and one image per frame):
windows, describe-then-segment, seeded relabel, the memory chain, the plan and memory
switches, concurrency."""

from __future__ import annotations

import itertools

import pytest

from narrator.common.config import AnnotationSettings, PlanSettings
from narrator.common.staging import MODULE_STYLES
from narrator.workers.modules.answers import (
    numbered,
    parse_rephrasings,
    parse_sheet_subtasks,
    parse_steps,
    parse_subtasks,
)
from narrator.workers.modules.base import EpisodeContext, ModuleOutput
from narrator.workers.modules.plan import plan_rows, run_plan
from narrator.workers.modules.schemas import SCHEMA_NAMES
from narrator.workers.modules.spans import Span, Window, plan_windows
from narrator.workers.modules.subtasks import subtasks_messages
from narrator.workers.modules.ticks import sample_frames
from narrator.workers.modules.views import Viewer
from tests.support.module_support import (
    PillowFrameSource,
    contract_findings,
    image_count,
    make_context,
    prompt_text,
    sim_client,
)

PER_FRAME = PlanSettings(contact_sheets=False, subtask_describe_first=False)

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


def test_parse_sheet_subtasks_reads_times_and_clamps_near_misses() -> None:
    data = {"subtasks": [{"start_s": 9.8, "label": "reach"}, {"start_s": 12.0, "label": "grasp"}]}
    assert parse_sheet_subtasks(data, 10.0, 20.0) == [(10.0, "reach"), (12.0, "grasp")]
    for bad in (
        {"subtasks": [{"start_s": 25.0, "label": "x"}]},
        {"subtasks": [{"start_s": True, "label": "x"}]},
        {"subtasks": [{"start_s": "12", "label": "x"}]},
        {"subtasks": [{"start_frame": 0, "label": "x"}]},
    ):
        with pytest.raises(ValueError, match="start_s"):
            parse_sheet_subtasks(bad, 10.0, 20.0)


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


def test_plan_rows_list_the_steps_still_to_do_at_every_subtask_start() -> None:
    spans = [Span(0, 9, "reach the cup"), Span(10, 19, "grasp it"), Span(20, 29, "place it")]
    rows = plan_rows(spans)
    assert [(r.frame, r.content) for r in rows] == [
        (0, "1. reach the cup\n2. grasp it\n3. place it"),
        (10, "1. grasp it\n2. place it"),
        (20, "1. place it"),
    ]
    assert all(
        r.style == "plan" and r.role == "assistant" and r.column == "persistent" for r in rows
    )


async def test_per_frame_messages_caption_every_image_or_list_times_without_camera() -> None:
    ctx = make_context(n_frames=50, settings=AnnotationSettings(plan=PER_FRAME))
    window = Window((0, 10, 20, 30, 40, 49))
    viewer = Viewer(ctx, "observation.images.top", None)
    messages = await subtasks_messages(ctx, viewer, window, 0, 1)
    parts = messages[0]["content"]
    assert [p["type"] for p in parts[1:]] == ["text", "image_url"] * len(window.frames)
    assert parts[1]["text"] == "Frame 0 (t=0.00 s):" and parts[-2]["text"] == "Frame 5 (t=4.90 s):"
    assert "put the three cups on the tray" in parts[0]["text"]
    assert "0 to 5" in parts[0]["text"]
    text_only = await subtasks_messages(make_context(cameras=()), None, window, 1, 3)
    assert isinstance(text_only[0]["content"], str)
    assert "Frame 5 (t=4.90 s)" in text_only[0]["content"]
    assert "part 2 of 3" in text_only[0]["content"]


# --- whole episodes --------------------------------------------------------------------------


def _assert_plan_rows(ctx: EpisodeContext, out: ModuleOutput, *, plans: bool = True) -> None:
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
    plans_written = [(r.frame, r.content) for r in out.rows if r.style == "plan"]
    if plans:
        labels = [s["label"] for s in spans]
        assert plans_written == [(s["start"], numbered(labels[i:])) for i, s in enumerate(spans)]
    else:
        assert plans_written == []
    task_augs = [r for r in out.rows if r.style == "task_aug"]
    assert all(r.frame == 0 for r in task_augs)
    if task_augs:
        assert task_augs[0].content == out.extra["task"], "the effective task comes first"
    per_frame_style = [(r.frame, r.style) for r in out.rows if r.style != "task_aug"]
    assert len(per_frame_style) == len(set(per_frame_style)), "one persistent row per style"
    findings = contract_findings(ctx, "plan", out.rows)
    assert findings == [], findings


async def test_contact_sheets_describe_then_segment_per_window() -> None:
    """Default mode: 30 s at 2 Hz is 61 samples, so two windows of at most 60 frames; each
    window is described, then segmented with that description, on the same sheets."""
    settings = AnnotationSettings(temperature=0.3, max_tokens=512)
    source = PillowFrameSource()
    ctx = make_context(n_frames=300, fps=10.0, settings=settings, frame_source=source)
    async with sim_client() as (_fleet, client):
        out = await run_plan(ctx, client)
    _assert_plan_rows(ctx, out)
    assert out.failures == []
    samples = sample_frames(ctx.frames.timestamp, 2.0)
    windows = plan_windows(samples, 60)
    assert len(windows) == 2
    assert source.calls == [("observation.images.top", tuple(samples))], "one decode pass"
    describes = client.calls_named(SCHEMA_NAMES["describe"])
    segments = client.calls_named(SCHEMA_NAMES["subtasks"])
    assert len(describes) == len(segments) == 2
    for window, describe in zip(windows, sorted(describes, key=lambda c: c["item"]), strict=True):
        sheets = -(-len(window.frames) // 20)
        assert image_count(describe) == sheets, "frames tiled 20 to a sheet"
        segment = next(
            c for c in segments if c["item"] == describe["item"].replace("describe", "subtasks")
        )
        assert image_count(segment) == sheets
        assert segment["messages"][0]["content"][2:] == describe["messages"][0]["content"][2:]
        assert segment["started"] >= describe["ended"], "describe first"
        assert "contact sheet" in prompt_text(segment).lower()
        start = f"{ctx.time_of(window.frames[0]):.2f}"
        assert f"t={start} s" in prompt_text(segment)
        bounds = segment["schema"]["properties"]["subtasks"]["items"]["properties"]["start_s"]
        assert bounds["minimum"] == ctx.time_of(window.frames[0])
        assert bounds["maximum"] == ctx.time_of(window.frames[-1])
    first_sheet = describes[0]["messages"][0]["content"][1]["text"]
    assert first_sheet.startswith("Contact sheet 1 of ")
    task_augs = [r.content for r in out.rows if r.style == "task_aug"]
    assert task_augs[0] == ctx.task and 2 <= len(task_augs) <= 11


async def test_the_description_reaches_the_segmentation_prompt() -> None:
    ctx = make_context(n_frames=100)
    async with sim_client(replicas=1) as (_fleet, client):
        await run_plan(ctx, client)
        describe = client.calls_named(SCHEMA_NAMES["describe"])[0]
        segment = client.calls_named(SCHEMA_NAMES["subtasks"])[0]
        # the simulator answers a request the same way every time: ask the same one again
        request = ctx.chat_request(
            module="plan",
            item=describe["item"],
            messages=describe["messages"],
            schema=describe["schema"],
            schema_name=describe["schema_name"],
        )
        answer = await client.ask(request, describe["parse"])
    assert len(answer.value) >= 10
    assert answer.value in prompt_text(segment)


async def test_a_failed_description_is_recorded_and_the_window_is_still_segmented() -> None:
    ctx = make_context(n_frames=100)
    rejected = frozenset({SCHEMA_NAMES["describe"]})
    async with sim_client(replicas=1, rejected=rejected) as (_fleet, client):
        out = await run_plan(ctx, client)
    _assert_plan_rows(ctx, out)
    assert [f.item for f in out.failures] == ["describe:0"]
    segment = client.calls_named(SCHEMA_NAMES["subtasks"])[0]
    assert "you watched these frames and described" not in prompt_text(segment)


async def test_per_frame_mode_windows_memory_chain_and_concurrency() -> None:
    settings = AnnotationSettings(
        plan=PlanSettings(
            contact_sheets=False,
            subtask_describe_first=False,
            sample_hz=1.0,
            frames_per_request=5,
            min_subtask_seconds=1.5,
        ),
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
    assert client.calls_named(SCHEMA_NAMES["describe"]) == []
    window_calls = client.calls_named(SCHEMA_NAMES["subtasks"])
    assert len(window_calls) == len(windows)
    assert sorted(image_count(c) for c in window_calls) == sorted(len(w.frames) for w in windows)
    spans = out.extra["subtasks"]
    assert 1 < len(spans) <= settings.plan.max_subtasks
    for span in spans:
        assert (span["end"] - span["start"] + 1) / ctx.fps >= 1.5
    items = [c["seed"] for c in client.calls]
    assert len(set(items)) == len(items), "a distinct seed per item"
    for call in client.calls:
        assert call["module"] == "plan" and call["model"] == ctx.model
        assert call["temperature"] == 0.3 and call["max_tokens"] == 512
        assert call["chat_template_kwargs"] == {"enable_thinking": False}
    # the memory chain: each request sees the previous memory and the completed subtask
    memory_calls = client.calls_named(SCHEMA_NAMES["memory"])
    memories = [r.content for r in out.rows if r.style == "memory"]
    assert len(memory_calls) == len(spans) - 1 == len(memories)
    assert [r.frame for r in out.rows if r.style == "memory"] == [s["start"] for s in spans[1:]]
    for i, call in enumerate(memory_calls):
        text = prompt_text(call)
        assert spans[i]["label"] in text and ctx.task in text
        if i > 0:
            assert memories[i - 1] in text
            assert call["started"] >= memory_calls[i - 1]["ended"], "sequential chain"
    # the rephrasings do not wait for the subtasks
    last_window_end = max(c["ended"] for c in window_calls)
    aug_call = client.calls_named(SCHEMA_NAMES["task_aug"])[0]
    assert aug_call["started"] < last_window_end
    assert memory_calls[0]["started"] >= last_window_end


async def test_seeded_relabel_keeps_boundaries_and_shows_neighbouring_segments() -> None:
    base = PlanSettings(max_subtasks=4)
    ctx = make_context(n_frames=300, settings=AnnotationSettings(plan=base))
    relabel = make_context(
        n_frames=300,
        settings=AnnotationSettings(
            plan=base.model_copy(
                update={"subtask_seeded_relabel": True, "subtask_relabel_frames": 3}
            )
        ),
    )
    async with sim_client() as (_fleet, client):
        first = await run_plan(ctx, client)
        client.calls.clear()
        second = await run_plan(relabel, client)
    _assert_plan_rows(relabel, second)
    before, after = first.extra["subtasks"], second.extra["subtasks"]
    assert len(before) > 1
    assert [(s["start"], s["end"]) for s in before] == [(s["start"], s["end"]) for s in after]
    calls = sorted(client.calls_named(SCHEMA_NAMES["relabel"]), key=lambda c: int(c["item"][8:]))
    assert [c["item"] for c in calls] == [f"relabel:{s['start']}" for s in before]
    for i, (call, seed) in enumerate(zip(calls, before, strict=True)):
        text = prompt_text(call)
        assert f'"{seed["label"]}"' in text, "the first label is the prior"
        neighbours = (i > 0) + (i < len(before) - 1)
        assert image_count(call) == 1 + neighbours, "one 3-frame sheet per segment shown"
        captions = [p["text"] for p in call["messages"][0]["content"][1:] if p["type"] == "text"]
        assert any(c.startswith("Current segment") for c in captions)
        assert any(c.startswith("Previous segment") for c in captions) == (i > 0)
        assert any(c.startswith("Next segment") for c in captions) == (i < len(before) - 1)
    # the plan rows and the memory chain follow the new labels
    memory_prompts = [prompt_text(c) for c in client.calls_named(SCHEMA_NAMES["memory"])]
    for span, text in zip(after, memory_prompts, strict=False):
        assert span["label"] in text


async def test_a_failed_relabel_keeps_the_first_label() -> None:
    settings = AnnotationSettings(plan=PlanSettings(subtask_seeded_relabel=True))
    ctx = make_context(n_frames=200, settings=settings)
    plain = make_context(n_frames=200)
    async with sim_client(replicas=1) as (_fleet, client):
        first = await run_plan(plain, client)
    rejected = frozenset({SCHEMA_NAMES["relabel"]})
    async with sim_client(replicas=1, rejected=rejected) as (_fleet, client):
        out = await run_plan(ctx, client)
    _assert_plan_rows(ctx, out)
    assert out.extra["subtasks"] == first.extra["subtasks"]
    spans = out.extra["subtasks"]
    assert sorted(f.item for f in out.failures) == sorted(f"relabel:{s['start']}" for s in spans)


@pytest.mark.parametrize(("plans", "memory"), [(False, True), (True, False), (False, False)])
async def test_plan_and_memory_rows_switch_off(plans: bool, memory: bool) -> None:
    settings = AnnotationSettings(plan=PlanSettings(emit_plan=plans, emit_memory=memory))
    ctx = make_context(n_frames=150, settings=settings)
    async with sim_client(replicas=1) as (_fleet, client):
        out = await run_plan(ctx, client)
    _assert_plan_rows(ctx, out, plans=plans)
    assert bool([r for r in out.rows if r.style == "memory"]) == memory
    assert bool(client.calls_named(SCHEMA_NAMES["memory"])) == memory


async def test_run_plan_without_cameras_uses_text_prompts() -> None:
    settings = AnnotationSettings(
        plan=PlanSettings(
            task_aug_count=0, subtask_seeded_relabel=True, derive_task_from_video="always"
        )
    )
    ctx = make_context(n_frames=80, cameras=(), settings=settings)
    async with sim_client(replicas=1) as (_fleet, client):
        out = await run_plan(ctx, client)
    _assert_plan_rows(ctx, out)
    assert all(image_count(c) == 0 for c in client.calls)
    assert {c["schema_name"] for c in client.calls} <= {
        SCHEMA_NAMES["subtasks"],
        SCHEMA_NAMES["memory"],
    }, "nothing to describe, relabel or derive without images"
    assert not [r for r in out.rows if r.style == "task_aug"]
    assert out.extra["camera"] is None and out.extra["task"] == ctx.task


async def test_run_plan_respects_max_subtasks() -> None:
    settings = AnnotationSettings(plan=PlanSettings(frames_per_second=4.0, max_subtasks=2))
    ctx = make_context(n_frames=200, settings=settings)
    async with sim_client(replicas=1) as (_fleet, client):
        out = await run_plan(ctx, client)
    _assert_plan_rows(ctx, out)
    assert len(out.extra["subtasks"]) <= 2


async def test_run_plan_is_deterministic() -> None:
    settings = AnnotationSettings(seed=7, plan=PlanSettings(subtask_seeded_relabel=True))
    ctx = make_context(n_frames=150, settings=settings)
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
    assert sorted(failed) == ["subtasks", "task_aug"]
    assert "describe:0" in failed["subtasks"].message, "the reasons of every window"
    assert [r.content for r in out.rows] == [ctx.task], "the effective task row stays"
