"""Unit tests of common.validation: every rule fires on a row that breaks it, and a
well-formed episode yields no finding at all."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import orjson
import pytest

from narrator.common.contract import (
    LanguageRow,
    say_tool_call,
    sort_events,
    sort_persistent,
    speech_atom,
)
from narrator.common.validation import (
    RULES,
    Finding,
    has_errors,
    validate_episode,
    vqa_answer_problem,
    vqa_answer_type,
)

CAMS = ("observation.images.top", "observation.images.wrist")
FPS = 10
N = 40
# float32 timestamps as a shard stores them (0.1 is not exact in float32)
TS = [float(v) for v in (np.arange(N, dtype=np.float32) / np.float32(FPS))]

ANSWERS = {
    "bbox": {"detections": [{"label": "cup", "bbox_format": "xyxy", "bbox": [1, 2, 30, 40.5]}]},
    "keypoint": {"label": "handle", "point_format": "xy", "point": [12, 8]},
    "count": {"label": "bowls", "count": 3},
    "attribute": {"label": "cup", "attribute": "color", "value": "red"},
    "spatial": {"subject": "cup", "relation": "left_of", "object": "plate"},
}


def p(style: str, t: float, content: str = "x", role: str = "assistant") -> LanguageRow:
    return LanguageRow(
        role=role, content=content, style=style, timestamp=t, camera=None, tool_calls=None
    )


def ev(
    style: str | None, content: str | None = "x", role: str = "user", camera: str | None = None
) -> LanguageRow:
    return LanguageRow(
        role=role, content=content, style=style, timestamp=None, camera=camera, tool_calls=None
    )


def vqa_pair(camera: str, answer: object) -> list[LanguageRow]:
    return [
        ev("vqa", "where is the cup?", role="user", camera=camera),
        ev("vqa", orjson.dumps(answer).decode(), role="assistant", camera=camera),
    ]


def good_episode() -> tuple[list[LanguageRow], dict[int, list[LanguageRow]]]:
    persistent = sort_persistent(
        [
            p("subtask", TS[0], "reach for the cup"),
            p("plan", TS[0], "1. reach\n2. grasp"),
            p("task_aug", TS[0], "pick the cup", role="user"),
            p("task_aug", TS[0], "grab the cup", role="user"),
            p("subtask", TS[15], "grasp the cup by its handle"),
            p("memory", TS[15], "reached the cup"),
            p("plan", TS[15], "1. grasp it gently"),
            p("subtask", TS[30], "lift the cup"),
            p("memory", TS[30], "cup grasped"),
        ]
    )
    events = {
        0: [speech_atom("On it.")],
        15: sort_events([ev("interjection", "be gentle please"), speech_atom("Sure.")]),
        20: sort_events(vqa_pair(CAMS[0], ANSWERS["bbox"]) + vqa_pair(CAMS[1], ANSWERS["count"])),
    }
    return persistent, events


def run(
    persistent: Sequence[LanguageRow],
    events: Mapping[int, Sequence[LanguageRow]],
    vqa_types: Mapping[tuple[int, str], str] | None = None,
) -> list[Finding]:
    return validate_episode(
        episode=7,
        frame_timestamps=TS,
        persistent=persistent,
        events_by_frame=events,
        cameras=CAMS,
        vqa_types=vqa_types,
    )


def rules(findings: Sequence[Finding]) -> list[str]:
    return [f.rule for f in findings]


def test_good_episode_has_no_findings() -> None:
    persistent, events = good_episode()
    types = {(20, CAMS[0]): "bbox", (20, CAMS[1]): "count"}
    assert run(persistent, events, types) == []
    assert run(persistent, events) == []


def test_every_rule_has_a_severity() -> None:
    assert set(RULES.values()) == {"error", "warning"}
    assert RULES["memory_off_boundary"] == "warning"
    assert RULES["subtasks_not_covering"] == "warning"


def test_unknown_style_in_either_column() -> None:
    persistent, events = good_episode()
    persistent = sort_persistent([*persistent, p("mood", TS[5])])
    events[3] = [ev("chitchat")]
    found = run(persistent, events)
    assert rules(found) == ["unknown_style", "unknown_style"]
    assert all(f.severity == "error" and f.episode == 7 for f in found)
    assert found[1].timestamp == TS[3]
    assert "mood" in found[0].message


def test_wrong_column_both_ways() -> None:
    persistent, events = good_episode()
    bad_persistent = [*persistent, p("vqa", TS[35])]
    found = run(sort_persistent(bad_persistent), events)
    assert "wrong_column" in rules(found)
    events[5] = [ev("subtask", role="assistant")]
    found = run(persistent, events)
    assert rules(found) == ["wrong_column"]
    assert "language_persistent" in found[0].message


def test_speech_atom_in_persistent_is_wrong_column() -> None:
    persistent, events = good_episode()
    atom = speech_atom("hi")
    stamped = LanguageRow(
        role=atom.role,
        content=None,
        style=None,
        timestamp=TS[2],
        camera=None,
        tool_calls=atom.tool_calls,
    )
    assert rules(run(sort_persistent([*persistent, stamped]), events)) == ["wrong_column"]


def test_camera_rule() -> None:
    persistent, events = good_episode()
    events[4] = [ev("vqa", "q", camera=None)]
    events[6] = [ev("vqa", "q", camera="observation.images.side")]
    events[8] = [ev("interjection", "x", camera=CAMS[0])]
    found = [f for f in run(persistent, events) if f.rule == "camera_rule"]
    assert [f.timestamp for f in found] == [TS[4], TS[6], TS[8]]
    row = LanguageRow(
        role="assistant",
        content="go",
        style="subtask",
        timestamp=TS[0],
        camera=CAMS[0],
        tool_calls=None,
    )
    assert "camera_rule" in rules(run(sort_persistent([*persistent, row]), {}))


def test_trace_needs_camera() -> None:
    events = {3: [ev("trace", "[[1,2],[3,4]]", role="assistant", camera=CAMS[1])]}
    assert run([], events) == []
    events = {3: [ev("trace", "[[1,2]]", role="assistant")]}
    assert rules(run([], events)) == ["camera_rule"]


def test_missing_content() -> None:
    persistent, events = good_episode()
    events[9] = [ev("interjection", None)]
    found = rules(run(persistent, events))
    assert "missing_content" in found
    empty = [p("subtask", TS[0], "   ")]
    assert rules(run(empty, {})) == ["missing_content"]


@pytest.mark.parametrize(
    "row",
    [
        LanguageRow("user", None, None, None, None, (say_tool_call("hi"),)),
        LanguageRow("assistant", "hi", None, None, None, (say_tool_call("hi"),)),
        LanguageRow(
            "assistant",
            None,
            None,
            None,
            None,
            (
                orjson.dumps(
                    {"type": "function", "function": {"name": "wave", "arguments": {}}}
                ).decode(),
            ),
        ),
        LanguageRow("assistant", None, None, None, None, ("not json",)),
        LanguageRow("assistant", None, None, None, None, (say_tool_call("a"), say_tool_call("a"))),
        LanguageRow(
            "assistant",
            None,
            None,
            None,
            None,
            (
                orjson.dumps(
                    {"type": "function", "function": {"name": "say", "arguments": '{"text":"a"}'}}
                ).decode(),
            ),
        ),
        speech_atom("  "),
    ],
)
def test_bad_speech_atoms(row: LanguageRow) -> None:
    found = run([], {0: [row]})
    assert "speech_atom" in rules(found)
    assert has_errors(found)


def test_event_off_frame() -> None:
    persistent, events = good_episode()
    events[N] = [ev("interjection")]
    events[-1] = [ev("interjection")]
    found = run(persistent, events)
    assert rules(found) == ["event_off_frame", "event_off_frame"]
    assert "outside" in found[0].message


def test_persistent_timestamp_must_be_exact_float32_frame_time() -> None:
    persistent, events = good_episode()
    # 1.5000000000000002 in float64 is stored as float32 1.5, which is TS[15]
    assert run(sort_persistent([*persistent, p("motion", 15 * 0.1, "slow")]), events) == []
    next_float32 = float(np.nextafter(np.float32(TS[3]), np.float32(1)))
    found = run(sort_persistent([*persistent, p("motion", next_float32)]), events)
    assert rules(found) == ["persistent_off_frame"]
    assert found[0].timestamp == next_float32
    found = run(sort_persistent([*persistent, p("motion", 0.35)]), events)
    assert rules(found) == ["persistent_off_frame"]


def test_interjection_needs_speech_and_plan() -> None:
    persistent, events = good_episode()
    events[15] = [ev("interjection", "be gentle")]  # speech atom removed
    found = run(persistent, events)
    assert rules(found) == ["interjection_incomplete"]
    assert "speech atom" in found[0].message and "plan" not in found[0].message

    no_plan = [r for r in persistent if not (r.style == "plan" and r.timestamp == TS[15])]
    _, events = good_episode()
    found = run(no_plan, events)
    assert rules(found) == ["interjection_incomplete"]
    assert "plan row" in found[0].message


def test_with_plans_off_an_interjection_needs_its_speech_atom_only() -> None:
    persistent, events = good_episode()
    without_plans = [r for r in persistent if r.style != "plan"]
    assert rules(run(without_plans, events)) == ["interjection_incomplete"]
    found = validate_episode(
        episode=7,
        frame_timestamps=TS,
        persistent=without_plans,
        events_by_frame=events,
        cameras=CAMS,
        plans=False,
    )
    assert found == []
    events[15] = [ev("interjection", "be gentle")]  # the speech atom is still required
    found = validate_episode(
        episode=7,
        frame_timestamps=TS,
        persistent=without_plans,
        events_by_frame=events,
        cameras=CAMS,
        plans=False,
    )
    assert rules(found) == ["interjection_incomplete"]
    assert "speech atom" in found[0].message and "plan" not in found[0].message


@pytest.mark.parametrize("qtype", sorted(ANSWERS))
def test_each_answer_shape_matches_only_its_type(qtype: str) -> None:
    text = orjson.dumps(ANSWERS[qtype]).decode()
    assert vqa_answer_problem(text, qtype) is None
    assert vqa_answer_problem(text, None) is None
    assert vqa_answer_type(text) == qtype
    for other in ANSWERS:
        if other != qtype:
            assert vqa_answer_problem(text, other) is not None


@pytest.mark.parametrize(
    "answer",
    [
        "not json",
        "[1, 2]",
        '{"detections": [{"label": "cup", "bbox_format": "xywh", "bbox": [1, 2, 3, 4]}]}',
        '{"detections": [{"label": "cup", "bbox_format": "xyxy", "bbox": [1, 2, 3]}]}',
        '{"detections": [{"label": "cup", "bbox_format": "xyxy", "bbox": [1, 2, 3, "4"]}]}',
        '{"label": "x", "point_format": "xy", "point": [1, true]}',
        '{"label": "x", "count": 2.5}',
        '{"label": "x", "count": -1}',
        '{"label": "x", "count": 2, "extra": 1}',
        '{"subject": "a", "relation": "beside", "object": "b"}',
        '{"label": "x", "attribute": "color", "value": 3}',
    ],
)
def test_malformed_vqa_answers(answer: str) -> None:
    events = {
        5: [
            ev("vqa", answer, role="assistant", camera=CAMS[0]),
            ev("vqa", "q?", role="user", camera=CAMS[0]),
        ]
    }
    found = run([], events)
    assert rules(found) == ["vqa_shape"]
    assert found[0].camera == CAMS[0] and found[0].timestamp == TS[5]


def test_vqa_answer_of_another_requested_type() -> None:
    persistent, events = good_episode()
    found = run(persistent, events, {(20, CAMS[0]): "keypoint"})
    assert rules(found) == ["vqa_shape"]
    assert "keypoint" in found[0].message
    assert found[0].camera == CAMS[0]


def test_vqa_duplicate_per_frame_camera_role() -> None:
    persistent, events = good_episode()
    events[20] = sort_events(
        [*events[20], ev("vqa", orjson.dumps(ANSWERS["count"]).decode(), "assistant", CAMS[1])]
    )
    found = run(persistent, events)
    assert rules(found) == ["vqa_duplicate"]
    assert found[0].camera == CAMS[1]


def test_persistent_duplicate_except_task_aug() -> None:
    persistent, events = good_episode()
    doubled = sort_persistent([*persistent, p("subtask", TS[15], "another label")])
    found = run(doubled, events)
    assert rules(found) == ["persistent_duplicate"]
    assert found[0].timestamp == TS[15]
    more_aug = sort_persistent([*persistent, p("task_aug", TS[0], "take the cup", role="user")])
    assert run(more_aug, events) == []


def test_row_order() -> None:
    persistent, events = good_episode()
    found = run(list(reversed(persistent)), events)
    assert rules(found) == ["row_order"]
    events[20] = list(reversed(events[20]))
    found = run(persistent, events)
    assert rules(found) == ["row_order"]
    assert found[0].timestamp == TS[20]


def test_memory_off_boundary_is_a_warning() -> None:
    persistent, events = good_episode()
    moved = sort_persistent([*persistent, p("memory", TS[22], "halfway")])
    found = run(moved, events)
    assert rules(found) == ["memory_off_boundary"]
    assert found[0].severity == "warning"
    assert not has_errors(found)


def test_subtasks_not_covering_is_a_warning() -> None:
    persistent, events = good_episode()
    late = [r for r in persistent if not (r.style == "subtask" and r.timestamp == TS[0])]
    found = run(late, events)
    assert rules(found) == ["subtasks_not_covering"]
    assert found[0].severity == "warning"
    # no subtask rows at all (e.g. only the vqa module ran): nothing to cover
    assert run([], {20: events[20]}) == []


def test_finding_to_dict_round_trip() -> None:
    found = run([p("mood", TS[1])], {})
    d = found[0].to_dict()
    assert Finding(**d) == found[0]
