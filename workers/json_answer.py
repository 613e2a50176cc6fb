"""Defensive extraction of the one JSON object a VLM answer is supposed to be.

Servers asked for structured output usually return exactly the JSON object, but some ignore the
schema and wrap it: reasoning in ``<think>`` blocks, prose before and after, Markdown code
fences. :func:`extract_json_object` undoes that and returns the first JSON object in the text.

Pure: no I/O, no logging. Invariants:

* A ``<think>...</think>`` block is removed wherever it is. An orphan ``</think>`` (the opening
  tag was part of the prompt template) removes everything before it. An unclosed ``<think>``
  removes everything after it, since the reasoning never finished.
* When the rest holds a fenced code block (```json ... ``` or ``` ... ```), its inside is
  searched first, then the whole text.
* The object is found by a brace scanner that respects JSON strings and escapes, so braces
  inside string values do not end it early. Candidates are tried in order of their opening
  brace; the first that parses to a JSON object wins.
* Failure is a ``ValueError`` with a short reason meant to be shown to the model in a
  corrective retry and stored with the failure.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.IGNORECASE | re.DOTALL)
_THINK_OPEN = re.compile(r"<think>", re.IGNORECASE)
_THINK_CLOSE = re.compile(r"</think>", re.IGNORECASE)
_FENCE = re.compile(r"```[ \t]*(?:json|JSON|json5|javascript)?[ \t]*\r?\n?(.*?)```", re.DOTALL)

# A reply with more opening braces than this is not worth scanning further.
_MAX_CANDIDATES = 64


def strip_think(text: str) -> str:
    """``text`` without reasoning blocks (closed, orphan-closed, or unclosed)."""
    text = _THINK_BLOCK.sub("", text)
    closes = list(_THINK_CLOSE.finditer(text))
    if closes:
        text = text[closes[-1].end() :]
    opened = _THINK_OPEN.search(text)
    if opened:
        text = text[: opened.start()]
    return text


def fenced_blocks(text: str) -> list[str]:
    """The insides of the Markdown code fences of ``text``, in order."""
    return [m.group(1) for m in _FENCE.finditer(text)]


def balanced_object_end(text: str, start: int) -> int | None:
    """Index one past the ``}`` closing the object opened at ``text[start]``, or None.

    Tracks nesting of ``{}`` and ``[]`` outside JSON strings; a backslash escapes the next
    character inside a string. Returns None when the text ends before the object closes;
    raises ValueError when a bracket closes the wrong kind of opener.
    """
    stack: list[str] = []
    in_string = False
    escaped = False
    for index in range(start, len(text)):
        char = text[index]
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
            continue
        if char == '"':
            in_string = True
        elif char in "{[":
            stack.append("}" if char == "{" else "]")
        elif char in "}]":
            if not stack or stack.pop() != char:
                raise ValueError(f"invalid JSON: mismatched {char!r} at offset {index - start}")
            if not stack:
                return index + 1
    return None


def _first_object(text: str) -> tuple[dict[str, Any] | None, str]:
    """The first parsable JSON object in ``text`` and, if there is none, why."""
    reason = "no JSON object in the answer"
    tried = 0
    position = text.find("{")
    while position != -1 and tried < _MAX_CANDIDATES:
        tried += 1
        try:
            end = balanced_object_end(text, position)
        except ValueError as exc:
            reason = reason if reason.startswith("invalid JSON") else str(exc)
            position = text.find("{", position + 1)
            continue
        if end is None:
            if reason == "no JSON object in the answer":
                reason = "JSON object is not closed (answer cut off?)"
        else:
            try:
                value = orjson.loads(text[position:end])
            except orjson.JSONDecodeError as exc:
                if not reason.startswith("invalid JSON"):
                    reason = f"invalid JSON: {exc}"
            else:
                if isinstance(value, dict):
                    return value, ""
        position = text.find("{", position + 1)
    return None, reason


def extract_json_object(text: str) -> dict[str, Any]:
    """The first JSON object in a model's answer; raises ``ValueError`` with a short reason."""
    if not isinstance(text, str):
        raise ValueError(f"answer is {type(text).__name__}, not text")
    cleaned = strip_think(text.lstrip("\ufeff"))
    if not cleaned.strip():
        if _THINK_OPEN.search(text):
            raise ValueError("answer holds only reasoning (<think> block) and no JSON")
        raise ValueError("answer is empty")
    stripped = cleaned.strip()
    if stripped.startswith("{") and stripped.endswith("}"):
        try:
            whole = orjson.loads(stripped)
        except orjson.JSONDecodeError:
            pass
        else:
            if isinstance(whole, dict):
                return whole
    first_reason = ""
    for block in [*fenced_blocks(cleaned), cleaned]:
        found, reason = _first_object(block)
        if found is not None:
            return found
        first_reason = first_reason or reason
    if stripped.startswith("["):
        raise ValueError("answer is a JSON array, expected a JSON object")
    raise ValueError(first_reason)
