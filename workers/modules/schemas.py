"""JSON schemas sent as ``response_format`` (vLLM structured outputs), one per request kind.

Every schema is a closed object (``additionalProperties: false``, every property required)
with real bounds: frame positions lie in ``0..n-1``, pixel coordinates in ``0..`` the size of
the image the model sees, strings have a minimum and maximum length, lists a minimum and
maximum count. Servers that honour the schema then cannot produce out-of-range values, and
the simulated server generates answers inside the same bounds.

Invariants:
* Pure: functions of their arguments only, returning fresh dicts.
* The VQA answer schemas have exactly the answer shapes of docs/CONTRACT.md §3, keys in that order.
* ``SCHEMA_NAMES`` holds the ``schema_name`` sent with each kind (the server counts by it).
"""

from __future__ import annotations

from typing import Any

LABEL_MAX_CHARS = 120
SENTENCE_MAX_CHARS = 240
DESCRIPTION_MAX_CHARS = 2000
SPATIAL_RELATIONS: tuple[str, ...] = ("left_of", "right_of", "on", "in", "above", "below", "near")
MAX_DETECTIONS = 5
MAX_COUNT = 100

SCHEMA_NAMES: dict[str, str] = {
    "subtasks": "plan_subtasks",
    "describe": "plan_describe",
    "relabel": "plan_relabel",
    "derive_task": "plan_derive_task",
    "memory": "plan_memory",
    "task_aug": "plan_task_aug",
    "task_aug_axes": "plan_task_aug_axes",
    "ack": "interjections_ack",
    "interjection": "interjections_interjection",
    "plan_refresh": "interjections_plan_refresh",
    "vqa": "vqa_{question_type}",
}


def _text(min_chars: int = 1, max_chars: int = SENTENCE_MAX_CHARS) -> dict[str, Any]:
    return {"type": "string", "minLength": min_chars, "maxLength": max_chars}


def _closed(properties: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


def subtasks_schema(n_frames: int, max_subtasks: int) -> dict[str, Any]:
    """Subtask spans of one window: each names the position (0-based, among the ``n_frames``
    frames shown) of the frame where it starts, and an imperative label."""
    span = _closed(
        {
            "start_frame": {"type": "integer", "minimum": 0, "maximum": max(0, n_frames - 1)},
            "label": _text(3, LABEL_MAX_CHARS),
        }
    )
    return _closed(
        {"subtasks": {"type": "array", "items": span, "minItems": 1, "maxItems": max_subtasks}}
    )


def sheet_subtasks_schema(start_s: float, end_s: float, max_subtasks: int) -> dict[str, Any]:
    """Subtask spans of one contact-sheet window: each names the episode time (seconds, as
    printed on the tiles, within ``start_s..end_s``) at which it starts, and a label."""
    span = _closed(
        {
            "start_s": {"type": "number", "minimum": start_s, "maximum": max(start_s, end_s)},
            "label": _text(3, LABEL_MAX_CHARS),
        }
    )
    return _closed(
        {"subtasks": {"type": "array", "items": span, "minItems": 1, "maxItems": max_subtasks}}
    )


def describe_schema() -> dict[str, Any]:
    """A chronological description of what the robot visibly does."""
    return _closed({"description": _text(10, DESCRIPTION_MAX_CHARS)})


def relabel_schema() -> dict[str, Any]:
    """The corrected label of one fixed segment."""
    return _closed({"subtask_label": _text(3, LABEL_MAX_CHARS)})


def derive_task_schema() -> dict[str, Any]:
    """The task an episode shows, as one instruction sentence."""
    return _closed({"task": _text(3, SENTENCE_MAX_CHARS)})


def task_aug_axes_schema(counts: dict[str, int]) -> dict[str, Any]:
    """Task variants per named axis; an axis gets at most its count (fewer when the task has
    nothing to omit on it)."""
    return _closed(
        {
            axis: {
                "type": "array",
                "items": _text(3, SENTENCE_MAX_CHARS),
                "minItems": 0,
                "maxItems": count,
            }
            for axis, count in counts.items()
        }
    )


def steps_schema(max_steps: int) -> dict[str, Any]:
    """A refreshed plan: the steps still to do, in order (numbered by the caller)."""
    steps = {
        "type": "array",
        "items": _text(3, LABEL_MAX_CHARS),
        "minItems": 1,
        "maxItems": max(1, max_steps),
    }
    return _closed({"steps": steps})


def memory_schema() -> dict[str, Any]:
    """One or two short sentences of what matters for the rest of the task."""
    return _closed({"memory": _text(3, SENTENCE_MAX_CHARS)})


def task_aug_schema(count: int) -> dict[str, Any]:
    """Exactly ``count`` rephrasings of the task."""
    items = {"type": "array", "items": _text(3, SENTENCE_MAX_CHARS), "minItems": count}
    items["maxItems"] = count
    return _closed({"rephrasings": items})


def ack_schema() -> dict[str, Any]:
    """The robot's short spoken acknowledgement of the task."""
    return _closed({"utterance": _text(2, 160)})


def interjection_schema() -> dict[str, Any]:
    """What a person says at a subtask boundary, and what the robot answers."""
    return _closed({"interjection": _text(2, 200), "reply": _text(2, 160)})


def _coordinates(axes: tuple[str, ...], width: int, height: int) -> dict[str, Any]:
    """A fixed-length list of pixel coordinates: ``prefixItems`` bounds each one by its own
    axis; ``items`` (the looser bound of the larger side) serves servers that only know it."""
    bound = {"x": width, "y": height}
    return {
        "type": "array",
        "prefixItems": [{"type": "number", "minimum": 0, "maximum": bound[a]} for a in axes],
        "items": {"type": "number", "minimum": 0, "maximum": max(width, height)},
        "minItems": len(axes),
        "maxItems": len(axes),
    }


def vqa_answer_schema(question_type: str, width: int, height: int) -> dict[str, Any]:
    """The answer shape of ``question_type`` (docs/CONTRACT.md §3); coordinates are pixels of the
    ``width`` x ``height`` image the model sees (origin top-left, x right, y down)."""
    label = _text(1, 60)
    if question_type == "bbox":
        detection = _closed(
            {
                "label": label,
                "bbox_format": {"type": "string", "enum": ["xyxy"]},
                "bbox": _coordinates(("x", "y", "x", "y"), width, height),
            }
        )
        return _closed(
            {
                "detections": {
                    "type": "array",
                    "items": detection,
                    "minItems": 1,
                    "maxItems": MAX_DETECTIONS,
                }
            }
        )
    if question_type == "keypoint":
        return _closed(
            {
                "label": label,
                "point_format": {"type": "string", "enum": ["xy"]},
                "point": _coordinates(("x", "y"), width, height),
            }
        )
    if question_type == "count":
        return _closed(
            {"label": label, "count": {"type": "integer", "minimum": 0, "maximum": MAX_COUNT}}
        )
    if question_type == "attribute":
        return _closed({"label": label, "attribute": _text(1, 40), "value": _text(1, 60)})
    if question_type == "spatial":
        return _closed(
            {
                "subject": label,
                "relation": {"type": "string", "enum": list(SPATIAL_RELATIONS)},
                "object": _text(1, 60),
            }
        )
    raise ValueError(f"unknown question type {question_type!r}")


def vqa_schema(question_type: str, width: int, height: int) -> dict[str, Any]:
    """One VQA request's answer: the question asked and its answer of the requested shape."""
    return _closed(
        {
            "question": _text(5, 200),
            "answer": vqa_answer_schema(question_type, width, height),
        }
    )


def vqa_schema_name(question_type: str) -> str:
    return SCHEMA_NAMES["vqa"].format(question_type=question_type)
