"""Build the language columns with Arrow operations and rewrite one data shard atomically.

Pure core: :func:`language_columns` turns per-episode rows into the two list columns
(vectorised with numpy offsets and Arrow ``take``; no per-frame Python lists), materialised
one slice at a time so an episode's persistent list is repeated per frame only for the rows
being written; :func:`build_language_columns` materialises them whole.
Shell: :func:`write_language_shard` (and :func:`rewrite_shard` for materialised columns)
streams the source shard into a temp file beside the destination, a run of equal-size row
groups per call (:func:`row_group_batches`, :func:`batch_rows`: about
:data:`BATCH_VALUES` repeated persistent rows per call), fsyncs it and renames it into place.

Invariants:
* Every other column keeps its values, order, row-group boundaries and statistics; the legacy
  ``subtask_index`` and any previous language columns are dropped, the two new ones appended
  (without min/max statistics: no reader uses them).
* The compression codec(s) of the source are kept; with per-column codecs every leaf of the
  new columns gets the codec most source leaves use (:func:`language_leaf_paths`).
* The new file has the mode (and, where permitted, owner) of the one it replaces.
* A reader sees the old destination file or the new one, never a partial one.
"""

from __future__ import annotations

import contextlib
import functools
import os
import stat
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from narrator.common.contract import (
    COLUMN_TYPES,
    EVENTS_COLUMN_TYPE,
    LANGUAGE_COLUMNS,
    LEGACY_SUBTASK_COLUMN,
    PERSISTENT_COLUMN_TYPE,
    LanguageRow,
    rows_to_struct_array,
)


@dataclass(frozen=True)
class EpisodeRange:
    episode: int
    row_start: int  # first row of the episode in the shard
    length: int


@dataclass(frozen=True)
class LanguageColumns:
    """The two language columns of a shard, materialised one slice (row groups) at a time.

    An episode's persistent rows are stored once (``p_values``) and repeated on each frame
    only inside the slice being written, so memory holds one slice's repetition instead of
    the whole shard's (the repeated persistent lists are most of an annotated shard's bytes).
    """

    n_rows: int
    p_values: pa.StructArray
    p_first: np.ndarray  # int64 per row: index in p_values of the row's first persistent row
    p_counts: np.ndarray  # int64 per row: how many persistent rows the row's list holds
    e_values: pa.StructArray
    e_offsets: np.ndarray  # int64, n_rows + 1: row i's events are e_values[e[i]:e[i + 1]]

    def slice(self, offset: int, length: int) -> tuple[pa.Array, pa.Array]:
        """Both columns for rows [offset, offset + length)."""
        counts = self.p_counts[offset : offset + length]
        p_offsets = np.zeros(length + 1, dtype=np.int64)
        np.cumsum(counts, out=p_offsets[1:])
        total = int(p_offsets[-1])
        # Value j of the slice belongs to row r: p_first[r] + (j - p_offsets[r]).
        starts = self.p_first[offset : offset + length] - p_offsets[:-1]
        indices = np.repeat(starts, counts) + np.arange(total, dtype=np.int64)
        p_taken = (
            self.p_values.take(pa.array(indices, type=pa.int64()))
            if total
            else self.p_values.slice(0, 0)
        )
        lo, hi = int(self.e_offsets[offset]), int(self.e_offsets[offset + length])
        e_offsets = self.e_offsets[offset : offset + length + 1] - lo
        return (
            pa.ListArray.from_arrays(
                pa.array(p_offsets.astype(np.int32), type=pa.int32()),
                p_taken,
                type=PERSISTENT_COLUMN_TYPE,
            ),
            pa.ListArray.from_arrays(
                pa.array(e_offsets.astype(np.int32), type=pa.int32()),
                self.e_values.slice(lo, hi - lo),
                type=EVENTS_COLUMN_TYPE,
            ),
        )


def language_columns(
    n_rows: int,
    ranges: Sequence[EpisodeRange],
    persistent: Mapping[int, Sequence[LanguageRow]],
    events: Mapping[int, Mapping[int, Sequence[LanguageRow]]],
) -> LanguageColumns:
    """The ``language_persistent`` and ``language_events`` columns of a shard, unmaterialised.

    ``persistent[ep]`` is the episode's sorted list (repeated on each of its frames);
    ``events[ep][frame]`` the sorted event rows of an episode-relative frame.
    """
    p_first = np.zeros(n_rows, dtype=np.int64)
    p_counts = np.zeros(n_rows, dtype=np.int64)
    p_rows: list[LanguageRow] = []
    e_counts = np.zeros(n_rows, dtype=np.int64)
    e_rows: list[LanguageRow] = []
    for rng in sorted(ranges, key=lambda r: r.row_start):
        rows = persistent.get(rng.episode, ())
        if rows:
            p_first[rng.row_start : rng.row_start + rng.length] = len(p_rows)
            p_counts[rng.row_start : rng.row_start + rng.length] = len(rows)
            p_rows.extend(rows)
        for frame in sorted(events.get(rng.episode, {})):
            frame_rows = events[rng.episode][frame]
            e_counts[rng.row_start + frame] = len(frame_rows)
            e_rows.extend(frame_rows)
    e_offsets = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(e_counts, out=e_offsets[1:])
    return LanguageColumns(
        n_rows=n_rows,
        p_values=rows_to_struct_array(p_rows, persistent=True),
        p_first=p_first,
        p_counts=p_counts,
        e_values=rows_to_struct_array(e_rows, persistent=False),
        e_offsets=e_offsets,
    )


def build_language_columns(
    n_rows: int,
    ranges: Sequence[EpisodeRange],
    persistent: Mapping[int, Sequence[LanguageRow]],
    events: Mapping[int, Mapping[int, Sequence[LanguageRow]]],
) -> tuple[pa.Array, pa.Array]:
    """Both columns of a shard, materialised whole (see :func:`language_columns`)."""
    return language_columns(n_rows, ranges, persistent, events).slice(0, n_rows)


_DROPPED = {LEGACY_SUBTASK_COLUMN, *LANGUAGE_COLUMNS}
BATCH_ROWS = 8192  # at most this many rows read and written per call (small row groups)
BATCH_VALUES = 24_576  # and about this many persistent rows materialised per call
MIN_BATCH_ROWS = 256


def batch_rows(columns: LanguageColumns | _ArrayColumns, n_rows: int) -> int:
    """Rows per read/write call: few enough that the repeated persistent lists of one call
    stay near :data:`BATCH_VALUES` rows (the rewrite's memory is one call's worth), many
    enough that the per-call cost stays small."""
    if not isinstance(columns, LanguageColumns) or n_rows == 0:
        return BATCH_ROWS
    per_row = max(1.0, float(columns.p_counts.mean()))
    return int(min(BATCH_ROWS, max(MIN_BATCH_ROWS, BATCH_VALUES / per_row)))


def use_returning_memory_pool() -> str:
    """Make Arrow allocate from jemalloc (else the system allocator), which gives freed memory
    back to the system; pyarrow's default, mimalloc, kept ~70 MiB more resident across a shard
    rewrite in the writer benchmark (tests/bench/bench_writer.py). Called once by the writer
    process at start; returns the allocator's name."""
    try:
        pool = pa.jemalloc_memory_pool()
    except NotImplementedError:
        pool = pa.system_memory_pool()
    pa.set_memory_pool(pool)
    return str(pool.backend_name)


@functools.cache
def language_leaf_paths() -> tuple[str, ...]:
    """The parquet leaf paths of the two language columns (``language_persistent.list.
    element.role``, ...), as pyarrow names them: per-column codecs are keyed on these."""
    schema = pa.schema([pa.field(name, COLUMN_TYPES[name]) for name in LANGUAGE_COLUMNS])
    sink = pa.BufferOutputStream()
    pq.write_table(
        pa.Table.from_arrays(list(build_language_columns(0, [], {}, {})), schema=schema), sink
    )
    parquet_schema = pq.read_metadata(pa.BufferReader(sink.getvalue())).schema
    return tuple(parquet_schema.column(i).path for i in range(len(parquet_schema)))


def _codecs(meta: pq.FileMetaData) -> str | dict[str, str]:
    """The source's compression: one codec for all columns, or one per leaf column.

    With per-column codecs every leaf of the two new columns gets the codec most of the
    source's leaves use (the first such codec on a tie); a source without row groups gets
    pyarrow's default, snappy."""
    if meta.num_row_groups == 0:
        return "snappy"
    rg = meta.row_group(0)
    per_column: dict[str, str] = {}
    for i in range(rg.num_columns):
        col = rg.column(i)
        if col.path_in_schema.split(".", 1)[0] in _DROPPED:
            continue
        codec = str(col.compression).lower()
        per_column[col.path_in_schema] = "none" if codec == "uncompressed" else codec
    counts = Counter(per_column.values())
    if len(counts) <= 1:
        return next(iter(counts), "snappy")
    default = counts.most_common(1)[0][0]
    for leaf in language_leaf_paths():
        per_column[leaf] = default
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


class _ArrayColumns:
    """Adapter: two materialised columns sliced like :class:`LanguageColumns`."""

    def __init__(self, persistent_col: pa.Array, events_col: pa.Array) -> None:
        self.persistent_col, self.events_col = persistent_col, events_col

    def slice(self, offset: int, length: int) -> tuple[pa.Array, pa.Array]:
        return self.persistent_col.slice(offset, length), self.events_col.slice(offset, length)


def rewrite_shard(src: Path, dst: Path, persistent_col: pa.Array, events_col: pa.Array) -> None:
    """Write ``src`` with the two (materialised) language columns to ``dst`` atomically."""
    if len(persistent_col) != len(events_col):
        raise ValueError(
            f"{src}: language columns do not match ({len(persistent_col)} persistent rows, "
            f"{len(events_col)} event rows)"
        )
    _write_shard(src, dst, _ArrayColumns(persistent_col, events_col), len(persistent_col))


def write_language_shard(src: Path, dst: Path, columns: LanguageColumns) -> None:
    """Write ``src`` with ``columns`` to ``dst`` atomically, one slice at a time."""
    _write_shard(src, dst, columns, columns.n_rows)


def row_group_batches(sizes: Sequence[int], max_rows: int) -> list[tuple[list[int], int]]:
    """Runs of consecutive row groups of one size, each at most ``max_rows`` rows (or one
    group): ``(group indices, rows per group)``. Writing a run as one table with that
    ``row_group_size`` reproduces the groups exactly, at a fraction of the per-call cost."""
    batches: list[tuple[list[int], int]] = []
    for index, size in enumerate(sizes):
        if batches and size > 0:
            groups, run_size = batches[-1]
            if size == run_size and (len(groups) + 1) * size <= max_rows:
                groups.append(index)
                continue
        batches.append(([index], size))
    return batches


def _write_shard(
    src: Path, dst: Path, columns: _ArrayColumns | LanguageColumns, n_rows: int
) -> None:
    pf = pq.ParquetFile(src)
    meta = pf.metadata
    if n_rows != meta.num_rows:
        raise ValueError(f"{src}: language columns do not match its {meta.num_rows} rows")
    schema = output_schema(pf.schema_arrow)
    keep = [f.name for f in schema if f.name not in LANGUAGE_COLUMNS]
    sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    source_leaves = [
        meta.schema.column(i).path
        for i in range(meta.num_columns)
        if meta.schema.column(i).path.split(".", 1)[0] not in _DROPPED
    ]
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_path(dst)
    try:
        with pq.ParquetWriter(
            tmp,
            schema,
            compression=_codecs(meta),
            version=meta.format_version if meta.format_version in ("1.0", "2.4", "2.6") else "2.6",
            # Min/max statistics of the language leaves serve no reader and cost a third of
            # the write; the source columns keep theirs (readers skip row groups with them).
            write_statistics=source_leaves or False,
        ) as writer:
            offset = 0
            for groups, group_rows in row_group_batches(sizes, batch_rows(columns, n_rows)):
                batch = pf.read_row_groups(groups, columns=keep)
                n = batch.num_rows
                persistent_part, events_part = columns.slice(offset, n)
                table = pa.Table.from_arrays(
                    [*batch.columns, persistent_part, events_part], schema=schema
                )
                writer.write_table(table, row_group_size=max(group_rows, 1))
                offset += n
        keep_mode(src, tmp)
        fsync_path(tmp)
        tmp.replace(dst)
        fsync_path(dst.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def keep_mode(original: Path, replacement: Path) -> None:
    """Give ``replacement`` the permission bits of ``original`` (and its owner and group when
    this process may set them), so a rewritten file looks to its users as it did."""
    try:
        st = original.stat()
    except FileNotFoundError:
        return
    replacement.chmod(stat.S_IMODE(st.st_mode))
    if hasattr(os, "chown"):
        with contextlib.suppress(PermissionError):
            os.chown(replacement, st.st_uid, st.st_gid)


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
    """Replace ``path`` with ``data`` atomically, keeping its mode when it exists."""
    tmp = _temp_path(path)
    with tmp.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    keep_mode(path, tmp)
    tmp.replace(path)
    fsync_path(path.parent)
