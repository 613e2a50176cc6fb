"""Tests of narrator.consumer.resolvers: LeRobot's binding resolvers (upstream
``language_render``): expression parsing, active_at, emitted_at (exact events, 0.1 s on
persistent styles, compared on the stored float32 values), nth_prev / nth_next, selectors and
ambiguity."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from narrator.consumer.recipes import RecipeError
from narrator.consumer.resolvers import (
    EMITTED_AT_TOLERANCE_S,
    AmbiguousBindingError,
    ResolverCall,
    parse_spec,
    resolve_spec,
)

TOP, WRIST = "observation.images.top", "observation.images.wrist"


def f32(value: float) -> float:
    return float(np.float32(value))


def p(style: str, t: float, content: str, role: str = "assistant") -> dict[str, Any]:
    return {
        "role": role,
        "content": content,
        "style": style,
        "timestamp": f32(t),
        "camera": None,
        "tool_calls": None,
    }


def ev(
    style: str | None,
    content: str | None,
    role: str = "user",
    camera: str | None = None,
    tool_calls: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    return {
        "role": role,
        "content": content,
        "style": style,
        "camera": camera,
        "tool_calls": tool_calls,
    }


def say(text: str) -> dict[str, Any]:
    call = {"type": "function", "function": {"name": "say", "arguments": {"text": text}}}
    return ev(None, None, "assistant", tool_calls=[call])


PERSISTENT = [
    p("plan", 0.0, "plan 0"),
    p("subtask", 0.0, "subtask 0"),
    p("memory", 1.0, "memory 1"),
    p("subtask", 1.0, "subtask 1"),
    p("memory", 2.0, "memory 2"),
    p("subtask", 2.0, "subtask 2"),
]


def content(spec: str, t: float, events: list[dict[str, Any]] | None = None) -> str | None:
    row = resolve_spec(spec, persistent=PERSISTENT, events=events or [], t=f32(t))
    return None if row is None else row["content"]


def test_parse_rules() -> None:
    assert parse_spec("active_at(t, style=subtask)") == ResolverCall("active_at", style="subtask")
    # `t` may appear anywhere or not at all; values may be quoted; empty parts are skipped.
    assert parse_spec(" nth_next( style='plan' , t, offset=2, ) ") == ResolverCall(
        "nth_next", style="plan", offset=2
    )
    assert parse_spec('emitted_at(t, role="assistant", tool_name=say)') == ResolverCall(
        "emitted_at", role="assistant", tool_name="say"
    )
    # A repeated key: the last one counts (LeRobot builds a dict).
    assert parse_spec("active_at(t, style=plan, style=memory)").style == "memory"
    assert parse_spec("nth_prev(style=memory, offset=-1)").offset == -1


def test_active_at() -> None:
    assert content("active_at(t, style=subtask)", 0.0) == "subtask 0"
    assert content("active_at(t, style=subtask)", 0.99) == "subtask 0"
    assert content("active_at(t, style=subtask)", 1.0) == "subtask 1"
    assert content("active_at(t, style=memory)", 0.5) is None  # before the first memory
    assert content("active_at(t, style=subtask, role=user)", 1.5) is None


def test_nth_prev_and_nth_next() -> None:
    assert content("nth_prev(style=subtask, offset=1)", 2.5) == "subtask 1"
    assert content("nth_prev(style=subtask, offset=2)", 2.5) == "subtask 0"
    assert content("nth_prev(style=subtask, offset=3)", 2.5) is None
    assert content("nth_next(style=subtask, offset=1)", 0.5) == "subtask 1"
    assert content("nth_next(style=subtask, offset=2)", 0.5) == "subtask 2"
    assert content("nth_next(style=subtask, offset=1)", 2.5) is None
    # Before the first row of the style, nth_next counts from the first row, nth_prev is None.
    assert content("nth_next(style=memory, offset=1)", 0.5) == "memory 1"
    assert content("nth_next(style=memory, offset=2)", 0.5) == "memory 2"
    assert content("nth_prev(style=memory, offset=1)", 0.5) is None
    # A negative offset walks the other way.
    assert content("nth_prev(style=subtask, offset=-1)", 0.5) == "subtask 1"


def test_emitted_at_persistent_tolerance_on_float32_values() -> None:
    # LeRobot compares |row.timestamp - t| <= 0.1 on the float32 values as Python floats, so
    # at 10 fps the frame before 2.0 s (1.9 -> 1.89999998) is out, the one after (2.1 ->
    # 2.0999999) is in.
    spec = "emitted_at(t, style=memory)"
    assert EMITTED_AT_TOLERANCE_S == 0.1
    assert content(spec, 2.0) == "memory 2"
    assert content(spec, 2.05) == "memory 2"
    assert abs(f32(2.1) - f32(2.0)) <= 0.1 and content(spec, 2.1) == "memory 2"
    assert abs(f32(1.9) - f32(2.0)) > 0.1 and content(spec, 1.9) is None
    assert content(spec, 2.3) is None
    assert content(spec, 1.5) is None


def test_emitted_at_events_are_this_frames_rows() -> None:
    events = [
        ev("interjection", "stop"),
        say("Stopping."),
        ev("vqa", "how many?", "user", TOP),
        ev("vqa", '{"count": 1}', "assistant", TOP),
        ev("vqa", "where?", "user", WRIST),
        ev("vqa", '{"label": "cup", "point_format": "xy", "point": [1, 2]}', "assistant", WRIST),
    ]
    assert content("emitted_at(t, style=interjection)", 7.0, events) == "stop"
    speech = resolve_spec(
        "emitted_at(t, role=assistant, tool_name=say)", persistent=PERSISTENT, events=events, t=7.0
    )
    assert speech is not None and speech["style"] is None
    assert content(f"emitted_at(t, style=vqa, role=user, camera={WRIST})", 7.0, events) == "where?"
    assert (
        content("emitted_at(t, style=vqa, role=user, camera=observation.images.left)", 7.0, events)
        is None
    )
    assert content("emitted_at(t, style=trace)", 7.0, events) is None
    assert content("emitted_at(t, style=interjection)", 7.0, []) is None
    # Without a camera, two cameras' rows are ambiguous, as in LeRobot.
    with pytest.raises(AmbiguousBindingError, match="2 matching rows"):
        content("emitted_at(t, style=vqa, role=assistant)", 7.0, events)
    # Without a style, an event selector reaches every event row of the frame.
    with pytest.raises(AmbiguousBindingError):
        content("emitted_at(t, role=user)", 7.0, events)


def test_tool_name_matches_any_call_of_that_function() -> None:
    other = {"type": "function", "function": {"name": "wave", "arguments": {}}}
    row = say("hi")
    row["tool_calls"] = [other, *row["tool_calls"]]
    spec = "emitted_at(t, tool_name=say)"
    assert resolve_spec(spec, persistent=[], events=[row], t=0.0) is row
    assert (
        resolve_spec("emitted_at(t, tool_name=dance)", persistent=[], events=[row], t=0.0) is None
    )


def test_two_rows_of_one_style_at_one_time_are_ambiguous() -> None:
    rows = [p("task_aug", 0.0, "a", "user"), p("task_aug", 0.0, "b", "user")]
    with pytest.raises(AmbiguousBindingError):
        resolve_spec("active_at(t, style=task_aug)", persistent=rows, events=[], t=1.0)
    # nth_* walk single rows in (timestamp, style, role) order, keeping file order on ties.
    first = resolve_spec("nth_prev(style=task_aug, offset=1)", persistent=rows, events=[], t=1.0)
    assert first is not None and first["content"] == "a"


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("active_at", "invalid resolver expression"),
        ("oldest(t, style=plan)", "unknown language resolver"),
        ("active_at(t, style=interjection)", "event-only style"),
        ("nth_next(style=vqa)", "event-only style"),
        ("emitted_at(t, style=caption)", "unknown language style"),
        ("nth_next(style=plan, offset=0)", "non-zero"),
        ("emitted_at(t, style=plan, offset=1)", "emitted_at takes"),
    ],
)
def test_expressions_that_cannot_resolve(spec: str, fragment: str) -> None:
    with pytest.raises(RecipeError, match=fragment):
        resolve_spec(spec, persistent=PERSISTENT, events=[], t=0.0)
