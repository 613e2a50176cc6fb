"""The vqa module (docs/CONTRACT.md §3): grounded question-answer pairs per camera at ``vqa_hz``.

Ticks at ``vqa.vqa_hz`` snap to the nearest stored frame (distinct frames only,
:mod:`workers.modules.ticks`); each tick anchors ``vqa.vqa_frames_per_tick`` consecutive
frames from its own on (upstream's ``K``; frames shared by two ticks count once). The cameras
are :func:`common.cameras.vqa_cameras`: ``vqa.vqa_cameras`` when given, else every non-depth
camera (depth maps never get RGB prompts). For every such camera and anchored frame, one
request shows that frame and asks for one question of a type drawn from
``vqa.question_types`` with ``random.Random(ctx.seed_for("vqa", "type:<camera>:<frame>"))``
(deterministic per run seed, episode, camera and frame), plus its answer. The response schema
is ``{"question": str, "answer": <shape of the type>}`` with pixel bounds of the image the
model sees.

Coordinates: the model answers in pixels of the downscaled JPEG it sees (``sent_width`` x
``sent_height``); the stored answer is in pixels of the frame as stored in the dataset
(``stored_width`` x ``stored_height``), origin top-left, x right, y down, whole pixels, clipped
to the image (see :mod:`workers.modules.coordinates` and docs/COORDINATES.md).

Rows per answered (frame, camera), both events with style ``vqa`` and that camera: a user row
whose content is the question, and an assistant row whose content is the compact JSON text of
the answer, keys in the shape's order. At most one of each per (frame, camera). A wrong shape
earns the client's corrective retry (the parser is the ``check``); an answer that stays
unusable is a failure of that item only. No (non-depth) cameras: no rows.
``extra["question_types"]`` records ``[{"frame", "camera", "type"}]`` of every emitted pair,
for validation.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from narrator.common.cameras import vqa_cameras
from narrator.common.staging import Failure, StagedRow
from narrator.workers.modules import schemas
from narrator.workers.modules.asking import (
    Collected,
    ask,
    gather_all,
    merge,
    user_message,
)
from narrator.workers.modules.base import EpisodeContext, ModuleOutput
from narrator.workers.modules.coordinates import ImageGeometry
from narrator.workers.modules.ticks import anchored_frames
from narrator.workers.modules.vqa_answers import VQAAnswer, answer_text, parse_vqa_answer

if TYPE_CHECKING:
    from narrator.workers.frames import EncodedFrame
    from narrator.workers.vlm_api import VLM

MODULE = "vqa"


def question_type_for(ctx: EpisodeContext, camera: str, frame: int) -> str:
    """The question type of one (camera, frame) item, drawn from the configured types with a
    generator seeded per run seed, episode, camera and frame."""
    types: Sequence[str] = ctx.settings.vqa.question_types
    return random.Random(ctx.seed_for(MODULE, f"type:{camera}:{frame}")).choice(list(types))


def _short_camera(key: str) -> str:
    return key.removeprefix("observation.images.")


def geometry_of(frame: EncodedFrame) -> ImageGeometry:
    return ImageGeometry(
        sent_width=frame.sent_width,
        sent_height=frame.sent_height,
        stored_width=frame.stored_width,
        stored_height=frame.stored_height,
    )


async def _ask_item(
    ctx: EpisodeContext, client: VLM, camera: str, frame: int, image: EncodedFrame
) -> tuple[Collected, dict[str, Any] | None]:
    """One question and answer; the second value records what was asked when it succeeded."""
    question_type = question_type_for(ctx, camera, frame)
    item = f"{camera}:{frame}"
    geometry = geometry_of(image)
    prompt = ctx.prompts.render(
        "vqa.question",
        task=ctx.task,
        camera=_short_camera(camera),
        question_type=question_type,
        width=image.sent_width,
        height=image.sent_height,
    )

    def parse(data: dict[str, Any]) -> VQAAnswer:
        return parse_vqa_answer(question_type, data, geometry)

    parsed = await ask(
        ctx,
        client,
        module=MODULE,
        item=item,
        messages=user_message(prompt, [(f"Image from camera {_short_camera(camera)}:", image)]),
        schema=schemas.vqa_schema(question_type, image.sent_width, image.sent_height),
        schema_name=schemas.vqa_schema_name(question_type),
        parse=parse,
        failure_item=f"{item}:{question_type}",
    )
    if isinstance(parsed, Failure):
        return Collected(failures=[parsed]), None
    rows = [
        StagedRow("events", frame, "user", parsed.question, "vqa", camera=camera),
        StagedRow("events", frame, "assistant", answer_text(parsed.answer), "vqa", camera),
    ]
    return Collected(rows=rows), {"frame": frame, "camera": camera, "type": question_type}


async def run_vqa(ctx: EpisodeContext, client: VLM) -> ModuleOutput:
    """Annotate one episode with vqa question/answer rows per camera (see module doc)."""
    cameras = [c.key for c in vqa_cameras(ctx.settings, ctx.cameras)]
    if not cameras:
        return ModuleOutput()
    vqa = ctx.settings.vqa
    frames = anchored_frames(ctx.frames.timestamp, vqa.vqa_hz, vqa.vqa_frames_per_tick)
    images = await gather_all([ctx.frame_source.get(camera, frames) for camera in cameras])
    items = [
        _ask_item(ctx, client, camera, frame, image)
        for camera, camera_images in zip(cameras, images, strict=True)
        for frame, image in zip(frames, camera_images, strict=True)
    ]
    results = await gather_all(items)
    collected = merge([r[0] for r in results])
    asked = [r[1] for r in results if r[1] is not None]
    return ModuleOutput(
        rows=collected.rows, failures=collected.failures, extra={"question_types": asked}
    )
