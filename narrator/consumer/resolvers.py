"""Binding resolvers, as LeRobot's ``language_render`` defines them: which language row a
binding expression selects at frame time ``t``.

Rows are LeRobot's plain mappings (``role``, ``content``, ``style``, ``timestamp`` on
persistent rows, ``camera``, ``tool_calls`` as decoded JSON objects). Expressions:

* ``active_at(t, style=S[, role=, tool_name=, camera=])``: the persistent row of style S with
  the latest timestamp ``<= t``;
* ``emitted_at(t[, style=S][, role=R][, tool_name=N][, camera=C])``: for a persistent style,
  the row whose timestamp is within ``EMITTED_AT_TOLERANCE_S`` (0.1 s) of ``t``; otherwise
  (an event style, or no style) a row of the frame's events;
* ``nth_prev(style=S, offset=k)`` / ``nth_next(style=S, offset=k)``: the persistent row k
  places before / after the one active at ``t`` in time order (before the first row,
  ``nth_next`` counts from the first: offset 1 is the first row).

Invariants (LeRobot's):
* Argument text is split at commas; a bare ``t`` is ignored, every other argument is
  ``key=value`` with quotes stripped from the value; ``offset`` is an integer.
* Selectors are exact string matches; ``tool_name`` matches a row with any tool call of that
  function name. More than one matching row raises :class:`AmbiguousBindingError`.
* ``active_at`` and ``nth_*`` need a persistent style; ``emitted_at`` accepts any known style
  or none. These checks do not depend on the data (:func:`check_spec` runs them alone).
* Timestamps are compared as Python floats of the stored float32 values, as LeRobot sees them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from narrator.common.contract import EVENT_STYLES, PERSISTENT_STYLES
from narrator.common.errors import ContractError
from narrator.consumer.recipes import RecipeError

Row = Mapping[str, Any]

EMITTED_AT_TOLERANCE_S = 0.1
RESOLVERS: tuple[str, ...] = ("active_at", "emitted_at", "nth_prev", "nth_next")
_SELECTORS: tuple[str, ...] = ("style", "role", "tool_name", "camera")
_ACCEPTS: dict[str, frozenset[str]] = {
    "active_at": frozenset(_SELECTORS),
    "emitted_at": frozenset(_SELECTORS),
    "nth_prev": frozenset({*_SELECTORS, "offset"}),
    "nth_next": frozenset({*_SELECTORS, "offset"}),
}
_CALL_RE = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)\((?P<args>.*)\)$")


class AmbiguousBindingError(ContractError):
    """More than one row matches a binding at one frame (LeRobot raises there too)."""


@dataclass(frozen=True)
class ResolverCall:
    """A parsed, checked binding expression."""

    name: str
    style: str | None = None
    role: str | None = None
    tool_name: str | None = None
    camera: str | None = None
    offset: int = 1

    def is_persistent(self) -> bool:
        """True when the call reads the persistent rows (False: the frame's events)."""
        return self.name != "emitted_at" or self.style in PERSISTENT_STYLES


def _parse_args(text: str) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part or part == "t":
            continue
        if "=" not in part:
            raise RecipeError(f"invalid resolver argument {part!r} (write key=value)")
        key, value = (item.strip() for item in part.split("=", 1))
        if key == "offset":
            try:
                kwargs[key] = int(value)
            except ValueError:
                raise RecipeError(f"offset must be an integer, not {value!r}") from None
        else:
            kwargs[key] = value.strip("\"'")
    return kwargs


def _check_style(name: str, style: str | None) -> None:
    if name == "emitted_at":
        if style is not None and style not in PERSISTENT_STYLES | EVENT_STYLES:
            raise RecipeError(
                f"unknown language style {style!r}; styles: "
                f"{sorted(PERSISTENT_STYLES | EVENT_STYLES)} (leave style out for speech)"
            )
        return
    if style is None:
        raise RecipeError(f"{name} requires a persistent style: {sorted(PERSISTENT_STYLES)}")
    if style in EVENT_STYLES:
        raise RecipeError(
            f"{name} cannot be used with event-only style {style!r}; use emitted_at(t, style=...)"
        )
    if style not in PERSISTENT_STYLES:
        raise RecipeError(f"unknown language style {style!r}; styles: {sorted(PERSISTENT_STYLES)}")


def parse_spec(spec: str) -> ResolverCall:
    """Parse and check one binding expression; raises :class:`RecipeError`."""
    match = _CALL_RE.match(spec.strip())
    if match is None:
        raise RecipeError(
            f"invalid resolver expression {spec!r}; write e.g. active_at(t, style=subtask)"
        )
    name = match.group("name")
    if name not in RESOLVERS:
        raise RecipeError(f"unknown language resolver {name!r}; resolvers: {list(RESOLVERS)}")
    kwargs = _parse_args(match.group("args"))
    unknown = sorted(set(kwargs) - _ACCEPTS[name])
    if unknown:
        raise RecipeError(f"{name} takes {sorted(_ACCEPTS[name])}, not {unknown}")
    call = ResolverCall(name=name, **kwargs)
    _check_style(name, call.style)
    if name in ("nth_prev", "nth_next") and abs(call.offset) < 1:
        raise RecipeError(f"{name} offset must be non-zero")
    return call


def check_spec(spec: str) -> None:
    """Raise :class:`RecipeError` when ``spec`` cannot resolve on any data."""
    parse_spec(spec)


def timestamp_of(row: Row) -> float:
    return float(row["timestamp"])


def _has_tool(row: Row, tool_name: str) -> bool:
    for call in row.get("tool_calls") or []:
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict) and function.get("name") == tool_name:
            return True
    return False


def matching_rows(rows: Sequence[Row], call: ResolverCall) -> list[Row]:
    return [
        row
        for row in rows
        if (call.style is None or row.get("style") == call.style)
        and (call.role is None or row.get("role") == call.role)
        and (call.tool_name is None or _has_tool(row, call.tool_name))
        and (call.camera is None or row.get("camera") == call.camera)
    ]


def _select_one(rows: Sequence[Row], call: ResolverCall) -> Row | None:
    if not rows:
        return None
    if len(rows) > 1:
        raise AmbiguousBindingError(
            f"ambiguous resolver for style={call.style!r} role={call.role!r} "
            f"tool_name={call.tool_name!r} camera={call.camera!r}: {len(rows)} matching rows; "
            "add a selector that tells them apart (e.g. camera=observation.images.top)"
        )
    return rows[0]


def _sort_key(row: Row) -> tuple[float, str, str]:
    ts = row.get("timestamp")
    return (float(ts) if ts is not None else 0.0, row.get("style") or "", row.get("role") or "")


def resolve(
    call: ResolverCall, *, persistent: Sequence[Row], events: Sequence[Row], t: float
) -> Row | None:
    """The one row ``call`` selects at frame time ``t``, or None."""
    if call.name == "emitted_at":
        if call.style in PERSISTENT_STYLES:
            found = [
                row
                for row in matching_rows(persistent, call)
                if abs(timestamp_of(row) - t) <= EMITTED_AT_TOLERANCE_S
            ]
        else:
            found = matching_rows(events, call)
        return _select_one(found, call)
    if call.name == "active_at":
        earlier = [row for row in matching_rows(persistent, call) if timestamp_of(row) <= t]
        if not earlier:
            return None
        latest = max(timestamp_of(row) for row in earlier)
        return _select_one([row for row in earlier if timestamp_of(row) == latest], call)
    offset = call.offset if call.name == "nth_next" else -call.offset
    ordered = sorted(matching_rows(persistent, call), key=_sort_key)
    anchor: int | None = None
    for i, row in enumerate(ordered):
        if timestamp_of(row) <= t:
            anchor = i
        else:
            break
    index = (offset - 1 if offset > 0 else -1) if anchor is None else anchor + offset
    return ordered[index] if 0 <= index < len(ordered) else None


def resolve_spec(
    spec: str, *, persistent: Sequence[Row], events: Sequence[Row], t: float
) -> Row | None:
    return resolve(parse_spec(spec), persistent=persistent, events=events, t=t)
