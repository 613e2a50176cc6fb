"""The plan module's task handling: the effective task and its ``task_aug`` variants.

**Effective task.** ``plan.derive_task_from_video`` decides whether the VLM is asked what the
episode shows: ``off`` never, ``always`` for every episode, ``if_short`` when the dataset's
task is empty, a placeholder (:func:`is_placeholder_task`) or has fewer than
``plan.derive_task_min_words`` words. The request shows the whole episode (at most one
window's worth of frames, spread evenly) without the dataset's task, so the answer is not
primed by it. The derived task replaces the dataset's task in every prompt of the plan module
(and, through the plan's result, of the interjections module); it is never written to
``meta/tasks.parquet``. Without a camera, or when the request fails (a recorded failure of
item ``derive_task``), the dataset's task stays.

**Variants.** ``task_aug`` rows (role user, frame 0): the effective task first, then either
``plan.task_aug_count`` free rephrasings (one request, ``plan.task_aug``) or, with
``plan.task_aug_axes``, variants along five named axes with their own counts (one request,
``plan.task_aug_axes``; an axis with nothing to omit yields fewer). Variants never repeat each
other or the task (compared ignoring case). A count of 0 with axes off writes no ``task_aug``
rows at all; a failed request still writes the effective task row and records the failure.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from narrator.common.staging import Failure, StagedRow
from narrator.workers.modules import schemas
from narrator.workers.modules.answers import parse_axes, parse_rephrasings, parse_task
from narrator.workers.modules.asking import Collected, ask, user_message
from narrator.workers.modules.ticks import sample_frames
from narrator.workers.modules.views import Viewer, evenly

if TYPE_CHECKING:
    from narrator.workers.modules.base import EpisodeContext
    from narrator.workers.vlm_api import VLM

MODULE = "plan"

PLACEHOLDER_TASKS: frozenset[str] = frozenset(
    {
        "debug",
        "default",
        "demo",
        "dummy",
        "example",
        "n/a",
        "na",
        "none",
        "null",
        "placeholder",
        "sample",
        "task",
        "tbd",
        "test",
        "testing",
        "todo",
        "unknown",
        "unnamed",
        "untitled",
    }
)
_NUMBERED_PLACEHOLDER = re.compile(r"^(task|episode|demo|test|recording)[\s_#-]*\d+$")


def is_placeholder_task(task: str) -> bool:
    """Whether ``task`` is empty or a stand-in (``"debug"``, ``"task_3"``, ``"TODO"``...)."""
    text = " ".join(task.split()).strip(" .!").casefold()
    return not text or text in PLACEHOLDER_TASKS or bool(_NUMBERED_PLACEHOLDER.match(text))


def wants_derived_task(task: str, mode: str, min_words: int) -> bool:
    """Whether the task is to be derived from the video under ``mode``."""
    if mode == "always":
        return True
    if mode == "if_short":
        return is_placeholder_task(task) or len(task.split()) < min_words
    return False


def _overview_frames(ctx: EpisodeContext, viewer: Viewer) -> list[int]:
    plan = ctx.settings.plan
    if viewer.layout is not None:
        frames = sample_frames(ctx.frames.timestamp, plan.frames_per_second)
        return evenly(frames, plan.max_frames_per_prompt)
    return evenly(sample_frames(ctx.frames.timestamp, plan.sample_hz), plan.frames_per_request)


async def derive_task(ctx: EpisodeContext, client: VLM, viewer: Viewer) -> str | Failure:
    """Ask what the episode shows, as one instruction (no task hint in the prompt)."""
    frames = _overview_frames(ctx, viewer)
    prompt = ctx.prompts.render(
        "plan.derive_task",
        camera=viewer.camera,
        image_guide=viewer.image_guide(),
        duration_s=f"{ctx.time_of(ctx.length - 1) + 1.0 / ctx.fps:.2f}",
    )
    return await ask(
        ctx,
        client,
        module=MODULE,
        item="derive_task",
        messages=user_message(prompt, await viewer.shown(frames, numbered=True)),
        schema=schemas.derive_task_schema(),
        schema_name=schemas.SCHEMA_NAMES["derive_task"],
        parse=parse_task,
        on_chain=True,
    )


async def effective_task(
    ctx: EpisodeContext, client: VLM, viewer: Viewer | None
) -> tuple[str, Collected]:
    """The task the plan module's prompts use, and the failure of deriving it if any."""
    plan = ctx.settings.plan
    task = " ".join(ctx.task.split())
    if viewer is None or not wants_derived_task(
        task, plan.derive_task_from_video, plan.derive_task_min_words
    ):
        return task, Collected()
    got = await derive_task(ctx, client, viewer)
    if isinstance(got, Failure):
        return task, Collected(failures=[got])
    return got, Collected()


def _task_aug_row(text: str) -> StagedRow:
    return StagedRow(column="persistent", frame=0, role="user", content=text, style="task_aug")


async def _free_rephrasings(ctx: EpisodeContext, client: VLM, task: str) -> list[str] | Failure:
    count = ctx.settings.plan.task_aug_count
    prompt = ctx.prompts.render("plan.task_aug", task=task, count=count)

    def parse(data: dict[str, Any]) -> list[str]:
        texts = parse_rephrasings(data, task)
        if not texts:
            raise ValueError("every rephrasing repeats the task; each must be worded differently")
        return texts[:count]

    return await ask(
        ctx,
        client,
        module=MODULE,
        item="task_aug",
        messages=user_message(prompt),
        schema=schemas.task_aug_schema(count),
        schema_name=schemas.SCHEMA_NAMES["task_aug"],
        parse=parse,
        on_chain=True,
    )


async def _axes_variants(ctx: EpisodeContext, client: VLM, task: str) -> list[str] | Failure:
    counts = ctx.settings.plan.task_aug_axis_counts()
    prompt = ctx.prompts.render(
        "plan.task_aug_axes", task=task, **{f"n_{axis}": n for axis, n in counts.items()}
    )

    def parse(data: dict[str, Any]) -> list[str]:
        return parse_axes(data, counts, task)

    return await ask(
        ctx,
        client,
        module=MODULE,
        item="task_aug",
        messages=user_message(prompt),
        schema=schemas.task_aug_axes_schema(counts),
        schema_name=schemas.SCHEMA_NAMES["task_aug_axes"],
        parse=parse,
        on_chain=True,
    )


async def task_variants(ctx: EpisodeContext, client: VLM, task: str) -> Collected:
    """The ``task_aug`` rows: ``task`` first, then its variants (see module doc)."""
    plan = ctx.settings.plan
    if not task or (plan.task_aug_count == 0 and not plan.task_aug_axes):
        return Collected()
    if plan.task_aug_axes:
        if sum(plan.task_aug_axis_counts().values()) == 0:
            return Collected(rows=[_task_aug_row(task)])
        got = await _axes_variants(ctx, client, task)
    else:
        got = await _free_rephrasings(ctx, client, task)
    if isinstance(got, Failure):
        return Collected(rows=[_task_aug_row(task)], failures=[got])
    return Collected(rows=[_task_aug_row(text) for text in [task, *got]])
