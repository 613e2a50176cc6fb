"""The report's view of one episode, derived from its language rows (pure, no I/O).

:func:`build_episode_view` turns an :class:`EpisodeLanguage` into what the page draws:
subtask spans on a time axis, markers for interjections, speech and VQA, the plan and memory
texts where they change, the VQA questions with their answers and drawable shapes, and
per-episode counts.

Invariants:
* Times are the stored frame timestamps; an episode lasts until its last frame's timestamp
  plus one frame period, so spans and markers fit inside [0, duration].
* Shapes are in pixels of the frame as stored; the page scales them with an SVG viewBox.
* Thumbnail frames are the centres of equal time bins, so a strip of equal-width thumbnails
  lines up with the timeline above it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from narrator.common.contract import LanguageRow
from narrator.common.dataset.language import EpisodeLanguage
from narrator.common.validation import Finding, speech_text_or_none, vqa_answer_type


@dataclass(frozen=True)
class Span:
    start_s: float
    end_s: float
    label: str


@dataclass(frozen=True)
class Marker:
    t: float
    kind: str  # "interjection" | "speech" | "vqa"
    text: str


@dataclass(frozen=True)
class TextChange:
    t: float
    style: str  # "plan" | "memory" | "task_aug" | "motion"
    role: str
    text: str


@dataclass(frozen=True)
class Box:
    label: str
    x1: float
    y1: float
    x2: float
    y2: float


@dataclass(frozen=True)
class Point:
    label: str
    x: float
    y: float


@dataclass(frozen=True)
class VqaItem:
    frame: int
    t: float
    camera: str
    question: str
    answer: str  # the answer's JSON text as stored
    qtype: str | None  # the answer's shape, None when it matches none
    boxes: tuple[Box, ...] = ()
    points: tuple[Point, ...] = ()


@dataclass(frozen=True)
class EpisodeView:
    episode: int
    task: str
    frames: int
    duration_s: float
    spans: tuple[Span, ...]
    markers: tuple[Marker, ...]
    changes: tuple[TextChange, ...]
    vqa: tuple[VqaItem, ...]
    findings: tuple[Finding, ...] = field(default=())

    @property
    def interjections(self) -> int:
        return sum(1 for m in self.markers if m.kind == "interjection")

    @property
    def errors(self) -> int:
        return sum(1 for f in self.findings if f.severity == "error")

    @property
    def warnings(self) -> int:
        return sum(1 for f in self.findings if f.severity == "warning")


def _spans(persistent: Sequence[LanguageRow], duration_s: float) -> tuple[Span, ...]:
    subtasks = sorted(
        (r for r in persistent if r.style == "subtask" and r.timestamp is not None),
        key=lambda r: r.timestamp or 0.0,
    )
    spans: list[Span] = []
    for i, row in enumerate(subtasks):
        start = row.timestamp or 0.0
        end = (subtasks[i + 1].timestamp or 0.0) if i + 1 < len(subtasks) else duration_s
        spans.append(Span(start, max(start, end), row.content or ""))
    return tuple(spans)


def _shapes(answer: dict[str, Any], qtype: str | None) -> tuple[tuple[Box, ...], tuple[Point, ...]]:
    if qtype == "bbox":
        boxes = tuple(Box(d["label"], *(float(v) for v in d["bbox"])) for d in answer["detections"])
        return boxes, ()
    if qtype == "keypoint":
        x, y = answer["point"]
        return (), (Point(answer["label"], float(x), float(y)),)
    return (), ()


def _vqa_items(lang: EpisodeLanguage) -> list[VqaItem]:
    items: list[VqaItem] = []
    for frame in sorted(lang.events_by_frame):
        rows = lang.events_by_frame[frame]
        t = float(lang.timestamps[frame])
        answers = [r for r in rows if r.style == "vqa" and r.role == "assistant" and r.camera]
        for answer in answers:
            questions = [
                r.content or ""
                for r in rows
                if r.style == "vqa" and r.role == "user" and r.camera == answer.camera
            ]
            question = questions[0] if questions else ""
            qtype = vqa_answer_type(answer.content)
            boxes: tuple[Box, ...] = ()
            points: tuple[Point, ...] = ()
            if qtype is not None and answer.content is not None:
                boxes, points = _shapes(orjson.loads(answer.content), qtype)
            items.append(
                VqaItem(
                    frame=frame,
                    t=t,
                    camera=answer.camera or "",
                    question=question,
                    answer=answer.content or "",
                    qtype=qtype,
                    boxes=boxes,
                    points=points,
                )
            )
    return items


def _markers(lang: EpisodeLanguage) -> list[Marker]:
    markers: list[Marker] = []
    for frame in sorted(lang.events_by_frame):
        t = float(lang.timestamps[frame])
        rows = lang.events_by_frame[frame]
        for row in rows:
            if row.style == "interjection":
                markers.append(Marker(t, "interjection", row.content or ""))
            elif row.style is None:
                markers.append(Marker(t, "speech", speech_text_or_none(row) or ""))
        n_vqa = sum(1 for r in rows if r.style == "vqa" and r.role == "assistant")
        if n_vqa:
            markers.append(Marker(t, "vqa", f"{n_vqa} VQA answer(s)"))
    return markers


def build_episode_view(
    lang: EpisodeLanguage, *, task: str, fps: float, findings: Sequence[Finding] = ()
) -> EpisodeView:
    """Everything the report shows about one episode."""
    last = float(lang.timestamps[-1]) if lang.frames else 0.0
    duration = last + (1.0 / fps if fps > 0 else 0.0)
    changes = tuple(
        TextChange(r.timestamp or 0.0, r.style or "", r.role, r.content or "")
        for r in lang.persistent
        if r.style in ("plan", "memory", "task_aug", "motion")
    )
    return EpisodeView(
        episode=lang.episode,
        task=task,
        frames=lang.frames,
        duration_s=duration,
        spans=_spans(lang.persistent, duration),
        markers=tuple(_markers(lang)),
        changes=changes,
        vqa=tuple(_vqa_items(lang)),
        findings=tuple(findings),
    )


def thumbnail_frames(n_frames: int, count: int) -> list[int]:
    """``count`` frame indices at the centres of equal bins over ``n_frames`` (distinct)."""
    if n_frames <= 0 or count <= 0:
        return []
    count = min(count, n_frames)
    return sorted({min(n_frames - 1, int((i + 0.5) * n_frames / count)) for i in range(count)})


def pick_vqa(items: Sequence[VqaItem], limit: int) -> list[VqaItem]:
    """Up to ``limit`` items spread over the episode, drawable ones (boxes, points) first."""
    if limit <= 0:
        return []
    drawable = [i for i in items if i.boxes or i.points]
    rest = [i for i in items if not (i.boxes or i.points)]
    chosen = (_spread(drawable, limit) + _spread(rest, limit))[:limit]
    return sorted(chosen, key=lambda i: (i.t, i.camera))


def _spread(items: Sequence[VqaItem], limit: int) -> list[VqaItem]:
    if len(items) <= limit:
        return list(items)
    step = len(items) / limit
    return [items[int(i * step)] for i in range(limit)]
