"""Shared helpers of the annotation-module tests (tests/test_module_*.py).

* :class:`PillowFrameSource` - the tests' own :class:`~workers.modules.base.FrameSource`: it
  draws a frame with Pillow (a coloured square whose position depends on the frame index),
  downscales it to the "sent" size and returns real JPEG data URLs, recording each call.
* :func:`make_context` - an :class:`~workers.modules.base.EpisodeContext` for a synthetic
  episode with the shipped prompts.
* :func:`sim_client` - a real :class:`~workers.vlm_client.VLMClient` talking HTTP to the
  project's simulated VLM fleet; :class:`RecordingClient` is that client, also keeping the
  fields of every request it is asked and when it started and ended, so tests can see what
  the module asked (the HTTP exchange itself is untouched).
* :func:`contract_findings` - the rows a module produced, placed on their frames' stored
  timestamps and run through the writer's validation (docs/CONTRACT.md §4).
"""

from __future__ import annotations

import base64
import dataclasses
import io
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import numpy as np
import orjson
from PIL import Image, ImageDraw

from narrator.common.config import AnnotationSettings, VLMSettings
from narrator.common.contract import LanguageRow, sort_events, sort_persistent
from narrator.common.dataset.meta import CameraInfo, Episode, EpisodeFrames
from narrator.common.prompts import load_prompts
from narrator.common.staging import ModuleResult, StagedRow, check_module_rows
from narrator.common.validation import Finding, validate_episode
from narrator.simulator.fleet import start_fleet_async
from narrator.workers.frames import EncodedFrame
from narrator.workers.modules.base import EpisodeContext
from narrator.workers.vlm_api import AnswerParser, ChatAnswer, ChatRequest
from narrator.workers.vlm_client import VLMClient
from narrator.writer.merge import yield_to_interjections

T = TypeVar("T")

SIM_MODEL = "narrator-sim-vlm"


class PillowFrameSource:
    """Frames drawn with Pillow: ``stored`` is the dataset's frame size, ``sent`` the size of
    the JPEG given to the VLM."""

    def __init__(self, stored: tuple[int, int] = (320, 240), sent: tuple[int, int] = (160, 120)):
        self.stored = stored
        self.sent = sent
        self.calls: list[tuple[str, tuple[int, ...]]] = []

    def _encode(self, frame: int) -> EncodedFrame:
        width, height = self.stored
        image = Image.new("RGB", (width, height), (230, 230, 220))
        draw = ImageDraw.Draw(image)
        x = (frame * 7) % max(1, width - 40)
        draw.rectangle((x, height // 3, x + 40, height // 3 + 40), fill=(200, 30, 30))
        small = image.resize(self.sent)
        buffer = io.BytesIO()
        small.save(buffer, format="JPEG", quality=80)
        url = "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()
        return EncodedFrame(
            data_url=url,
            sent_width=self.sent[0],
            sent_height=self.sent[1],
            stored_width=width,
            stored_height=height,
        )

    async def get(self, camera: str, frame_indices: Sequence[int]) -> list[EncodedFrame]:
        self.calls.append((camera, tuple(frame_indices)))
        return [self._encode(f) for f in frame_indices]


def make_context(
    *,
    n_frames: int = 120,
    fps: float = 10.0,
    cameras: Sequence[str] = ("observation.images.top",),
    depth_cameras: Sequence[str] = (),
    settings: AnnotationSettings | None = None,
    upstream: Mapping[str, ModuleResult] | None = None,
    frame_source: PillowFrameSource | None = None,
    episode_index: int = 3,
    task: str = "put the three cups on the tray",
) -> EpisodeContext:
    source = frame_source or PillowFrameSource()
    camera_infos = tuple(
        CameraInfo(
            key=key,
            dtype="video",
            height=source.stored[1],
            width=source.stored[0],
            depth=key in depth_cameras,
        )
        for key in cameras
    )
    episode = Episode(
        index=episode_index,
        length=n_frames,
        tasks=(task,),
        data_file="data/chunk-000/file-000.parquet",
        from_index=0,
        to_index=n_frames,
        videos={},
    )
    frames = EpisodeFrames(
        episode=episode_index,
        row_start=0,
        frame_index=np.arange(n_frames, dtype=np.int64),
        timestamp=(np.arange(n_frames, dtype=np.float64) / fps).astype(np.float32),
        task_index=np.zeros(n_frames, dtype=np.int64),
    )
    return EpisodeContext(
        run_id="testrun",
        episode=episode,
        frames=frames,
        task=task,
        fps=fps,
        cameras=camera_infos,
        settings=settings or AnnotationSettings(),
        prompts=load_prompts(),
        model=SIM_MODEL,
        frame_source=source,
        upstream=upstream or {},
    )


class RecordingClient(VLMClient):
    """A real client that also records each request it is asked (the request's fields, start,
    end, error); the HTTP exchange itself is untouched."""

    def __init__(self, settings: VLMSettings) -> None:
        super().__init__(settings)
        self.calls: list[dict[str, Any]] = []

    async def ask(self, request: ChatRequest, parse: AnswerParser[T]) -> ChatAnswer[T]:
        fields = {f.name: getattr(request, f.name) for f in dataclasses.fields(request)}
        record: dict[str, Any] = {
            **fields,
            "parse": parse,
            "started": time.monotonic(),
            "ended": None,
        }
        self.calls.append(record)
        try:
            return await super().ask(request, parse)
        except Exception as exc:
            record["error"] = exc
            raise
        finally:
            record["ended"] = time.monotonic()

    def calls_named(self, schema_name: str) -> list[dict[str, Any]]:
        return [c for c in self.calls if c["schema_name"] == schema_name]


class RejectingClient(RecordingClient):
    """A recording client that finds every answer to the schemas in ``rejected`` unusable (its
    parser raises, so the client's corrective retry runs and the item fails): the requests
    still go over HTTP to the simulator; only the verdict on their answers changes."""

    def __init__(self, settings: VLMSettings, rejected: frozenset[str]) -> None:
        super().__init__(settings)
        self.rejected = rejected

    async def ask(self, request: ChatRequest, parse: AnswerParser[T]) -> ChatAnswer[T]:
        if request.schema_name not in self.rejected:
            return await super().ask(request, parse)

        def refuse(data: dict[str, Any]) -> T:
            raise ValueError("this test finds every such answer unusable")

        return await super().ask(request, refuse)


def prompt_text(call: Mapping[str, Any]) -> str:
    """The text parts of the (one) user message of a recorded call."""
    content = call["messages"][0]["content"]
    if isinstance(content, str):
        return content
    return "\n".join(part["text"] for part in content if part["type"] == "text")


def image_count(call: Mapping[str, Any]) -> int:
    content = call["messages"][0]["content"]
    if isinstance(content, str):
        return 0
    return sum(1 for part in content if part["type"] == "image_url")


@asynccontextmanager
async def sim_client(
    replicas: int = 2, *, rejected: frozenset[str] = frozenset(), **vlm: Any
) -> AsyncIterator[tuple[Any, RecordingClient]]:
    """A simulated fleet on free ports and a started client pointed at it (a
    :class:`RejectingClient` when ``rejected`` names schemas)."""
    fleet = await start_fleet_async(replicas)
    try:
        settings = VLMSettings(urls=tuple(fleet.urls), model=SIM_MODEL, **vlm)
        client = RejectingClient(settings, rejected) if rejected else RecordingClient(settings)
        await client.start()
        try:
            yield fleet, client
        finally:
            await client.close()
    finally:
        await fleet.close()


def contract_findings(
    ctx: EpisodeContext,
    module: str,
    rows: Sequence[StagedRow],
    vqa_types: Mapping[tuple[int, str], str] | None = None,
    plans: bool = True,
) -> list[Finding]:
    """Check ``rows`` the way the writer will: module styles, then docs/CONTRACT.md §4 rules."""
    check_module_rows(module, list(rows))
    return _findings(ctx, rows, vqa_types, plans)


def episode_findings(
    ctx: EpisodeContext, rows_by_module: Mapping[str, Sequence[StagedRow]], plans: bool = True
) -> list[Finding]:
    """Check several modules' rows of one episode together, as the writer assembles them
    (the plan module's plan rows yield to interjections on their frames)."""
    combined: list[StagedRow] = []
    interjection_frames = {
        r.frame for rows in rows_by_module.values() for r in rows if r.style == "interjection"
    }
    for module, rows in rows_by_module.items():
        check_module_rows(module, list(rows))
        if module == "plan":
            rows = yield_to_interjections(rows, interjection_frames)
        combined.extend(rows)
    return _findings(ctx, combined, None, plans)


def _findings(
    ctx: EpisodeContext,
    rows: Sequence[StagedRow],
    vqa_types: Mapping[tuple[int, str], str] | None,
    plans: bool,
) -> list[Finding]:
    persistent: list[LanguageRow] = []
    events: dict[int, list[LanguageRow]] = {}
    for row in rows:
        calls = None
        if row.tool_calls is not None:
            calls = tuple(orjson.dumps(c).decode() for c in row.tool_calls)
        if row.column == "persistent":
            t = ctx.time_of(row.frame)
            persistent.append(LanguageRow(row.role, row.content, row.style, t, row.camera, calls))
        else:
            event = LanguageRow(row.role, row.content, row.style, None, row.camera, calls)
            events.setdefault(row.frame, []).append(event)
    return validate_episode(
        episode=ctx.episode.index,
        frame_timestamps=[float(t) for t in ctx.frames.timestamp],
        persistent=sort_persistent(persistent),
        events_by_frame={f: sort_events(rs) for f, rs in events.items()},
        cameras=[c.key for c in ctx.cameras],
        vqa_types=vqa_types,
        plans=plans,
    )


def errors(findings: Sequence[Finding]) -> list[Finding]:
    return [f for f in findings if f.severity == "error"]
