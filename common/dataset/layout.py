"""Pure rules for how episodes lie in a LeRobot v3 dataset's data files.

Given what :mod:`common.dataset.reader` read (episodes-table rows, parquet footers, frame
columns), these functions build :class:`~common.dataset.meta.Episode` values, check that the
episodes tile each data file, and check one episode's rows; when a data file and the episodes
table disagree, :func:`layout_error` explains how (missing episode, split episode, wrong order).

Invariants: no I/O; every problem is a :class:`~common.errors.DatasetError` that names the
file, the problem and what to do.
"""

from __future__ import annotations

from collections.abc import Mapping
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from narrator.common.dataset.files import EPISODES_DIR, INFO_FILE, TASKS_FILE
from narrator.common.dataset.meta import (
    FRAME_COLUMNS,
    Episode,
    EpisodeFrames,
    VideoSpan,
    format_path,
)
from narrator.common.dataset.schema import ColumnKind
from narrator.common.errors import DatasetError

EPISODE_COLUMNS: dict[str, ColumnKind] = {
    "episode_index": "int",
    "length": "int",
    "tasks": "string_list",
    "data/chunk_index": "int",
    "data/file_index": "int",
    "dataset_from_index": "int",
    "dataset_to_index": "int",
}
VIDEO_COLUMN_KINDS: dict[str, ColumnKind] = {
    "chunk_index": "int",
    "file_index": "int",
    "from_timestamp": "float",
    "to_timestamp": "float",
}
DATA_COLUMNS: dict[str, ColumnKind] = {
    "episode_index": "int",
    "frame_index": "int",
    "timestamp": "float32",
    "task_index": "int",
}


def video_camera(column: str) -> str | None:
    """The camera key of an episodes-table column ``videos/<key>/<field>``, else None."""
    if not column.startswith("videos/") or column.count("/") < 2:
        return None
    return column[len("videos/") :].rsplit("/", 1)[0]


def episode_from_row(
    root: Path,
    info: Mapping[str, Any],
    video_keys: list[str],
    row: Mapping[str, Any],
    path: Path,
) -> Episode:
    """One row of an episodes table (``path``) as an :class:`Episode`."""
    index, length = int(row["episode_index"]), int(row["length"])
    first, end = int(row["dataset_from_index"]), int(row["dataset_to_index"])
    if length <= 0 or first < 0:
        raise DatasetError(path, f"episode {index} has length {length} and start {first}")
    if end - first != length:
        raise DatasetError(
            path,
            f"episode {index}: dataset_to_index - dataset_from_index = {end - first} but "
            f"length = {length}; the episode is split across data files or the table is "
            "wrong. Each episode must lie whole in the one data file the table names",
        )
    info_path = root / INFO_FILE
    data_file = format_path(
        str(info["data_path"]),
        info_path,
        chunk_index=row["data/chunk_index"],
        file_index=row["data/file_index"],
    )
    videos: dict[str, VideoSpan] = {}
    for key in video_keys:
        start_s = float(row[f"videos/{key}/from_timestamp"])
        end_s = float(row[f"videos/{key}/to_timestamp"])
        if not 0 <= start_s < end_s:
            raise DatasetError(
                path, f"episode {index} camera {key}: bad video span {start_s}..{end_s} s"
            )
        video = format_path(
            str(info["video_path"]),
            info_path,
            video_key=key,
            chunk_index=row[f"videos/{key}/chunk_index"],
            file_index=row[f"videos/{key}/file_index"],
        )
        videos[key] = VideoSpan(key, root / video, start_s, end_s)
    tasks = tuple(str(t) for t in row["tasks"])
    return Episode(index, length, tasks, data_file, first, end, videos)


def group_by_data_file(episodes: Mapping[int, Episode]) -> dict[str, list[Episode]]:
    """Data file -> its episodes in row (global index) order, files sorted by path."""
    files: dict[str, list[Episode]] = {}
    for ep in sorted(episodes.values(), key=lambda e: e.from_index):
        files.setdefault(ep.data_file, []).append(ep)
    return dict(sorted(files.items()))


def check_tiling(root: Path, rel: str, episodes: list[Episode]) -> None:
    """The episodes of one data file must follow each other without gaps or overlaps."""
    for before, after in pairwise(episodes):
        if after.from_index != before.to_index:
            raise DatasetError(
                root / EPISODES_DIR,
                f"episodes {before.index} and {after.index} of {rel} do not follow each "
                f"other (rows end at {before.to_index}, next starts at {after.from_index}); "
                "dataset_from_index/dataset_to_index must tile each data file",
            )


def short_list(values: list[int]) -> str:
    """At most eight numbers, for messages."""
    shown = ", ".join(map(str, values[:8]))
    return shown + (f" and {len(values) - 8} more" if len(values) > 8 else "")


def statistics_agree(metadata: pq.FileMetaData, episodes: list[Episode]) -> bool:
    """Row-group min/max of episode_index match the layout the episodes table implies."""
    leaf = next(
        (
            i
            for i in range(metadata.num_columns)
            if metadata.schema.column(i).path == "episode_index"
        ),
        None,
    )
    if leaf is None:
        return True
    starts = np.cumsum([0] + [e.length for e in episodes])
    indices = np.array([e.index for e in episodes])
    row = 0
    for g in range(metadata.num_row_groups):
        group = metadata.row_group(g)
        first, end = row, row + group.num_rows
        row = end
        stats = group.column(leaf).statistics
        if stats is None or not stats.has_min_max or group.num_rows == 0:
            continue
        inside = indices[(starts[:-1] < end) & (starts[1:] > first)]
        if int(stats.min) != int(inside.min()) or int(stats.max) != int(inside.max()):
            return False
    return True


def layout_error(
    root: Path,
    rel: str,
    episodes: list[Episode],
    all_episodes: Mapping[int, Episode],
    episode_column: pa.ChunkedArray,
) -> DatasetError:
    """Explain how a data file's rows disagree with the episodes table."""
    path = root / rel
    found, counts = np.unique(np.asarray(episode_column.to_numpy()), return_counts=True)
    in_file = {int(e): int(n) for e, n in zip(found, counts, strict=True)}
    for index, n in in_file.items():
        if index not in all_episodes:
            return DatasetError(
                path,
                f"holds {n} rows of episode {index}, which is missing from the episodes table "
                f"({EPISODES_DIR}/); add the episode to the table or remove its rows",
            )
        if all_episodes[index].data_file != rel:
            return DatasetError(
                path,
                f"holds {n} rows of episode {index}, which the episodes table places in "
                f"{all_episodes[index].data_file}; an episode is split across data files. "
                "Each episode must lie whole in the one data file the table names",
            )
    for ep in episodes:
        n = in_file.get(ep.index, 0)
        if n != ep.length:
            return DatasetError(
                path,
                f"holds {n} of the {ep.length} rows of episode {ep.index}; the episode is split "
                "across data files or its length in the episodes table is wrong. Each episode "
                "must lie whole in the one data file the table names",
            )
    return DatasetError(
        path,
        "rows are not in the order dataset_from_index/dataset_to_index of the episodes table "
        "say; the table and the data file disagree",
    )


def row_groups_covering(
    metadata: pq.FileMetaData, start: int, length: int
) -> tuple[list[int], int]:
    """Row groups overlapping rows [start, start+length), and start's offset in the first."""
    groups: list[int] = []
    offset = 0
    row = 0
    for g in range(metadata.num_row_groups):
        end = row + metadata.row_group(g).num_rows
        if end > start and row < start + length:
            if not groups:
                offset = start - row
            groups.append(g)
        row = end
    return groups, offset


def episode_frames(
    path: Path, ep: Episode, start: int, table: pa.Table, tasks: Mapping[int, str]
) -> EpisodeFrames:
    """Check one episode's rows and return them as arrays."""
    for name in FRAME_COLUMNS:
        if table.column(name).null_count:
            raise DatasetError(path, f"column {name!r} has nulls in episode {ep.index}")
    if table.schema.field("timestamp").type != pa.float32():
        raise DatasetError(path, "column 'timestamp' must be float32; convert the column")
    episode_index = np.asarray(table.column("episode_index").to_numpy(), dtype=np.int64)
    wrong = np.flatnonzero(episode_index != ep.index)
    if wrong.size:
        k = int(wrong[0])
        raise DatasetError(
            path,
            f"row {start + k} holds episode {int(episode_index[k])} where the episodes table "
            f"puts episode {ep.index} (rows {start}..{start + ep.length - 1}); an episode is "
            "split across data files or missing from the episodes table",
        )
    frame_index = np.asarray(table.column("frame_index").to_numpy(), dtype=np.int64)
    bad = np.flatnonzero(frame_index != np.arange(ep.length))
    if bad.size:
        k = int(bad[0])
        raise DatasetError(
            path,
            f"frame_index of episode {ep.index} must count 0..{ep.length - 1} in row order; "
            f"row {start + k} has {int(frame_index[k])}",
        )
    timestamp = np.asarray(table.column("timestamp").to_numpy(), dtype=np.float32)
    steps = np.diff(timestamp)
    back = np.flatnonzero(~(steps > 0))
    if back.size or not np.isfinite(timestamp).all():
        k = int(back[0]) + 1 if back.size else int(np.flatnonzero(~np.isfinite(timestamp))[0])
        raise DatasetError(
            path,
            f"timestamps of episode {ep.index} are not strictly increasing at frame {k} "
            f"({float(timestamp[max(k - 1, 0)]):.6g} then {float(timestamp[k]):.6g}); fix the "
            "timestamp column (seconds from the episode start, increasing frame by frame)",
        )
    task_index = np.asarray(table.column("task_index").to_numpy(), dtype=np.int64)
    unknown = sorted(set(np.unique(task_index).tolist()) - set(tasks))
    if unknown:
        raise DatasetError(
            path, f"episode {ep.index} uses task_index {unknown} that {TASKS_FILE} does not list"
        )
    return EpisodeFrames(ep.index, start, frame_index, timestamp, task_index)
