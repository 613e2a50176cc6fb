"""Parsing the JSON answers of the plan and interjections requests (VQA: ``vqa_answers``).

Each parser takes the decoded JSON object of one answer, checks it has the shape its schema
in :mod:`workers.modules.schemas` asks for, and returns clean values. The same function is
passed to the client as ``check``, so a wrong shape triggers the client's corrective retry;
the ``ValueError`` message says what is wrong in words the model can act on.

Invariants: pure; returned texts are stripped, on one line, and never empty.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any


def one_line(text: str) -> str:
    """``text`` on one line, runs of blanks collapsed, no surrounding blanks."""
    return " ".join(text.split())


def _text(obj: Mapping[str, Any], key: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not one_line(value):
        raise ValueError(f'"{key}" must be a non-empty string')
    return one_line(value)


def _texts(obj: Mapping[str, Any], key: str) -> list[str]:
    value = obj.get(key)
    if not isinstance(value, list) or not value:
        raise ValueError(f'"{key}" must be a non-empty list of strings')
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, str) or not one_line(item):
            raise ValueError(f'item {i} of "{key}" must be a non-empty string')
        out.append(one_line(item))
    return out


def parse_subtasks(data: Mapping[str, Any], n_frames: int) -> list[tuple[int, str]]:
    """``(position, label)`` pairs of a subtasks answer; positions lie in ``0..n_frames-1``."""
    items = data.get("subtasks")
    if not isinstance(items, list) or not items:
        raise ValueError('"subtasks" must be a non-empty list of {"start_frame", "label"}')
    pairs = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise ValueError(f"subtask {i} must be an object")
        start = item.get("start_frame")
        if isinstance(start, bool) or not isinstance(start, int) or not 0 <= start < n_frames:
            raise ValueError(
                f'subtask {i}: "start_frame" must be an integer from 0 to {n_frames - 1} '
                "(the number of a frame shown)"
            )
        pairs.append((start, _text(item, "label")))
    return pairs


TIME_TOLERANCE_S = 0.5  # a start this far outside the window is clamped, not refused


def parse_sheet_subtasks(
    data: Mapping[str, Any], start_s: float, end_s: float
) -> list[tuple[float, str]]:
    """``(start time, label)`` pairs of a contact-sheet subtasks answer; times lie in
    ``start_s..end_s`` (a start up to :data:`TIME_TOLERANCE_S` outside is clamped)."""
    items = data.get("subtasks")
    if not isinstance(items, list) or not items:
        raise ValueError('"subtasks" must be a non-empty list of {"start_s", "label"}')
    pairs = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise ValueError(f"subtask {i} must be an object")
        start = item.get("start_s")
        value = float(start) if isinstance(start, int | float) else math.nan
        if isinstance(start, bool) or not (
            start_s - TIME_TOLERANCE_S <= value <= end_s + TIME_TOLERANCE_S
        ):
            raise ValueError(
                f'subtask {i}: "start_s" must be a number of seconds from {start_s:.2f} to '
                f"{end_s:.2f} (a time printed on the tiles)"
            )
        pairs.append((min(max(value, start_s), end_s), _text(item, "label")))
    return pairs


def parse_description(data: Mapping[str, Any]) -> str:
    return _text(data, "description")


def parse_relabel(data: Mapping[str, Any]) -> str:
    return _text(data, "subtask_label")


def parse_task(data: Mapping[str, Any]) -> str:
    return _text(data, "task")


def parse_axes(data: Mapping[str, Any], counts: Mapping[str, int], task: str) -> list[str]:
    """The variants of an axes answer in axis order (at most each axis's count), without
    repeats and without copies of the task (compared ignoring case)."""
    seen = {one_line(task).casefold()}
    out = []
    for axis, count in counts.items():
        value = data.get(axis, [])
        if not isinstance(value, list):
            raise ValueError(f'"{axis}" must be a list of strings')
        kept = 0
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise ValueError(f'item {i} of "{axis}" must be a string')
            text = one_line(item)
            if kept >= count or not text or text.casefold() in seen:
                continue
            seen.add(text.casefold())
            out.append(text)
            kept += 1
    return out


def parse_steps(data: Mapping[str, Any]) -> list[str]:
    """The steps of a refreshed plan, without any numbering the model may have added."""
    steps = []
    for step in _texts(data, "steps"):
        head, _, rest = step.partition(" ")
        if rest and head.rstrip(".)").isdigit():
            step = rest.strip()
        steps.append(step)
    return steps


def numbered(steps: Sequence[str]) -> str:
    """``"1. first\\n2. second"``: the content of a plan row."""
    if not steps:
        raise ValueError("a plan needs at least one step")
    return "\n".join(f"{i}. {step}" for i, step in enumerate(steps, start=1))


def parse_memory(data: Mapping[str, Any]) -> str:
    return _text(data, "memory")


def parse_rephrasings(data: Mapping[str, Any], task: str) -> list[str]:
    """Distinct rephrasings that differ from the task itself (compared ignoring case)."""
    seen = {one_line(task).casefold()}
    out = []
    for text in _texts(data, "rephrasings"):
        key = text.casefold()
        if key not in seen:
            seen.add(key)
            out.append(text)
    return out


def parse_utterance(data: Mapping[str, Any]) -> str:
    return _text(data, "utterance")


def parse_interjection(data: Mapping[str, Any]) -> tuple[str, str]:
    """``(what the person says, what the robot replies)``."""
    return _text(data, "interjection"), _text(data, "reply")


def bulleted(lines: Sequence[str], empty: str = "(none)") -> str:
    """Lines as a ``- item`` list for a prompt, or ``empty`` when there are none."""
    return "\n".join(f"- {line}" for line in lines) if lines else empty
