"""The data contract of docs/CONTRACT.md §2 (output columns, row rules): Arrow types, style
routing, camera rule, speech atom, row order, and conversions between Python rows and Arrow
arrays.

Invariants:
* Arrow types are declared here, explicitly, and nowhere else; nothing is inferred.
* ``tool_calls`` entries are JSON *texts* (Arrow's canonical ``arrow.json`` extension type).
* Row order is deterministic: persistent rows by (timestamp, style, role); events within a
  frame by (style, role, camera), with a null style or camera sorting before any string.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import orjson
import pyarrow as pa

PERSISTENT_STYLES: frozenset[str] = frozenset({"subtask", "plan", "memory", "motion", "task_aug"})
EVENT_STYLES: frozenset[str] = frozenset({"interjection", "vqa", "trace"})  # plus None: speech
CAMERA_STYLES: frozenset[str] = frozenset({"vqa", "trace"})
ROLES: frozenset[str] = frozenset({"user", "assistant", "system", "tool"})

PERSISTENT_COLUMN = "language_persistent"
EVENTS_COLUMN = "language_events"
LANGUAGE_COLUMNS: tuple[str, str] = (PERSISTENT_COLUMN, EVENTS_COLUMN)
LEGACY_SUBTASK_COLUMN = "subtask_index"

Column = Literal["persistent", "events"]

JSON_TYPE = pa.json_(pa.utf8())
TOOL_CALLS_TYPE = pa.list_(JSON_TYPE)

_COMMON_FIELDS_HEAD = [
    pa.field("role", pa.string(), nullable=False),
    pa.field("content", pa.string()),
    pa.field("style", pa.string()),
]
_COMMON_FIELDS_TAIL = [
    pa.field("camera", pa.string()),
    pa.field("tool_calls", TOOL_CALLS_TYPE),
]
PERSISTENT_ROW_TYPE = pa.struct(
    [
        *_COMMON_FIELDS_HEAD,
        pa.field("timestamp", pa.float32(), nullable=False),
        *_COMMON_FIELDS_TAIL,
    ]
)
EVENT_ROW_TYPE = pa.struct([*_COMMON_FIELDS_HEAD, *_COMMON_FIELDS_TAIL])
PERSISTENT_COLUMN_TYPE = pa.list_(PERSISTENT_ROW_TYPE)
EVENTS_COLUMN_TYPE = pa.list_(EVENT_ROW_TYPE)
COLUMN_TYPES: dict[str, pa.DataType] = {
    PERSISTENT_COLUMN: PERSISTENT_COLUMN_TYPE,
    EVENTS_COLUMN: EVENTS_COLUMN_TYPE,
}

LANGUAGE_FEATURE: dict[str, Any] = {"dtype": "language", "shape": [1], "names": None}

SAY_TOOL_NAME = "say"
SAY_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": SAY_TOOL_NAME,
        "description": "Speak a short utterance to the user via the TTS executor.",
        "parameters": {
            "type": "object",
            "properties": {
                "text": {"type": "string", "description": "The verbatim text to speak."}
            },
            "required": ["text"],
        },
    },
}


@dataclass(frozen=True, slots=True)
class LanguageRow:
    """One row of either language column. ``timestamp`` is None for event rows."""

    role: str
    content: str | None
    style: str | None
    timestamp: float | None
    camera: str | None
    tool_calls: tuple[str, ...] | None  # JSON texts

    def tool_call_objects(self) -> list[dict[str, Any]]:
        return [orjson.loads(t) for t in self.tool_calls or ()]


def column_for_style(style: str | None) -> Column:
    """Which column a style belongs to; raises ``ValueError`` for an unknown style."""
    if style in PERSISTENT_STYLES:
        return "persistent"
    if style is None or style in EVENT_STYLES:
        return "events"
    raise ValueError(f"unknown style {style!r}")


def say_tool_call(text: str) -> str:
    """The JSON text of the one tool call a speech atom carries."""
    call = {"type": "function", "function": {"name": SAY_TOOL_NAME, "arguments": {"text": text}}}
    return orjson.dumps(call).decode()


def speech_atom(text: str) -> LanguageRow:
    """A style-null event row: the robot says ``text`` through the ``say`` tool."""
    return LanguageRow(
        role="assistant",
        content=None,
        style=None,
        timestamp=None,
        camera=None,
        tool_calls=(say_tool_call(text),),
    )


def speech_text(row: LanguageRow) -> str | None:
    """The utterance of a well-formed speech atom, else None."""
    if row.style is not None or row.role != "assistant" or row.content is not None:
        return None
    calls = row.tool_call_objects()
    if len(calls) != 1:
        return None
    call = calls[0]
    fn = call.get("function") if isinstance(call, dict) else None
    if call.get("type") != "function" or not isinstance(fn, dict) or fn.get("name") != "say":
        return None
    args = fn.get("arguments")
    if not isinstance(args, dict) or set(args) != {"text"} or not isinstance(args["text"], str):
        return None
    return args["text"]


def persistent_sort_key(row: LanguageRow) -> tuple[float, str, str]:
    return (row.timestamp if row.timestamp is not None else 0.0, row.style or "", row.role)


def event_sort_key(row: LanguageRow) -> tuple[str, str, str]:
    return (row.style or "", row.role, row.camera or "")


def sort_persistent(rows: Iterable[LanguageRow]) -> list[LanguageRow]:
    return sorted(rows, key=persistent_sort_key)


def sort_events(rows: Iterable[LanguageRow]) -> list[LanguageRow]:
    return sorted(rows, key=event_sort_key)


def _json_array(texts: Sequence[str | None]) -> pa.Array:
    return pa.ExtensionArray.from_storage(JSON_TYPE, pa.array(texts, type=pa.utf8()))


def _tool_calls_array(rows: Sequence[LanguageRow]) -> pa.Array:
    offsets: list[int | None] = [0]
    flat: list[str] = []
    mask: list[bool] = []
    for row in rows:
        if row.tool_calls is None:
            mask.append(True)
            offsets.append(len(flat))
        else:
            mask.append(False)
            flat.extend(row.tool_calls)
            offsets.append(len(flat))
    return pa.ListArray.from_arrays(
        pa.array(offsets, type=pa.int32()),
        _json_array(flat),
        type=TOOL_CALLS_TYPE,
        mask=pa.array(mask, type=pa.bool_()),
    )


def rows_to_struct_array(rows: Sequence[LanguageRow], *, persistent: bool) -> pa.StructArray:
    """Build the struct values of one column from rows, with the declared types."""
    row_type = PERSISTENT_ROW_TYPE if persistent else EVENT_ROW_TYPE
    children: dict[str, pa.Array] = {
        "role": pa.array([r.role for r in rows], type=pa.string()),
        "content": pa.array([r.content for r in rows], type=pa.string()),
        "style": pa.array([r.style for r in rows], type=pa.string()),
        "camera": pa.array([r.camera for r in rows], type=pa.string()),
        "tool_calls": _tool_calls_array(rows),
    }
    if persistent:
        if any(r.timestamp is None for r in rows):
            raise ValueError("persistent rows need a timestamp")
        children["timestamp"] = pa.array([r.timestamp for r in rows], type=pa.float32())
    arrays = [children[f.name] for f in row_type]
    return pa.StructArray.from_arrays(arrays, fields=list(row_type))


def row_from_dict(item: dict[str, Any]) -> LanguageRow:
    """Inverse of Arrow's ``to_pylist`` for one struct value of either column."""
    calls = item.get("tool_calls")
    ts = item.get("timestamp")
    return LanguageRow(
        role=item["role"],
        content=item.get("content"),
        style=item.get("style"),
        timestamp=float(ts) if ts is not None else None,
        camera=item.get("camera"),
        tool_calls=tuple(calls) if calls is not None else None,
    )


def empty_column(name: str, length: int) -> pa.Array:
    """A column of ``length`` empty lists of the declared type."""
    offsets = pa.array([0] * (length + 1), type=pa.int32())
    row_type = PERSISTENT_ROW_TYPE if name == PERSISTENT_COLUMN else EVENT_ROW_TYPE
    values = rows_to_struct_array([], persistent=name == PERSISTENT_COLUMN)
    assert values.type == row_type
    return pa.ListArray.from_arrays(offsets, values, type=COLUMN_TYPES[name])
