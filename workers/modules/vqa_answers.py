"""Parsing one VQA answer into the question text and the stored answer of docs/CONTRACT.md §3.

A VQA request returns ``{"question": str, "answer": <shape of the requested type>}``.
:func:`parse_vqa_answer` checks the shape strictly (it doubles as the client's ``check``, so a
wrong shape earns the corrective retry), maps coordinates from the image the VLM saw to the
stored frame (:mod:`workers.modules.coordinates`), and rebuilds the answer with exactly the
keys of the shape, in the shape's order. :func:`answer_text` renders it as compact JSON.

Boxes empty after clipping are dropped from a bbox answer; if none remains the answer is
unusable. A keypoint far outside the image makes the answer unusable.

Invariants: pure; the rebuilt answer always passes ``common.validation.vqa_answer_problem``
for its type; strings are stripped and never empty.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from narrator.workers.modules.coordinates import ImageGeometry, map_box, map_point
from narrator.workers.modules.schemas import SPATIAL_RELATIONS


@dataclass(frozen=True)
class VQAAnswer:
    question: str
    answer: dict[str, Any]


def _text(obj: Mapping[str, Any], key: str, where: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f'{where}: "{key}" must be a non-empty string')
    return " ".join(value.split())


def _numbers(value: object, count: int, where: str) -> list[float]:
    if not isinstance(value, list) or len(value) != count:
        raise ValueError(f"{where} must be a list of {count} numbers")
    numbers = []
    for item in value:
        if isinstance(item, bool) or not isinstance(item, int | float):
            raise ValueError(f"{where} must be a list of {count} numbers")
        numbers.append(float(item))
    return numbers


def _bbox(obj: Mapping[str, Any], geometry: ImageGeometry) -> dict[str, Any]:
    detections = obj.get("detections")
    if not isinstance(detections, list) or not detections:
        raise ValueError('answer must be {"detections": [...]} with at least one detection')
    kept = []
    for i, det in enumerate(detections):
        where = f"detection {i}"
        if not isinstance(det, dict):
            raise ValueError(f"{where} must be an object")
        label = _text(det, "label", where)
        if det.get("bbox_format") != "xyxy":
            raise ValueError(f'{where}: "bbox_format" must be "xyxy"')
        box = map_box(_numbers(det.get("bbox"), 4, f'{where}: "bbox"'), geometry)
        if box is not None:
            kept.append({"label": label, "bbox_format": "xyxy", "bbox": list(box)})
    if not kept:
        raise ValueError(
            "every box is empty: each bbox must be [x1, y1, x2, y2] with x1 < x2 and y1 < y2 "
            "inside the image"
        )
    return {"detections": kept}


def _keypoint(obj: Mapping[str, Any], geometry: ImageGeometry) -> dict[str, Any]:
    label = _text(obj, "label", "answer")
    if obj.get("point_format") != "xy":
        raise ValueError('answer: "point_format" must be "xy"')
    point = map_point(_numbers(obj.get("point"), 2, 'answer: "point"'), geometry)
    if point is None:
        raise ValueError(
            f"the point lies outside the {geometry.sent_width}x{geometry.sent_height} image"
        )
    return {"label": label, "point_format": "xy", "point": list(point)}


def _count(obj: Mapping[str, Any], _geometry: ImageGeometry) -> dict[str, Any]:
    label = _text(obj, "label", "answer")
    count = obj.get("count")
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise ValueError('answer: "count" must be a non-negative integer')
    return {"label": label, "count": count}


def _attribute(obj: Mapping[str, Any], _geometry: ImageGeometry) -> dict[str, Any]:
    return {
        "label": _text(obj, "label", "answer"),
        "attribute": _text(obj, "attribute", "answer"),
        "value": _text(obj, "value", "answer"),
    }


def _spatial(obj: Mapping[str, Any], _geometry: ImageGeometry) -> dict[str, Any]:
    subject = _text(obj, "subject", "answer")
    relation = obj.get("relation")
    if relation not in SPATIAL_RELATIONS:
        raise ValueError(f'answer: "relation" must be one of {", ".join(SPATIAL_RELATIONS)}')
    return {"subject": subject, "relation": relation, "object": _text(obj, "object", "answer")}


_PARSERS = {
    "bbox": _bbox,
    "keypoint": _keypoint,
    "count": _count,
    "attribute": _attribute,
    "spatial": _spatial,
}


def parse_vqa_answer(
    question_type: str, data: Mapping[str, Any], geometry: ImageGeometry
) -> VQAAnswer:
    """The question and the stored-pixel answer; ``ValueError`` says what is wrong."""
    parser = _PARSERS.get(question_type)
    if parser is None:
        raise ValueError(f"unknown question type {question_type!r}; known: {sorted(_PARSERS)}")
    question = _text(data, "question", "reply")
    answer = data.get("answer")
    if not isinstance(answer, dict):
        raise ValueError(f'reply: "answer" must be an object of the {question_type} shape')
    return VQAAnswer(question=question, answer=parser(answer, geometry))


def answer_text(answer: Mapping[str, Any]) -> str:
    """Compact JSON text of an answer, keys in the order they were built."""
    return orjson.dumps(dict(answer)).decode()
