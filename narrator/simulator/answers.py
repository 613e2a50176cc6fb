"""Schema-driven answers of the simulated VLM (pure, deterministic).

:func:`generate_instance` builds a JSON value that is valid for a JSON schema, with content
drawn from a ``random.Random`` the caller seeds (the server seeds it from the request's
``seed`` and a hash of its messages, so the same request always gets the same answer).

Supported schema keywords: ``type`` (also a list of types), ``const``, ``enum``, ``anyOf`` /
``oneOf`` (the first branch), ``allOf`` (object branches merged), ``$ref`` into ``$defs`` /
``definitions``, objects (``properties``, ``required``, ``additionalProperties``), arrays
(``items``, ``prefixItems``, ``minItems``, ``maxItems``, ``uniqueItems``), strings (``enum``,
``minLength``, ``maxLength``), integers and numbers (``minimum``, ``maximum``,
``exclusiveMinimum``, ``exclusiveMaximum``), booleans and null. ``pattern`` and ``format``
are ignored.

Realism, so that the simulated answers exercise the same code paths as a real model's:

* strings come from :mod:`narrator.simulator.vocabulary`, chosen by the property path (labels
  are objects, ``utterance`` is something a robot says, subtask labels are actions...);
* numbers named like coordinates (``bbox``, ``point``, ``x``, ``y``) stay inside the first
  image of the request when its size is known, and a ``bbox`` is ordered (x1<x2, y1<y2);
* in an array of objects, numeric fields named like span bounds (``start*``/``end*``,
  ``first*``/``last*``, ``from*``/``to*``) are rewritten into consecutive, non-overlapping
  spans covering the field's ``minimum``..``maximum`` range.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from narrator.simulator.vocabulary import ACTIONS, fill, leaf, phrase_for, question_for_answer

_COORD_NAME = re.compile(r"(bbox|box|point|coord|xy|^x\d?$|^y\d?$|^x_|^y_)", re.IGNORECASE)
_START_NAME = re.compile(r"^(start|begin|first|from)", re.IGNORECASE)
_END_NAME = re.compile(r"^(end|stop|last|to_|to$|until)", re.IGNORECASE)


@dataclass(frozen=True)
class AnswerContext:
    """What the generator knows about the request besides the schema."""

    image_sizes: tuple[tuple[int, int], ...] = ()  # (width, height) per image, in order
    extra_property: bool = False  # ignore_schema fault: add a property the schema forbids
    defs: Mapping[str, Any] = field(default_factory=dict)


def _resolve(schema: Any, ctx: AnswerContext) -> dict[str, Any]:
    """Follow ``$ref`` and pick the first ``anyOf``/``oneOf`` branch until a plain schema."""
    for _ in range(32):
        if not isinstance(schema, dict):
            return {}
        ref = schema.get("$ref")
        if isinstance(ref, str):
            name = ref.rsplit("/", 1)[-1]
            target = ctx.defs.get(name)
            if target is None:
                raise ValueError(f"schema $ref {ref!r} does not resolve")
            schema = target
            continue
        for key in ("anyOf", "oneOf"):
            branches = schema.get(key)
            if isinstance(branches, list) and branches:
                rest = {k: v for k, v in schema.items() if k != key}
                schema = {**rest, **_resolve(branches[0], ctx)}
                break
        else:
            all_of = schema.get("allOf")
            if isinstance(all_of, list) and all_of:
                merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
                for branch in all_of:
                    part = _resolve(branch, ctx)
                    props = {**merged.get("properties", {}), **part.get("properties", {})}
                    required = [*merged.get("required", []), *part.get("required", [])]
                    merged = {**merged, **part, "properties": props, "required": required}
                schema = merged
                continue
            return schema
    raise ValueError("schema $ref chain is too deep (cycle?)")


def _schema_type(schema: Mapping[str, Any]) -> str:
    declared = schema.get("type")
    if isinstance(declared, list):
        non_null = [t for t in declared if t != "null"]
        return str(non_null[0]) if non_null else "null"
    if isinstance(declared, str):
        return declared
    if "properties" in schema:
        return "object"
    if "items" in schema or "prefixItems" in schema:
        return "array"
    return "string"


def _number_bounds(schema: Mapping[str, Any], default: tuple[float, float]) -> tuple[float, float]:
    low, high = default
    if isinstance(schema.get("minimum"), int | float):
        low = float(schema["minimum"])
    if isinstance(schema.get("exclusiveMinimum"), int | float):
        low = float(schema["exclusiveMinimum"]) + 1e-6
    if isinstance(schema.get("maximum"), int | float):
        high = float(schema["maximum"])
    if isinstance(schema.get("exclusiveMaximum"), int | float):
        high = float(schema["exclusiveMaximum"]) - 1e-6
    if "minimum" in schema and "maximum" not in schema and high < low:
        high = low + default[1] - default[0]
    if "maximum" in schema and "minimum" not in schema and low > high:
        low = high - (default[1] - default[0])
    return low, max(low, high)


def _coordinate_range(name: str, ctx: AnswerContext) -> tuple[float, float]:
    """Default range of a number without bounds: inside the first image for coordinates."""
    if not _COORD_NAME.search(leaf(name)):
        return 0.0, 10.0
    if ctx.image_sizes:
        width, height = ctx.image_sizes[0]
        return 0.0, float(max(1, min(width, height) - 1))
    return 0.0, 100.0


def _integer(schema: Mapping[str, Any], name: str, ctx: AnswerContext, rng: random.Random) -> int:
    low, high = _number_bounds(schema, _coordinate_range(name, ctx))
    lo_int = math.ceil(low) if "exclusiveMinimum" not in schema else math.floor(low) + 1
    hi_int = math.floor(high)
    if "count" in leaf(name) and "maximum" not in schema:
        hi_int = min(hi_int, lo_int + 5)
    return rng.randint(lo_int, max(lo_int, hi_int))


def _number(schema: Mapping[str, Any], name: str, ctx: AnswerContext, rng: random.Random) -> float:
    low, high = _number_bounds(schema, _coordinate_range(name, ctx))
    value = round(rng.uniform(low, high), 1)
    return min(max(value, low), high)


def _string(schema: Mapping[str, Any], name: str, rng: random.Random) -> str:
    text = phrase_for(name, rng)
    min_len = int(schema.get("minLength", 0))
    max_len = schema.get("maxLength")
    while len(text) < min_len:
        text = f"{text} {phrase_for(name, rng)}"
    if isinstance(max_len, int) and len(text) > max_len:
        text = text[:max_len].rstrip() if max_len > 0 else ""
        text = text if len(text) >= min_len else text.ljust(min_len, ".")
    return text


def _array_length(schema: Mapping[str, Any], rng: random.Random) -> int:
    high = schema.get("maxItems")
    low = int(schema.get("minItems", 1))
    if isinstance(high, int):
        low = min(low, high)
    cap = low + 3 if not isinstance(high, int) else min(high, max(low, 4))
    return rng.randint(low, max(low, cap))


def _order_box(values: list[Any]) -> list[Any]:
    """Make a 4-number box (x1, y1, x2, y2) ordered, keeping the values themselves."""
    x1, x2 = sorted((values[0], values[2]))
    y1, y2 = sorted((values[1], values[3]))
    if x1 == x2:
        x1, x2 = (x1 - 1, x2) if x1 >= 1 else (x1, x2 + 1)
    if y1 == y2:
        y1, y2 = (y1 - 1, y2) if y1 >= 1 else (y1, y2 + 1)
    return [x1, y1, x2, y2]


def _spread_spans(items: list[Any], item_schema: Mapping[str, Any], ctx: AnswerContext) -> None:
    """Rewrite start/end-like numeric fields of ``items`` into consecutive spans, in place."""
    props = item_schema.get("properties", {})
    if not isinstance(props, dict) or not items or not all(isinstance(i, dict) for i in items):
        return
    numeric = {
        k: _resolve(v, ctx)
        for k, v in props.items()
        if _schema_type(_resolve(v, ctx)) in ("integer", "number")
    }
    start_key = next((k for k in numeric if _START_NAME.search(k)), None)
    if start_key is None:
        return
    end_key = next((k for k in numeric if _END_NAME.search(k)), None)
    schema = numeric[start_key]
    low, high = _number_bounds(schema, (0.0, 10.0 * len(items)))
    if end_key is not None:
        _, end_high = _number_bounds(numeric[end_key], (low, high))
        high = max(high, end_high) if "maximum" not in schema else high
    is_int = schema.get("type") == "integer"
    width = (high - low) / len(items)
    for position, item in enumerate(items):
        start = low + position * width
        end = low + (position + 1) * width
        if is_int:
            start_value: float = math.ceil(start)
            end_value: float = max(start_value, math.ceil(end) - 1)
            if position == len(items) - 1:
                end_value = math.floor(high)
        else:
            start_value, end_value = round(start, 2), round(end, 2)
        item[start_key] = int(start_value) if is_int else start_value
        if end_key is not None:
            end_is_int = numeric[end_key].get("type") == "integer"
            item[end_key] = int(end_value) if end_is_int else float(end_value)


def generate_instance(
    schema: Any, rng: random.Random, ctx: AnswerContext | None = None, name: str = ""
) -> Any:
    """A JSON value valid for ``schema`` (see the module docstring for what is supported).

    ``name`` is the dotted path of property names leading here ("subtasks.label"); array
    items share their array's path.
    """
    if ctx is None:
        root_defs = {}
        if isinstance(schema, dict):
            root_defs = {**schema.get("definitions", {}), **schema.get("$defs", {})}
        ctx = AnswerContext(defs=root_defs)
    resolved = _resolve(schema, ctx)
    if "const" in resolved:
        return resolved["const"]
    enum = resolved.get("enum")
    if isinstance(enum, list) and enum:
        return rng.choice(enum)
    kind = _schema_type(resolved)
    if kind == "object":
        return _object(resolved, rng, ctx, name)
    if kind == "array":
        return _array(resolved, rng, ctx, name)
    if kind == "integer":
        return _integer(resolved, name, ctx, rng)
    if kind == "number":
        return _number(resolved, name, ctx, rng)
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "null":
        return None
    return _string(resolved, name, rng)


def _object(
    schema: Mapping[str, Any], rng: random.Random, ctx: AnswerContext, path: str
) -> dict[str, Any]:
    props = schema.get("properties", {})
    out: dict[str, Any] = {}
    if isinstance(props, dict):
        for key, sub in props.items():
            out[key] = generate_instance(sub, rng, ctx, f"{path}.{key}" if path else key)
        # Like a model, ask a question that fits the answer it gives.
        question = question_for_answer(props.get("answer"), rng) if "question" in props else None
        if question is not None and isinstance(out.get("question"), str):
            out["question"] = question
    for key in schema.get("required", []):
        if key not in out:
            out[key] = phrase_for(f"{path}.{key}" if path else key, rng)
    if ctx.extra_property:
        out["confidence_note"] = "I am not sure about this."
    return out


def _array(
    schema: Mapping[str, Any], rng: random.Random, ctx: AnswerContext, name: str
) -> list[Any]:
    prefix = schema.get("prefixItems")
    items_schema = schema.get("items", {})
    length = _array_length(schema, rng)
    values: list[Any] = []
    if isinstance(prefix, list):
        values = [generate_instance(s, rng, ctx, name) for s in prefix]
        length = max(len(values), length) if isinstance(items_schema, dict) else len(values)
    if not isinstance(schema.get("maxItems"), int) and "minItems" not in schema:
        if "bbox" in leaf(name) or leaf(name) == "box":
            length = max(len(values), 4)
        elif "point" in leaf(name):
            length = max(len(values), 2)
    while len(values) < length:
        candidate = generate_instance(items_schema, rng, ctx, name)
        if schema.get("uniqueItems") and candidate in values:
            for _ in range(8):
                candidate = generate_instance(items_schema, rng, ctx, name)
                if candidate not in values:
                    break
            else:
                break
        values.append(candidate)
    is_box = "bbox" in leaf(name) or leaf(name) == "box"
    if is_box and len(values) == 4 and all(isinstance(v, int | float) for v in values):
        values = _order_box(values)
    resolved_items = _resolve(items_schema, ctx) if isinstance(items_schema, dict) else {}
    if _schema_type(resolved_items) == "object":
        _spread_spans(values, resolved_items, ctx)
    return values


def wrong_shape(schema: Any, rng: random.Random) -> dict[str, Any]:
    """A JSON object that is not an instance of ``schema`` (wrong_shape fault)."""
    required = schema.get("required", []) if isinstance(schema, dict) else []
    out: dict[str, Any] = {"answer": fill(rng.choice(ACTIONS), rng), "ok": True}
    if required:
        out["answer"] = {"unexpected": [1, 2, 3]}
    return out
