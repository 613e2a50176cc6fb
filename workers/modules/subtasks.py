"""The plan module's subtask pipeline: sample, window, (describe,) segment, stitch, (relabel).

1. **Sample.** Contact-sheet mode: frames at ``plan.frames_per_second`` (plus the last frame),
   windows of at most ``plan.max_frames_per_prompt`` frames. Per-frame mode: frames at
   ``plan.sample_hz``, windows of at most ``plan.frames_per_request``. Neighbouring windows
   overlap by one or two frames (:func:`workers.modules.spans.plan_windows`). All sampled
   frames are fetched from the frame source in one call.
2. **Describe** (``plan.subtask_describe_first``, needs a camera). Per window, one request
   shows the window's frames and asks for a chronological description of what the robot
   visibly does. A failed description is recorded and the window is segmented without one.
3. **Segment.** Per window, one request shows the same frames (the same sheets) with the
   description (``plan.observations`` block) and asks for subtask starts: episode times read
   off the badges (contact sheets) or numbers of the frames shown (per frame). Windows run
   concurrently; inside a window, describe comes first. Without a camera the text-only
   prompt ``plan.subtasks_text`` lists the sampled times instead.
4. **Stitch.** The windows' boundaries become one gap-free cover, snapped to distinct frames,
   merged to at least ``min_subtask_seconds`` and at most ``max_subtasks`` spans
   (:mod:`workers.modules.spans`). No usable window at all raises ``BadAnswerError``.
5. **Relabel** (``plan.subtask_seeded_relabel``, needs a camera). Per span, concurrently, one
   request shows ``plan.subtask_relabel_frames`` frames of the previous, current and next
   spans (each as its own sheet or its own captioned group) and the span's label as a strong
   prior, and asks for a corrected label. Boundaries never move and spans never merge here;
   a failed relabel keeps the first label and is recorded.

Item names (seeds and failures): ``describe:<w>``, ``subtasks:<w>``, ``relabel:<start>``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from narrator.common.errors import BadAnswerError
from narrator.common.staging import Failure
from narrator.workers.modules import schemas
from narrator.workers.modules.answers import (
    parse_description,
    parse_relabel,
    parse_sheet_subtasks,
    parse_subtasks,
)
from narrator.workers.modules.asking import (
    Collected,
    ask,
    frame_caption,
    gather_all,
    merge,
    user_message,
)
from narrator.workers.modules.spans import (
    Boundary,
    Span,
    Window,
    build_spans,
    clean_label,
    plan_windows,
    stitch_windows,
    window_boundaries,
    window_boundaries_at_times,
)
from narrator.workers.modules.ticks import sample_frames
from narrator.workers.modules.views import Viewer, span_frames

if TYPE_CHECKING:
    from narrator.workers.modules.base import EpisodeContext
    from narrator.workers.vlm_api import VLM

MODULE = "plan"


@dataclass(frozen=True)
class Sampling:
    frames: list[int]
    windows: list[Window]


def sampling(ctx: EpisodeContext, viewer: Viewer | None) -> Sampling:
    """The sampled frames and their windows for this episode and mode."""
    plan = ctx.settings.plan
    sheets = viewer is not None and viewer.layout is not None
    hz = plan.frames_per_second if sheets else plan.sample_hz
    budget = plan.max_frames_per_prompt if sheets else plan.frames_per_request
    frames = sample_frames(ctx.frames.timestamp, hz)
    return Sampling(frames, plan_windows(frames, budget))


def _window_values(ctx: EpisodeContext, window: Window, part: int, parts: int) -> dict[str, Any]:
    times = [ctx.time_of(f) for f in window.frames]
    return {
        "task": ctx.task,
        "n_frames": len(window.frames),
        "last_position": len(window.frames) - 1,
        "window_start_s": f"{times[0]:.2f}",
        "window_end_s": f"{times[-1]:.2f}",
        "duration_s": f"{ctx.time_of(ctx.length - 1) + 1.0 / ctx.fps:.2f}",
        "part": part + 1,
        "parts": parts,
        "max_subtasks": ctx.settings.plan.max_subtasks,
        "min_seconds": f"{ctx.settings.plan.min_subtask_seconds:g}",
    }


def observations_block(ctx: EpisodeContext, description: str | None) -> str:
    """The segmentation prompt's ``$observations``: the description, or nothing."""
    if not description:
        return ""
    return ctx.prompts.render("plan.observations", description=description)


async def subtasks_messages(
    ctx: EpisodeContext,
    viewer: Viewer | None,
    window: Window,
    part: int,
    parts: int,
    description: str | None = None,
) -> list[dict[str, Any]]:
    """The segmentation request of one window (contact sheets, captioned frames or text)."""
    values = _window_values(ctx, window, part, parts)
    observations = observations_block(ctx, description)
    if viewer is None:
        times = [ctx.time_of(f) for f in window.frames]
        listing = "\n".join(frame_caption(i, t).rstrip(":") for i, t in enumerate(times))
        prompt = ctx.prompts.render("plan.subtasks_text", frame_list=listing, **values)
        return user_message(prompt)
    name = "plan.subtasks_sheets" if viewer.layout is not None else "plan.subtasks"
    prompt = ctx.prompts.render(
        name,
        camera=viewer.camera,
        image_guide=viewer.image_guide(),
        observations=observations,
        **values,
    )
    return user_message(prompt, await viewer.shown(window.frames, numbered=True))


async def _describe(
    ctx: EpisodeContext, client: VLM, viewer: Viewer, window: Window, part: int, parts: int
) -> str | Failure:
    values = _window_values(ctx, window, part, parts)
    prompt = ctx.prompts.render(
        "plan.describe", camera=viewer.camera, image_guide=viewer.image_guide(), **values
    )
    return await ask(
        ctx,
        client,
        module=MODULE,
        item=f"describe:{part}",
        messages=user_message(prompt, await viewer.shown(window.frames, numbered=True)),
        schema=schemas.describe_schema(),
        schema_name=schemas.SCHEMA_NAMES["describe"],
        parse=parse_description,
        on_chain=True,
    )


async def _segment_window(
    ctx: EpisodeContext, client: VLM, viewer: Viewer | None, window: Window, part: int, parts: int
) -> tuple[list[Boundary] | None, Collected]:
    out = Collected()
    description: str | None = None
    if viewer is not None and ctx.settings.plan.subtask_describe_first:
        described = await _describe(ctx, client, viewer, window, part, parts)
        if isinstance(described, Failure):
            out.failures.append(described)
        else:
            description = described
    sheets = viewer is not None and viewer.layout is not None
    n_frames = len(window.frames)
    first_s, last_s = ctx.time_of(window.frames[0]), ctx.time_of(window.frames[-1])

    def parse(data: dict[str, Any]) -> list[Boundary]:
        if sheets:
            pairs = parse_sheet_subtasks(data, first_s, last_s)
            return window_boundaries_at_times(window, pairs, ctx.frames.timestamp)
        return window_boundaries(window, parse_subtasks(data, n_frames))

    max_subtasks = ctx.settings.plan.max_subtasks
    schema = (
        schemas.sheet_subtasks_schema(first_s, last_s, max_subtasks)
        if sheets
        else schemas.subtasks_schema(n_frames, max_subtasks)
    )
    got = await ask(
        ctx,
        client,
        module=MODULE,
        item=f"subtasks:{part}",
        messages=await subtasks_messages(ctx, viewer, window, part, parts, description),
        schema=schema,
        schema_name=schemas.SCHEMA_NAMES["subtasks"],
        parse=parse,
        on_chain=True,
    )
    if isinstance(got, Failure):
        out.failures.append(got)
        return None, out
    return got, out


async def find_spans(
    ctx: EpisodeContext, client: VLM, viewer: Viewer | None
) -> tuple[list[Span], Collected]:
    """The episode's subtask spans (before relabelling) and the failures on the way."""
    settings = ctx.settings.plan
    sampled = sampling(ctx, viewer)
    if viewer is not None:
        await viewer.fetch(sampled.frames)
    windows = sampled.windows
    results = await gather_all(
        [
            _segment_window(ctx, client, viewer, window, i, len(windows))
            for i, window in enumerate(windows)
        ]
    )
    collected = merge([r[1] for r in results])
    try:
        boundaries = stitch_windows(windows, [r[0] for r in results])
    except ValueError as exc:
        reasons = "; ".join(f"{f.item}: {f.message}" for f in collected.failures)
        raise BadAnswerError(
            f"episode {ctx.episode.index}: no usable subtask answer from any of "
            f"{len(windows)} request(s) ({reasons or exc}); check the model and the "
            "plan.subtasks prompts"
        ) from exc
    spans = build_spans(
        boundaries,
        ctx.frames.timestamp,
        fps=ctx.fps,
        min_seconds=settings.min_subtask_seconds,
        max_spans=settings.max_subtasks,
    )
    return spans, collected


async def _relabel_messages(
    ctx: EpisodeContext, viewer: Viewer, spans: Sequence[Span], index: int
) -> list[dict[str, Any]]:
    count = ctx.settings.plan.subtask_relabel_frames
    span = spans[index]
    sections = (
        ("previous", "Previous segment (context only):", index - 1),
        ("current", "Current segment (label this one):", index),
        ("next", "Next segment (context only):", index + 1),
    )
    shown: list[tuple[str, Any]] = []
    present: list[str] = []
    for name, heading, i in sections:
        if 0 <= i < len(spans):
            present.append(name)
            frames = span_frames(spans[i].start, spans[i].end, count)
            shown += await viewer.shown(frames, heading=heading)
    prompt = ctx.prompts.render(
        "plan.relabel",
        task=ctx.task,
        camera=viewer.camera,
        image_guide=viewer.image_guide(),
        seed_label=span.label,
        segment_number=index + 1,
        segment_count=len(spans),
        start_s=f"{ctx.time_of(span.start):.2f}",
        end_s=f"{ctx.time_of(span.end):.2f}",
        segments_shown=", ".join(present),
    )
    return user_message(prompt, shown)


async def _relabel_one(
    ctx: EpisodeContext, client: VLM, viewer: Viewer, spans: Sequence[Span], index: int
) -> tuple[Span, Collected]:
    span = spans[index]
    got = await ask(
        ctx,
        client,
        module=MODULE,
        item=f"relabel:{span.start}",
        messages=await _relabel_messages(ctx, viewer, spans, index),
        schema=schemas.relabel_schema(),
        schema_name=schemas.SCHEMA_NAMES["relabel"],
        parse=parse_relabel,
        on_chain=True,
    )
    if isinstance(got, Failure):
        return span, Collected(failures=[got])
    label = clean_label(got) or span.label
    return Span(span.start, span.end, label), Collected()


async def relabel_spans(
    ctx: EpisodeContext, client: VLM, viewer: Viewer, spans: Sequence[Span]
) -> tuple[list[Span], Collected]:
    """Every span relabelled (same boundaries), concurrently; failures keep the first label."""
    results = await gather_all(
        [_relabel_one(ctx, client, viewer, spans, i) for i in range(len(spans))]
    )
    return [r[0] for r in results], merge([r[1] for r in results])
