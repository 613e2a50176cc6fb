"""Reading the language rows of an annotated dataset, per data file or per episode.

Used by ``narrator render``, ``narrator report`` and the writer (to keep rows a run does
not own). Reads only ``episode_index``, ``timestamp``, ``task_index`` and the two language
columns.

Invariants:
* Read-only. Problems are :class:`~common.errors.DatasetError` naming the file and what to do.
* An episode's frames are its rows in file order; ``events_by_frame`` keys are the
  episode-relative positions of those rows, ``timestamps`` the stored float32 values.
* The persistent list is taken from the episode's first frame (it is the same on every frame
  of a valid dataset; ``narrator validate`` checks that).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from narrator.common.contract import (
    EVENTS_COLUMN,
    LANGUAGE_COLUMNS,
    PERSISTENT_COLUMN,
    LanguageRow,
    row_from_dict,
)
from narrator.common.dataset.meta import DatasetMeta
from narrator.common.errors import DatasetError

READ_COLUMNS = ("episode_index", "timestamp", "task_index", PERSISTENT_COLUMN, EVENTS_COLUMN)


@dataclass(frozen=True)
class EpisodeLanguage:
    episode: int
    timestamps: np.ndarray  # float32, one per frame
    task_index: int  # of the first frame
    persistent: list[LanguageRow]
    events_by_frame: dict[int, list[LanguageRow]] = field(default_factory=dict)

    @property
    def frames(self) -> int:
        return len(self.timestamps)


def _rows(values: pa.Array, start: int, stop: int) -> list[LanguageRow]:
    return [row_from_dict(item) for item in values.slice(start, stop - start).to_pylist()]


def _offsets_and_values(table: pa.Table, name: str) -> tuple[np.ndarray, pa.Array | None]:
    """Offsets and values of a language column; a column the table lacks holds no rows."""
    if table.schema.get_field_index(name) < 0:
        return np.zeros(table.num_rows + 1, dtype=np.int64), None
    column = table.column(name).combine_chunks()
    return column.offsets.to_numpy(), column.values


def _split(table: pa.Table) -> dict[int, EpisodeLanguage]:
    episodes = table.column("episode_index").to_numpy()
    timestamps = table.column("timestamp").to_numpy()
    tasks = table.column("task_index").to_numpy()
    p_off, p_values = _offsets_and_values(table, PERSISTENT_COLUMN)
    e_off, e_values = _offsets_and_values(table, EVENTS_COLUMN)
    out: dict[int, EpisodeLanguage] = {}
    change = np.flatnonzero(np.diff(episodes)) + 1
    starts = np.concatenate([[0], change]).astype(int)
    stops = np.concatenate([change, [len(episodes)]]).astype(int)
    for start, stop in zip(starts, stops, strict=True):
        by_frame: dict[int, list[LanguageRow]] = {}
        if e_values is not None:
            for row in range(start, stop):
                if e_off[row + 1] > e_off[row]:
                    by_frame[row - start] = _rows(e_values, int(e_off[row]), int(e_off[row + 1]))
        episode = int(episodes[start])
        persistent = []
        if p_values is not None:
            persistent = _rows(p_values, int(p_off[start]), int(p_off[start + 1]))
        out[episode] = EpisodeLanguage(
            episode=episode,
            timestamps=timestamps[start:stop].astype(np.float32),
            task_index=int(tasks[start]),
            persistent=persistent,
            events_by_frame=by_frame,
        )
    return out


def _read(path: Path, episode: int | None, *, absent_ok: bool = False) -> pa.Table:
    try:
        schema = pq.read_schema(path)
        missing = [c for c in READ_COLUMNS if schema.get_field_index(c) < 0]
        if missing and not (absent_ok and set(missing) <= set(LANGUAGE_COLUMNS)):
            raise DatasetError(
                path,
                f"has no column(s) {missing}; it is not annotated yet (run `narrator annotate`)",
            )
        columns = [c for c in READ_COLUMNS if c not in missing]
        filters = [("episode_index", "=", episode)] if episode is not None else None
        return pq.read_table(path, columns=columns, filters=filters)
    except (OSError, pa.ArrowException) as exc:
        raise DatasetError(path, f"cannot be read as parquet ({exc})") from exc


def read_file_language(
    meta: DatasetMeta, data_file: str, *, absent_ok: bool = False
) -> dict[int, EpisodeLanguage]:
    """The language rows of every episode of one data file, keyed by episode index.

    A shard without language columns is an error ("not annotated yet"), unless ``absent_ok``
    (the writer re-annotating a dataset of which only some shards have them): then a missing
    column holds no rows."""
    return _split(_read(meta.root / data_file, None, absent_ok=absent_ok))


def read_episode_language(meta: DatasetMeta, episode: int) -> EpisodeLanguage:
    """The language rows of one episode (reads only the row groups that can hold it)."""
    ep = meta.episode(episode)
    path = meta.root / ep.data_file
    found = _split(_read(path, episode)).get(episode)
    if found is None:
        raise DatasetError(path, f"holds no rows of episode {episode}")
    return found
