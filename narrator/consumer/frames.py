"""The per-frame inputs LeRobot's ``RenderMessagesStep`` receives, read from a dataset: the
frame's ``index`` (the sample index), ``timestamp``, task (``meta/tasks.parquet`` through the
frame's ``task_index``) and its two language lists as LeRobot's ``datasets`` features decode
them (plain mappings; ``tool_calls`` JSON texts decoded to objects).

Invariants:
* Read-only; reads only ``episode_index``, ``index``, ``timestamp``, ``task_index`` and the
  language columns (a shard without language columns gives empty lists, as LeRobot sees an
  unannotated dataset).
* Each frame gets its own stored lists (no sharing of the first frame's persistent list).
* Problems are :class:`~narrator.common.errors.DatasetError` naming the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from narrator.common.contract import EVENTS_COLUMN, PERSISTENT_COLUMN
from narrator.common.dataset.meta import DatasetMeta
from narrator.common.errors import DatasetError

BASE_COLUMNS = ("episode_index", "index", "timestamp", "task_index")


def _decode_row(item: dict[str, Any]) -> dict[str, Any]:
    calls = item.get("tool_calls")
    if calls is not None:
        decoded = []
        for call in calls:
            try:
                decoded.append(orjson.loads(call) if isinstance(call, str | bytes) else call)
            except orjson.JSONDecodeError:
                decoded.append(call)
        item["tool_calls"] = decoded
    return item


@dataclass(frozen=True)
class EpisodeInputs:
    """One episode's frames, in file order."""

    episode: int
    data_file: str
    index: np.ndarray  # int64 global frame index per frame
    timestamp: np.ndarray  # float32 as stored
    task_index: np.ndarray  # int64
    persistent: pa.ListArray | None  # None: the shard has no language columns
    events: pa.ListArray | None

    @property
    def frames(self) -> int:
        return len(self.index)

    @property
    def annotated(self) -> bool:
        return self.persistent is not None

    @staticmethod
    def _rows(column: pa.ListArray | None, frame: int) -> list[dict[str, Any]]:
        if column is None:
            return []
        value = column[frame].as_py()
        return [_decode_row(dict(item)) for item in value or [] if item is not None]

    def persistent_rows(self, frame: int) -> list[dict[str, Any]]:
        return self._rows(self.persistent, frame)

    def event_rows(self, frame: int) -> list[dict[str, Any]]:
        return self._rows(self.events, frame)

    def t(self, frame: int) -> float:
        return float(self.timestamp[frame])


def _read(meta: DatasetMeta, data_file: str, episode: int | None) -> pa.Table:
    path: Path = meta.root / data_file
    try:
        names = set(pq.read_schema(path).names)
        missing = [c for c in BASE_COLUMNS if c not in names]
        if missing:
            raise DatasetError(path, f"has no column(s) {missing}, which LeRobot's samples carry")
        columns = [*BASE_COLUMNS, *(c for c in (PERSISTENT_COLUMN, EVENTS_COLUMN) if c in names)]
        filters = [("episode_index", "=", episode)] if episode is not None else None
        return pq.read_table(path, columns=columns, filters=filters)
    except (OSError, pa.ArrowException) as exc:
        raise DatasetError(path, f"cannot be read as parquet ({exc})") from exc


def _list_column(table: pa.Table, name: str, start: int, stop: int) -> pa.ListArray | None:
    if name not in table.column_names:
        return None
    column = table.column(name).slice(start, stop - start).combine_chunks()
    assert isinstance(column, pa.ListArray)
    return column


def _split(table: pa.Table, data_file: str) -> dict[int, EpisodeInputs]:
    episodes = table.column("episode_index").to_numpy()
    change = np.flatnonzero(np.diff(episodes)) + 1
    starts = np.concatenate([[0], change]).astype(int)
    stops = np.concatenate([change, [len(episodes)]]).astype(int)
    out: dict[int, EpisodeInputs] = {}
    for start, stop in zip(starts, stops, strict=True):
        episode = int(episodes[start])
        out[episode] = EpisodeInputs(
            episode=episode,
            data_file=data_file,
            index=table.column("index").to_numpy()[start:stop].astype(np.int64),
            timestamp=table.column("timestamp").to_numpy()[start:stop].astype(np.float32),
            task_index=table.column("task_index").to_numpy()[start:stop].astype(np.int64),
            persistent=_list_column(table, PERSISTENT_COLUMN, int(start), int(stop)),
            events=_list_column(table, EVENTS_COLUMN, int(start), int(stop)),
        )
    return out


def read_episode_inputs(meta: DatasetMeta, episode: int) -> EpisodeInputs:
    """The frames of one episode (reads only the rows its data file holds for it)."""
    ep = meta.episode(episode)
    found = _split(_read(meta, ep.data_file, episode), ep.data_file).get(episode)
    if found is None:
        raise DatasetError(meta.root / ep.data_file, f"holds no rows of episode {episode}")
    return found


def read_file_inputs(meta: DatasetMeta, data_file: str) -> dict[int, EpisodeInputs]:
    """The frames of every episode of one data file, keyed by episode index."""
    return _split(_read(meta, data_file, None), data_file)


def task_text(meta: DatasetMeta, inputs: EpisodeInputs, frame: int) -> str:
    """The frame's task, as LeRobotDataset puts it in the sample's ``task``."""
    task_index = int(inputs.task_index[frame])
    try:
        return meta.tasks[task_index]
    except KeyError:
        raise DatasetError(
            meta.root / inputs.data_file,
            f"episode {inputs.episode} frame {frame} has task_index {task_index}, which "
            "meta/tasks.parquet does not list",
        ) from None
