"""Pure validation of one episode's language rows against SPEC sections 2 and 4.

:func:`validate_episode` takes the rows of one episode (persistent rows with timestamps, event
rows keyed by the episode-relative frame they sit on) and returns every problem it finds as a
:class:`Finding`. It never raises for bad rows and does no I/O, so the writer (before a shard
is written) and ``narrator validate`` (after) share exactly the same rules.

Invariants:
* Errors are contract breaches (SPEC section 4: the shard must not be written); warnings are
  quality problems (memory off a subtask boundary, subtasks not covering the episode).
* Timestamps are compared as float32 values, exactly: a persistent row's timestamp must be one
  of the episode's frame timestamps as stored, never "close to" one.
* Findings come out in a deterministic order (rule checks run in a fixed order over rows in
  their given order), so two runs over the same rows report the same list.
* Rule ids are the constants in :data:`RULES`; the severity of each is fixed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import orjson

from common.contract import (
    CAMERA_STYLES,
    EVENT_STYLES,
    PERSISTENT_STYLES,
    ROLES,
    LanguageRow,
    event_sort_key,
    persistent_sort_key,
    speech_text,
)

Severity = Literal["error", "warning"]

# rule id -> severity
RULES: dict[str, Severity] = {
    "unknown_style": "error",
    "unknown_role": "error",
    "wrong_column": "error",
    "camera_rule": "error",
    "missing_content": "error",
    "speech_atom": "error",
    "event_off_frame": "error",
    "persistent_off_frame": "error",
    "interjection_incomplete": "error",
    "vqa_shape": "error",
    "vqa_duplicate": "error",
    "persistent_duplicate": "error",
    "row_order": "error",
    "memory_off_boundary": "warning",
    "subtasks_not_covering": "warning",
}

VQA_RELATIONS: frozenset[str] = frozenset(
    {"left_of", "right_of", "on", "in", "above", "below", "near"}
)


@dataclass(frozen=True)
class Finding:
    """One problem found in one episode. ``timestamp`` and ``camera`` locate it when known."""

    severity: Severity
    rule: str
    episode: int
    timestamp: float | None
    camera: str | None
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "severity": self.severity,
            "rule": self.rule,
            "episode": self.episode,
            "timestamp": self.timestamp,
            "camera": self.camera,
            "message": self.message,
        }


# --- VQA answer shapes ---------------------------------------------------------------------


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_str(value: object) -> bool:
    return isinstance(value, str)


def _has_keys(obj: Mapping[str, Any], keys: set[str]) -> bool:
    return set(obj) == keys


def _bbox_problem(obj: Mapping[str, Any]) -> str | None:
    if not _has_keys(obj, {"detections"}) or not isinstance(obj["detections"], list):
        return 'expected {"detections": [...]}'
    for i, det in enumerate(obj["detections"]):
        if not isinstance(det, dict) or not _has_keys(det, {"label", "bbox_format", "bbox"}):
            return f'detection {i} must have exactly "label", "bbox_format", "bbox"'
        if not _is_str(det["label"]):
            return f"detection {i}: label must be a string"
        if det["bbox_format"] != "xyxy":
            return f'detection {i}: bbox_format must be "xyxy"'
        box = det["bbox"]
        if not isinstance(box, list) or len(box) != 4 or not all(_is_number(v) for v in box):
            return f"detection {i}: bbox must be a list of 4 numbers"
    return None


def _keypoint_problem(obj: Mapping[str, Any]) -> str | None:
    if not _has_keys(obj, {"label", "point_format", "point"}):
        return 'expected exactly "label", "point_format", "point"'
    if not _is_str(obj["label"]):
        return "label must be a string"
    if obj["point_format"] != "xy":
        return 'point_format must be "xy"'
    point = obj["point"]
    if not isinstance(point, list) or len(point) != 2 or not all(_is_number(v) for v in point):
        return "point must be a list of 2 numbers"
    return None


def _count_problem(obj: Mapping[str, Any]) -> str | None:
    if not _has_keys(obj, {"label", "count"}):
        return 'expected exactly "label", "count"'
    if not _is_str(obj["label"]):
        return "label must be a string"
    count = obj["count"]
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        return "count must be a non-negative integer"
    return None


def _attribute_problem(obj: Mapping[str, Any]) -> str | None:
    if not _has_keys(obj, {"label", "attribute", "value"}):
        return 'expected exactly "label", "attribute", "value"'
    if not all(_is_str(obj[k]) for k in ("label", "attribute", "value")):
        return "label, attribute and value must be strings"
    return None


def _spatial_problem(obj: Mapping[str, Any]) -> str | None:
    if not _has_keys(obj, {"subject", "relation", "object"}):
        return 'expected exactly "subject", "relation", "object"'
    if not _is_str(obj["subject"]) or not _is_str(obj["object"]):
        return "subject and object must be strings"
    if obj["relation"] not in VQA_RELATIONS:
        return f"relation must be one of {sorted(VQA_RELATIONS)}"
    return None


VQA_SHAPE_CHECKS: dict[str, Callable[[Mapping[str, Any]], str | None]] = {
    "bbox": _bbox_problem,
    "keypoint": _keypoint_problem,
    "count": _count_problem,
    "attribute": _attribute_problem,
    "spatial": _spatial_problem,
}


def vqa_answer_problem(content: str | None, question_type: str | None) -> str | None:
    """Why ``content`` is not the JSON answer of ``question_type`` (None: any one of the five
    shapes, and exactly one); None when it is fine."""
    if content is None:
        return "content is null; a vqa answer is the JSON text of the answer"
    try:
        obj = orjson.loads(content)
    except orjson.JSONDecodeError as exc:
        return f"content is not JSON ({exc})"
    if not isinstance(obj, dict):
        return "content must be a JSON object"
    if question_type is not None:
        check = VQA_SHAPE_CHECKS.get(question_type)
        if check is None:
            return f"unknown question type {question_type!r}; known: {sorted(VQA_SHAPE_CHECKS)}"
        problem = check(obj)
        return None if problem is None else f"not a {question_type} answer: {problem}"
    matches = [name for name, check in VQA_SHAPE_CHECKS.items() if check(obj) is None]
    if len(matches) == 1:
        return None
    if not matches:
        return f"matches none of the answer shapes {sorted(VQA_SHAPE_CHECKS)}"
    return f"ambiguous answer: matches several shapes {matches}"


def vqa_answer_type(content: str | None) -> str | None:
    """The one question type whose shape ``content`` has, else None."""
    if content is None or vqa_answer_problem(content, None) is not None:
        return None
    obj = orjson.loads(content)
    for name, check in VQA_SHAPE_CHECKS.items():
        if check(obj) is None:
            return name
    return None  # pragma: no cover - unreachable after the check above


# --- the episode rules ----------------------------------------------------------------------


def _f32(value: float) -> float:
    return float(np.float32(value))


class _Collector:
    """Accumulates findings of one episode."""

    def __init__(self, episode: int) -> None:
        self.episode = episode
        self.findings: list[Finding] = []

    def add(self, rule: str, message: str, *, t: float | None, camera: str | None) -> None:
        self.findings.append(
            Finding(
                severity=RULES[rule],
                rule=rule,
                episode=self.episode,
                timestamp=t,
                camera=camera,
                message=message,
            )
        )


def _describe(row: LanguageRow) -> str:
    parts = [f"role={row.role!r}", f"style={row.style!r}"]
    if row.camera is not None:
        parts.append(f"camera={row.camera!r}")
    return "row(" + ", ".join(parts) + ")"


def _check_row(
    out: _Collector,
    row: LanguageRow,
    *,
    in_persistent: bool,
    t: float | None,
    cameras: Collection[str],
) -> None:
    """Rules that look at one row alone: style, column, role, camera, content, speech."""
    where = "language_persistent" if in_persistent else "language_events"
    known = row.style is None or row.style in PERSISTENT_STYLES or row.style in EVENT_STYLES
    if not known:
        out.add(
            "unknown_style",
            f"{_describe(row)} in {where}: unknown style {row.style!r}; persistent styles are "
            f"{sorted(PERSISTENT_STYLES)}, event styles {sorted(EVENT_STYLES)} or null (speech)",
            t=t,
            camera=row.camera,
        )
    elif in_persistent != (row.style in PERSISTENT_STYLES):
        right = "language_persistent" if row.style in PERSISTENT_STYLES else "language_events"
        out.add(
            "wrong_column",
            f"{_describe(row)} is in {where} but style {row.style!r} belongs in {right}",
            t=t,
            camera=row.camera,
        )
    if row.role not in ROLES:
        out.add(
            "unknown_role",
            f"{_describe(row)}: role must be one of {sorted(ROLES)}",
            t=t,
            camera=row.camera,
        )
    if row.style in CAMERA_STYLES:
        if row.camera is None or row.camera not in cameras:
            out.add(
                "camera_rule",
                f"{_describe(row)}: style {row.style!r} needs a camera of this dataset "
                f"({sorted(cameras) or 'none'})",
                t=t,
                camera=row.camera,
            )
    elif row.camera is not None:
        out.add(
            "camera_rule",
            f"{_describe(row)}: camera must be null for style {row.style!r}",
            t=t,
            camera=row.camera,
        )
    has_content = row.content is not None and row.content.strip() != ""
    if not has_content and not row.tool_calls:
        out.add(
            "missing_content",
            f"{_describe(row)} has neither content nor tool_calls",
            t=t,
            camera=row.camera,
        )
    if row.style is None and known:
        _check_speech_atom(out, row, t=t)


def _check_speech_atom(out: _Collector, row: LanguageRow, *, t: float | None) -> None:
    try:
        text = speech_text(row)
    except (orjson.JSONDecodeError, AttributeError) as exc:
        out.add("speech_atom", f"speech atom with unreadable tool call: {exc}", t=t, camera=None)
        return
    if text is None:
        out.add(
            "speech_atom",
            "a style-null row must be a speech atom: role 'assistant', content null and exactly "
            'tool_calls=[{"type":"function","function":{"name":"say","arguments":{"text":...}}}]'
            f"; got role={row.role!r}, content={row.content!r}, tool_calls={row.tool_calls!r}",
            t=t,
            camera=row.camera,
        )
    elif not text.strip():
        out.add("speech_atom", "speech atom with an empty utterance", t=t, camera=None)


def _check_persistent(
    out: _Collector,
    persistent: Sequence[LanguageRow],
    frame_ts: set[float],
    cameras: Collection[str],
) -> None:
    seen: Counter[tuple[float, str | None]] = Counter()
    for row in persistent:
        t = row.timestamp
        _check_row(out, row, in_persistent=True, t=t, cameras=cameras)
        if t is None or _f32(t) not in frame_ts:
            out.add(
                "persistent_off_frame",
                f"{_describe(row)}: timestamp {t!r} is not a frame timestamp of the episode",
                t=t,
                camera=row.camera,
            )
            continue
        if row.style != "task_aug":
            seen[(_f32(t), row.style)] += 1
    for (t, style), n in seen.items():
        if n > 1 and style in PERSISTENT_STYLES:
            out.add(
                "persistent_duplicate",
                f"{n} persistent rows of style {style!r} at timestamp {t}",
                t=t,
                camera=None,
            )
    keys = [persistent_sort_key(r) for r in persistent]
    if keys != sorted(keys):
        out.add(
            "row_order",
            "language_persistent is not sorted by (timestamp, style, role)",
            t=None,
            camera=None,
        )


def _check_events(
    out: _Collector,
    events_by_frame: Mapping[int, Sequence[LanguageRow]],
    frame_timestamps: Sequence[float],
    persistent: Sequence[LanguageRow],
    cameras: Collection[str],
    vqa_types: Mapping[tuple[int, str], str] | None,
) -> None:
    n_frames = len(frame_timestamps)
    plan_times = {
        _f32(r.timestamp) for r in persistent if r.style == "plan" and r.timestamp is not None
    }
    for frame in sorted(events_by_frame):
        rows = events_by_frame[frame]
        if not rows:
            continue
        if not 0 <= frame < n_frames:
            out.add(
                "event_off_frame",
                f"{len(rows)} event row(s) on frame {frame}, outside the episode's "
                f"{n_frames} frames",
                t=None,
                camera=None,
            )
            continue
        t = _f32(frame_timestamps[frame])
        for row in rows:
            _check_row(out, row, in_persistent=False, t=t, cameras=cameras)
        _check_frame_events(out, frame, t, rows, plan_times, vqa_types)


def _check_frame_events(
    out: _Collector,
    frame: int,
    t: float,
    rows: Sequence[LanguageRow],
    plan_times: set[float],
    vqa_types: Mapping[tuple[int, str], str] | None,
) -> None:
    has_speech = any(r.style is None and speech_text_or_none(r) is not None for r in rows)
    if any(r.style == "interjection" for r in rows):
        missing = []
        if not has_speech:
            missing.append("a speech atom on the same frame")
        if t not in plan_times:
            missing.append("a plan row in language_persistent at the same timestamp")
        if missing:
            out.add(
                "interjection_incomplete",
                f"interjection on frame {frame} lacks " + " and ".join(missing),
                t=t,
                camera=None,
            )
    vqa_roles: Counter[tuple[str | None, str]] = Counter()
    for row in rows:
        if row.style != "vqa":
            continue
        vqa_roles[(row.camera, row.role)] += 1
        if row.role == "assistant":
            qtype = None
            if vqa_types is not None and row.camera is not None:
                qtype = vqa_types.get((frame, row.camera))
            problem = vqa_answer_problem(row.content, qtype)
            if problem is not None:
                out.add(
                    "vqa_shape", f"vqa answer on frame {frame}: {problem}", t=t, camera=row.camera
                )
    for (camera, role), n in vqa_roles.items():
        if n > 1:
            out.add(
                "vqa_duplicate",
                f"{n} vqa rows of role {role!r} on frame {frame}, camera {camera!r}",
                t=t,
                camera=camera,
            )
    keys = [event_sort_key(r) for r in rows]
    if keys != sorted(keys):
        out.add(
            "row_order",
            f"events of frame {frame} are not sorted by (style, role, camera)",
            t=t,
            camera=None,
        )


def speech_text_or_none(row: LanguageRow) -> str | None:
    """:func:`common.contract.speech_text` that treats unreadable tool-call JSON as no atom."""
    try:
        return speech_text(row)
    except (orjson.JSONDecodeError, AttributeError):
        return None


def _check_quality(
    out: _Collector, persistent: Sequence[LanguageRow], frame_timestamps: Sequence[float]
) -> None:
    subtask_times = sorted(
        {_f32(r.timestamp) for r in persistent if r.style == "subtask" and r.timestamp is not None}
    )
    if subtask_times and frame_timestamps and subtask_times[0] != _f32(frame_timestamps[0]):
        out.add(
            "subtasks_not_covering",
            f"the first subtask starts at {subtask_times[0]}, not at the first frame "
            f"({_f32(frame_timestamps[0])})",
            t=subtask_times[0],
            camera=None,
        )
    boundaries = set(subtask_times)
    for row in persistent:
        if row.style == "memory" and row.timestamp is not None:
            t = _f32(row.timestamp)
            if t not in boundaries:
                out.add(
                    "memory_off_boundary",
                    f"memory at {t} is not on a subtask boundary",
                    t=t,
                    camera=None,
                )


def validate_episode(
    *,
    episode: int,
    frame_timestamps: Sequence[float],
    persistent: Sequence[LanguageRow],
    events_by_frame: Mapping[int, Sequence[LanguageRow]],
    cameras: Collection[str],
    vqa_types: Mapping[tuple[int, str], str] | None = None,
) -> list[Finding]:
    """Every rule of SPEC sections 2 and 4 over one episode's rows.

    ``frame_timestamps`` are the episode's stored timestamps in frame order;
    ``events_by_frame`` maps an episode-relative frame index to the event rows on it;
    ``vqa_types`` optionally gives the question type asked per (frame, camera).
    """
    out = _Collector(episode)
    frame_ts = {_f32(t) for t in frame_timestamps}
    _check_persistent(out, persistent, frame_ts, cameras)
    _check_events(out, events_by_frame, frame_timestamps, persistent, cameras, vqa_types)
    _check_quality(out, persistent, frame_timestamps)
    return out.findings


def has_errors(findings: Sequence[Finding]) -> bool:
    return any(f.severity == "error" for f in findings)
