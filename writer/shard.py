"""Build the language columns with Arrow operations and rewrite one data shard atomically.

Pure core: :func:`build_language_columns` turns per-episode rows into the two list columns
(vectorised with numpy offsets and one Arrow ``take``; no per-frame Python lists).
Shell: :func:`rewrite_shard` streams the source shard row group by row group into a temp
file beside the destination, fsyncs it and renames it into place.

Invariants:
* Every other column keeps its values, order and row-group boundaries; the legacy
  ``subtask_index`` and any previous language columns are dropped, the two new ones appended.
* The compression codec(s) of the source are kept.
* A reader sees the old destination file or the new one, never a partial one.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from common.contract import (
    COLUMN_TYPES,
    EVENTS_COLUMN,
    EVENTS_COLUMN_TYPE,
    LANGUAGE_COLUMNS,
    LEGACY_SUBTASK_COLUMN,
    PERSISTENT_COLUMN,
    PERSISTENT_COLUMN_TYPE,
    LanguageRow,
    rows_to_struct_array,
)


@dataclass(frozen=True)
class EpisodeRange:
    episode: int
    row_start: int  # first row of the episode in the shard
    length: int


def _list_column(
    counts: np.ndarray, values: pa.Array, indices: np.ndarray, type_: pa.DataType
) -> pa.Array:
    offsets = np.zeros(counts.shape[0] + 1, dtype=np.int32)
    np.cumsum(counts, out=offsets[1:])
    taken = values.take(pa.array(indices, type=pa.int64())) if len(values) else values
    return pa.ListArray.from_arrays(pa.array(offsets, type=pa.int32()), taken, type=type_)


def build_language_columns(
    n_rows: int,
    ranges: Sequence[EpisodeRange],
    persistent: Mapping[int, Sequence[LanguageRow]],
    events: Mapping[int, Mapping[int, Sequence[LanguageRow]]],
) -> tuple[pa.Array, pa.Array]:
    """The ``language_persistent`` and ``language_events`` columns of a shard.

    ``persistent[ep]`` is the episode's sorted list (repeated on each of its frames);
    ``events[ep][frame]`` the sorted event rows of an episode-relative frame.
    """
    p_counts = np.zeros(n_rows, dtype=np.int64)
    p_rows: list[LanguageRow] = []
    p_index: list[np.ndarray] = []
    e_counts = np.zeros(n_rows, dtype=np.int64)
    e_rows: list[LanguageRow] = []
    for rng in sorted(ranges, key=lambda r: r.row_start):
        rows = persistent.get(rng.episode, ())
        if rows:
            base = len(p_rows)
            p_rows.extend(rows)
            p_counts[rng.row_start : rng.row_start + rng.length] = len(rows)
            p_index.append(np.tile(np.arange(base, base + len(rows)), rng.length))
        for frame in sorted(events.get(rng.episode, {})):
            frame_rows = events[rng.episode][frame]
            e_counts[rng.row_start + frame] = len(frame_rows)
            e_rows.extend(frame_rows)
    p_values = rows_to_struct_array(p_rows, persistent=True)
    e_values = rows_to_struct_array(e_rows, persistent=False)
    p_idx = np.concatenate(p_index) if p_index else np.zeros(0, dtype=np.int64)
    e_idx = np.arange(len(e_rows), dtype=np.int64)
    return (
        _list_column(p_counts, p_values, p_idx, PERSISTENT_COLUMN_TYPE),
        _list_column(e_counts, e_values, e_idx, EVENTS_COLUMN_TYPE),
    )


_DROPPED = {LEGACY_SUBTASK_COLUMN, *LANGUAGE_COLUMNS}


def _codecs(meta: pq.FileMetaData) -> str | dict[str, str]:
    """The source's compression: one codec for all columns, or one per top-level column."""
    if meta.num_row_groups == 0:
        return "snappy"
    rg = meta.row_group(0)
    per_column: dict[str, str] = {}
    for i in range(rg.num_columns):
        col = rg.column(i)
        codec = str(col.compression).lower()
        per_column[col.path_in_schema] = "none" if codec == "uncompressed" else codec
    counts = Counter(per_column.values())
    if len(counts) == 1:
        return next(iter(counts))
    default = counts.most_common(1)[0][0]
    per_column.setdefault(PERSISTENT_COLUMN, default)
    per_column.setdefault(EVENTS_COLUMN, default)
    return per_column


def _schema_metadata(metadata: Mapping[bytes, bytes] | None) -> dict[bytes, bytes] | None:
    """Keep the source's schema metadata; drop the stale ``datasets`` feature entries of
    removed columns (the new columns' features are declared in meta/info.json)."""
    if not metadata:
        return None
    out = dict(metadata)
    raw = out.get(b"huggingface")
    if raw:
        try:
            hf: dict[str, Any] = orjson.loads(raw)
            features = hf.get("info", {}).get("features", {})
            for name in _DROPPED:
                features.pop(name, None)
            out[b"huggingface"] = orjson.dumps(hf)
        except orjson.JSONDecodeError:
            pass
    out.pop(b"ARROW:schema", None)
    return out


def output_schema(source: pa.Schema) -> pa.Schema:
    fields = [f for f in source if f.name not in _DROPPED]
    fields += [pa.field(name, COLUMN_TYPES[name]) for name in LANGUAGE_COLUMNS]
    return pa.schema(fields, metadata=_schema_metadata(source.metadata))


def rewrite_shard(src: Path, dst: Path, persistent_col: pa.Array, events_col: pa.Array) -> None:
    """Write ``src`` with the two language columns to ``dst`` atomically."""
    pf = pq.ParquetFile(src)
    meta = pf.metadata
    if len(persistent_col) != meta.num_rows or len(events_col) != meta.num_rows:
        raise ValueError(f"{src}: language columns do not match its {meta.num_rows} rows")
    schema = output_schema(pf.schema_arrow)
    keep = [f.name for f in schema if f.name not in LANGUAGE_COLUMNS]
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_path(dst)
    try:
        with pq.ParquetWriter(
            tmp,
            schema,
            compression=_codecs(meta),
            version=meta.format_version if meta.format_version in ("1.0", "2.4", "2.6") else "2.6",
        ) as writer:
            offset = 0
            for i in range(meta.num_row_groups):
                group = pf.read_row_group(i, columns=keep)
                n = group.num_rows
                table = group.append_column(
                    schema.field(PERSISTENT_COLUMN), persistent_col.slice(offset, n)
                ).append_column(schema.field(EVENTS_COLUMN), events_col.slice(offset, n))
                writer.write_table(table.cast(schema), row_group_size=max(n, 1))
                offset += n
        fsync_path(tmp)
        tmp.replace(dst)
        fsync_path(dst.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def remove_stale_temp_files(path: Path) -> int:
    """Delete the temp files that atomic writes of ``path`` left when their process was
    killed before the rename; returns how many."""
    stale = list(path.parent.glob(f".{path.name}.tmp-*"))
    for leftover in stale:
        leftover.unlink(missing_ok=True)
    return len(stale)


def write_bytes_atomically(path: Path, data: bytes) -> None:
    tmp = _temp_path(path)
    with tmp.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)
    fsync_path(path.parent)
