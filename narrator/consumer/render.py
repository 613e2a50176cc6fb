"""Resolvers and rendering (SPEC section 5): the rows active at frame time ``t`` plus a recipe
become one chat sample, or nothing.

Invariants:
* Pure: no I/O; the same rows, recipe, ``t`` and ``sample_index`` give the same sample.
* A binding resolves to at most one row; more than one matching row raises
  :class:`AmbiguousBindingError` (the data, not the recipe, is then at fault).
* Times are compared as float32, as the shard stores them.
* ``${name}`` becomes the bound row's content, or a speech atom's utterance, or "" when the
  binding is missing; ``${task}`` the task; ``${camera}`` the sample's camera (or "").
* A turn whose ``if_present`` binding is missing is skipped; a turn with content null whose
  ``tool_calls_from`` binding is missing (or has no tool calls) is skipped too; a sample left
  without a target turn renders to None.
* Blend choice: ``sha256(f"{blend.name}:{sample_index}")`` read as a fraction in [0, 1),
  mapped onto the components' cumulative weights in file order. A chosen component that
  renders to None makes the sample None (no fall-through, so the mixture stays as weighted).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from narrator.common.contract import SAY_TOOL, LanguageRow
from narrator.common.errors import ContractError
from narrator.common.validation import speech_text_or_none
from narrator.consumer.recipes import (
    PLACEHOLDER,
    SAMPLE_CAMERA,
    AnyRecipe,
    Blend,
    ImageBlock,
    Recipe,
    Resolver,
    TextBlock,
    Turn,
)


class AmbiguousBindingError(ContractError):
    """More than one row matches a binding at one frame time."""


def _f32(value: float) -> float:
    return float(np.float32(value))


def _tool_names(row: LanguageRow) -> set[str]:
    names: set[str] = set()
    for call in row.tool_call_objects():
        fn = call.get("function") if isinstance(call, dict) else None
        if isinstance(fn, dict) and isinstance(fn.get("name"), str):
            names.add(fn["name"])
    return names


def _matches(row: LanguageRow, res: Resolver, camera: str | None) -> bool:
    if res.style_given and row.style != res.style:
        return False
    if res.role is not None and row.role != res.role:
        return False
    if res.tool_name is not None and res.tool_name not in _tool_names(row):
        return False
    want_camera = camera if res.camera == SAMPLE_CAMERA else res.camera
    return want_camera is None or row.camera == want_camera


def _one(name: str, res: Resolver, rows: list[LanguageRow], t: float) -> LanguageRow | None:
    if len(rows) > 1:
        raise AmbiguousBindingError(
            f"binding {name!r} = {res.expression()} matches {len(rows)} rows at t={t}; "
            "narrow it (role=, camera=, tool_name=) or fix the duplicated rows"
        )
    return rows[0] if rows else None


def _persistent_groups(persistent: Sequence[LanguageRow], style: str) -> list[list[LanguageRow]]:
    """Rows of ``style`` grouped by timestamp, in time order."""
    groups: dict[float, list[LanguageRow]] = {}
    for row in persistent:
        if row.style == style and row.timestamp is not None:
            groups.setdefault(_f32(row.timestamp), []).append(row)
    return [groups[k] for k in sorted(groups)]


def resolve(
    name: str,
    res: Resolver,
    *,
    persistent: Sequence[LanguageRow],
    events: Sequence[LanguageRow],
    t: float,
    camera: str | None = None,
) -> LanguageRow | None:
    """The one row ``res`` selects at time ``t`` (None when there is none)."""
    t32 = _f32(t)
    if res.kind == "emitted_at":
        stamped = [r for r in persistent if r.timestamp is not None and _f32(r.timestamp) == t32]
        found = [r for r in [*events, *stamped] if _matches(r, res, camera)]
        return _one(name, res, found, t)
    assert res.style is not None  # guaranteed by parse_binding for the persistent resolvers
    groups = _persistent_groups(persistent, res.style)
    times = [_f32(g[0].timestamp or 0.0) for g in groups]
    active = max((i for i, ts in enumerate(times) if ts <= t32), default=-1)
    if res.kind == "active_at":
        index = active
    elif res.kind == "nth_prev":
        index = active - res.offset if active >= 0 else -1
    else:  # nth_next
        index = active + res.offset
    if not 0 <= index < len(groups):
        return None
    return _one(name, res, groups[index], t)


def _binding_text(row: LanguageRow | None) -> str:
    if row is None:
        return ""
    if row.content is not None:
        return row.content
    return speech_text_or_none(row) or ""


def _substitute(text: str, values: dict[str, str]) -> str:
    return PLACEHOLDER.sub(lambda m: values.get(m.group(1), ""), text)


def openai_tool_calls(row: LanguageRow) -> list[dict[str, Any]]:
    """A row's tool calls as chat-template ``tool_calls`` (arguments stay a JSON object,
    as Hugging Face chat templates expect; ids are positional)."""
    out: list[dict[str, Any]] = []
    for i, call in enumerate(row.tool_call_objects()):
        fn = call.get("function", {}) if isinstance(call, dict) else {}
        out.append(
            {
                "id": f"call_{i}",
                "type": "function",
                "function": {"name": fn.get("name"), "arguments": fn.get("arguments", {})},
            }
        )
    return out


def _render_content(
    turn: Turn, values: dict[str, str], t: float, camera: str | None
) -> str | list[dict[str, Any]] | None:
    if turn.content is None or isinstance(turn.content, str):
        return None if turn.content is None else _substitute(turn.content, values)
    blocks: list[dict[str, Any]] = []
    for block in turn.content:
        if isinstance(block, TextBlock):
            blocks.append({"type": "text", "text": _substitute(block.text, values)})
        elif isinstance(block, ImageBlock):
            cam = _substitute(block.camera, values) if block.camera is not None else camera
            blocks.append({"type": "image", "camera": cam or None, "timestamp": t})
    return blocks


def _render_message_recipe(
    recipe: Recipe,
    *,
    persistent: Sequence[LanguageRow],
    events: Sequence[LanguageRow],
    t: float,
    task: str,
    camera: str | None,
) -> dict[str, Any] | None:
    bound = {
        name: resolve(name, res, persistent=persistent, events=events, t=t, camera=camera)
        for name, res in recipe.bindings.items()
        if name in recipe.referenced_names()
    }
    values = {name: _binding_text(row) for name, row in bound.items()}
    values["task"] = task
    values["camera"] = camera or ""
    messages: list[dict[str, Any]] = []
    streams: list[str] = []
    targets: list[bool] = []
    for turn, stream in zip(recipe.turns, recipe.streams, strict=True):
        if turn.if_present is not None and bound.get(turn.if_present) is None:
            continue
        message: dict[str, Any] = {"role": turn.role}
        message["content"] = _render_content(turn, values, t, camera)
        if turn.tool_calls_from is not None:
            source = bound.get(turn.tool_calls_from)
            calls = openai_tool_calls(source) if source is not None else []
            if not calls and turn.content is None:
                continue
            if calls:
                message["tool_calls"] = calls
        messages.append(message)
        streams.append(stream)
        targets.append(turn.target)
    if not any(targets):
        return None
    sample: dict[str, Any] = {
        "recipe": recipe.name,
        "t": t,
        "camera": camera,
        "messages": messages,
        "streams": streams,
        "targets": targets,
    }
    if any("tool_calls" in m for m in messages):
        sample["tools"] = [SAY_TOOL]
    return sample


def blend_choice(blend: Blend, sample_index: int) -> Recipe:
    """The component that sample ``sample_index`` uses: stable across runs and machines."""
    digest = hashlib.sha256(f"{blend.name}:{sample_index}".encode()).digest()
    fraction = int.from_bytes(digest[:8], "big") / 2**64
    total = sum(weight for _, weight in blend.components)
    point = fraction * total
    cumulative = 0.0
    for recipe, weight in blend.components:
        cumulative += weight
        if point < cumulative:
            return recipe
    return blend.components[-1][0]


def render_sample(
    recipe: AnyRecipe,
    *,
    persistent: Sequence[LanguageRow],
    events: Sequence[LanguageRow],
    t: float,
    task: str,
    sample_index: int,
    camera: str | None = None,
) -> dict[str, Any] | None:
    """Render one chat sample at frame time ``t``.

    ``persistent`` is the episode's persistent list, ``events`` the event rows of this frame.
    Returns ``{"recipe", "t", "camera", "messages", "streams", "targets"[, "tools"]}`` with
    one stream and target flag per message, or None when no target turn survives.
    """
    chosen = blend_choice(recipe, sample_index) if isinstance(recipe, Blend) else recipe
    return _render_message_recipe(
        chosen, persistent=persistent, events=events, t=t, task=task, camera=camera
    )
