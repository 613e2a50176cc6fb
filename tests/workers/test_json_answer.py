"""Defensive JSON extraction from model answers (workers/json_answer.py)."""

from __future__ import annotations

import pytest

from narrator.workers.json_answer import balanced_object_end, extract_json_object, strip_think

GOOD = '{"label": "cube", "count": 2}'


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (GOOD, {"label": "cube", "count": 2}),
        (f"  \n{GOOD}\n ", {"label": "cube", "count": 2}),
        (f"\ufeff{GOOD}", {"label": "cube", "count": 2}),
        (f"<think>I need {{braces}} here</think>\n{GOOD}", {"label": "cube", "count": 2}),
        (f"<THINK>\nmulti\nline\n</THINK>{GOOD}", {"label": "cube", "count": 2}),
        (f"no opening tag {{x}}</think>\n\n{GOOD}", {"label": "cube", "count": 2}),
        (f"<think>a</think><think>b {{}}</think>{GOOD}", {"label": "cube", "count": 2}),
        (f"{GOOD}\n<think>an unclosed afterthought {{", {"label": "cube", "count": 2}),
        (f"```json\n{GOOD}\n```", {"label": "cube", "count": 2}),
        (f"```\n{GOOD}\n```", {"label": "cube", "count": 2}),
        (f"```JSON {GOOD}```", {"label": "cube", "count": 2}),
        (f"Sure! Here it is:\n```json\n{GOOD}\n```\nAnything else?", {"label": "cube", "count": 2}),
        (f"Here is the answer: {GOOD} Hope this helps.", {"label": "cube", "count": 2}),
        (f"{GOOD} and another {{\"label\": \"bowl\"}}", {"label": "cube", "count": 2}),
        ('{"text": "a } inside", "n": 1}', {"text": "a } inside", "n": 1}),
        ('{"text": "quote \\" and brace {", "n": 1}', {"text": 'quote " and brace {', "n": 1}),
        ('{"text": "backslash \\\\", "n": {"deep": [1, {"x": "]"}]}}',
         {"text": "backslash \\", "n": {"deep": [1, {"x": "]"}]}}),
        ("use {curly braces} like this: " + GOOD, {"label": "cube", "count": 2}),
        ('{"unicode": "caf\\u00e9 ☕"}', {"unicode": "café ☕"}),
        ("{}", {}),
        ("prose [1, 2] then " + GOOD, {"label": "cube", "count": 2}),
    ],
)  # fmt: skip
def test_extracts_the_first_object(text: str, expected: dict[str, object]) -> None:
    assert extract_json_object(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("   \n", "empty"),
        ("I cannot help with that.", "no JSON object"),
        ('{"label": "cube", "bbox": [1, 2', "not closed"),
        ("<think>still thinking about {the cube}", "only reasoning"),
        ("<think>done</think>", "only reasoning"),
        ("[1, 2, 3]", "array"),
        ("{'label': 'cube'}", "invalid JSON"),
        ('{"a": 1,}', "invalid JSON"),
        ('{"a": NaN}', "invalid JSON"),
        ('{"a": 1] ', "mismatched"),
        ("```json\n```", "no JSON object"),
    ],
)
def test_reports_why_nothing_usable_was_found(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        extract_json_object(text)


def test_rejects_non_text() -> None:
    with pytest.raises(ValueError, match="not text"):
        extract_json_object(b"{}")  # type: ignore[arg-type]


def test_balanced_end_respects_strings_and_nesting() -> None:
    text = 'x {"a": "}", "b": [{"c": "\\"}"}]} tail'
    end = balanced_object_end(text, 2)
    assert end is not None and text[end:] == " tail"
    with pytest.raises(ValueError, match="mismatched"):
        balanced_object_end('{"a": [}', 0)
    assert balanced_object_end('{"a": "unterminated}', 0) is None


def test_strip_think_forms() -> None:
    assert strip_think("<think>x</think>answer") == "answer"
    assert strip_think("orphan</think>answer") == "answer"
    assert strip_think("answer<think>unfinished") == "answer"
    assert strip_think("no tags") == "no tags"


def test_many_candidates_do_not_hang() -> None:
    text = "{" * 5000 + " no json here"
    with pytest.raises(ValueError):
        extract_json_object(text)
