"""Reading a LeRobot v3 dataset: metadata, episode layout and per-frame timestamps.

The I/O shell of the package: it reads the files and hands the bytes and tables to the pure
modules (:mod:`~common.dataset.meta` for info.json and the value types,
:mod:`~common.dataset.schema`, :mod:`~common.dataset.layout`,
:mod:`~common.dataset.fingerprint`). It reads only what narrator needs: ``meta/info.json``,
``meta/tasks.parquet``, the episodes tables, the footers of the data files, and (per episode
or per file) the four columns ``episode_index``, ``frame_index``, ``timestamp`` and
``task_index``. It never lists the dataset's directories beyond ``meta/episodes/`` and
``data/`` (so narrator's own ``ROOT/.narrator/`` is never read as data).

Invariants:
* Nothing here writes to the dataset.
* Every problem with the files on disk is a :class:`~common.errors.DatasetError` naming the
  file, the problem and what to do; pyarrow and OS errors never escape raw.
* :func:`load_dataset_meta` checks the layout cheaply (footers, row-group statistics); the
  row-level checks (every row of an episode belongs to it, frame_index counts 0..n-1,
  timestamps strictly increase, task indices exist) run where the rows are read:
  :func:`read_episode_frames` and :func:`read_file_frames`.
* Language columns of another type than the contract's do not stop loading; they set
  ``language_columns_state = "legacy"`` and :func:`check_language_columns` raises for them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from narrator.common.contract import LEGACY_SUBTASK_COLUMN
from narrator.common.dataset.files import DATA_DIR, EPISODES_DIR, INFO_FILE, TASKS_FILE
from narrator.common.dataset.fingerprint import compute_fingerprint
from narrator.common.dataset.layout import (
    DATA_COLUMNS,
    EPISODE_COLUMNS,
    VIDEO_COLUMN_KINDS,
    check_tiling,
    episode_frames,
    episode_from_row,
    group_by_data_file,
    layout_error,
    row_groups_covering,
    short_list,
    statistics_agree,
    video_camera,
)
from narrator.common.dataset.meta import (
    FRAME_COLUMNS,
    CameraInfo,
    DatasetMeta,
    Episode,
    EpisodeFrames,
    cameras_from_info,
    parse_info,
)
from narrator.common.dataset.schema import language_state, require_columns
from narrator.common.errors import DatasetError
from narrator.common.logging import get_logger

_log = get_logger(__name__)

_RESTORE = "the file is truncated or corrupt; restore it from the dataset's source"


def load_dataset_meta(root: Path) -> DatasetMeta:
    """Load and check a dataset's metadata and layout; raises DatasetError(path, problem)."""
    root = Path(root).absolute()
    if not root.is_dir():
        raise DatasetError(root, "is not a directory; pass the dataset root (holding meta/)")
    info_path = root / INFO_FILE
    info = parse_info(_read_bytes(info_path), info_path)
    cameras = cameras_from_info(info, info_path)
    tasks_blob = _read_bytes(root / TASKS_FILE)
    tasks = _parse_tasks(tasks_blob, root / TASKS_FILE)
    episode_blobs = _read_episode_files(root)
    episodes = _parse_episodes(root, info, cameras, episode_blobs)
    files = group_by_data_file(episodes)
    _check_no_orphan_data_files(root, files)
    schemas = {
        rel: _check_data_file(root, rel, eps, episodes, cameras) for rel, eps in files.items()
    }
    _check_videos_exist(episodes)
    state, issue = language_state(info, schemas)
    legacy_subtask = LEGACY_SUBTASK_COLUMN in info["features"] or any(
        LEGACY_SUBTASK_COLUMN in s.names for s in schemas.values()
    )
    meta = DatasetMeta(
        root=root,
        info=info,
        fps=float(info["fps"]),
        cameras=cameras,
        tasks=tasks,
        episodes=episodes,
        files={rel: tuple(e.index for e in eps) for rel, eps in files.items()},
        language_columns_state=state,
        language_columns_issue=issue,
        has_legacy_subtask_index=legacy_subtask,
        fingerprint_hex=compute_fingerprint(info, [(TASKS_FILE, tasks_blob), *episode_blobs]),
    )
    _log.info(
        "dataset_loaded",
        root=str(root),
        episodes=len(episodes),
        data_files=len(files),
        cameras=[c.key for c in cameras],
        language_columns=state,
    )
    return meta


def check_language_columns(meta: DatasetMeta) -> None:
    """Raise DatasetError when the dataset holds language columns of an older schema."""
    if meta.language_columns_state == "legacy" and meta.language_columns_issue is not None:
        rel, problem = meta.language_columns_issue
        raise DatasetError(meta.root / rel, problem)


def read_episode_frames(meta: DatasetMeta, episode: int) -> EpisodeFrames:
    """The frame columns of one episode, reading only the row groups that hold it."""
    ep = meta.episode(episode)
    path = meta.root / ep.data_file
    start = meta.row_start(ep)
    try:
        with pq.ParquetFile(path) as parquet:
            groups, offset = row_groups_covering(parquet.metadata, start, ep.length)
            table = parquet.read_row_groups(groups, columns=list(FRAME_COLUMNS))
    except (pa.ArrowException, OSError) as exc:
        raise DatasetError(path, f"cannot be read as parquet ({exc}); {_RESTORE}") from exc
    if table.num_rows < offset + ep.length:
        raise DatasetError(
            path,
            f"has too few rows for episode {episode} (rows {start}..{start + ep.length - 1} "
            "per the episodes table); the file changed since the dataset was loaded",
        )
    return episode_frames(path, ep, start, table.slice(offset, ep.length), meta.tasks)


def read_file_frames(meta: DatasetMeta, data_file: str) -> dict[int, EpisodeFrames]:
    """The frame columns of every episode of one data file, keyed by episode index."""
    path = meta.root / data_file
    episode_indices = meta.files.get(data_file)
    if episode_indices is None:
        raise DatasetError(path, "is not a data file of this dataset's episodes table")
    try:
        with pq.ParquetFile(path) as parquet:
            table = parquet.read(columns=list(FRAME_COLUMNS))
    except (pa.ArrowException, OSError) as exc:
        raise DatasetError(path, f"cannot be read as parquet ({exc}); {_RESTORE}") from exc
    episodes = [meta.episodes[i] for i in episode_indices]
    if table.num_rows != sum(e.length for e in episodes):
        raise layout_error(meta.root, data_file, episodes, meta.episodes, table["episode_index"])
    out: dict[int, EpisodeFrames] = {}
    for ep in episodes:
        start = meta.row_start(ep)
        out[ep.index] = episode_frames(path, ep, start, table.slice(start, ep.length), meta.tasks)
    return out


# --- metadata files ------------------------------------------------------------------------


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise DatasetError(
            path,
            "is missing; the directory is not a complete LeRobot v3 dataset (it needs "
            "meta/info.json, meta/tasks.parquet, meta/episodes/ and data/). Point narrator "
            "at the dataset root or restore the file",
        ) from None
    except OSError as exc:
        raise DatasetError(path, f"cannot be read ({exc})") from exc


def _read_table(blob: bytes, path: Path, columns: Iterable[str] | None = None) -> pa.Table:
    try:
        cols = list(columns) if columns is not None else None
        return pq.read_table(pa.BufferReader(blob), columns=cols)
    except (pa.ArrowException, OSError) as exc:
        raise DatasetError(path, f"cannot be read as parquet ({exc}); {_RESTORE}") from exc


def _read_schema(blob: bytes, path: Path) -> pa.Schema:
    try:
        return pq.read_schema(pa.BufferReader(blob))
    except (pa.ArrowException, OSError) as exc:
        raise DatasetError(path, f"cannot be read as parquet ({exc}); {_RESTORE}") from exc


def _require_valid(table: pa.Table, path: Path) -> None:
    """No nulls, and text that is valid UTF-8 (pyarrow does not check that on read)."""
    for name in table.column_names:
        column = table.column(name)
        if column.null_count:
            raise DatasetError(path, f"column {name!r} has {column.null_count} null value(s)")
        try:
            column.validate(full=True)
        except pa.ArrowInvalid as exc:
            raise DatasetError(
                path,
                f"column {name!r} holds text that is not valid UTF-8 ({exc}); re-save it as UTF-8",
            ) from None


def _parse_tasks(blob: bytes, path: Path) -> dict[int, str]:
    schema = _read_schema(blob, path)
    text_column = next((c for c in ("task", "__index_level_0__") if c in schema.names), None)
    if text_column is None:
        raise DatasetError(
            path,
            "has no task text: expected a column 'task' or the pandas index "
            "'__index_level_0__' beside 'task_index'",
        )
    require_columns(schema, {"task_index": "int", text_column: "string"}, path)
    table = _read_table(blob, path, ["task_index", text_column])
    _require_valid(table, path)
    tasks: dict[int, str] = {}
    for index, text in zip(
        table.column("task_index").to_pylist(), table.column(text_column).to_pylist(), strict=True
    ):
        if index in tasks:
            raise DatasetError(path, f"task_index {index} appears twice; task indices are unique")
        tasks[int(index)] = str(text)
    return tasks


def _read_episode_files(root: Path) -> list[tuple[str, bytes]]:
    directory = root / EPISODES_DIR
    paths = sorted(directory.rglob("*.parquet")) if directory.is_dir() else []
    if not paths:
        raise DatasetError(
            directory,
            "holds no episodes table (meta/episodes/chunk-XXX/file-YYY.parquet); the dataset "
            "is incomplete or not LeRobot v3: convert it with LeRobot's v3 conversion script",
        )
    return [(p.relative_to(root).as_posix(), _read_bytes(p)) for p in paths]


def _parse_episodes(
    root: Path,
    info: Mapping[str, Any],
    cameras: tuple[CameraInfo, ...],
    blobs: list[tuple[str, bytes]],
) -> dict[int, Episode]:
    video_keys = [c.key for c in cameras if c.dtype == "video"]
    episodes: dict[int, Episode] = {}
    for rel, blob in blobs:
        path = root / rel
        schema = _read_schema(blob, path)
        named = {k for k in map(video_camera, schema.names) if k is not None}
        undeclared = sorted(named - set(video_keys))
        if undeclared:
            raise DatasetError(
                path,
                f"has video columns for camera(s) {undeclared} that meta/info.json does not "
                "declare as video features; declare them in info.json or drop those columns",
            )
        required = dict(EPISODE_COLUMNS)
        for key in video_keys:
            required.update({f"videos/{key}/{k}": kind for k, kind in VIDEO_COLUMN_KINDS.items()})
        require_columns(schema, required, path)
        table = _read_table(blob, path, required)
        _require_valid(table, path)
        for row in table.to_pylist():
            episode = episode_from_row(root, info, video_keys, row, path)
            if episode.index in episodes:
                raise DatasetError(path, f"lists episode {episode.index} more than once")
            episodes[episode.index] = episode
    return episodes


def _check_videos_exist(episodes: Mapping[int, Episode]) -> None:
    users: dict[Path, list[int]] = {}
    for ep in episodes.values():
        for span in ep.videos.values():
            users.setdefault(span.path, []).append(ep.index)
    for path, eps in sorted(users.items()):
        if not path.is_file():
            raise DatasetError(
                path,
                f"video file is missing; episodes {short_list(eps)} need it. Restore it from "
                "the dataset's source",
            )


# --- data files ----------------------------------------------------------------------------


def _check_data_file(
    root: Path,
    rel: str,
    episodes: list[Episode],
    all_episodes: Mapping[int, Episode],
    cameras: tuple[CameraInfo, ...],
) -> pa.Schema:
    """Footer-level checks of one data file; returns its Arrow schema."""
    path = root / rel
    if not path.is_file():
        raise DatasetError(
            path,
            f"data file is missing; the episodes table places episodes "
            f"{short_list([e.index for e in episodes])} in it. Restore it",
        )
    try:
        with pq.ParquetFile(path) as parquet:
            schema, metadata = parquet.schema_arrow, parquet.metadata
    except (pa.ArrowException, OSError) as exc:
        raise DatasetError(path, f"cannot be read as parquet ({exc}); {_RESTORE}") from exc
    require_columns(schema, DATA_COLUMNS, path)
    for cam in cameras:
        if cam.dtype == "image":
            _check_image_column(path, schema, cam.key)
    expected = sum(e.length for e in episodes)
    if metadata.num_rows != expected or not statistics_agree(metadata, episodes):
        column = _read_column(path, "episode_index")
        raise layout_error(root, rel, episodes, all_episodes, column)
    check_tiling(root, rel, episodes)
    return schema


def _check_image_column(path: Path, schema: pa.Schema, key: str) -> None:
    """An image camera's column holds LeRobot's ``{bytes, path}`` struct (or plain bytes)."""
    if schema.get_field_index(key) < 0:
        raise DatasetError(path, f"lacks the column of image camera {key!r}")
    kind = schema.field(key).type
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        return
    if pa.types.is_struct(kind):
        index = kind.get_field_index("bytes")
        if index >= 0 and (
            pa.types.is_binary(kind.field(index).type)
            or pa.types.is_large_binary(kind.field(index).type)
        ):
            return
    raise DatasetError(
        path,
        f"column of image camera {key!r} has type {kind}; narrator reads images embedded as "
        "LeRobot writes them (struct<bytes: binary, path: string>). Images stored as files "
        "beside the dataset are not supported: embed them or encode the camera as a video",
    )


def _check_no_orphan_data_files(root: Path, files: Mapping[str, list[Episode]]) -> None:
    """Every parquet file under data/ must hold episodes of the episodes table."""
    data_dir = root / DATA_DIR
    found = sorted(data_dir.rglob("*.parquet")) if data_dir.is_dir() else []
    for path in found:
        if path.relative_to(root).as_posix() not in files:
            raise DatasetError(
                path,
                "no episode of the episodes table lies in this data file; its episodes are "
                f"missing from the episodes table ({EPISODES_DIR}/): add them, or move the "
                "file out of data/",
            )


def _read_column(path: Path, name: str) -> pa.ChunkedArray:
    try:
        with pq.ParquetFile(path) as parquet:
            return parquet.read(columns=[name]).column(name)
    except (pa.ArrowException, OSError) as exc:
        raise DatasetError(path, f"cannot be read as parquet ({exc}); {_RESTORE}") from exc
