"""writer.merge: which existing rows a run keeps, by owner, on their own (pure)."""

from __future__ import annotations

import pytest

from narrator.common.contract import LanguageRow, speech_atom
from narrator.common.staging import StagedRow
from narrator.writer.merge import kept_rows, row_owner, yield_to_interjections

CAM = "observation.images.top"
TIMES = [0.0, 0.1, 0.2, 0.3, 0.4]


def _p(style: str, t: float, content: str = "x", role: str = "assistant") -> LanguageRow:
    return LanguageRow(role, content, style, t, None, None)


def _e(
    style: str | None, content: str = "x", role: str = "user", camera: str | None = None
) -> LanguageRow:
    return LanguageRow(role, content, style, None, camera, None)


def _episode() -> tuple[list[LanguageRow], dict[int, list[LanguageRow]]]:
    persistent = [
        _p("plan", 0.0, "1. reach"),
        _p("subtask", 0.0, "reach"),
        _p("task_aug", 0.0, "do it", role="user"),
        _p("motion", 0.1, "move left"),
        _p("memory", 0.2, "reached"),
        _p("subtask", 0.2, "grasp"),
        _p("plan", 0.3, "1. grasp slowly"),  # refreshed at the interjection's frame
    ]
    events = {
        0: [speech_atom("On it.")],
        2: [_e("vqa", "where?", camera=CAM), _e("vqa", '{"count": 1}', "assistant", CAM)],
        3: [_e("interjection", "slowly please"), speech_atom("Sure.")],
        4: [_e("trace", "[[1, 2]]", "assistant", CAM)],
    }
    return persistent, events


@pytest.mark.parametrize(
    ("row", "at_interjection", "owner"),
    [
        (_p("subtask", 0.0), False, "plan"),
        (_p("memory", 0.2), False, "plan"),
        (_p("task_aug", 0.0), False, "plan"),
        (_p("plan", 0.0), False, "plan"),
        (_p("plan", 0.3), True, "interjections"),
        (_e("interjection"), False, "interjections"),
        (speech_atom("hi"), False, "interjections"),
        (_e("vqa", camera=CAM), False, "vqa"),
        (_p("motion", 0.1), False, None),
        (_e("trace", camera=CAM), False, None),
    ],
)
def test_every_style_has_its_owner(
    row: LanguageRow, at_interjection: bool, owner: str | None
) -> None:
    times = {0.3} if at_interjection else set()
    assert row_owner(row, interjection_times=times) == owner


def test_a_vqa_run_keeps_everything_but_vqa() -> None:
    persistent, events = _episode()
    kept_p, kept_e = kept_rows(persistent, events, TIMES, {"vqa"})
    assert kept_p == persistent
    assert 2 not in kept_e  # the frame held vqa rows only
    assert kept_e == {f: rows for f, rows in events.items() if f != 2}


def test_a_plan_run_keeps_the_interjections_plan_and_other_tools_rows() -> None:
    persistent, events = _episode()
    kept_p, kept_e = kept_rows(persistent, events, TIMES, {"plan"})
    assert [(r.style, r.timestamp) for r in kept_p] == [("motion", 0.1), ("plan", 0.3)]
    assert kept_e == events  # no event belongs to the plan module


def test_a_full_run_keeps_only_rows_no_module_owns() -> None:
    persistent, events = _episode()
    kept_p, kept_e = kept_rows(persistent, events, TIMES, {"plan", "interjections", "vqa"})
    assert [r.style for r in kept_p] == ["motion"]
    assert kept_e == {4: events[4]}


def test_without_an_interjection_a_later_plan_row_is_the_plans() -> None:
    persistent, events = _episode()
    del events[3]
    kept_p, _ = kept_rows(persistent, events, TIMES, {"plan"})
    assert [r.style for r in kept_p] == ["motion"]


def test_a_run_of_no_module_keeps_every_row_untouched() -> None:
    persistent, events = _episode()
    kept_p, kept_e = kept_rows(persistent, events, TIMES, set())
    assert kept_p == persistent and kept_e == events
    assert kept_p is not persistent  # fresh lists: the caller may extend them


def _staged(style: str, frame: int) -> StagedRow:
    return StagedRow("persistent", frame, "assistant", f"{style} at {frame}", style)


def test_on_an_interjection_frame_the_scheduled_plan_row_yields() -> None:
    rows = [
        _staged("subtask", 0),
        _staged("plan", 0),
        _staged("subtask", 3),
        _staged("memory", 3),
        _staged("plan", 3),  # an interjection sits on frame 3: its own plan row wins
        _staged("plan", 4),
    ]
    kept = yield_to_interjections(rows, {3})
    assert [(r.style, r.frame) for r in kept] == [
        ("subtask", 0), ("plan", 0), ("subtask", 3), ("memory", 3), ("plan", 4),
    ]  # fmt: skip
    assert yield_to_interjections(rows, set()) == rows  # no interjection: nothing yields
    assert yield_to_interjections(rows, {1, 2}) == rows  # frames without plan rows
