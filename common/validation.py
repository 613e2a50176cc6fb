"""Pure validation of one episode's language rows against docs/CONTRACT.md §2 (row rules) and §4
(validation).

:func:`validate_episode` takes the rows of one episode (persistent rows with timestamps, event
rows keyed by the episode-relative frame they sit on) and returns every problem it finds as a
:class:`Finding`. It never raises for bad rows and does no I/O, so the writer (before a shard
is written) and ``narrator validate`` (after) share exactly the same rules.

Invariants:
* Errors are contract breaches (docs/CONTRACT.md §4: the shard must not be written; VQA
  coordinates outside the stored frame are one, when the frame sizes are given); warnings
  are quality problems (memory off a subtask boundary, subtasks not covering the episode;
  and, from :func:`coverage_findings` on a whole dataset, an episode without subtasks).
* Timestamps are compared as float32 values, exactly: a persistent row's timestamp must be one
  of the episode's frame timestamps as stored, never "close to" one.
* Findings come out in a deterministic order (rule checks run in a fixed order over rows in
  their given order), so two runs over the same rows report the same list.
* Rule ids are the constants in :data:`RULES`; the severity of each is fixed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import orjson

from narrator.common.contract import (
    CAMERA_STYLES,
    EVENT_STYLES,
    PERSISTENT_STYLES,
    ROLES,
    LanguageRow,
    event_sort_key,
    persistent_sort_key,
    speech_text,
)
from narrator.common.dataset.meta import FrameSize

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
    "vqa_out_of_frame": "error",
    "persistent_duplicate": "error",
    "row_order": "error",
    "memory_off_boundary": "warning",
    "subtasks_not_covering": "warning",
    "no_subtasks": "warning",
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
        return asdict(self)


# --- VQA answer shapes ---------------------------------------------------------------------


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _numbers(n: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, list) and len(v) == n and all(_is_number(x) for x in v)


def _is_str(value: object) -> bool:
    return isinstance(value, str)


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


_STRING = (_is_str, "a string")
# field -> (check, what the value must be), per answer shape; the key sets are exact
_FIELDS: dict[str, dict[str, tuple[Callable[[Any], bool], str]]] = {
    "detection": {
        "label": _STRING,
        "bbox_format": (lambda v: v == "xyxy", '"xyxy"'),
        "bbox": (_numbers(4), "a list of 4 numbers"),
    },
    "keypoint": {
        "label": _STRING,
        "point_format": (lambda v: v == "xy", '"xy"'),
        "point": (_numbers(2), "a list of 2 numbers"),
    },
    "count": {"label": _STRING, "count": (_is_count, "a non-negative integer")},
    "attribute": {"label": _STRING, "attribute": _STRING, "value": _STRING},
    "spatial": {
        "subject": _STRING,
        "relation": (lambda v: v in VQA_RELATIONS, f"one of {sorted(VQA_RELATIONS)}"),
        "object": _STRING,
    },
}


def _fields_problem(obj: object, shape: str, where: str = "") -> str | None:
    fields = _FIELDS[shape]
    if not isinstance(obj, dict) or set(obj) != set(fields):
        return f"{where}expected exactly the keys {sorted(fields)}"
    for key, (ok, what) in fields.items():
        if not ok(obj[key]):
            return f"{where}{key} must be {what}"
    return None


def _bbox_problem(obj: Mapping[str, Any]) -> str | None:
    if set(obj) != {"detections"} or not isinstance(obj["detections"], list):
        return 'expected {"detections": [...]}'
    for i, det in enumerate(obj["detections"]):
        problem = _fields_problem(det, "detection", f"detection {i}: ")
        if problem is not None:
            return problem
    return None


VQA_SHAPE_CHECKS: dict[str, Callable[[Mapping[str, Any]], str | None]] = {
    "bbox": _bbox_problem,
    "keypoint": lambda obj: _fields_problem(obj, "keypoint"),
    "count": lambda obj: _fields_problem(obj, "count"),
    "attribute": lambda obj: _fields_problem(obj, "attribute"),
    "spatial": lambda obj: _fields_problem(obj, "spatial"),
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


def vqa_geometry_problem(content: str | None, size: FrameSize) -> str | None:
    """Why the boxes or point of a vqa answer do not lie in a frame of ``size`` (width,
    height) pixels, else None (also None for answers without coordinates or not JSON; the
    shape rule reports those).

    A box ``[x1, y1, x2, y2]`` needs ``0 <= x1 <= x2 <= width`` and ``0 <= y1 <= y2 <=
    height``; a point ``[x, y]`` needs ``0 <= x < width`` and ``0 <= y < height`` (it names a
    pixel; docs/COORDINATES.md)."""
    if content is None:
        return None
    try:
        obj = orjson.loads(content)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(obj, dict):
        return None
    width, height = size
    detections = obj.get("detections")
    for i, det in enumerate(detections if isinstance(detections, list) else []):
        box: Any = det.get("bbox") if isinstance(det, dict) else None
        if not _numbers(4)(box):
            continue
        x1, y1, x2, y2 = box
        if not (0 <= x1 <= x2 <= width and 0 <= y1 <= y2 <= height):
            return (
                f"detection {i}: box {box} does not lie in the {width}x{height} frame "
                "(needs 0 <= x1 <= x2 <= width and 0 <= y1 <= y2 <= height)"
            )
    point: Any = obj.get("point")
    if _numbers(2)(point):
        x, y = point
        if not (0 <= x < width and 0 <= y < height):
            return f"point {point} is not a pixel of the {width}x{height} frame"
    return None


# --- the episode rules ----------------------------------------------------------------------


def _f32(value: float) -> float:
    return float(np.float32(value))


class _Collector:
    """Accumulates findings of one episode."""

    def __init__(self, episode: int) -> None:
        self.episode = episode
        self.findings: list[Finding] = []

    def add(
        self, rule: str, message: str, t: float | None = None, camera: str | None = None
    ) -> None:
        self.findings.append(Finding(RULES[rule], rule, self.episode, t, camera, message))


def _describe(row: LanguageRow) -> str:
    camera = f", camera={row.camera!r}" if row.camera is not None else ""
    return f"row(role={row.role!r}, style={row.style!r}{camera})"


def row_problems(
    row: LanguageRow, *, in_persistent: bool, cameras: Collection[str]
) -> list[tuple[str, str]]:
    """(rule, message) for the rules that look at one row alone: style, column, role,
    camera, content, speech atom."""
    found: list[tuple[str, str]] = []
    what = _describe(row)
    where = "language_persistent" if in_persistent else "language_events"
    known = row.style is None or row.style in PERSISTENT_STYLES or row.style in EVENT_STYLES
    if not known:
        found.append(
            (
                "unknown_style",
                f"{what} in {where}: unknown style {row.style!r}; persistent styles are "
                f"{sorted(PERSISTENT_STYLES)}, event styles {sorted(EVENT_STYLES)} or null",
            )
        )
    elif in_persistent != (row.style in PERSISTENT_STYLES):
        right = "language_persistent" if row.style in PERSISTENT_STYLES else "language_events"
        found.append(("wrong_column", f"{what} is in {where}; style {row.style!r} is for {right}"))
    if row.role not in ROLES:
        found.append(("unknown_role", f"{what}: role must be one of {sorted(ROLES)}"))
    if row.style in CAMERA_STYLES and (row.camera is None or row.camera not in cameras):
        found.append(
            (
                "camera_rule",
                f"{what}: style {row.style!r} needs a camera of this dataset "
                f"({sorted(cameras) or 'none'})",
            )
        )
    elif row.style not in CAMERA_STYLES and row.camera is not None:
        found.append(("camera_rule", f"{what}: camera must be null for style {row.style!r}"))
    if (row.content is None or not row.content.strip()) and not row.tool_calls:
        found.append(("missing_content", f"{what} has neither content nor tool_calls"))
    if row.style is None and known:
        text = speech_text_or_none(row)
        if text is None:
            found.append(
                (
                    "speech_atom",
                    "a style-null row must be a speech atom: role 'assistant', content null, "
                    'tool_calls=[{"type":"function","function":{"name":"say","arguments":'
                    '{"text":...}}}] exactly; got '
                    f"role={row.role!r}, content={row.content!r}, tool_calls={row.tool_calls!r}",
                )
            )
        elif not text.strip():
            found.append(("speech_atom", "speech atom with an empty utterance"))
    return found


def _check_row(
    out: _Collector,
    row: LanguageRow,
    *,
    in_persistent: bool,
    t: float | None,
    cameras: Collection[str],
) -> None:
    for rule, message in row_problems(row, in_persistent=in_persistent, cameras=cameras):
        out.add(rule, message, t, row.camera)


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
            message = f"{_describe(row)}: timestamp {t!r} is not a frame timestamp"
            out.add("persistent_off_frame", message, t, row.camera)
            continue
        if row.style != "task_aug":
            seen[(_f32(t), row.style)] += 1
    for (t, style), n in seen.items():
        if n > 1 and style in PERSISTENT_STYLES:
            out.add("persistent_duplicate", f"{n} rows of style {style!r} at timestamp {t}", t)
    keys = [persistent_sort_key(r) for r in persistent]
    if keys != sorted(keys):
        out.add("row_order", "language_persistent is not sorted by (timestamp, style, role)")


def _check_events(
    out: _Collector,
    events_by_frame: Mapping[int, Sequence[LanguageRow]],
    frame_timestamps: Sequence[float],
    persistent: Sequence[LanguageRow],
    cameras: Collection[str],
    vqa_types: Mapping[tuple[int, str], str] | None,
    plans: bool,
    frame_sizes: Mapping[str, FrameSize] | None,
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
            out.add("event_off_frame", f"event rows on frame {frame}, outside 0..{n_frames - 1}")
            continue
        t = _f32(frame_timestamps[frame])
        for row in rows:
            _check_row(out, row, in_persistent=False, t=t, cameras=cameras)
        _check_frame_events(
            out, frame, t, rows, plan_times if plans else None, vqa_types, frame_sizes
        )


def _check_frame_events(
    out: _Collector,
    frame: int,
    t: float,
    rows: Sequence[LanguageRow],
    plan_times: set[float] | None,
    vqa_types: Mapping[tuple[int, str], str] | None,
    frame_sizes: Mapping[str, FrameSize] | None,
) -> None:
    """``plan_times`` None: plans are off, so an interjection needs no plan row."""
    has_speech = any(r.style is None and speech_text_or_none(r) is not None for r in rows)
    if any(r.style == "interjection" for r in rows):
        missing = []
        if not has_speech:
            missing.append("a speech atom on the same frame")
        if plan_times is not None and t not in plan_times:
            missing.append("a plan row in language_persistent at the same timestamp")
        if missing:
            message = f"interjection on frame {frame} lacks " + " and ".join(missing)
            out.add("interjection_incomplete", message, t)
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
                out.add("vqa_shape", f"vqa answer on frame {frame}: {problem}", t, row.camera)
            size = (frame_sizes or {}).get(row.camera or "")
            outside = vqa_geometry_problem(row.content, size) if size else None
            if outside is not None:
                message = f"vqa answer on frame {frame}, camera {row.camera}: {outside}"
                out.add("vqa_out_of_frame", message, t, row.camera)
    for (camera, role), n in vqa_roles.items():
        if n > 1:
            message = f"{n} vqa rows of role {role!r} on frame {frame}, camera {camera!r}"
            out.add("vqa_duplicate", message, t, camera)
    keys = [event_sort_key(r) for r in rows]
    if keys != sorted(keys):
        out.add("row_order", f"events of frame {frame} not sorted by (style, role, camera)", t)


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
        first = subtask_times[0]
        message = f"the first subtask starts at {first}, not at the first frame"
        out.add("subtasks_not_covering", f"{message} ({_f32(frame_timestamps[0])})", first)
    boundaries = set(subtask_times)
    for row in persistent:
        if row.style == "memory" and row.timestamp is not None:
            t = _f32(row.timestamp)
            if t not in boundaries:
                out.add("memory_off_boundary", f"memory at {t} is not on a subtask boundary", t)


def validate_episode(
    *,
    episode: int,
    frame_timestamps: Sequence[float],
    persistent: Sequence[LanguageRow],
    events_by_frame: Mapping[int, Sequence[LanguageRow]],
    cameras: Collection[str],
    vqa_types: Mapping[tuple[int, str], str] | None = None,
    plans: bool = True,
    frame_sizes: Mapping[str, FrameSize] | None = None,
) -> list[Finding]:
    """Every rule of docs/CONTRACT.md §2 and §4 over one episode's rows.

    ``frame_timestamps`` are the episode's stored timestamps in frame order;
    ``events_by_frame`` maps an episode-relative frame index to the event rows on it;
    ``vqa_types`` optionally gives the question type asked per (frame, camera); ``plans``
    says whether plan rows were written (``--no-plan`` turns them off, and with them the rule
    that an interjection has a plan row on its frame); ``frame_sizes`` optionally the stored
    (width, height) per camera, to check that VQA boxes and points lie in the frame.
    """
    out = _Collector(episode)
    frame_ts = {_f32(t) for t in frame_timestamps}
    _check_persistent(out, persistent, frame_ts, cameras)
    _check_events(
        out,
        events_by_frame,
        frame_timestamps,
        persistent,
        cameras,
        vqa_types,
        plans,
        frame_sizes,
    )
    _check_quality(out, persistent, frame_timestamps)
    return out.findings


def coverage_findings(
    *, episode: int, frames: int, persistent: Sequence[LanguageRow]
) -> list[Finding]:
    """What ``narrator validate`` reports about a whole annotated episode: a warning when it
    has frames but no subtask rows (it was not annotated by the plan module, or its plan
    failed). Not part of :func:`validate_episode`: a run of some modules only writes shards
    whose episodes may lack subtasks on purpose."""
    out = _Collector(episode)
    if frames and not any(r.style == "subtask" for r in persistent):
        out.add("no_subtasks", f"the episode has {frames} frames but no subtask rows")
    return out.findings


def has_errors(findings: Sequence[Finding]) -> bool:
    return any(f.severity == "error" for f in findings)
