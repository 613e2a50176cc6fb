"""Pure checks of Arrow schemas read from a dataset's parquet files.

Whether a column has a usable type (:func:`require_columns`, by :data:`ColumnKind`), and
whether the data files already hold language columns of the contract's types
(:func:`language_state`).

Invariants: no I/O; every problem is a :class:`~common.errors.DatasetError` naming the file,
the problem and what to do.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa

from narrator.common.contract import COLUMN_TYPES, LANGUAGE_COLUMNS
from narrator.common.dataset.files import INFO_FILE
from narrator.common.errors import DatasetError

LanguageState = Literal["absent", "current", "legacy"]
ColumnKind = Literal["int", "float", "float32", "string", "string_list"]


def _is_string(t: pa.DataType) -> bool:
    return bool(pa.types.is_string(t) or pa.types.is_large_string(t))


def column_kind_matches(t: pa.DataType, kind: ColumnKind) -> bool:
    if kind == "int":
        return bool(pa.types.is_integer(t))
    if kind == "float":
        return bool(pa.types.is_floating(t))
    if kind == "float32":
        return bool(t == pa.float32())
    if kind == "string":
        return _is_string(t)
    return bool((pa.types.is_list(t) or pa.types.is_large_list(t)) and _is_string(t.value_type))


_KIND_WORDS: dict[str, str] = {
    "int": "an integer type",
    "float": "a floating-point type",
    "float32": "float32",
    "string": "string",
    "string_list": "list<string>",
}


def require_columns(schema: pa.Schema, required: Mapping[str, ColumnKind], path: Path) -> None:
    """Raise if a required column is missing or has an unusable type."""
    missing = [name for name in required if schema.get_field_index(name) < 0]
    if missing:
        raise DatasetError(
            path,
            f"missing required column(s) {missing}; a LeRobot v3 file of this kind has "
            f"{sorted(required)}. Re-export or convert the dataset with LeRobot v3 tooling",
        )
    for name, kind in required.items():
        found = schema.field(name).type
        if not column_kind_matches(found, kind):
            raise DatasetError(
                path,
                f"column {name!r} has type {found} but must be {_KIND_WORDS[kind]}; "
                "convert the column (LeRobot v3 stores it that way)",
            )


def language_state(
    info: Mapping[str, Any], schemas: Mapping[str, pa.Schema]
) -> tuple[LanguageState, tuple[str, str] | None]:
    """Whether the data files already hold language columns of the current contract types.

    ``schemas`` maps a data file (relative path) to its Arrow schema. "legacy" comes with the
    file and the problem, worded for the user.
    """
    advice = (
        "this dataset was annotated by an older schema. Remove the language_persistent and "
        "language_events columns from the data files and their entries from meta/info.json "
        "features (or start again from the un-annotated dataset), then run narrator again"
    )
    features = info.get("features", {})
    for name in LANGUAGE_COLUMNS:
        declared = features.get(name)
        if declared is not None and declared.get("dtype") != "language":
            problem = f"feature {name!r} has dtype {declared.get('dtype')!r}, not 'language'"
            return "legacy", (INFO_FILE, f"{problem}; {advice}")
    present = any(name in features for name in LANGUAGE_COLUMNS)
    for rel, schema in sorted(schemas.items()):
        for name in LANGUAGE_COLUMNS:
            index = schema.get_field_index(name)
            if index < 0:
                continue
            present = True
            found = schema.field(name).type
            if found != COLUMN_TYPES[name]:
                problem = f"column {name!r} has type {found}, expected {COLUMN_TYPES[name]}"
                return "legacy", (rel, f"{problem}; {advice}")
    return ("current" if present else "absent"), None
