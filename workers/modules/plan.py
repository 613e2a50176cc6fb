"""The plan module (SPEC section 3): subtask spans, the plan, the memory chain, task rephrasings.

Flow of one episode:

1. Frames are sampled at ``plan.sample_hz`` (plus the last frame) and cut into windows of at
   most ``plan.frames_per_request`` frames that overlap by one or two frames. With several
   cameras the VLM sees the *first* camera of the dataset (its ``observation.images.*`` keys
   in info.json order); with none, the text-only prompt ``plan.subtasks_text`` lists the
   sampled times instead of showing images.
2. Each window is asked, concurrently, for its subtasks. Starts are given as the *numbers of
   the frames shown* (0..n-1, captioned on every image), which the module maps to episode
   frames. The windows' answers are stitched into one gap-free cover of the episode, snapped
   to distinct frames, merged to at least ``min_subtask_seconds`` and at most ``max_subtasks``
   spans (:mod:`workers.modules.spans`). No usable window at all is recorded as a failure of
   the ``subtasks`` item; the episode then gets only its task rephrasings.
3. Then three independent things run concurrently: the memory chain (sequential in itself:
   each request sees the previous memory, the completed subtask and the task), the plan
   request, and the task rephrasing request.

Rows (all persistent, camera null): ``subtask`` (assistant) at each span's first frame;
``plan`` (assistant) at frame 0; ``memory`` (assistant) at each span start after the first;
``task_aug`` (user) at frame 0. ``extra["subtasks"]`` records the spans as
``[{"start", "end", "label"}]`` (episode frames, ``end`` inclusive) for the interjections
module. A failed plan, memory or rephrasing request is an item failure; the rest goes on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from narrator.common.errors import BadAnswerError, DatasetError
from narrator.common.staging import Failure, StagedRow
from narrator.workers.modules import schemas
from narrator.workers.modules.answers import (
    bulleted,
    numbered,
    parse_memory,
    parse_rephrasings,
    parse_steps,
    parse_subtasks,
)
from narrator.workers.modules.asking import (
    Collected,
    ask,
    frame_caption,
    gather_all,
    item_failure,
    merge,
    user_message,
)
from narrator.workers.modules.base import EpisodeContext, ModuleOutput
from narrator.workers.modules.spans import (
    Boundary,
    Span,
    Window,
    build_spans,
    plan_windows,
    stitch_windows,
    window_boundaries,
)
from narrator.workers.modules.ticks import sample_frames

if TYPE_CHECKING:
    from narrator.workers.frames import EncodedFrame
    from narrator.workers.vlm_api import VLM

MODULE = "plan"


def _persistent(frame: int, role: str, content: str, style: str) -> StagedRow:
    return StagedRow(column="persistent", frame=frame, role=role, content=content, style=style)


def subtasks_messages(
    ctx: EpisodeContext,
    window: Window,
    part: int,
    parts: int,
    images: Mapping[int, EncodedFrame] | None,
    camera: str | None,
) -> list[dict[str, Any]]:
    """The request for one window: images captioned with their number when there is a
    camera, else the text-only prompt with the sampled times listed."""
    settings = ctx.settings.plan
    times = [ctx.time_of(f) for f in window.frames]
    values = {
        "task": ctx.task,
        "n_frames": len(window.frames),
        "last_position": len(window.frames) - 1,
        "window_start_s": f"{times[0]:.2f}",
        "window_end_s": f"{times[-1]:.2f}",
        "duration_s": f"{ctx.time_of(ctx.length - 1) + 1.0 / ctx.fps:.2f}",
        "part": part + 1,
        "parts": parts,
        "max_subtasks": settings.max_subtasks,
        "min_seconds": f"{settings.min_subtask_seconds:g}",
    }
    if images is None or camera is None:
        listing = "\n".join(frame_caption(i, t).rstrip(":") for i, t in enumerate(times))
        prompt = ctx.prompts.render("plan.subtasks_text", frame_list=listing, **values)
        return user_message(prompt)
    prompt = ctx.prompts.render("plan.subtasks", camera=camera, **values)
    captioned = [
        (frame_caption(i, t), images[f])
        for i, (f, t) in enumerate(zip(window.frames, times, strict=True))
    ]
    return user_message(prompt, captioned)


async def _ask_window(
    ctx: EpisodeContext,
    client: VLM,
    window: Window,
    part: int,
    parts: int,
    images: Mapping[int, EncodedFrame] | None,
    camera: str | None,
) -> tuple[list[Boundary] | None, Collected]:
    n_frames = len(window.frames)

    def parse(data: dict[str, Any]) -> list[Boundary]:
        return window_boundaries(window, parse_subtasks(data, n_frames))

    got = await ask(
        ctx,
        client,
        module=MODULE,
        item=f"subtasks:{part}",
        messages=subtasks_messages(ctx, window, part, parts, images, camera),
        schema=schemas.subtasks_schema(n_frames, ctx.settings.plan.max_subtasks),
        schema_name=schemas.SCHEMA_NAMES["subtasks"],
        parse=parse,
    )
    if isinstance(got, Failure):
        return None, Collected(failures=[got])
    return got, Collected()


async def find_spans(ctx: EpisodeContext, client: VLM) -> tuple[list[Span], Collected]:
    """The episode's subtask spans, and the failures of windows that did not answer."""
    settings = ctx.settings.plan
    samples = sample_frames(ctx.frames.timestamp, settings.sample_hz)
    windows = plan_windows(samples, settings.frames_per_request)
    camera = ctx.cameras[0].key if ctx.cameras else None
    images: dict[int, EncodedFrame] | None = None
    if camera is not None:
        encoded = await ctx.frame_source.get(camera, samples)
        images = dict(zip(samples, encoded, strict=True))
    results = await gather_all(
        [
            _ask_window(ctx, client, window, i, len(windows), images, camera)
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
            "plan.subtasks prompt"
        ) from exc
    spans = build_spans(
        boundaries,
        ctx.frames.timestamp,
        fps=ctx.fps,
        min_seconds=settings.min_subtask_seconds,
        max_spans=settings.max_subtasks,
    )
    return spans, collected


async def _plan(ctx: EpisodeContext, client: VLM, spans: Sequence[Span]) -> Collected:
    labels = [s.label for s in spans]
    max_steps = max(len(labels), 1)
    prompt = ctx.prompts.render(
        "plan.plan", task=ctx.task, subtasks=numbered(labels), max_steps=max_steps
    )
    got = await ask(
        ctx,
        client,
        module=MODULE,
        item="plan",
        messages=user_message(prompt),
        schema=schemas.steps_schema(max_steps),
        schema_name=schemas.SCHEMA_NAMES["plan"],
        parse=parse_steps,
    )
    if isinstance(got, Failure):
        return Collected(failures=[got])
    return Collected(rows=[_persistent(0, "assistant", numbered(got), "plan")])


async def _memory_chain(ctx: EpisodeContext, client: VLM, spans: Sequence[Span]) -> Collected:
    out = Collected()
    previous = ""
    for i in range(1, len(spans)):
        boundary = spans[i].start
        item = f"memory:{boundary}"
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
            item=item,
            messages=user_message(prompt),
            schema=schemas.memory_schema(),
            schema_name=schemas.SCHEMA_NAMES["memory"],
            parse=parse_memory,
        )
        if isinstance(got, Failure):
            out.failures.append(got)
            continue
        previous = got
        out.rows.append(_persistent(boundary, "assistant", previous, "memory"))
    return out


async def _task_aug(ctx: EpisodeContext, client: VLM) -> Collected:
    count = ctx.settings.plan.task_aug_count
    if count == 0:
        return Collected()
    prompt = ctx.prompts.render("plan.task_aug", task=ctx.task, count=count)

    def parse(data: dict[str, Any]) -> list[str]:
        texts = parse_rephrasings(data, ctx.task)
        if not texts:
            raise ValueError("every rephrasing repeats the task; each must be worded differently")
        return texts[:count]

    got = await ask(
        ctx,
        client,
        module=MODULE,
        item="task_aug",
        messages=user_message(prompt),
        schema=schemas.task_aug_schema(count),
        schema_name=schemas.SCHEMA_NAMES["task_aug"],
        parse=parse,
    )
    if isinstance(got, Failure):
        return Collected(failures=[got])
    return Collected(rows=[_persistent(0, "user", text, "task_aug") for text in got])


async def run_plan(ctx: EpisodeContext, client: VLM) -> ModuleOutput:
    """Annotate one episode with subtask, plan, memory and task_aug rows (see module doc)."""
    if ctx.length == 0:
        raise DatasetError(
            ctx.episode.data_file,
            f"episode {ctx.episode.index} has no frames; remove it from meta/episodes or "
            "re-export the dataset",
        )
    try:
        spans, window_failures = await find_spans(ctx, client)
    except BadAnswerError as exc:
        # No usable subtask answer at all: record it and go on (SPEC section 3). The episode
        # keeps its task rephrasings; plan, memory and interjections need subtasks.
        failure = item_failure(ctx, MODULE, "subtasks", exc)
        task_aug = await _task_aug(ctx, client)
        return ModuleOutput(
            rows=task_aug.rows,
            failures=[failure, *task_aug.failures],
            extra={"subtasks": [], "camera": ctx.cameras[0].key if ctx.cameras else None},
        )
    subtask_rows = Collected(
        rows=[_persistent(s.start, "assistant", s.label, "subtask") for s in spans]
    )
    parts = await gather_all(
        [_plan(ctx, client, spans), _memory_chain(ctx, client, spans), _task_aug(ctx, client)]
    )
    collected = merge([window_failures, subtask_rows, *parts])
    return ModuleOutput(
        rows=collected.rows,
        failures=collected.failures,
        extra={
            "subtasks": [s.to_dict() for s in spans],
            "camera": ctx.cameras[0].key if ctx.cameras else None,
        },
    )
