"""The plan module (docs/CONTRACT.md §3): subtask spans, plans, the memory chain, task variants.

Flow of one episode:

1. **Camera.** The view camera (:func:`common.cameras.view_camera`: ``plan.camera``, else the
   first non-depth video camera); none means text-only prompts. Frames are shown as contact
   sheets or one image each (:mod:`workers.modules.views`).
2. **Task.** The effective task (:mod:`workers.modules.task_variants`): the dataset's, or one
   derived from the video when ``plan.derive_task_from_video`` asks for it. Every prompt below
   uses it.
3. Then, concurrently: the ``task_aug`` variants (the effective task first), and the subtask
   pipeline (:mod:`workers.modules.subtasks`: describe, segment, stitch, relabel) followed by
   the memory chain (sequential: each request sees the previous memory, the completed
   subtask and the task).

Rows (all persistent, camera null): ``subtask`` (assistant) at each span's first frame;
``plan`` (assistant) at each span's first frame, listing the labels of that span and every
later one, numbered (deterministic, no request; ``--no-plan`` writes none); ``memory``
(assistant) at each span start after the first (``--no-memory`` writes none, and asks
nothing); ``task_aug`` (user) at frame 0.

``extra`` records ``subtasks`` (``[{"start", "end", "label"}]``, episode frames, ``end``
inclusive), ``camera`` (the view camera's key or None) and ``task`` (the effective task) for
the interjections module. No usable subtask answer at all is recorded as a failure of the
``subtasks`` item; the episode then gets only its task variants. Any other failed request is
an item failure and the rest goes on.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING

from narrator.common.cameras import view_camera
from narrator.common.errors import BadAnswerError, DatasetError
from narrator.common.staging import Failure, StagedRow
from narrator.workers.modules import schemas
from narrator.workers.modules.answers import bulleted, numbered, parse_memory
from narrator.workers.modules.asking import (
    Collected,
    ask,
    gather_pair,
    item_failure,
    merge,
    user_message,
)
from narrator.workers.modules.base import EpisodeContext, ModuleOutput
from narrator.workers.modules.spans import Span
from narrator.workers.modules.subtasks import find_spans, relabel_spans
from narrator.workers.modules.task_variants import effective_task, task_variants
from narrator.workers.modules.views import Viewer, sheet_layout

if TYPE_CHECKING:
    from narrator.workers.vlm_api import VLM

MODULE = "plan"


def _persistent(frame: int, role: str, content: str, style: str) -> StagedRow:
    return StagedRow(column="persistent", frame=frame, role=role, content=content, style=style)


def plan_rows(spans: Sequence[Span]) -> list[StagedRow]:
    """At every span start, the numbered labels of that span and all later ones."""
    labels = [s.label for s in spans]
    return [
        _persistent(span.start, "assistant", numbered(labels[i:]), "plan")
        for i, span in enumerate(spans)
    ]


async def _memory_chain(ctx: EpisodeContext, client: VLM, spans: Sequence[Span]) -> Collected:
    out = Collected()
    previous = ""
    for i in range(1, len(spans)):
        boundary = spans[i].start
        prompt = ctx.prompts.render(
            "plan.memory",
            task=ctx.task,
            previous_memory=previous,
            completed_subtask=spans[i - 1].label,
            completed_count=i,
            total_count=len(spans),
            remaining_subtasks=bulleted([s.label for s in spans[i:]]),
        )
        got = await ask(
            ctx,
            client,
            module=MODULE,
            item=f"memory:{boundary}",
            messages=user_message(prompt),
            schema=schemas.memory_schema(),
            schema_name=schemas.SCHEMA_NAMES["memory"],
            parse=parse_memory,
            on_chain=True,
        )
        if isinstance(got, Failure):
            out.failures.append(got)
            continue
        previous = got
        out.rows.append(_persistent(boundary, "assistant", previous, "memory"))
    return out


async def _subtasks_and_memory(
    ctx: EpisodeContext, client: VLM, viewer: Viewer | None
) -> tuple[list[Span] | None, Collected]:
    """The spans (None when no window answered) and the rows that follow from them."""
    try:
        spans, collected = await find_spans(ctx, client, viewer)
    except BadAnswerError as exc:
        return None, Collected(failures=[item_failure(ctx, MODULE, "subtasks", exc)])
    if viewer is not None and ctx.settings.plan.subtask_seeded_relabel:
        spans, relabelled = await relabel_spans(ctx, client, viewer, spans)
        collected = merge([collected, relabelled])
    rows = Collected(rows=[_persistent(s.start, "assistant", s.label, "subtask") for s in spans])
    if ctx.settings.plan.emit_plan:
        rows.rows += plan_rows(spans)
    memory = Collected()
    if ctx.settings.plan.emit_memory:
        memory = await _memory_chain(ctx, client, spans)
    return spans, merge([collected, rows, memory])


async def run_plan(ctx: EpisodeContext, client: VLM) -> ModuleOutput:
    """Annotate one episode with subtask, plan, memory and task_aug rows (see module doc)."""
    if ctx.length == 0:
        raise DatasetError(
            ctx.episode.data_file,
            f"episode {ctx.episode.index} has no frames; remove it from meta/episodes or "
            "re-export the dataset",
        )
    camera = view_camera(ctx.settings, ctx.cameras)
    viewer = Viewer(ctx, camera.key, sheet_layout(ctx)) if camera is not None else None
    task, derived = await effective_task(ctx, client, viewer)
    ctx = dataclasses.replace(ctx, task=task)  # the viewer needs no task: it keeps the old ctx
    (spans, pipeline), variants = await gather_pair(
        _subtasks_and_memory(ctx, client, viewer), task_variants(ctx, client, task)
    )
    collected = merge([derived, pipeline, variants])
    return ModuleOutput(
        rows=collected.rows,
        failures=collected.failures,
        extra={
            "subtasks": [s.to_dict() for s in spans or []],
            "camera": camera.key if camera is not None else None,
            "task": task,
        },
    )
