"""The interjections module (docs/CONTRACT.md §3): spoken acknowledgement, interjections,
replanning.

Reads the subtask spans and the effective task the plan module recorded in
``ctx.upstream["plan"].extra`` (``subtasks``, ``task``): every prompt uses the plan's task, so
a task derived from the video reaches these prompts too.

* Frame 0: a speech atom with the robot's short spoken acknowledgement of the task.
* Up to ``max_interjections`` subtask boundaries (span starts other than frame 0 whose stored
  timestamp is at least ``interjection_min_s``), chosen with
  ``random.Random(ctx.seed_for("interjections"))`` so the choice is fixed per run seed and
  episode. For each, one request sees ``context_frames`` frames around the boundary (half a
  second apart, half before it; the view camera of :func:`common.cameras.view_camera`, the
  same as the plan module's, or a text-only prompt without one) and the label of the
  subtask that follows, and returns what a person says and what the robot replies. When
  plans are on (``plan.emit_plan``), a second request rewrites the plan from the remaining
  subtasks and the interjection. On the boundary frame the module emits the ``interjection``
  row (user), a speech atom with the reply, and the refreshed ``plan`` row (persistent,
  assistant). That row supersedes the plan module's scheduled plan row on the same frame
  (the writer keeps only this one).

Invariant: an interjection is emitted only together with its speech atom and, when plans are
on, its plan row; if a request fails, none of them is emitted and the item is a failure. The
acknowledgement and every interjection run concurrently.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import orjson

from narrator.common.cameras import view_camera
from narrator.common.contract import say_tool_call
from narrator.common.errors import ContractError
from narrator.common.staging import Failure, StagedRow
from narrator.workers.modules import schemas
from narrator.workers.modules.answers import (
    bulleted,
    numbered,
    parse_interjection,
    parse_steps,
    parse_utterance,
)
from narrator.workers.modules.asking import (
    Collected,
    ask,
    frame_caption,
    gather_all,
    merge,
    user_message,
)
from narrator.workers.modules.base import EpisodeContext, ModuleOutput
from narrator.workers.modules.spans import Span, spans_from_extra
from narrator.workers.modules.ticks import spread_frames

if TYPE_CHECKING:
    from narrator.workers.vlm_api import VLM

MODULE = "interjections"
CONTEXT_STEP_S = 0.5


def speech_row(frame: int, text: str) -> StagedRow:
    """A speech atom: style null, role assistant, content null, one ``say`` tool call."""
    call: dict[str, Any] = orjson.loads(say_tool_call(text))
    return StagedRow(
        column="events",
        frame=frame,
        role="assistant",
        content=None,
        style=None,
        tool_calls=(call,),
    )


def choose_boundaries(
    spans: Sequence[Span],
    timestamps: Sequence[float],
    *,
    max_count: int,
    min_time_s: float,
    seed: int,
) -> list[int]:
    """Indices into ``spans`` of the subtasks at whose start an interjection happens, in
    increasing order: at most ``max_count`` of the spans that start after frame 0 at a time
    of at least ``min_time_s``, drawn with ``random.Random(seed)``."""
    candidates = [
        i for i, s in enumerate(spans) if s.start > 0 and timestamps[s.start] >= min_time_s
    ]
    count = min(max_count, len(candidates))
    return sorted(random.Random(seed).sample(candidates, count))


def upstream_task(ctx: EpisodeContext) -> str:
    """The effective task the plan module used (the dataset's task for older results)."""
    plan = ctx.upstream.get("plan")
    task = plan.extra.get("task") if plan is not None else None
    return task if isinstance(task, str) and task else ctx.task


def upstream_spans(ctx: EpisodeContext) -> list[Span]:
    """The plan module's spans for this episode; ``ContractError`` when they are missing."""
    plan = ctx.upstream.get("plan")
    if plan is None:
        raise ContractError(
            f"episode {ctx.episode.index}: the interjections module needs the plan module's "
            "result (ctx.upstream['plan']); run the plan module first"
        )
    try:
        spans = spans_from_extra(plan.extra.get("subtasks"))
    except ValueError as exc:
        raise ContractError(f"episode {ctx.episode.index}: plan result unusable: {exc}") from exc
    if any(not 0 <= s.start <= s.end < ctx.length for s in spans):
        raise ContractError(
            f"episode {ctx.episode.index}: plan spans reach outside the episode's "
            f"{ctx.length} frames; the plan result is stale, re-run the plan module"
        )
    return spans


async def _acknowledge(ctx: EpisodeContext, client: VLM) -> Collected:
    got = await ask(
        ctx,
        client,
        module=MODULE,
        item="ack",
        messages=user_message(ctx.prompts.render("interjections.ack", task=ctx.task)),
        schema=schemas.ack_schema(),
        schema_name=schemas.SCHEMA_NAMES["ack"],
        parse=parse_utterance,
        on_chain=True,
    )
    if isinstance(got, Failure):
        return Collected(failures=[got])
    return Collected(rows=[speech_row(0, got)])


async def _interjection_messages(
    ctx: EpisodeContext, spans: Sequence[Span], index: int
) -> list[dict[str, Any]]:
    boundary = spans[index].start
    values = {
        "task": ctx.task,
        "done_subtasks": bulleted([s.label for s in spans[:index]]),
        "next_subtask": spans[index].label,
        "time_s": f"{ctx.time_of(boundary):.2f}",
    }
    view = view_camera(ctx.settings, ctx.cameras)
    if view is None:
        return user_message(ctx.prompts.render("interjections.interjection_text", **values))
    camera = view.key
    step = max(1, round(ctx.fps * CONTEXT_STEP_S))
    frames = spread_frames(boundary, ctx.settings.interjections.context_frames, step, ctx.length)
    images = await ctx.frame_source.get(camera, frames)
    captioned = [
        (frame_caption(i, ctx.time_of(f)), image)
        for i, (f, image) in enumerate(zip(frames, images, strict=True))
    ]
    prompt = ctx.prompts.render("interjections.interjection", camera=camera, **values)
    return user_message(prompt, captioned)


async def _interjection(
    ctx: EpisodeContext, client: VLM, spans: Sequence[Span], index: int
) -> Collected:
    boundary = spans[index].start
    item = f"interjection:{boundary}"
    heard = await ask(
        ctx,
        client,
        module=MODULE,
        item=item,
        messages=await _interjection_messages(ctx, spans, index),
        schema=schemas.interjection_schema(),
        schema_name=schemas.SCHEMA_NAMES["interjection"],
        parse=parse_interjection,
        on_chain=True,
    )
    if isinstance(heard, Failure):
        return Collected(failures=[heard])
    said, reply = heard
    said_rows = [
        StagedRow(column="events", frame=boundary, role="user", content=said, style="interjection"),
        speech_row(boundary, reply),
    ]
    if not ctx.settings.plan.emit_plan:
        return Collected(rows=said_rows)
    remaining = [s.label for s in spans[index:]]
    max_steps = len(remaining) + 1
    prompt = ctx.prompts.render(
        "interjections.plan_refresh",
        task=ctx.task,
        done_subtasks=bulleted([s.label for s in spans[:index]]),
        interjection=said,
        reply=reply,
        remaining_subtasks=numbered(remaining),
        max_steps=max_steps,
    )
    plan = await ask(
        ctx,
        client,
        module=MODULE,
        item=f"plan_refresh:{boundary}",
        messages=user_message(prompt),
        schema=schemas.steps_schema(max_steps),
        schema_name=schemas.SCHEMA_NAMES["plan_refresh"],
        parse=parse_steps,
        failure_item=item,  # the interjection fails as a whole: no row without its plan
        on_chain=True,
    )
    if isinstance(plan, Failure):
        return Collected(failures=[plan])
    plan_row = StagedRow(
        column="persistent", frame=boundary, role="assistant", content=numbered(plan), style="plan"
    )
    return Collected(rows=[*said_rows, plan_row])


async def run_interjections(ctx: EpisodeContext, client: VLM) -> ModuleOutput:
    """Annotate one episode with the acknowledgement and interjections (see module doc)."""
    spans = upstream_spans(ctx)
    ctx = dataclasses.replace(ctx, task=upstream_task(ctx))
    settings = ctx.settings.interjections
    chosen = choose_boundaries(
        spans,
        [float(t) for t in ctx.frames.timestamp],
        max_count=settings.max_interjections,
        min_time_s=settings.interjection_min_s,
        seed=ctx.seed_for(MODULE),
    )
    parts = await gather_all(
        [_acknowledge(ctx, client), *(_interjection(ctx, client, spans, i) for i in chosen)]
    )
    collected = merge(parts)
    return ModuleOutput(
        rows=collected.rows,
        failures=collected.failures,
        extra={"interjection_frames": [spans[i].start for i in chosen]},
    )
